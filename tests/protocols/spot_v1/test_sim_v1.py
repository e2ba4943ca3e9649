"""The simulator's v1 framing: same market on `/`, Kraken's v1 shapes, valid checksums, per-line ids."""

from __future__ import annotations

import asyncio

import orjson
from websockets.asyncio.client import connect

from relay.sim import LineConfig, SimConfig, Simulator
from tests.protocols.spot_v1.helpers import V1Checker


async def _collect(url: str, requests: list[dict], seconds: float) -> list[bytes]:
    frames: list[bytes] = []
    async with connect(url, compression=None, open_timeout=5) as ws:
        for r in requests:
            await ws.send(orjson.dumps(r).decode())
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while loop.time() < end and len(frames) < 50_000:
            try:
                msg = await asyncio.wait_for(ws.recv(), max(0.01, end - loop.time()))
            except TimeoutError:
                break
            frames.append(msg.encode() if isinstance(msg, str) else msg)
    return frames


def _subs(pair: str) -> list[dict]:
    return [
        {"event": "subscribe", "reqid": 1, "pair": [pair], "subscription": {"name": "book", "depth": 10}},
        {"event": "subscribe", "reqid": 2, "pair": [pair], "subscription": {"name": "trade"}},
        {"event": "subscribe", "reqid": 3, "pair": [pair], "subscription": {"name": "ticker"}},
        {"event": "subscribe", "reqid": 4, "pair": [pair], "subscription": {"name": "spread"}},
        {"event": "subscribe", "reqid": 5, "pair": [pair], "subscription": {"name": "ohlc", "interval": 1}},
        {"event": "ping", "reqid": 6},
        {"event": "subscribe", "reqid": 7, "pair": ["BTC/USD"], "subscription": {"name": "book"}},
    ]


async def test_v1_lines_serve_the_same_market_with_valid_checksums():
    cfg = SimConfig(symbols=["BTC/USD", "ETH/USD"], rate=400, seed=3, lines=[LineConfig(), LineConfig()])
    async with Simulator(cfg) as sim:
        assert sim.v1_urls[0].endswith("/")
        a, b = await asyncio.gather(*(_collect(u, _subs("XBT/USD"), 1.5) for u in sim.v1_urls))
        sim.inject(0, "corrupt_checksum", symbol="BTC/USD")
        corrupted = await _collect(sim.v1_urls[0], _subs("XBT/USD")[:1], 0.8)
    checkers = []
    for frames in (a, b):
        c = V1Checker()
        for f in frames:
            c.feed(f)
        checkers.append(c)
        assert c.bad == [] and c.verified > 20 and c.snapshots == 1
        first = orjson.loads(frames[0])
        assert first["event"] == "systemStatus" and first["status"] == "online"
        events = c.events
        assert {"event": "pong", "reqid": 6} in events
        # v2 names are not v1 names
        assert any(e.get("status") == "error" and e.get("pair") == "BTC/USD" for e in events)
        names = {n for n, _ in c.channels.values()}
        assert names == {"book-10", "trade", "ticker", "spread", "ohlc-1"}
        assert c.trades and all(len(t) == 6 and t[3] in ("b", "s") and t[4] in ("l", "m") for t in c.trades)
        kinds = {m[-2] for m in c.other}
        assert {"ticker", "spread"} <= kinds
    # each line numbers its streams differently, like two Kraken connections
    assert set(checkers[0].channels).isdisjoint(checkers[1].channels)
    bad = V1Checker()
    for f in corrupted:
        bad.feed(f)
    assert len(bad.bad) == 1


async def test_v1_silent_symbol_ends_with_a_fresh_v1_snapshot():
    cfg = SimConfig(symbols=["BTC/USD"], rate=300, seed=8, lines=[LineConfig()])
    async with Simulator(cfg) as sim:
        async with connect(sim.v1_urls[0], compression=None, open_timeout=5) as ws:
            await ws.send('{"event":"subscribe","pair":["XBT/USD"],"subscription":{"name":"book","depth":10}}')
            c = V1Checker()
            loop = asyncio.get_running_loop()

            async def read(seconds: float) -> None:
                end = loop.time() + seconds
                while loop.time() < end:
                    try:
                        c.feed((await asyncio.wait_for(ws.recv(), 0.1)).encode())
                    except TimeoutError:
                        pass

            await read(0.5)
            sim.inject(0, "silent_symbol", 1.2, symbol="BTC/USD")
            await read(0.2)
            during = c.verified
            await read(0.6)
            assert c.verified == during  # the pair's book went silent on the line
            await read(1.2)
    assert c.snapshots == 2 and c.bad == [] and c.verified > during
