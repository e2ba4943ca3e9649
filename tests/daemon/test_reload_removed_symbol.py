"""A symbol removed from the config by a reload (SIGHUP) never goes silent for its subscribers.

With on-demand serving (the default) it stays served while clients hold it and is released
upstream `release_after` seconds after the last one left; with on-demand serving off, its
subscribers get an unsubscribe ack without `req_id` saying why. In-process: the daemon's `Relay`
on the simulator, `Relay.reload` being what SIGHUP calls.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import websockets

from relay.app import Relay
from relay.config import parse_config
from relay.sim import LineConfig, SimConfig, Simulator
from relay.verify.spot_v2 import V2Verifier
from tests.kit.inprocess import wait_for

SYMBOLS = ["BTC/USD", "ETH/USD"]


def config(symbols: list[str], on_demand: bool, sim: Simulator) -> dict[str, Any]:
    return {
        "upstreams": [{"name": f"line{i}", "url": url} for i, url in enumerate(sim.urls)],
        "channels": {"book": {"symbols": symbols, "depth": 10}, "trade": {"symbols": symbols}},
        "server": {"dynamic_subscriptions": {"enabled": on_demand, "release_after": 1.0}},
    }


class BookClient:
    """Subscribes books, verifies every frame, keeps every non-book message."""

    def __init__(self, url: str, symbols: list[str]) -> None:
        self.verifier = V2Verifier(symbols, 10, trades=False)
        self.frames: dict[str, int] = dict.fromkeys(symbols, 0)
        self.messages: list[dict[str, Any]] = []
        self.order: list[str] = []  # symbol of each book frame, "notice" for each notice, in order
        self.ws: Any = None
        self.task = asyncio.create_task(self._run(url))

    async def _run(self, url: str) -> None:
        async with websockets.connect(url, compression=None) as ws:
            self.ws = ws
            for req in self.verifier.requests():
                await ws.send(req.decode())
            async for raw in ws:
                msg = orjson.loads(raw)
                if msg.get("channel") == "book":
                    self.verifier.feed(raw)
                    for d in msg["data"]:
                        self.frames[d["symbol"]] += 1
                        self.order.append(d["symbol"])
                elif msg.get("channel") not in ("heartbeat", "status"):
                    self.messages.append(msg)
                    self.order.append("notice" if msg.get("method") == "unsubscribe" else "message")

    def notices(self) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("method") == "unsubscribe" and "req_id" not in m]

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        await asyncio.gather(self.task, return_exceptions=True)


async def started(on_demand: bool, sim: Simulator) -> Relay:
    relay = Relay(parse_config(config(SYMBOLS, on_demand, sim), env={}), server_port=0, http_port=0)
    await relay.start()
    await wait_for(lambda: all(c.state == "live" for c in relay.pools()[0].connections), 15, "both lines live")
    return relay


def book_unsubscribes(sim: Simulator, symbol: str, since: float) -> list[int]:
    """Lines that were sent a book unsubscribe for `symbol` after `since` (wall time)."""
    return sorted(
        {
            line
            for line, reqs in enumerate(sim.requests)
            for t, m in reqs
            if t >= since
            and m.get("method") == "unsubscribe"
            and m.get("params", {}).get("channel") == "book"
            and symbol in m.get("params", {}).get("symbol", [])
        }
    )


async def test_removed_symbol_stays_served_on_demand_and_is_released_after_its_last_client() -> None:
    async with Simulator(SimConfig(symbols=SYMBOLS, rate=200.0, seed=9, lines=[LineConfig(), LineConfig()])) as sim:
        relay = await started(True, sim)
        try:
            client = BookClient(relay.server.url, SYMBOLS)
            await wait_for(lambda: all(n > 5 for n in client.frames.values()), 10, "books flowing")
            wall = time.time()
            assert await relay.reload(parse_config(config(["BTC/USD"], True, sim), env={}))
            n = client.frames["ETH/USD"]
            await wait_for(lambda: client.frames["ETH/USD"] > n + 50, 10, "ETH/USD still streaming after the reload")
            assert client.notices() == [] and client.verifier.ok, client.verifier.report()
            assert book_unsubscribes(sim, "ETH/USD", wall) == []  # held upstream while a client has it
            assert "ETH/USD" not in relay.ready()[1]  # no longer configured: not part of readiness
            await client.close()
            t0 = time.monotonic()
            await wait_for(lambda: book_unsubscribes(sim, "ETH/USD", wall) == [0, 1], 10, "ETH/USD released upstream")
            assert time.monotonic() - t0 >= 0.9  # release_after (1 s) after the last client left
            assert book_unsubscribes(sim, "BTC/USD", wall) == []
        finally:
            await relay.stop()


async def test_removed_symbol_ends_with_an_unsubscribe_notice_when_on_demand_is_off() -> None:
    async with Simulator(SimConfig(symbols=SYMBOLS, rate=200.0, seed=9, lines=[LineConfig(), LineConfig()])) as sim:
        relay = await started(False, sim)
        try:
            client = BookClient(relay.server.url, SYMBOLS)
            await wait_for(lambda: all(n > 5 for n in client.frames.values()), 10, "books flowing")
            wall = time.time()
            assert await relay.reload(parse_config(config(["BTC/USD"], False, sim), env={}))
            await wait_for(lambda: client.notices(), 5, "the unsubscribe notice")
            (notice,) = client.notices()
            assert notice["success"] is True
            assert notice["result"]["channel"] == "book" and notice["result"]["symbol"] == "ETH/USD"
            assert notice["result"]["depth"] == 10
            assert "not served by this relay ETH/USD" in notice["result"]["warnings"][0]
            await wait_for(
                lambda: book_unsubscribes(sim, "ETH/USD", wall) == [0, 1], 10, "ETH/USD unsubscribed upstream"
            )
            btc = client.frames["BTC/USD"]
            await wait_for(lambda: client.frames["BTC/USD"] > btc + 50, 10, "BTC/USD still streaming")
            after = client.order[client.order.index("notice") :]
            assert "ETH/USD" not in after and after.count("BTC/USD") > 50  # ETH ends with the notice
            assert client.verifier.ok, client.verifier.report()
            await client.close()
        finally:
            await relay.stop()
