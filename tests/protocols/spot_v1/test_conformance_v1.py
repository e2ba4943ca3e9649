"""Spot v1 conformance: each v1 request type, valid and invalid, sent by a plain websocket client
to the relay and to the simulator in the same test; the replies must match field by field (keys,
key order, types, texts), ignoring the values that legitimately differ (channelID, connectionID).
Where the real captures show a reply (systemStatus, subscriptionStatus of book/trade/ticker,
pong, heartbeat, the absence of a trade snapshot), the relay's matches the capture.
"""

from __future__ import annotations

import json
from typing import Any

from relay.protocols.spot_v1.wire import HEARTBEAT
from tests.protocols.spot_v1.conftest import v1_rig
from tests.protocols.spot_v1.helpers import (
    CF_BOOK,
    CF_TICKER,
    CF_TRADE,
    PlainClient,
    cryptofeed_frames,
    sdk_frames,
    wait_for,
)

IGNORED = {"channelID", "connectionID"}  # per connection: the relay assigns its own


def shape(v: Any) -> Any:
    """A value's structure: types, keys in order; a list whose elements share a shape counts once."""
    if isinstance(v, dict):
        return [(k, shape(x)) for k, x in v.items()]
    if isinstance(v, list):
        shapes = [shape(x) for x in v]
        if shapes and all(s == shapes[0] for s in shapes):
            return ["list of", shapes[0]]
        return shapes
    return type(v).__name__


def same_reply(relay: dict, sim: dict, what: str) -> None:
    assert list(relay) == list(sim), f"{what}: keys {list(relay)} != {list(sim)}"
    assert shape(relay) == shape(sim), f"{what}: types {relay} vs {sim}"
    for k in relay:
        if k not in IGNORED:
            assert relay[k] == sim[k], f"{what}: {k}: {relay[k]!r} != {sim[k]!r}"


def capture_replies(path) -> list[dict]:
    return [m for m in (json.loads(f) for f in cryptofeed_frames(path)) if isinstance(m, dict)]


def _sub(pairs: list[str], name: str, reqid: int | None = None, **extra) -> dict:
    msg: dict[str, Any] = {"event": "subscribe"}
    if reqid is not None:
        msg["reqid"] = reqid
    msg["pair"] = pairs
    msg["subscription"] = {"name": name, **extra}
    return msg


def _unsub(pairs: list[str], name: str, reqid: int, **extra) -> dict:
    return {"event": "unsubscribe", "reqid": reqid, "pair": pairs, "subscription": {"name": name, **extra}}


# (what, request, replies expected): the relay serves XBT/USD from its warm set, the rest on demand
CASES: list[tuple[str, Any, int]] = [
    ("ping", {"event": "ping", "reqid": 1}, 1),
    ("ping without reqid", {"event": "ping"}, 1),
    ("book 10, warm pair", _sub(["XBT/USD"], "book", 2, depth=10), 1),
    ("book 1000, on demand (as cryptofeed sends it)", _sub(["ETH/USD"], "book", depth=1000), 1),
    ("trade, on demand (as cryptofeed)", _sub(["ETH/USD"], "trade"), 1),
    ("ticker, on demand (as cryptofeed)", _sub(["SOL/USD"], "ticker"), 1),
    ("spread, on demand", _sub(["ETH/USD"], "spread", 3), 1),
    ("ohlc 5, on demand", _sub(["SOL/USD"], "ohlc", 4, interval=5), 1),
    ("ohlc default interval, warm", _sub(["XBT/USD"], "ohlc", 5), 1),
    ("two pairs", _sub(["XBT/USD", "SOL/USD"], "trade", 6), 2),
    ("already subscribed", _sub(["XBT/USD"], "book", 7, depth=10), 1),
    ("malformed pair", _sub(["XBTUSD"], "ticker", 8), 1),
    ("unknown pair", _sub(["FOO/BAR"], "ticker", 9), 1),
    ("bad depth", _sub(["XBT/USD"], "book", 10, depth=42), 1),
    ("bad interval", _sub(["XBT/USD"], "ohlc", 11, interval=7), 1),
    ("bad name", _sub(["XBT/USD"], "bogus", 12), 1),
    ("pair not an array", {"event": "subscribe", "reqid": 13, "pair": "XBT/USD", "subscription": {"name": "trade"}}, 1),
    ("unknown event", {"event": "frobnicate", "reqid": 14}, 1),
    ("no event", {"reqid": 15}, 1),
    ("malformed JSON", b'{"event": "ping"', 1),
    ("bad reqid", {"event": "ping", "reqid": "a"}, 1),
    ("unsubscribe, not subscribed", _unsub(["XBT/USD"], "spread", 16), 1),
    ("unsubscribe by pair + subscription", _unsub(["XBT/USD"], "book", 17, depth=10), 1),
    ("unsubscribe on demand", _unsub(["SOL/USD"], "ohlc", 18, interval=5), 1),
    ("unsubscribe by channelID", "channel:ticker:SOL/USD", 1),
    ("unsubscribe unknown channelID", {"event": "unsubscribe", "reqid": 20, "channelID": 987654}, 1),
]


async def test_v1_requests_answered_as_kraken_and_the_simulator_answer():
    async with v1_rig(symbols=["BTC/USD", "ETH/USD", "SOL/USD"], warm=["XBT/USD"]) as rig:
        merge = rig.relay.stack("v1").merge
        assert await wait_for(lambda: merge.book_snapshot("XBT/USD", 10) is not None, 10)
        relay = await PlainClient.connect(rig.url)
        sim = await PlainClient.connect(rig.sim.v1_urls[0])
        try:
            hello_r, hello_s = (await relay.events(1))[0], (await sim.events(1))[0]
            same_reply(hello_r, hello_s, "systemStatus")
            # the captures' systemStatus: same keys, order and types (the version is the engine's)
            cap = capture_replies(CF_BOOK)[0]
            assert list(hello_r) == list(cap) and shape(hello_r) == shape(cap)
            assert hello_r["status"] == "online" and hello_r["version"] == "1.9.1" and hello_r["connectionID"] > 0

            acks: dict[str, dict[str, dict]] = {"relay": {}, "sim": {}}
            for what, req, n in CASES:
                per_side = []
                for side, client in (("relay", relay), ("sim", sim)):
                    msg = req
                    if isinstance(req, str):  # unsubscribe by the channelID this side gave out
                        _, channel, pair = req.split(":")
                        msg = {"event": "unsubscribe", "reqid": 19, "channelID": acks[side][f"{channel}:{pair}"]}
                    await client.send(msg)
                    replies = await client.events(n, timeout=10.0)
                    per_side.append(sorted(replies, key=lambda m: str(m.get("pair"))))
                    for m in replies:
                        if m.get("status") == "subscribed":
                            acks[side][f"{m['subscription']['name']}:{m['pair']}"] = m["channelID"]
                for r, s in zip(*per_side, strict=True):
                    same_reply(r, s, what)
            # nothing else was answered on either side
            assert relay.pending() == [] and sim.pending() == []

            # the subscriptionStatus the captures show, key for key (the same requests, no reqid)
            for path, name, pair in (
                (CF_BOOK, "book", "ETH/USD"),
                (CF_TRADE, "trade", "ETH/USD"),
                (CF_TICKER, "ticker", "SOL/USD"),
            ):
                cap = next(m for m in capture_replies(path) if m.get("event") == "subscriptionStatus")
                mine = next(
                    m
                    for _, m in relay.replies
                    if m.get("status") == "subscribed" and m["subscription"]["name"] == name and m["pair"] == pair
                )
                assert list(mine) == list(cap) and shape(mine) == shape(cap), (mine, cap)
                assert mine["subscription"] == cap["subscription"] and mine["channelName"] == cap["channelName"]
            sdk = [json.loads(f) for f in sdk_frames()[:3]]
            pong = next(m for m in sdk if m.get("event") == "pong")
            mine_pong = next(m for _, m in relay.replies if m.get("event") == "pong" and "reqid" in m)
            assert list(mine_pong) == list(pong)

            # data frames: the same shapes on both sides, per channel
            def first(client: PlainClient, name: str, pair: str) -> list | None:
                return next((d for _, d in client.data if d[-2] == name and d[-1] == pair), None)

            wanted = [
                ("book-1000", "ETH/USD"),
                ("trade", "ETH/USD"),
                ("ticker", "SOL/USD"),
                ("spread", "ETH/USD"),
                ("ohlc-1", "XBT/USD"),
                ("trade", "XBT/USD"),
            ]
            assert await relay.until(lambda: all(first(relay, *w) for w in wanted), 10)
            assert await sim.until(lambda: all(first(sim, *w) for w in wanted), 10)
            for w in wanted:
                r, s = first(relay, *w), first(sim, *w)
                assert r is not None and s is not None
                assert len(r) == len(s) and shape(r[1:]) == shape(s[1:]), (w, r, s)
                assert isinstance(r[0], int) and r[-2:] == s[-2:]
            book = first(relay, "book-1000", "ETH/USD")
            assert book is not None and list(book[1]) == ["as", "bs"]  # a snapshot first
            # no trade snapshot after a trade subscribe (the captures): the first trade frame
            # carries a new trade, not Kraken's documented "last 50"
            for client in (relay, sim):
                got = first(client, "trade", "ETH/USD")
                assert got is not None and len(got[1]) < 5, got
            # heartbeats as the captures show them
            cap_hb = next(m for m in capture_replies(CF_TRADE) if m.get("event") == "heartbeat")
            assert json.loads(HEARTBEAT) == cap_hb
        finally:
            await relay.close()
            await sim.close()
