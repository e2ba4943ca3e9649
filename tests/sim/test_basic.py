"""The simulator as a client sees it: status, acks, snapshots, checksums, errors, REST."""

from __future__ import annotations

import orjson

from relay.sim import SimConfig, Simulator
from tests.sim.checker import Checker, collect, connect, recv_json, subscribe


async def test_status_ack_snapshot_and_valid_updates() -> None:
    async with Simulator(SimConfig(symbols=["BTC/USD", "ETH/USD"], rate=1000, seed=1)) as sim:
        async with connect(sim.urls[0]) as ws:
            status = await recv_json(ws)
            assert status["channel"] == "status" and status["data"][0]["system"] == "online"
            await subscribe(ws, "book", ["BTC/USD", "ETH/USD"], req_id=7, depth=25)
            raws = [await ws.recv(decode=False) for _ in range(4)]
            acks = [orjson.loads(r) for r in raws]
            ack_syms = [a["result"]["symbol"] for a in acks if a.get("method") == "subscribe"]
            assert ack_syms == ["BTC/USD", "ETH/USD"] and all(a["req_id"] == 7 for a in acks if "method" in a)
            chk = Checker(depth=25)
            for r, a in zip(raws, acks):
                if a.get("channel") == "book":
                    chk.feed(r)
            await collect(ws, chk, lambda c: c.book_frames >= 300, 20)
            assert chk.bad == 0
            assert all(len(b.bids) == 25 and len(b.asks) == 25 for b in chk.books.values())


async def test_a_failing_market_step_is_logged_and_the_market_resumes() -> None:
    """A bug in the generator must not silently stop every line (it once did, mid-benchmark)."""
    logs: list[str] = []
    async with Simulator(SimConfig(symbols=["BTC/USD"], rate=500, seed=1, log=logs.append)) as sim:
        real = sim.market.advance
        calls = {"n": 0}

        def flaky(now, wall):
            calls["n"] += 1
            if calls["n"] == 3:
                raise IndexError("generator bug")
            return real(now, wall)

        sim.market.advance = flaky  # type: ignore[method-assign]
        async with connect(sim.urls[0]) as ws:
            await recv_json(ws)
            await subscribe(ws, "book", ["BTC/USD"], depth=10)
            chk = Checker(depth=10)
            await collect(ws, chk, lambda c: c.book_frames >= 100 and calls["n"] > 3, 20)
            assert chk.bad == 0
    assert any("sim-market failed: IndexError: generator bug" in line for line in logs)
