"""Spot v1 on-demand serving, unsubscribe by channelID, status frames and ohlc dedupe (Sans-I/O)."""

from __future__ import annotations

import orjson

from relay.config import DynamicSubscriptionsConfig
from relay.core.keys import SubKey
from relay.core.outputs import MergeSettings
from relay.protocols.spot_v1.endpoint import V1Endpoint, parse_request
from relay.protocols.spot_v1.merge import V1Merge
from tests.protocols.spot_v1.helpers import FakeSession, V1Checker


class Rig:
    """A v1 merge with one line, its endpoint (warm: XBT/USD) and recorded resubscriptions."""

    def __init__(self, depth: int = 10, **dynamic) -> None:
        self.merge = V1Merge(MergeSettings(book_depth=depth))
        self.up = self.merge.add_upstream("a")
        self.merge.upstream_up(self.up, 0.0)
        self.changes = 0
        cfg = DynamicSubscriptionsConfig(**{"release_after": 5.0, "timeout": 3.0, **dynamic})
        self.ep = V1Endpoint(
            self.merge,
            {"book": ["XBT/USD"], "trade": ["XBT/USD"], "ticker": ["XBT/USD"], "ohlc": ["XBT/USD"]},
            depth,
            (1,),
            dynamic=cfg,
            resubscribe=self._changed,
        )

    def _changed(self) -> None:
        self.changes += 1

    def client(self, cid: int = 7) -> FakeSession:
        s = FakeSession(self.ep.source)
        s.connection_id = cid
        self.ep.opened(s, 0.0)
        return s

    def send(self, s: FakeSession, obj: dict | bytes, now: float = 0.0) -> list[dict]:
        n = len(s.frames)
        self.ep.handle_message(s, obj if isinstance(obj, bytes) else orjson.dumps(obj), now)
        return [orjson.loads(f) for f in s.frames[n:]]

    def feed(self, raw: bytes, now: float = 0.0) -> None:
        self.merge.feed(self.up, raw, now)
        self.ep.publish(self.merge.take())

    def upstream(self) -> set[str]:
        return {k.label() for k in self.ep.demanded_subscriptions()}


def _sub(pair: str, name: str, reqid: int = 1, **extra) -> dict:
    return {"event": "subscribe", "reqid": reqid, "pair": [pair], "subscription": {"name": name, **extra}}


def _ack(pair: str, name: str, channel_name: str, **sub) -> bytes:
    return orjson.dumps(
        {
            "channelID": 99,
            "channelName": channel_name,
            "event": "subscriptionStatus",
            "pair": pair,
            "reqid": 1,
            "status": "subscribed",
            "subscription": {**sub, "name": name},
        }
    )


def test_other_pair_is_subscribed_upstream_answered_on_the_upstream_ack_and_released():
    r = Rig()
    a, b = r.client(), r.client(8)
    assert "trade:ETH/USD" not in r.upstream()
    assert r.send(a, _sub("ETH/USD", "trade")) == []  # waits for the upstream subscription
    assert "trade:ETH/USD" in r.upstream() and r.changes == 1
    r.feed(_ack("ETH/USD", "trade", "trade"))
    ok = orjson.loads(a.frames[-1])
    assert ok["status"] == "subscribed" and ok["pair"] == "ETH/USD" and ok["channelName"] == "trade"
    assert r.send(b, _sub("ETH/USD", "trade", 4))[0]["status"] == "subscribed"  # shared, live: at once
    r.feed(b'[5,[["3000.10","0.5","1700000000.000001","b","l",""]],"trade","ETH/USD"]')
    assert orjson.loads(a.frames[-1])[1][0][0] == "3000.10" and orjson.loads(b.frames[-1])[-2:] == [
        "trade",
        "ETH/USD",
    ]
    # the last client leaving starts the release timer; released `release_after` later
    r.send(a, {"event": "unsubscribe", "pair": ["ETH/USD"], "subscription": {"name": "trade"}}, 1.0)
    r.ep.closed(b, 2.0)
    r.ep.tick(6.9)
    assert "trade:ETH/USD" in r.upstream()
    r.ep.tick(7.0)
    assert "trade:ETH/USD" not in r.upstream() and r.changes == 2
    assert ("trade", "ETH/USD", 0) in r.merge.retired and "ETH/USD" not in r.merge.trades
    r.feed(b'[5,[["3000.20","0.5","1700000001.000001","b","l",""]],"trade","ETH/USD"]')  # late frame
    assert "ETH/USD" not in r.merge.trades


def test_kraken_refusal_reaches_the_waiting_client_verbatim_and_is_forgotten():
    r = Rig()
    a = r.client()
    r.send(a, _sub("FOO/USD", "ticker", 3))
    assert "ticker:FOO/USD" in r.upstream()
    r.ep.upstream_rejected(SubKey("ticker", "FOO/USD", 0), "Exceeded msg rate", 0.1)  # transient: waits
    assert a.frames[-1:] != [] and orjson.loads(a.frames[-1])["event"] == "systemStatus"
    r.ep.upstream_rejected(SubKey("ticker", "FOO/USD", 0), "Currency pair not supported FOO/USD", 0.2)
    err = orjson.loads(a.frames[-1])
    assert err == {
        "errorMessage": "Currency pair not supported FOO/USD",
        "event": "subscriptionStatus",
        "pair": "FOO/USD",
        "reqid": 3,
        "status": "error",
        "subscription": {"name": "ticker"},
    }
    assert list(err) == ["errorMessage", "event", "pair", "reqid", "status", "subscription"]
    assert "ticker:FOO/USD" not in r.upstream() and a.subs == set()
    # a malformed pair never goes upstream
    err = r.send(a, _sub("FOOUSD", "ticker", 4))[0]
    assert err["errorMessage"] == "Currency pair not in ISO 4217-A3 format FOOUSD" and err["pair"] == "FOOUSD"
    assert "ticker:FOOUSD" not in r.upstream()


def test_waiting_client_times_out_and_the_cap_and_patterns_refuse():
    r = Rig(max_subscriptions=2, deny=["*/EUR"])
    a = r.client()
    r.send(a, _sub("ETH/USD", "spread"), 0.0)
    r.ep.tick(2.9)
    assert orjson.loads(a.frames[-1])["event"] == "systemStatus"
    r.ep.tick(3.0)
    err = orjson.loads(a.frames[-1])
    assert err["status"] == "error" and err["errorMessage"] == "Timed out waiting for market data"
    assert a.errors == 1
    denied = r.send(a, _sub("ETH/EUR", "spread"))[0]
    assert denied["errorMessage"] == "Currency pair not served by this relay ETH/EUR (server.dynamic_subscriptions)"
    r.send(a, _sub("SOL/USD", "spread"))
    r.send(a, _sub("ADA/USD", "spread"))  # ETH/USD is still held (release pending): two keys
    over = orjson.loads(a.frames[-1])
    assert over["errorMessage"].startswith("Subscription limit exceeded: relay on-demand limit of 2")


def test_fixed_set_when_on_demand_is_off():
    r = Rig(enabled=False)
    a = r.client()
    assert r.send(a, _sub("ETH/USD", "trade"))[0]["errorMessage"] == "Currency pair not supported ETH/USD"
    assert r.send(a, _sub("XBT/USD", "book", depth=100))[0]["errorMessage"] == "Subscription depth not supported"
    assert r.send(a, _sub("XBT/USD", "ohlc", interval=5))[0]["errorMessage"] == (
        "Subscription ohlc interval not supported"
    )
    assert r.ep.demanded_subscriptions() == r.ep.warm_keys()


class Market:
    """The simulator's market for one pair, its book streams at each depth in v1 framing."""

    def __init__(self, depths: tuple[int, ...]) -> None:
        import random

        from relay.sim.instruments import load_instruments
        from relay.sim.market import SymbolMarket
        from relay.sim.v1 import V1Framer

        inst = load_instruments(None)["BTC/USD"]
        self.sm = SymbolMarket(inst, random.Random(5), 200)
        self.sm.wanted = dict.fromkeys(depths, 1)
        self.framer = V1Framer([inst], 0)
        self.t = 1_700_000_000.0

    def snapshot(self, depth: int) -> bytes:
        frame = self.framer.frame("book", f"book-{depth}", "XBT/USD", self.sm.snapshot(depth))
        assert frame is not None
        return frame

    def step(self) -> dict[int, bytes]:
        """One book change: the v1 update frame of every depth it shows at."""
        from relay.protocols.spot_v2.wire import now_rfc3339

        self.t += 0.01
        frames = self.sm.apply(*self.sm._random_changes(), now_rfc3339(self.t))
        out = {d: self.framer.frame("book", f"book-{d}", "XBT/USD", f) for d, f in frames.items()}
        return {d: f for d, f in out.items() if f is not None}


def test_deeper_book_resubscribes_the_pair_deeper_and_keeps_current_subscribers():
    market = Market((10, 25))
    r = Rig(depth=10)
    shallow, deep = r.client(), r.client(8)
    r.feed(market.snapshot(10))
    for _ in range(50):
        if 10 in (fs := market.step()):
            r.feed(fs[10])
    r.send(shallow, _sub("XBT/USD", "book", depth=10))
    assert r.send(deep, _sub("XBT/USD", "book", 2, depth=25)) == []  # waits for the deeper book
    assert "book:XBT/USD:25" in r.upstream() and "book:XBT/USD:10" not in r.upstream()
    for _ in range(20):  # the old subscription keeps the book going until the new one starts
        if 10 in (fs := market.step()):
            r.feed(fs[10])
    assert [orjson.loads(f)["event"] for f in deep.frames] == ["systemStatus"]
    # the line's new subscription starts (its snapshot), while the old one still sends a while
    r.feed(market.snapshot(25))
    for i in range(300):
        fs = market.step()
        if i < 5 and 10 in fs:
            r.feed(fs[10])
        if 25 in fs:
            r.feed(fs[25])
    assert r.merge.books["XBT/USD"].depth == 25
    ok = [orjson.loads(f) for f in deep.frames if f.startswith(b"{")]
    assert ok[-1]["status"] == "subscribed" and ok[-1]["channelName"] == "book-25"
    checks = []
    for s, depth in ((shallow, 10), (deep, 25)):
        c = V1Checker()
        for f in s.frames:
            c.feed(f)
        assert c.bad == [] and c.verified > 100, (depth, c.verified, c.bad[:3])
        asks, bids = c.book("XBT/USD", depth) or ({}, {})
        assert len(asks) == len(bids) == depth
        checks.append(c)
    assert checks[0].snapshots == 1  # the depth-10 subscriber was not reset
    asks, _ = checks[1].book("XBT/USD", 25) or ({}, {})
    assert sorted(asks.items()) == sorted((lv[0].decode(), lv[1].decode()) for lv in market.sm.book.asks.best(25))
    # the deep client leaves: released later, the pair goes back to its configured depth
    r.send(deep, {"event": "unsubscribe", "pair": ["XBT/USD"], "subscription": {"name": "book", "depth": 25}}, 1.0)
    r.ep.tick(6.0)
    assert "book:XBT/USD:10" in r.upstream() and "book:XBT/USD:25" not in r.upstream()
    n = len(shallow.frames)
    r.feed(market.snapshot(10))
    for i in range(200):
        fs = market.step()
        if i < 5 and 25 in fs:
            r.feed(fs[25])
        if 10 in fs:
            r.feed(fs[10])
    assert r.merge.books["XBT/USD"].depth == 10
    for f in shallow.frames[n:]:
        checks[0].feed(f)
    assert checks[0].bad == [] and checks[0].verified > 150


def test_unsubscribe_by_channel_id_as_kraken_answers_it():
    r = Rig()
    a = r.client()
    ok = r.send(a, _sub("XBT/USD", "ohlc", 3, interval=1))[0]
    gone = r.send(a, {"event": "unsubscribe", "reqid": 4, "channelID": ok["channelID"]})
    assert gone == [
        {
            "channelID": ok["channelID"],
            "channelName": "ohlc-1",
            "event": "subscriptionStatus",
            "pair": "XBT/USD",
            "reqid": 4,
            "status": "unsubscribed",
            "subscription": {"interval": 1, "name": "ohlc"},
        }
    ]
    assert list(gone[0]["subscription"]) == ["interval", "name"] and a.subs == set()
    again = r.send(a, {"event": "unsubscribe", "reqid": 5, "channelID": ok["channelID"]})
    assert again == [
        {
            "channelID": ok["channelID"],
            "errorMessage": "Subscription Not Found",
            "event": "subscriptionStatus",
            "reqid": 5,
            "status": "error",
        }
    ]


def test_status_frames_carry_the_client_connection_id_and_kraken_version():
    r = Rig()
    m = V1Merge(MergeSettings())
    ep = V1Endpoint(m, {"trade": ["XBT/USD"]}, 10)
    s = FakeSession(ep.source)
    s.connection_id = 1234567890123456789
    ep.opened(s, 0.0)
    hello = orjson.loads(s.frames[0])
    assert list(hello) == ["connectionID", "event", "status", "version"]
    assert hello["connectionID"] == 1234567890123456789 and hello["version"] == "1.9.1"  # no line yet
    up = m.add_upstream("a")
    m.line_status(up, "online", 0.0, "1.9.4")
    ep.publish(m.take())
    change = orjson.loads(s.frames[-1])
    assert change == {
        "connectionID": 1234567890123456789,
        "event": "systemStatus",
        "status": "online",
        "version": "1.9.4",
    }
    other = r.client(42)
    assert orjson.loads(other.frames[0])["connectionID"] == 42


def test_request_errors_in_krakens_shapes():
    r = Rig()
    a = r.client()
    assert r.send(a, {"reqid": 1}) == [
        {"errorMessage": "Event(s) not found", "event": "subscriptionStatus", "reqid": 1, "status": "error"}
    ]
    assert r.send(a, {"event": "ping ", "reqid": 1}) == [
        {"errorMessage": "Unsupported event", "event": "subscriptionStatus", "reqid": 1, "status": "error"}
    ]
    assert r.send(a, {"event": "ping", "reqid": "a"}) == [
        {
            "errorMessage": "Reqid field must be a positive integer less than 18446744073709551616",
            "event": "pingStatus",
            "reqid": "a",
            "status": "error",
        }
    ]
    assert r.send(a, b"{not json") == [{"errorMessage": "Malformed request", "event": "error"}]
    bad = r.send(a, _sub("XBT/USD", "book", 9, depth=42))[0]
    assert bad["subscription"] == {"depth": 42, "name": "book"} and list(bad["subscription"]) == ["depth", "name"]
    assert isinstance(parse_request(b'{"event":"unsubscribe","channelID":true}').error, str)  # type: ignore[union-attr]


def test_no_trade_snapshot_on_subscribe():
    r = Rig()
    a = r.client()
    r.feed(b'[5,[["60000.0","0.5","1700000000.000001","b","l",""]],"trade","XBT/USD"]')
    out = r.send(a, _sub("XBT/USD", "trade"))
    assert [o["status"] for o in out] == ["subscribed"]  # the ack only, as Kraken (the captures)


def _ohlc(t: str, end: str, close: str, count: int) -> bytes:
    row = [t, end, "1.0", "2.0", "0.5", close, "1.1", "3.0", count]
    return b"[7," + orjson.dumps(row) + b',"ohlc-1","XBT/USD"]'


def test_ohlc_every_candle_change_once_and_never_backwards():
    m = V1Merge(MergeSettings())
    a, b = m.add_upstream("a"), m.add_upstream("b")
    u1 = _ohlc("100.000001", "160.000000", "1.5", 1)
    u2 = _ohlc("100.000001", "160.000000", "1.6", 2)  # same `time` (one engine tick), new content
    u3 = _ohlc("101.500000", "160.000000", "1.7", 3)
    for up, raw in ((a, u1), (a, u2), (b, u1), (a, u3), (b, u2), (b, u3)):
        m.feed(up, raw, 0.0)
    closes = [orjson.loads(p.frame)[1][5] for p in m.take() if p.channel == "ohlc"]
    assert closes == ["1.5", "1.6", "1.7"]
    # a line's record older than the candle clients hold is not published
    m.feed(b, _ohlc("99.000000", "160.000000", "1.4", 9), 0.0)
    m.feed(a, _ohlc("161.000000", "220.000000", "1.8", 1), 0.0)  # the next candle
    assert [orjson.loads(p.frame)[1][5] for p in m.take() if p.channel == "ohlc"] == ["1.8"]
    assert orjson.loads(m.ohlc_snapshot("XBT/USD", 1))[1][5] == "1.8"


def test_no_warm_pairs_everything_on_demand_through_the_spec():
    from relay.config import parse_config
    from relay.protocols.spec import EndpointContext
    from relay.protocols.spot_v1.spec import SPOT_V1

    cfg = parse_config(
        {"upstreams": [{"name": "a", "url": "wss://ws.kraken.com", "protocol": "v1"}], "v1": {"channels": {}}},
        env={},
    )
    calls: list[int] = []
    merge = SPOT_V1.make_merge(MergeSettings(), cfg)
    ep = SPOT_V1.make_endpoint(merge, cfg, EndpointContext(version="9.9.9", resubscribe=lambda: calls.append(1)))
    assert isinstance(ep, V1Endpoint) and ep.demanded_subscriptions() == [] and SPOT_V1.desired(cfg.v1) == []
    s = FakeSession(ep.source)
    ep.opened(s, 0.0)
    assert orjson.loads(s.frames[0])["version"] == "1.9.1"  # never the relay's own version
    ep.handle_message(s, orjson.dumps(_sub("XBT/USD", "book", depth=25)), 0.0)
    assert [k.label() for k in ep.demanded_subscriptions()] == ["book:XBT/USD:25"] and calls == [1]


def test_a_new_book_starts_only_from_its_subscriptions_depth():
    market = Market((100, 1000))
    r = Rig(depth=100)
    a = r.client()
    r.send(a, _sub("ETH/USD", "book", depth=10))  # on demand at the held depth, 100 ...
    r.send(a, _sub("ETH/USD", "book", 2, depth=1000))  # ... then deeper, before any data came
    assert "book:ETH/USD:1000" in r.upstream() and "book:ETH/USD:100" not in r.upstream()
    r.feed(market.snapshot(100).replace(b'"XBT/USD"', b'"ETH/USD"'))  # the first subscription's data
    assert "ETH/USD" not in r.merge.books or not r.merge.books["ETH/USD"].ready
    assert [o["event"] for o in map(orjson.loads, a.frames)] == ["systemStatus"]
    r.feed(market.snapshot(1000).replace(b'"XBT/USD"', b'"ETH/USD"'))
    for _ in range(50):
        if 1000 in (fs := market.step()):
            r.feed(fs[1000].replace(b'"XBT/USD"', b'"ETH/USD"'))
    acks = [o for o in map(orjson.loads, a.frames) if isinstance(o, dict) and o.get("status") == "subscribed"]
    assert {o["channelName"] for o in acks} == {"book-10", "book-1000"}
    c = V1Checker()
    for f in a.frames:
        c.feed(f)
    assert c.bad == [] and c.verified > 40 and c.snapshots == 2
    deep = c.book("ETH/USD", 1000)
    assert deep is not None and min(map(len, deep)) > 150  # deeper than 100 levels


def test_reload_keeps_clients_of_pairs_that_left_the_warm_set_on_demand():
    from relay.config import parse_config

    r = Rig()
    a = r.client()
    assert r.send(a, _sub("XBT/USD", "trade"))[0]["status"] == "subscribed"
    cfg = parse_config(
        {
            "upstreams": [{"name": "a", "url": "wss://ws.kraken.com", "protocol": "v1"}],
            "v1": {"channels": {"trade": {"symbols": ["ETH/USD"]}}},
        },
        env={},
    )
    r.ep.reload(cfg)
    assert r.changes == 0  # the stack resubscribes once after a reload
    assert {"trade:XBT/USD", "trade:ETH/USD"} <= r.upstream() and "book:XBT/USD:10" not in r.upstream()
    r.feed(b'[5,[["60000.0","0.5","1700000000.000001","b","l",""]],"trade","XBT/USD"]')
    assert orjson.loads(a.frames[-1])[-2:] == ["trade", "XBT/USD"]  # still served
    r.send(a, {"event": "unsubscribe", "pair": ["XBT/USD"], "subscription": {"name": "trade"}}, 1.0)
    r.ep.tick(6.0)
    assert "trade:XBT/USD" not in r.upstream()


def test_on_demand_counters_for_the_metrics():
    r = Rig(max_subscriptions=1)
    a = r.client()
    r.send(a, _sub("ETH/USD", "trade"))
    r.send(a, _sub("SOL/USD", "trade"))  # over the cap
    od = r.ep.stats()["on_demand"]
    assert (od["held"], od["demanded"], od["refused"], od["pending"]) == (1, 1, 1, 1)
