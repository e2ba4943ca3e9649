"""Logging: JSON lines off a TTY (journald/docker), readable console on a TTY, stdlib logs included."""

from __future__ import annotations

import io
import logging

import orjson
import pytest

from relay.ops.logging import configure_logging, get_logger, resolve_format


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _restore_logging():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)


def lines(buf: io.StringIO) -> list[dict]:
    return [orjson.loads(ln) for ln in buf.getvalue().splitlines() if ln.strip()]


def test_auto_is_json_off_a_tty_and_console_on_a_tty() -> None:
    assert resolve_format("auto", io.StringIO()) == "json"
    assert resolve_format("auto", FakeTTY()) == "console"
    assert resolve_format("json", FakeTTY()) == "json"
    assert resolve_format("console", io.StringIO()) == "console"


def test_json_lines_carry_event_level_time_and_context() -> None:
    buf = io.StringIO()
    assert configure_logging("info", "auto", buf) == "json"
    log = get_logger("relay.upstream", upstream="primary")
    log.info("connected", attempt=2)
    log.debug("not shown at info")
    logging.getLogger("websockets.client").warning("handshake failed: %s", "HTTP 429")
    recs = lines(buf)
    assert len(recs) == 2
    first, second = recs
    assert first["event"] == "connected" and first["upstream"] == "primary" and first["attempt"] == 2
    assert first["level"] == "info" and first["logger"] == "relay.upstream"
    assert first["timestamp"].endswith("Z")
    assert second == {
        **second,
        "event": "handshake failed: HTTP 429",
        "level": "warning",
        "logger": "websockets.client",
    }


def test_exceptions_are_one_json_line_with_the_traceback() -> None:
    buf = io.StringIO()
    configure_logging("info", "json", buf)
    try:
        raise RuntimeError("kaput")
    except RuntimeError:
        get_logger("x").exception("failed")
        logging.getLogger("y").error("stdlib failed", exc_info=True)
    recs = lines(buf)
    assert len(recs) == 2
    for rec in recs:
        assert "RuntimeError: kaput" in rec["exception"]


def test_console_format_is_human_readable() -> None:
    buf = io.StringIO()
    assert configure_logging("debug", "console", buf) == "console"
    get_logger("relay.merge").debug("resync", symbol="BTC/USD")
    out = buf.getvalue()
    assert "resync" in out and "symbol=BTC/USD" in out
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(out.splitlines()[0])


def test_reconfigure_replaces_handler_and_level() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging("info", "json", first)
    configure_logging("error", "json", second)
    get_logger("x").warning("dropped at error level")
    get_logger("x").error("kept")
    assert first.getvalue() == ""
    assert [r["event"] for r in lines(second)] == ["kept"]
    with pytest.raises(ValueError):
        configure_logging("loud", "json", second)
