"""Spot v2 on demand, end to end: the daemon's stack against the simulator (2 lines).

With a warm set of one symbol, a client asking for book (depth 10 and 1000), trade, ticker
(trades and bbo) and ohlc (every interval) of three other symbols gets its acks within 2 s and
verified data; an invalid symbol is refused within 1 s with Kraken's text; everything demanded is
unsubscribed upstream after the last client left.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import pytest
from websockets.asyncio.client import connect

from relay.app import Relay
from relay.core.spot import OHLC_INTERVALS
from relay.sim import LineConfig, SimConfig, Simulator
from relay.verify.spot_v2 import V2Verifier
from tests.kit.inprocess import relay_on_sim, wait_for

pytestmark = [pytest.mark.slow]

WARM = "BTC/USD"
OTHERS = ["ETH/USD", "SOL/USD", "ADA/USD"]


def _warm_ready(relay: Relay) -> bool:
    merge: Any = relay.stack("v2").merge
    return bool(merge.instrument.pairs and merge.book_snapshot(WARM, 10))


def stack() -> contextlib.AbstractAsyncContextManager[tuple[Relay, Simulator]]:
    """Two simulator lines with the warm symbol and three others; the relay warm on one."""
    sim_cfg = SimConfig(
        symbols=[WARM, *OTHERS],
        rate=200.0,
        trade_rate=40.0,
        seed=21,
        levels=1000,
        lines=[LineConfig(latency=0.0005), LineConfig(latency=0.001)],
    )
    config = {
        "channels": {"book": {"symbols": [WARM], "depth": 10}, "trade": {"symbols": [WARM]}},
        "server": {"dynamic_subscriptions": {"release_after": 0.5}},
        "subscribe": {"requests_per_second": 20.0},
    }
    return relay_on_sim(sim_cfg, config, _warm_ready)


class Probe:
    """A plain websocket client: sends requests, times each ack, verifies books at one depth."""

    def __init__(self, url: str, depth: int = 10) -> None:
        self.url, self.depth = url, depth
        self.sent: dict[int, float] = {}
        self.acks: list[tuple[float, dict[str, Any]]] = []  # (seconds after the request, ack)
        self.verifier = V2Verifier([], depth)
        self.book_ok: dict[str, int] = {}
        self.trades: dict[str, list[int]] = {}
        self.tickers: dict[str, int] = {}
        self.ohlc: set[tuple[str, int]] = set()
        self.ws: Any = None
        self.task: asyncio.Task | None = None

    async def open(self) -> Probe:
        self.ws = await connect(self.url, max_size=None, compression=None)
        self.task = asyncio.create_task(self._read())
        return self

    async def send(self, req_id: int, **params: Any) -> None:
        self.sent[req_id] = time.monotonic()
        await self.ws.send(json.dumps({"method": "subscribe", "params": params, "req_id": req_id}))

    async def close(self) -> None:
        await self.ws.close()
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def _read(self) -> None:
        async for raw in self.ws:
            msg = json.loads(raw, parse_float=str, parse_int=str)
            if "method" in msg:
                req_id = int(msg.get("req_id", -1))
                self.acks.append((time.monotonic() - self.sent.get(req_id, time.monotonic()), msg))
            elif msg.get("channel") == "book":
                before = self.verifier.checksums_ok
                self.verifier.feed(raw)  # relay.verify's book rules: truncation, checksum
                if self.verifier.checksums_ok > before:
                    sym = msg["data"][0]["symbol"]
                    self.book_ok[sym] = self.book_ok.get(sym, 0) + 1
            elif msg.get("channel") == "trade":
                for t in msg["data"]:
                    self.trades.setdefault(t["symbol"], []).append(int(t["trade_id"]))
            elif msg.get("channel") == "ticker":
                sym = msg["data"][0]["symbol"]
                self.tickers[sym] = self.tickers.get(sym, 0) + 1
            elif msg.get("channel") == "ohlc":
                for c in msg["data"]:
                    self.ohlc.add((c["symbol"], int(c["interval"])))

    @property
    def book_bad(self) -> int:
        return len(self.verifier.checksum_bad) + self.verifier.updates_before_snapshot

    @property
    def books(self) -> dict[str, tuple[dict[str, str], dict[str, str]]]:
        return self.verifier.books

    def ok(self, method: str = "subscribe") -> list[tuple[float, dict[str, Any]]]:
        return [(t, a) for t, a in self.acks if a.get("method") == method and a.get("success") is True]


def upstream_symbols(sim: Simulator) -> set[str]:
    """Symbols some relay connection is subscribed to on the simulator."""
    return {key[1] for line in sim.lines for conn in line.conns for key in conn.subs}


async def test_any_symbol_channel_depth_and_interval_is_served_on_demand_and_released() -> None:
    async with stack() as (relay, sim):
        url = relay.server.url_for("/v2")
        shallow, deep, bbo = [await Probe(url, d).open() for d in (10, 1000, 10)]
        await shallow.send(1, channel="book", symbol=OTHERS, depth=10)
        await shallow.send(2, channel="trade", symbol=OTHERS, snapshot=True)
        await shallow.send(3, channel="ticker", symbol=OTHERS)
        for i, interval in enumerate(OHLC_INTERVALS):
            await shallow.send(10 + i, channel="ohlc", symbol=OTHERS, interval=interval)
        await deep.send(4, channel="book", symbol=OTHERS, depth=1000)
        await bbo.send(5, channel="ticker", symbol=OTHERS, event_trigger="bbo")
        expected = 3 * (3 + len(OHLC_INTERVALS))
        await wait_for(lambda: len(shallow.ok()) == expected, 10, "the shallow client's acks")
        await wait_for(lambda: len(deep.ok()) == 3 and len(bbo.ok()) == 3, 10, "the deep and bbo acks")
        slowest = max(t for p in (shallow, deep, bbo) for t, _ in p.ok())
        assert slowest < 2.0, f"an on-demand ack took {slowest:.2f} s"
        assert not [a for p in (shallow, deep, bbo) for _, a in p.acks if a.get("success") is False]
        assert {a["result"]["event_trigger"] for _, a in bbo.ok()} == {"bbo"}

        # verified data on every stream
        await wait_for(
            lambda: all(p.book_ok.get(s, 0) >= 20 for p in (shallow, deep) for s in OTHERS), 20, "verified books"
        )
        assert shallow.book_bad == deep.book_bad == 0
        assert all(len(deep.books[s][1]) > 100 for s in OTHERS)  # depth 1000: more than any shallower depth
        await wait_for(lambda: all(len(shallow.trades.get(s, [])) > 50 for s in OTHERS), 20, "trades")
        for s in OTHERS:
            ids = shallow.trades[s]
            live = ids[ids.index(max(ids[:50])) + 1 :] if len(ids) > 50 else []  # after the snapshot
            assert live == list(range(live[0], live[0] + len(live))) if live else True
        await wait_for(lambda: all(bbo.tickers.get(s, 0) > 2 for s in OTHERS), 20, "bbo tickers")
        assert all(shallow.tickers.get(s, 0) >= 1 for s in OTHERS)
        assert shallow.ohlc >= {(s, i) for s in OTHERS for i in OHLC_INTERVALS}

        # an invalid symbol: Kraken's text, at once
        started = time.monotonic()
        await shallow.send(99, channel="book", symbol=["FOO/USD"])
        await wait_for(lambda: any(a.get("req_id") == "99" for _, a in shallow.acks), 5, "the refusal")
        err = next(a for _, a in shallow.acks if a.get("req_id") == "99")
        assert time.monotonic() - started < 1.0
        assert err["success"] is False and err["error"] == "Currency pair not supported FOO/USD"
        assert err["symbol"] == "FOO/USD"

        # released upstream once the last client left (release_after 0.5 s)
        assert set(OTHERS) <= upstream_symbols(sim)
        for p in (shallow, deep, bbo):
            await p.close()
        await wait_for(lambda: not set(OTHERS) & upstream_symbols(sim), 15, "the upstream release")
        assert upstream_symbols(sim) == {WARM, "*"}  # "*": the instrument channel
        merge: Any = relay.stack("v2").merge
        await wait_for(lambda: not set(OTHERS) & set(merge.books), 5, "the merge forgetting them")


async def test_an_empty_warm_set_is_ready_with_a_live_line_and_serves_on_demand() -> None:
    """Nothing configured but the lines: /readyz follows the lines; every symbol comes on demand."""
    sim_cfg = SimConfig(symbols=[WARM], rate=100.0, seed=4, levels=100, lines=[LineConfig()])
    config = {"channels": {}}  # instrument only (the list on-demand requests are checked against)
    async with relay_on_sim(sim_cfg, config, lambda relay: relay.ready()[0]) as (relay, _sim):
        probe = await Probe(relay.server.url_for("/v2"), 25).open()
        await probe.send(1, channel="book", symbol=[WARM], depth=25)
        await wait_for(lambda: probe.book_ok.get(WARM, 0) >= 5, 15, "a verified on-demand book")
        assert probe.book_bad == 0 and probe.ok()[0][1]["result"]["depth"] == "25"  # numbers kept as text
        await probe.close()
