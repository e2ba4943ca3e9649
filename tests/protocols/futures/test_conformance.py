"""Conformance of the Futures endpoint: every request type a Kraken Futures client sends, valid
and invalid, goes to the relay and to the simulator in the same test, from a plain websocket
client; the replies must match field by field (keys, key order, value types, texts), values that
legitimately differ (timestamps, seq, prices) aside. Where the real capture (cryptofeed
KRAKEN_FUTURES.ws.1.0) shows a reply, both match the capture's shape too.

The relay's warm set is one product; the others are served on demand, so their answers (which
wait for the upstream's first data) are checked alike."""

from __future__ import annotations

import asyncio
from functools import lru_cache
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import connect

from relay.protocols.futures.endpoint import FuturesEndpoint
from relay.protocols.futures.merge import FuturesMerge
from relay.protocols.futures.wire import HEARTBEAT_INTERVAL
from relay.sim.futures import FuturesSimConfig
from tests.protocols.futures.capture import frames
from tests.protocols.futures.harness import futures_rig, until

pytestmark = [pytest.mark.slow]

W, D, E = "PF_XBTUSD", "PF_ETHUSD", "PF_SOLUSD"  # warm on the relay; D and E on demand
HB = 0.3  # heartbeat interval for this test, relay and simulator alike
DATA = ("book_snapshot", "trade_snapshot", "ticker", "ticker_lite", "heartbeat", "book", "trade")

# (request, the answers expected in order: an event name or a data feed, data of the request's products)
STEPS: list[tuple[Any, list[str]]] = [
    ({"event": "subscribe", "feed": "heartbeat"}, ["subscribed", "heartbeat"]),
    ({"event": "subscribe", "feed": "book", "product_ids": [W.lower()]}, ["subscribed", "book_snapshot", "book"]),
    ({"event": "subscribe", "feed": "book", "product_ids": [D]}, ["subscribed", "book_snapshot"]),
    (
        {"event": "subscribe", "feed": "trade", "product_ids": [W, D]},
        ["subscribed", "trade_snapshot", "subscribed", "trade_snapshot"],
    ),
    ({"event": "subscribe", "feed": "ticker", "product_ids": [W]}, ["subscribed", "ticker"]),
    ({"event": "subscribe", "feed": "ticker_lite", "product_ids": [E]}, ["subscribed", "ticker_lite"]),
    ({"event": "subscribe", "feed": "book", "product_ids": [W]}, ["alert", "subscribed", "book_snapshot"]),
    ({"event": "subscribe", "feed": "trade", "product_ids": [D]}, ["alert", "subscribed", "trade_snapshot", "trade"]),
    ({"event": "subscribe", "feed": "book", "product_ids": ["PF_NOPEUSD"]}, ["error"]),
    ({"event": "subscribe", "feed": "nope", "product_ids": [W]}, ["error"]),
    ("not json", ["error"]),
    ('["subscribe"]', ["error"]),
    ({"event": "subscribe", "feed": "book"}, ["error"]),
    ({"event": "subscribe", "feed": "trade", "product_ids": []}, ["error"]),
    ({"event": "bogus", "feed": "book", "product_ids": [W]}, ["error"]),
    ({"event": "unsubscribe", "feed": "trade", "product_ids": [E]}, ["unsubscribed_failed"]),
    ({"event": "unsubscribe", "feed": "nope", "product_ids": [E]}, ["error"]),
    ({"event": "unsubscribe", "feed": "book", "product_ids": [W]}, ["unsubscribed"]),
    ({"event": "unsubscribe", "feed": "ticker_lite", "product_ids": [E]}, ["unsubscribed"]),
    ({"event": "unsubscribe", "feed": "heartbeat"}, ["unsubscribed"]),
    ({"event": "ping"}, ["pong"]),
]


def shape(v: Any, key: str | None = None, keep: frozenset[str] = frozenset()) -> Any:
    """Keys in order and value types; the values of `keep` keys themselves (texts, names)."""
    if isinstance(v, dict):
        return tuple((k, shape(x, k, keep)) for k, x in v.items())
    if key in keep:
        return tuple(v) if isinstance(v, list) else v
    if isinstance(v, list):
        return tuple(sorted({shape(x, None, keep) for x in v}, key=repr))
    return type(v).__name__


TEXTS = frozenset(("event", "feed", "message", "product_id", "product_ids", "version"))
NAMES = frozenset(("event", "feed"))


@lru_cache(maxsize=1)
def captured() -> dict[tuple[str | None, str | None], Any]:
    """(event, feed) -> the capture's shape of that reply (every frame of a kind has the same one)."""
    out: dict[tuple[str | None, str | None], Any] = {}
    for f in frames():
        m = orjson.loads(f)
        out.setdefault((m.get("event"), m.get("feed")), shape(m, keep=NAMES))
    return out


class Wire:
    """A plain websocket client keeping every message it receives, in order."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.msgs: list[dict[str, Any]] = []

    async def __aenter__(self) -> Wire:
        self.ws = await connect(self.url, compression=None, max_size=1 << 24)
        self._task = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.ws.close()
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _read(self) -> None:
        async for raw in self.ws:
            self.msgs.append(orjson.loads(raw))

    def answers(self, start: int, want: list[str], products: list[str]) -> list[dict[str, Any]]:
        """The replies to one request: its events in order, and the first data frame of each
        expected kind (of its products) where it is expected."""
        out: list[dict[str, Any]] = []
        for m in self.msgs[start:]:
            if len(out) == len(want):
                break
            kind = m.get("event") or m.get("feed")
            if "event" in m:
                out.append(m)  # an event out of place shows as a mismatch
            elif kind == want[len(out)] and (kind == "heartbeat" or m.get("product_id") in products):
                out.append(m)
        return out


def kinds(msgs: list[dict[str, Any]]) -> list[str]:
    return [m.get("event") or m.get("feed") for m in msgs]


async def test_every_request_gets_the_same_replies_from_the_relay_and_the_simulator():
    relay_cfg = {"server": {"dynamic_subscriptions": {"release_after": 0.5, "timeout": 5.0}}}
    async with futures_rig(products=[W, D, E], warm=[W], relay_config=relay_cfg, heartbeat_interval=HB) as rig:
        rig.relay.stack("futures").endpoint.heartbeat_interval = HB
        async with Wire(rig.url) as relay, Wire(rig.sim.urls[0]) as sim:
            assert await until(lambda: relay.msgs and sim.msgs, 3.0)
            assert relay.msgs[0] == sim.msgs[0] == {"event": "info", "version": 1}
            assert shape(relay.msgs[0], keep=NAMES) == captured()[("info", None)]
            checked = {("info", None)}
            for request, want in STEPS:
                products = [p.upper() for p in request.get("product_ids") or ()] if isinstance(request, dict) else []
                text = request if isinstance(request, str) else orjson.dumps(request).decode()
                starts = len(relay.msgs), len(sim.msgs)
                await relay.ws.send(text)
                await sim.ws.send(text)
                got: list[list[dict[str, Any]]] = [[], []]

                def done(req=want, ps=products, at=starts, out=got) -> bool:
                    for i, w in enumerate((relay, sim)):
                        out[i] = w.answers(at[i], req, ps)
                    return all(len(o) == len(req) for o in out)

                assert await until(done, 5.0), (request, got)
                r, s = got
                assert kinds(r) == kinds(s) == want, (request, r, s)
                for a, b in zip(r, s):
                    assert shape(a, keep=TEXTS) == shape(b, keep=TEXTS), (request, a, b)
                    name = a.get("event") or a["feed"]
                    seen = captured().get((a.get("event"), a.get("feed")))
                    if seen is not None:  # the capture shows this reply: both look like it
                        assert shape(a, keep=NAMES) == seen, (request, a)
                        checked.add((a.get("event"), a.get("feed")))
                    if name == "trade_snapshot":
                        assert len(a["trades"]) == len(b["trades"]) == 100
                    if name == "error":
                        assert a["message"] in ("Invalid product id", "Invalid feed", "Json Error")
            assert checked == set(captured())  # every reply kind of the capture was compared
            # nothing else was answered: the same events in total, in the same order
            events_r = [m for m in relay.msgs if "event" in m]
            events_s = [m for m in sim.msgs if "event" in m]
            assert [shape(m, keep=TEXTS) for m in events_r] == [shape(m, keep=TEXTS) for m in events_s]


def test_heartbeat_cadence_is_the_same_in_relay_and_simulator():
    endpoint = FuturesEndpoint(FuturesMerge(), {})
    assert endpoint.heartbeat_interval == FuturesSimConfig().heartbeat_interval == HEARTBEAT_INTERVAL
