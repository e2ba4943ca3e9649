"""Products on demand end to end: simulator lines -> Relay with a warm set of one product ->
plain websocket clients subscribing products outside it."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import connect

from relay.verify import FuturesVerifier
from tests.protocols.futures.harness import futures_rig, until

pytestmark = [pytest.mark.slow]

WARM = "PF_XBTUSD"
OTHERS = ["PF_ETHUSD", "PF_SOLUSD"]
FEEDS = ("book", "trade", "ticker")
DYNAMIC = {"dynamic_subscriptions": {"release_after": 0.5, "timeout": 5.0}}


class Client:
    """A plain websocket client: events with their arrival time, data frames into a verifier."""

    def __init__(self, url: str, products: list[str]) -> None:
        self.url = url
        self.verifier = FuturesVerifier(products)
        self.events: list[tuple[float, dict[str, Any]]] = []
        self.ws: Any = None
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> Client:
        self.ws = await connect(self.url, compression=None, max_size=1 << 24)
        self._task = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.ws.close()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        async for raw in self.ws:
            m = orjson.loads(raw)
            if "event" in m:
                self.events.append((loop.time(), m))
            else:
                self.verifier.feed(raw)

    async def send(self, msg: dict[str, Any]) -> float:
        await self.ws.send(orjson.dumps(msg).decode())
        return asyncio.get_running_loop().time()

    def acked(self, feed: str, product: str, after: float = 0.0) -> float | None:
        """When `subscribed` for (feed, product) arrived (None: not yet)."""
        want = {"event": "subscribed", "feed": feed, "product_ids": [product]}
        return next((t for t, m in self.events if m == want and t >= after), None)

    def errors(self) -> list[tuple[float, str]]:
        return [(t, m["message"]) for t, m in self.events if m["event"] == "error"]


def upstream_subs(rig) -> list[set[tuple[str, str]]]:
    """What each simulator line's relay connection is subscribed to right now."""
    return [{k for c in line.conns for k in c.subs} for line in rig.sim.lines]


async def test_products_outside_the_warm_set_are_served_on_demand_and_released():
    products = [WARM, *OTHERS]
    async with futures_rig(products=products, warm=[WARM], relay_config={"server": DYNAMIC}) as rig:
        assert all(not any(p in k for k in subs for p in OTHERS) for subs in upstream_subs(rig))
        async with Client(rig.url, OTHERS) as client:
            sent = {
                feed: await client.send({"event": "subscribe", "feed": feed, "product_ids": OTHERS}) for feed in FEEDS
            }
            bad_at = await client.send({"event": "subscribe", "feed": "book", "product_ids": ["PF_NOPEUSD"]})
            assert await until(lambda: all(client.acked(f, p) for f in FEEDS for p in OTHERS), 5.0), client.events
            for feed in FEEDS:
                for p in OTHERS:
                    t = client.acked(feed, p)
                    assert t is not None and t - sent[feed] < 2.0, (feed, p, t - sent[feed])
            assert await until(lambda: client.errors(), 3.0)
            ((t, text),) = client.errors()
            assert text == "Invalid product id" and t - bad_at < 1.0
            # every line subscribed them upstream; the data a client gets verifies
            assert await until(
                lambda: all({(f, p) for f in FEEDS for p in OTHERS} <= subs for subs in upstream_subs(rig)), 3.0
            )
            v = client.verifier
            assert await until(
                lambda: (
                    all(v.snapshots[p] == 1 for p in OTHERS)
                    and v.deltas > 50
                    and v.trade_count > 2 * 100
                    and all(v.tickers[("ticker", p)] >= 1 for p in OTHERS)
                ),
                10.0,
            ), v.report()
            assert v.ok and v.errors == [] and v.seq_errors == [], v.report()
            desired = rig.relay.stack("futures").endpoint.demanded_subscriptions()
            assert {(k.channel, k.symbol) for k in desired} >= {(f, p) for f in FEEDS for p in OTHERS}
        # the last client left: released upstream on every line `release_after` later
        assert await until(
            lambda: all(not any(p in k for k in subs for p in OTHERS) for subs in upstream_subs(rig)), 5.0
        ), upstream_subs(rig)
        endpoint = rig.relay.stack("futures").endpoint
        assert all(k.symbol not in OTHERS for k in endpoint.demanded_subscriptions())
        assert all(p not in rig.merge.books for p in OTHERS)  # its state went with it
        assert all(("book", WARM) in subs and ("trade", WARM) in subs for subs in upstream_subs(rig))
        assert endpoint.stats()["dynamic_released"] == len(FEEDS) * len(OTHERS)


async def test_trade_snapshot_of_100_and_a_subscribed_for_every_subscribe():
    async with futures_rig(products=[WARM, "PF_ETHUSD"], warm=[WARM], relay_config={"server": DYNAMIC}) as rig:
        async with Client(rig.url, [WARM, "PF_ETHUSD"]) as client:
            snaps: list[dict] = []
            feed = client.verifier.feed

            def record(raw: bytes) -> None:
                m = orjson.loads(raw)
                if m.get("feed") == "trade_snapshot":
                    snaps.append(m)
                feed(raw)

            client.verifier.feed = record  # type: ignore[method-assign]
            for product in (WARM, "PF_ETHUSD"):  # warm, then on demand
                for n in (1, 2):  # the second is a repeat
                    at = await client.send({"event": "subscribe", "feed": "trade", "product_ids": [product]})
                    assert await until(lambda p=product, t=at: client.acked("trade", p, t), 3.0), client.events
                    assert await until(lambda p=product, k=n: sum(s["product_id"] == p for s in snaps) == k, 3.0)
            assert [len(s["trades"]) for s in snaps] == [100, 100, 100, 100]
            alerts = [m for _, m in client.events if m["event"] == "alert"]
            assert alerts == [{"event": "alert", "message": "Already subscribed to feed, re-requesting"}] * 2
            acks = [m for _, m in client.events if m["event"] == "subscribed"]
            assert len(acks) == 4


async def test_disabled_on_demand_serves_the_configured_set_only():
    server = {"dynamic_subscriptions": {"enabled": False}}
    async with futures_rig(products=[WARM, "PF_ETHUSD"], warm=[WARM], relay_config={"server": server}) as rig:
        async with Client(rig.url, [WARM]) as client:
            await client.send({"event": "subscribe", "feed": "book", "product_ids": ["PF_ETHUSD", WARM]})
            assert await until(lambda: client.acked("book", WARM) and client.errors(), 3.0)
            assert [m for _, m in client.errors()] == [
                "Product not served by this relay PF_ETHUSD (server.dynamic_subscriptions)"
            ]
            assert all("PF_ETHUSD" not in k for subs in upstream_subs(rig) for k in subs)
