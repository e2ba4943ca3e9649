"""A relay with `capture.dir` set records every frame each line received, with the line's
connection events, and stays unaffected when capture is off (the default)."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

from relay.capture.reader import Reader
from relay.sim import LineConfig, SimConfig
from tests.kit.inprocess import relay_on_sim, wait_for


async def test_every_frame_of_every_line_is_captured_with_its_connection_events(tmp_path: Path) -> None:
    sim_cfg = SimConfig(symbols=["BTC/USD", "ETH/USD"], rate=200.0, seed=16, lines=[LineConfig(), LineConfig()])
    cfg = {
        "channels": {"book": {"symbols": ["BTC/USD", "ETH/USD"], "depth": 10}, "trade": {"symbols": ["BTC/USD"]}},
        "capture": {"dir": str(tmp_path)},
    }
    async with relay_on_sim(sim_cfg, cfg, ready=lambda r: r.ready()[0]) as (relay, _sim):
        conns = [c for stack in relay.stacks for c in stack.pool.connections]
        await wait_for(lambda: all(c.frames > 200 for c in conns), 15.0, "frames on every line")
        await asyncio.sleep(0.3)
        writer = relay.capture
        assert writer is not None
    received = {c.name: c.frames for c in conns}  # the relay is stopped: the counts are final
    recs = list(Reader([tmp_path]))
    frames = Counter(r.line for r in recs if r.kind == "frame")
    assert frames == received
    kinds = Counter((r.line, r.kind) for r in recs)
    for name in received:
        assert kinds[(name, "connect")] == 1 and kinds[(name, "disconnect")] == 1
        assert kinds[(name, "subscribe")] >= 2  # book and trade requests, as sent
    assert writer.records_dropped == 0
    mono = [r.mono_ns for r in recs]
    assert mono == sorted(mono)  # one writer, in arrival order


async def test_capture_is_off_by_default(tmp_path: Path) -> None:
    cfg = {"channels": {"book": {"symbols": ["BTC/USD"], "depth": 10}}}
    async with relay_on_sim(SimConfig(), cfg, ready=lambda r: r.ready()[0]) as (relay, _sim):
        assert relay.capture is None
        assert all(c.capture is None for s in relay.stacks for c in s.pool.connections)
