"""A line's engine status is logged once per change, and a flapping line's log stays bounded."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from collections.abc import Iterator

import orjson

from relay.ops.logging import configure_logging
from relay.protocols.spot_v2.spec import SPOT_V2
from relay.upstream.pool import UpstreamPool
from relay.upstream.statuslog import StatusLog
from tests.upstream.fake_kraken import FakeLine, Market
from tests.upstream.harness import PLANNER, Consumer, make_merge, small_config, until

SYMBOLS = ["BTC/USD", "ETH/USD"]


def test_repeated_frames_log_nothing_and_flapping_is_summarised() -> None:
    slog = StatusLog(burst=5, window=60.0)
    assert [r[1] for r in slog.observe("online", 0.0)] == ["upstream status"]
    assert slog.observe("online", 0.1) == []  # the same status again (every reconnect): nothing
    records = [r for i in range(1000) for r in slog.observe("online" if i % 2 else "maintenance", 1.0 + i / 1000)]
    assert len(records) == 5  # 4 more changes, then one notice; the rest is counted
    assert records[-1][1] == "upstream status flapping: further changes summarised"
    assert slog.flush(30.0) == []  # not before the window
    (summary,) = slog.flush(61.5)
    assert summary[1] == "upstream status flapping" and summary[2]["changes"] == 996
    assert summary[2]["system"] == slog.value
    assert [r[1] for r in slog.observe("cancel_only", 62.0)] == ["upstream status"]  # quiet again: logged


@contextlib.contextmanager
def json_log() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    buf = io.StringIO()
    configure_logging("info", "json", buf)
    try:
        yield buf
    finally:
        for h in list(root.handlers):
            if h not in handlers:
                root.removeHandler(h)
        root.setLevel(level)


async def test_a_line_flapping_its_status_1000_times_writes_a_bounded_log() -> None:
    market = Market(SYMBOLS, interval=0.02)
    lines = [FakeLine(market), FakeLine(market)]
    for line in lines:
        await line.start()
    cfg = small_config([{"name": f"line{i}", "url": ln.url} for i, ln in enumerate(lines)], SYMBOLS)
    merge = make_merge(cfg)
    consumer = Consumer(SYMBOLS, asyncio.get_running_loop().time)
    pool = UpstreamPool(cfg, merge, consumer, protocol=SPOT_V2, planner_options=PLANNER, stable_after=0.5)
    market.start()
    with json_log() as buf:
        await pool.start()
        try:
            assert await until(lambda: all(c.state == "live" for c in pool.connections))
            flapper = pool.connections[1]
            before = flapper.status_log.changes
            for i in range(1000):
                lines[1].set_status("maintenance" if i % 2 == 0 else "online")
                if i % 50 == 0:
                    await asyncio.sleep(0)  # let the frames go out
            assert await until(lambda: flapper.status_log.changes >= before + 1000, timeout=15.0)
            assert await until(lambda: all(c.state == "live" for c in pool.connections), timeout=10.0)
            books = dict(consumer.book_frames)
            assert await until(lambda: all(consumer.book_frames[s] > books[s] + 10 for s in SYMBOLS))
        finally:
            await pool.stop()
            await market.stop()
            for line in lines:
                await line.stop()
        text = buf.getvalue()
    records = [orjson.loads(ln) for ln in text.splitlines() if ln.strip()]
    upstream = [r for r in records if r.get("logger") == "relay.upstream"]
    status = [r for r in upstream if str(r["event"]).startswith("upstream status")]
    assert len(status) <= 2 + 5 + 2, [r["event"] for r in status]  # first status per line, 5 changes, notice, summary
    assert any(r["event"].startswith("upstream status flapping") for r in status)
    assert len(upstream) <= 60, [r["event"] for r in upstream][:80]
    assert len(text) < 20_000, len(text)
    assert consumer.mismatches == [] and consumer.trade_errors == []
