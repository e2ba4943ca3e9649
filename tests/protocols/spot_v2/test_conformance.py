"""Spot v2 conformance: every request type, valid and invalid, sent to the simulator (our model of
Kraken) and to the relay in the same test; the replies must match field by field (keys, key
order, types, texts), and where the real captures show a reply, the capture's shape.

Values that legitimately differ (times, connection ids, market data) are compared by type only.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from websockets.asyncio.client import connect

from relay.app import Relay
from relay.sim import LineConfig, SimConfig
from tests.kit.inprocess import relay_on_sim

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

WARM = "BTC/USD"
SYMBOLS = [WARM, "ETH/USD", "SOL/USD"]
VOLATILE = {"time_in", "time_out", "connection_id", "timestamp", "checksum", "trade_id"}


def sub(channel: str, req_id: int | None = 1, method: str = "subscribe", **params: Any) -> dict[str, Any]:
    msg: dict[str, Any] = {"method": method, "params": {"channel": channel, **params}}
    if req_id is not None:
        msg["req_id"] = req_id
    return msg


# (name, messages sent in order, number of replies to compare)
CASES: list[tuple[str, list[Any], int]] = [
    ("ping", [{"method": "ping", "req_id": 7}], 1),
    ("ping without req_id", [{"method": "ping"}], 1),
    ("ping with params", [{"method": "ping", "params": {}, "req_id": 0}], 1),
    ("malformed json", ["{not json"], 1),
    ("not an object", ["[1,2]"], 1),
    ("unknown method", [{"method": "frobnicate", "req_id": 3}], 1),
    ("missing params", [{"method": "subscribe", "req_id": 4}], 1),
    ("unknown channel", [sub("candles", symbol=[WARM])], 1),
    ("level3 without token", [sub("level3", symbol=[WARM])], 1),
    ("book default depth", [sub("book", symbol=[WARM])], 2),
    ("book depth 25, two symbols", [sub("book", symbol=[WARM, "ETH/USD"], depth=25)], 4),
    ("book depth 1000 on demand", [sub("book", symbol=["SOL/USD"], depth=1000)], 2),
    ("book bad depth", [sub("book", symbol=[WARM], depth=7)], 1),
    ("book invalid symbol", [sub("book", symbol=["FOO/USD"])], 1),
    ("book v1 name", [sub("book", symbol=["XBT/USD"])], 1),
    ("book symbol not a list", [sub("book", symbol=WARM)], 1),
    ("book missing symbol", [sub("book")], 1),
    ("trade default (no snapshot)", [sub("trade", symbol=[WARM])], 1),
    ("trade with snapshot", [sub("trade", symbol=["ETH/USD"], snapshot=True)], 2),
    ("ticker trades", [sub("ticker", symbol=[WARM])], 2),
    ("ticker bbo", [sub("ticker", symbol=["ETH/USD"], event_trigger="bbo")], 2),
    ("ticker bad trigger", [sub("ticker", symbol=[WARM], event_trigger="quotes")], 1),
    ("ohlc default interval", [sub("ohlc", symbol=[WARM])], 2),
    ("ohlc 240 on demand", [sub("ohlc", symbol=["SOL/USD"], interval=240)], 2),
    ("ohlc bad interval", [sub("ohlc", symbol=[WARM], interval=7)], 1),
    ("instrument", [sub("instrument")], 2),
    ("heartbeat", [sub("heartbeat")], 1),
    ("already subscribed", [sub("ticker", symbol=[WARM], snapshot=False), sub("ticker", 2, symbol=[WARM])], 2),
    ("unsubscribe not subscribed", [sub("trade", 5, "unsubscribe", symbol=[WARM])], 1),
    (
        "subscribe then unsubscribe",
        [
            sub("ohlc", 1, symbol=[WARM], interval=5, snapshot=False),
            sub("ohlc", 2, "unsubscribe", symbol=[WARM], interval=5),
        ],
        2,
    ),
    (
        "unsubscribe book repeats the depth",
        [
            sub("book", 1, symbol=[WARM], depth=10, snapshot=False),
            sub("book", 2, "unsubscribe", symbol=[WARM], depth=10),
        ],
        2,
    ),
]


def _warm_ready(relay: Relay) -> bool:
    merge: Any = relay.stack("v2").merge
    return bool(merge.instrument.pairs and merge.book_snapshot(WARM, 10) and merge.ticker_snapshot(WARM))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def urls() -> AsyncIterator[tuple[str, str]]:
    """One simulator line and a relay on it (warm: BTC/USD), shared by every case."""
    sim_cfg = SimConfig(symbols=SYMBOLS, rate=100.0, trade_rate=30.0, seed=5, levels=1000, lines=[LineConfig()])
    config = {
        "channels": {
            "book": {"symbols": [WARM], "depth": 100},
            "trade": {"symbols": [WARM]},
            "ticker": {"symbols": [WARM]},
            "ohlc": {"symbols": [WARM], "intervals": [1]},
        },
        "server": {"dynamic_subscriptions": {"release_after": 0.2}},
        "subscribe": {"requests_per_second": 20.0},
    }
    async with relay_on_sim(sim_cfg, config, _warm_ready) as (relay, sim):
        yield sim.urls[0], relay.server.url_for("/v2")


async def exchange(url: str, messages: list[Any], n: int) -> tuple[dict[str, Any], list[dict[str, Any]], dict]:
    """Send `messages` on a new connection. Returns the greeting, the replies to requests in
    order, and the first data frame of each (channel, symbol), until `n` of those arrived
    (heartbeats and status skipped; data order across symbols is timing, not protocol)."""
    async with connect(url, max_size=None) as ws:
        greeting = json.loads(await ws.recv())
        assert greeting["channel"] == "status"
        for m in messages:
            await ws.send(m if isinstance(m, str) else json.dumps(m))
        replies: list[dict[str, Any]] = []
        first: dict[tuple[str, str], dict[str, Any]] = {}
        async with asyncio.timeout(10):
            while len(replies) + len(first) < n:
                msg = json.loads(await ws.recv())
                channel = msg.get("channel")
                if channel in ("status", "heartbeat"):
                    continue
                if channel is None:
                    replies.append(msg)
                    continue
                data = msg.get("data")
                symbol = data[0].get("symbol", "") if isinstance(data, list) and data else ""
                first.setdefault((channel, symbol), msg)
        return greeting, replies, first


def shape(v: Any, key: str = "") -> Any:
    """What must match: keys in order, types, and every value except volatile ones."""
    if isinstance(v, dict):
        return [(k, shape(x, k)) for k, x in v.items()]
    if isinstance(v, list):
        if key in ("bids", "asks", "data", "pairs", "assets"):  # market data: the first element's shape
            return ["list", shape(v[0], key) if v else None]
        return [shape(x) for x in v]
    if key in VOLATILE or key not in (
        "method",
        "success",
        "error",
        "symbol",
        "channel",
        "type",
        "req_id",
        "depth",
        "interval",
        "event_trigger",
        "snapshot",
        "system",
        "api_version",
        "version",
        "warnings",
    ):
        return type(v).__name__
    return v


@pytest.mark.parametrize(("name", "messages", "n"), CASES, ids=[c[0] for c in CASES])
async def test_relay_replies_like_kraken(urls: tuple[str, str], name: str, messages: list[Any], n: int) -> None:
    sim_url, relay_url = urls
    e_greet, e_replies, e_first = await exchange(sim_url, messages, n)
    g_greet, g_replies, g_first = await exchange(relay_url, messages, n)
    assert shape(g_greet) == shape(e_greet)
    assert len(g_replies) == len(e_replies)
    for i, (e, g) in enumerate(zip(e_replies, g_replies, strict=True)):
        assert shape(g) == shape(e), f"reply {i}:\n relay  {json.dumps(g)[:400]}\n kraken {json.dumps(e)[:400]}"
    assert set(g_first) == set(e_first)
    for key, e in e_first.items():
        g = g_first[key]
        assert shape(g) == shape(e), f"first {key}:\n relay  {json.dumps(g)[:400]}\n kraken {json.dumps(e)[:400]}"
