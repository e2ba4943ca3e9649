"""Every fault kind, as a client connected to the simulator sees it."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from relay.sim import LineConfig, SimConfig, Simulator
from tests.sim.checker import Checker, collect, connect, recv_json, subscribe, wait_for


def _cfg(**kw) -> SimConfig:
    base = dict(symbols=["BTC/USD", "ETH/USD"], rate=400, trade_rate=40, seed=21, heartbeat_interval=0.2)
    base.update(kw)
    return SimConfig(**base)


async def _frames_for(ws, seconds: float) -> list[dict]:
    out = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            out.append(orjson.loads(await asyncio.wait_for(ws.recv(decode=False), left)))
        except TimeoutError:
            break
    return out


async def _closed(ws, timeout: float = 5.0) -> ConnectionClosed:
    with pytest.raises(ConnectionClosed) as info:
        async with asyncio.timeout(timeout):
            while True:
                await ws.recv()
    return info.value


async def test_drop_is_seen_as_1006() -> None:
    async with Simulator(_cfg()) as sim:
        async with connect(sim.urls[0]) as ws:
            await recv_json(ws)
            sim.inject(0, "drop")
            exc = await _closed(ws)
    assert exc.rcvd is None  # no close frame: abnormal closure
    assert ws.close_code == 1006


@pytest.mark.parametrize(
    "kind,code,reason",
    [
        ("close_1001", 1001, "CloudFlare WebSocket proxy restarting"),
        ("close_1013", 1013, "Market data unavailable"),
    ],
)
async def test_close_codes(kind: str, code: int, reason: str) -> None:
    async with Simulator(_cfg()) as sim:
        async with connect(sim.urls[0]) as ws:
            await recv_json(ws)
            sim.inject(0, kind)
            exc = await _closed(ws)
    assert exc.rcvd is not None and exc.rcvd.code == code and exc.rcvd.reason == reason


async def test_stall_sends_nothing_not_even_heartbeats_then_resumes() -> None:
    async with Simulator(_cfg(rate=200)) as sim:
        async with connect(sim.urls[0]) as ws:
            await recv_json(ws)
            await subscribe(ws, "book", ["BTC/USD"])
            chk = Checker()
            await collect(ws, chk, lambda c: c.book_frames >= 5, 5)
            sim.inject(0, "stall", 1.0)
            await asyncio.sleep(0.05)  # frames already in flight may still arrive
            await _frames_for(ws, 0.05)
            silent = await _frames_for(ws, 0.7)
            assert silent == []
            await ws.send(orjson.dumps({"method": "ping", "req_id": 9}).decode())
            after = await _frames_for(ws, 1.0)
    assert any(m.get("method") == "pong" and m.get("req_id") == 9 for m in after)
    assert sum(1 for m in after if m.get("channel") == "book") > 10  # backlog then live data


async def test_silent_symbol_keeps_heartbeats_and_other_symbols() -> None:
    async with Simulator(_cfg()) as sim:
        async with connect(sim.urls[0]) as ws:
            await recv_json(ws)
            await subscribe(ws, "book", ["BTC/USD", "ETH/USD"])
            chk = Checker()
            await collect(ws, chk, lambda c: len(c.books) == 2, 5)
            sim.inject(0, "silent_symbol", 1.0, symbol="BTC/USD")
            await asyncio.sleep(0.05)
            await _frames_for(ws, 0.02)
            during = await _frames_for(ws, 0.6)
            books = [m["data"][0]["symbol"] for m in during if m.get("channel") == "book"]
            assert "BTC/USD" not in books and "ETH/USD" in books
            # at the end, a fresh BTC snapshot restores a valid book
            snap = await wait_for(ws, lambda m: m.get("channel") == "book" and m["type"] == "snapshot", 3)
            assert snap["data"][0]["symbol"] == "BTC/USD"


async def test_silent_symbol_alone_leaves_only_heartbeats() -> None:
    async with Simulator(_cfg()) as sim:
        async with connect(sim.urls[0]) as ws:
            await recv_json(ws)
            await subscribe(ws, "book", ["BTC/USD"])
            await wait_for(ws, lambda m: m.get("channel") == "book" and m["type"] == "update")
            sim.inject(0, "silent_symbol", None, symbol="BTC/USD")
            await asyncio.sleep(0.05)
            await _frames_for(ws, 0.02)
            during = await _frames_for(ws, 0.7)
    assert during and all(m == {"channel": "heartbeat"} for m in during)


async def test_corrupt_checksum_hits_exactly_one_frame_on_that_line_only() -> None:
    cfg = _cfg(lines=[LineConfig(), LineConfig()])
    async with Simulator(cfg) as sim:
        async with connect(sim.urls[0]) as a, connect(sim.urls[1]) as b:
            for ws in (a, b):
                await subscribe(ws, "book", ["ETH/USD"])
            ca, cb = Checker(), Checker()
            await collect(a, ca, lambda c: c.book_frames >= 3, 5)
            await collect(b, cb, lambda c: c.book_frames >= 3, 5)
            sim.inject(0, "corrupt_checksum", symbol="ETH/USD")
            await collect(a, ca, lambda c: c.book_frames >= 60, 10)
            await collect(b, cb, lambda c: c.book_frames >= 60, 10)
    assert ca.bad == 1 and cb.bad == 0


async def test_maintenance_status_freezes_then_online_with_snapshot() -> None:
    async with Simulator(_cfg(trade_rate=100)) as sim:
        async with connect(sim.urls[0]) as ws:
            await recv_json(ws)
            await subscribe(ws, "book", ["BTC/USD"], req_id=1)
            await subscribe(ws, "trade", ["BTC/USD"], req_id=2)
            await wait_for(ws, lambda m: m.get("channel") == "trade")
            sim.inject(0, "maintenance", 0.8)
            st = await wait_for(ws, lambda m: m.get("channel") == "status")
            assert st["data"][0]["system"] == "maintenance"
            await asyncio.sleep(0.05)
            await _frames_for(ws, 0.02)
            during = await _frames_for(ws, 0.5)
            assert not [m for m in during if m.get("channel") in ("book", "trade")]
            assert {"channel": "heartbeat"} in during
            st = await wait_for(ws, lambda m: m.get("channel") == "status", 3)
            assert st["data"][0]["system"] == "online"
            chk = Checker()
            snap = await ws.recv(decode=False)
            assert orjson.loads(snap)["type"] == "snapshot"
            chk.feed(snap)
            await collect(ws, chk, lambda c: c.book_frames >= 30, 5)
            assert chk.bad == 0


async def test_market_wide_maintenance_stops_trade_generation() -> None:
    async with Simulator(_cfg(trade_rate=200)) as sim:
        await asyncio.sleep(0.1)
        sim.inject("all", "maintenance", 0.3)
        before = sim.market.trades
        await asyncio.sleep(0.2)
        assert sim.market.trades == before
        await asyncio.sleep(0.3)
        assert sim.market.trades > before


async def test_cancel_only_books_move_no_trades() -> None:
    async with Simulator(_cfg(trade_rate=100)) as sim:
        async with connect(sim.urls[0]) as ws:
            await recv_json(ws)
            await subscribe(ws, "book", ["BTC/USD", "ETH/USD"], req_id=1)
            await subscribe(ws, "trade", ["BTC/USD", "ETH/USD"], req_id=2)
            await wait_for(ws, lambda m: m.get("channel") == "trade")
            sim.inject(0, "cancel_only", 0.8)
            st = await wait_for(ws, lambda m: m.get("channel") == "status")
            assert st["data"][0]["system"] == "cancel_only"
            await asyncio.sleep(0.05)
            await _frames_for(ws, 0.02)
            during = await _frames_for(ws, 0.5)
            assert any(m.get("channel") == "book" for m in during)
            assert not any(m.get("channel") == "trade" for m in during)
            st = await wait_for(ws, lambda m: m.get("channel") == "status", 3)
            assert st["data"][0]["system"] == "online"
            await wait_for(ws, lambda m: m.get("channel") == "trade", 3)


async def test_refuse_then_accept() -> None:
    async with Simulator(_cfg()) as sim:
        sim.inject(0, "refuse", 0.5)
        with pytest.raises(Exception):  # noqa: B017  (refused: any connection error)
            async with connect(sim.urls[0]) as ws:
                await recv_json(ws, 1)
        assert sim.connection_log[0][-1][2] == "refused"
        await asyncio.sleep(0.6)
        async with connect(sim.urls[0]) as ws:
            assert (await recv_json(ws))["channel"] == "status"
        assert sim.connection_log[0][-1][2] == "accepted"


async def test_refuse_tcp_mode_closes_the_port_keeps_open_sessions() -> None:
    async with Simulator(_cfg()) as sim:
        async with connect(sim.urls[0]) as old:
            await recv_json(old)
            sim.inject(0, "refuse", 0.5, mode="tcp")
            with pytest.raises(ConnectionRefusedError):
                async with connect(sim.urls[0]):
                    pass
            await old.send(orjson.dumps({"method": "ping", "req_id": 1}).decode())
            assert (await recv_json(old))["method"] == "pong"  # the open session is untouched
            await asyncio.sleep(0.7)
            async with connect(sim.urls[0]) as ws:
                assert (await recv_json(ws))["channel"] == "status"


async def test_budget_answers_429_on_handshake() -> None:
    async with Simulator(_cfg()) as sim:
        sim.inject(0, "budget", 5, limit=2, window=10)
        for _ in range(2):
            async with connect(sim.urls[0]) as ws:
                await recv_json(ws)
        with pytest.raises(InvalidStatus) as info:
            async with connect(sim.urls[0]):
                pass
        assert info.value.response.status_code == 429
        assert [o for _, _, o in sim.connection_log[0]] == ["accepted", "accepted", "429"]


async def test_slow_line_delivers_later_than_the_other() -> None:
    cfg = _cfg(rate=300, lines=[LineConfig(), LineConfig()])
    async with Simulator(cfg) as sim:
        sim.inject(1, "slow", None, delay=0.3)
        arrivals: list[dict[bytes, float]] = [{}, {}]

        async def reader(i: int) -> None:
            async with connect(sim.urls[i]) as ws:
                await subscribe(ws, "book", ["BTC/USD"])
                end = time.monotonic() + 1.2
                while time.monotonic() < end:
                    try:
                        raw = await asyncio.wait_for(ws.recv(decode=False), 0.5)
                    except TimeoutError:
                        continue
                    if b'"update"' in raw:
                        arrivals[i].setdefault(raw, time.monotonic())

        await asyncio.gather(reader(0), reader(1))
    common = set(arrivals[0]) & set(arrivals[1])
    assert len(common) > 20
    lags = sorted(arrivals[1][f] - arrivals[0][f] for f in common)
    assert lags[len(lags) // 2] > 0.2
