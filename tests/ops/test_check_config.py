"""`kraken-relay check-config`: the sample configs pass; broken ones fail with one line naming the key."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from relay.cli import main as cli_main
from relay.config import ConfigError, load_config
from tests.kit.paths import ROOT

GOOD = """
upstreams:
  - {name: a, url: "wss://ws.kraken.com/v2"}
  - {name: b, url: "wss://beta-ws.kraken.com/v2"}
channels:
  book: {symbols: [BTC/USD], depth: 25}
"""


def run_cli(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str], monkeypatch=None) -> tuple[int, str, str]:
    path = tmp_path / "relay.yaml"
    path.write_text(textwrap.dedent(text))
    rc = cli_main(["check-config", str(path)])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(autouse=True)
def _no_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in (
        "KRAKEN_RELAY_LISTEN",
        "KRAKEN_RELAY_HTTP_LISTEN",
        "KRAKEN_RELAY_LOG_LEVEL",
        "KRAKEN_RELAY_LOG_FORMAT",
        "KRAKEN_RELAY_TOKEN",
        "KRAKEN_RELAY_PUBLIC_WITHOUT_TOKEN",
    ):
        monkeypatch.delenv(var, raising=False)


@pytest.mark.parametrize("path", ["config/relay.yaml", "relay/demo.yaml"])
def test_sample_configs_pass(path: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli_main(["check-config", str(ROOT / path)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert len(out.strip().splitlines()) == 1 and out.startswith("config ok:")
    assert "2 upstreams" in out


def test_real_config_targets_kraken_and_beta_with_depth_100() -> None:
    cfg = load_config(ROOT / "config" / "relay.yaml", env={})
    assert [u.url for u in cfg.upstreams] == ["wss://ws.kraken.com/v2", "wss://beta-ws.kraken.com/v2"]
    assert cfg.channels.book is not None and cfg.channels.book.depth == 100
    assert {"BTC/USD", "ETH/USD", "SOL/USD", "XRP/USD"} <= set(cfg.channels.book.symbols)
    assert cfg.channels.trade and cfg.channels.ticker
    assert cfg.server.listen.startswith("127.0.0.1:") and cfg.http.listen.startswith("127.0.0.1:")


def test_demo_config_uses_two_local_simulator_lines() -> None:
    cfg = load_config(ROOT / "relay" / "demo.yaml", env={})
    assert [u.url for u in cfg.upstreams] == ["ws://127.0.0.1:18001/v2", "ws://127.0.0.1:18002/v2"]
    assert cfg.server.listen == "127.0.0.1:8765" and cfg.http.listen == "127.0.0.1:9100"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (GOOD + "bogus: 1\n", "bogus: unknown key"),
        (GOOD + "sever: {listen: '127.0.0.1:1'}\n", "sever: unknown key (did you mean 'server'?)"),
        (
            GOOD.replace('url: "wss://beta-ws.kraken.com/v2"', 'url: "https://beta-ws.kraken.com/v2"'),
            "upstreams[1].url: must be a ws:// or wss:// URL",
        ),
        ("channels:\n  book: {symbols: [BTC/USD]}\n", "upstreams: is required"),
        ("upstreams: []\nchannels:\n  book: {symbols: [BTC/USD]}\n", "upstreams: needs at least 1 item"),
        (GOOD.replace("depth: 25", "depth: 7"), "channels.book.depth: must be one of 10, 25, 100, 500, 1000"),
        (GOOD.replace("{name: b, ", "{name: a, "), "upstreams[1].name: 'a' is used twice"),
        (GOOD + "server: {max_clients: lots}\n", "server.max_clients: must be an integer"),
        (GOOD + "logging: {level: loud}\n", "logging.level: must be "),
        (GOOD + "upstreams2: x\n", "upstreams2: unknown key"),
    ],
)
def test_invalid_config_exits_2_with_one_line_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expected: str
) -> None:
    rc, out, err = run_cli(tmp_path, text, capsys)
    assert rc == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert expected in lines[0]
    assert str(tmp_path / "relay.yaml") in lines[0]


def test_unreadable_and_unparsable_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["check-config", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err
    assert "missing.yaml: cannot read" in err and len(err.strip().splitlines()) == 1
    rc, _, err = run_cli(tmp_path, "upstreams: [\n", capsys)
    assert rc == 2 and "not valid YAML" in err and len(err.strip().splitlines()) == 1
    rc, _, err = run_cli(tmp_path, "", capsys)
    assert rc == 2 and "must be a mapping" in err


def test_env_override_is_applied_and_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KRAKEN_RELAY_LISTEN", "0.0.0.0:8765")
    monkeypatch.setenv("KRAKEN_RELAY_HTTP_LISTEN", "0.0.0.0:9100")
    monkeypatch.setenv("KRAKEN_RELAY_PUBLIC_WITHOUT_TOKEN", "warn")  # as the Docker image sets it
    rc, out, err = run_cli(tmp_path, GOOD, capsys)
    assert rc == 0
    assert (
        "serving ws://0.0.0.0:8765/v2; on demand: up to 200 per protocol, released after 60 s; http 0.0.0.0:9100" in out
    )
    assert "warning: server.listen" in err  # reachable from other hosts without a token
    monkeypatch.setenv("KRAKEN_RELAY_LISTEN", "nonsense")
    rc, out, err = run_cli(tmp_path, GOOD, capsys)
    assert rc == 2 and "server.listen: must be HOST:PORT" in err and "(from $KRAKEN_RELAY_LISTEN)" in err


def test_quiet_prints_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(GOOD)
    assert cli_main(["check-config", "-q", str(path)]) == 0
    assert capsys.readouterr() == ("", "")


def test_load_config_raises_config_error_with_path(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(GOOD + "http: {listen: nowhere}\n")
    with pytest.raises(ConfigError, match=r"^http\.listen: must be HOST:PORT"):
        load_config(path, env={})


def test_console_entry_point_exit_codes(tmp_path: Path) -> None:
    """The real process: what systemd's ExecStartPre and the Docker build run."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD + "bogus: 1\n")
    ok = subprocess.run(
        [sys.executable, "-m", "relay", "check-config", str(ROOT / "relay" / "demo.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert ok.returncode == 0, ok.stderr
    res = subprocess.run(
        [sys.executable, "-m", "relay", "check-config", str(bad)], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"invalid config {bad}: bogus: unknown key")


def test_print_shows_the_effective_config_with_defaults_and_overrides(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import yaml

    monkeypatch.setenv("KRAKEN_RELAY_HTTP_LISTEN", "0.0.0.0:9200")
    monkeypatch.setenv("KRAKEN_RELAY_TOKEN", "s3cret")
    path = tmp_path / "r.yaml"
    path.write_text(GOOD)
    assert cli_main(["check-config", "--print", str(path)]) == 0
    out = capsys.readouterr().out
    doc = yaml.safe_load(out)
    assert doc["http"]["listen"] == "0.0.0.0:9200"
    assert doc["server"]["listen"] == "127.0.0.1:8765"  # a default, now visible
    assert doc["server"]["token"] == "<redacted>" and "s3cret" not in out
    assert doc["channels"]["book"]["depth"] == 25
    # what it prints is itself a valid config (with the token placeholder)
    from relay.config import parse_config

    assert parse_config(doc, env={}).http.listen == "0.0.0.0:9200"
