"""Products on demand, Sans-I/O: the product validator (Kraken's product-less `Invalid product id`
attributed by counting), the merge's part (acks/errors in, `REFUSED` out, released state dropped)
and the endpoint (warm set, demand tracker, first-data answers, repeats, refusals, timeouts)."""

from __future__ import annotations

import orjson

from relay.config import DynamicSubscriptionsConfig
from relay.core.keys import SubKey
from relay.protocols.futures.endpoint import ERR_TIMEOUT, HEARTBEAT_KEY, FuturesEndpoint
from relay.protocols.futures.merge import REFUSED, FuturesMerge
from relay.protocols.futures.validate import ProductValidator
from relay.protocols.futures.wire import HEARTBEAT_INTERVAL, TRADE_SNAPSHOT, encode_trade_snapshot

BAD = b'{"event":"error","message":"Invalid product id"}'


def sub(feed: str, product: str) -> bytes:
    return orjson.dumps({"event": "subscribed", "feed": feed, "product_ids": [product]})


def snapshot(product: str, seq: int = 10) -> bytes:
    return orjson.dumps(
        {
            "feed": "book_snapshot",
            "product_id": product,
            "timestamp": 1,
            "seq": seq,
            "tickSize": None,
            "bids": [{"price": 99.5, "qty": 1.0}],
            "asks": [{"price": 100.5, "qty": 2.0}],
        }
    )


def trades(product: str, n: int) -> bytes:
    items = [
        orjson.dumps(
            {
                "feed": "trade",
                "product_id": product,
                "uid": f"u{i}",
                "side": "buy",
                "type": "fill",
                "seq": i,
                "time": 1000 + i,
                "qty": 1.0,
                "price": 100.0,
            }
        )
        for i in range(n, 0, -1)
    ]
    return encode_trade_snapshot(product, items)


# -- the validator ---------------------------------------------------------------------------------
def test_errors_are_attributed_by_counting_whatever_the_order_of_answers():
    for order in (["ack A", "err", "ack C"], ["err", "ack C", "ack A"], ["ack C", "ack A", "err"]):
        v = ProductValidator()
        v.add_line()
        v.line_up(0)
        v.expect([("book", "A"), ("book", "B"), ("book", "C")], 0.0)
        for step in order:
            if step == "err":
                v.on_error(0, "Invalid product id")
            else:
                v.on_ack(0, "book", [step[-1]], True)
        assert v.take() == ["B"], order
        assert v.valid == {"A", "C"}


def test_nothing_is_refused_while_a_key_may_still_be_acknowledged():
    v = ProductValidator()
    v.add_line()
    v.line_up(0)
    v.expect([("book", "A"), ("trade", "A"), ("book", "B")], 0.0)
    v.on_error(0, "Invalid product id")
    assert v.take() == []  # 1 error for 3 open keys
    v.on_ack(0, "trade", ["A"], True)  # A is valid: both of its keys leave the count
    assert v.take() == ["B"]


def test_an_error_with_nothing_open_or_another_text_is_not_counted():
    v = ProductValidator()
    v.add_line()
    v.line_up(0)
    v.on_error(0, "Invalid product id")  # nothing of ours open
    v.expect([("book", "B")], 1.0)
    v.on_error(0, "Json Error")
    assert v.take() == []
    v.on_error(0, "Invalid product id")
    assert v.take() == ["B"]


def test_each_line_counts_its_own_answers_and_a_line_down_forgets_them():
    v = ProductValidator()
    v.add_line(), v.add_line()
    v.line_up(0), v.line_up(1)
    v.expect([("book", "A"), ("book", "B")], 0.0)
    v.on_error(1, "Invalid product id")
    v.line_down(1)  # its count is gone with its connection
    v.on_ack(0, "book", ["A"], True)
    assert v.take() == []
    v.on_error(0, "Invalid product id")
    assert v.take() == ["B"]
    v.line_up(1)  # B is not expected any more by the endpoint? it still is here: re-asked
    assert v.lines[1].open == {("book", "B")}


def test_a_failed_ack_answers_its_key_and_ghost_keys_expire():
    v = ProductValidator(ghost_ttl=5.0)
    v.add_line()
    v.line_up(0)
    v.expect([("book", "A"), ("book", "B")], 0.0)
    v.on_ack(0, "book", ["A"], False)  # subscribed_failed: answered, not proven either way
    v.on_error(0, "Invalid product id")
    assert v.take() == ["B"] and "A" not in v.valid
    v.expect([("book", "C")], 1.0)  # C is asked for, then nobody wants it before an answer
    v.expect([], 2.0)
    v.tick(3.0)
    assert v.lines[0].open == {("book", "C")}
    v.tick(7.5)
    assert v.lines[0].open == set() and v.gone == {}


# -- the merge -------------------------------------------------------------------------------------
def _merge() -> tuple[FuturesMerge, int]:
    merge = FuturesMerge()
    up = merge.add_upstream("a")
    merge.upstream_up(up, 0.0)
    return merge, up


def test_merge_turns_answers_into_a_refused_publication_and_records_the_version():
    merge, up = _merge()
    merge.expect([("book", "PF_XBTUSD"), ("book", "PF_NOPE")], 0.0)
    merge.feed(up, b'{"event":"info","version":1}', 0.0)
    merge.line_status(up, "online", 0.0, "1")
    assert merge.upstream_version() == "1"
    merge.feed(up, sub("book", "PF_XBTUSD"), 0.1)
    merge.feed(up, BAD, 0.1)
    pubs = [p for p in merge.take() if p.channel == REFUSED]
    assert [(p.symbol, p.frame) for p in pubs] == [("PF_NOPE", BAD)]


def test_merge_drops_a_released_subscription_and_ignores_its_late_frames():
    merge, up = _merge()
    merge.line_status(up, "online", 0.0)
    merge.feed(up, snapshot("PF_ETHUSD"), 0.0)
    merge.feed(up, trades("PF_ETHUSD", 3), 0.0)
    assert merge.book_snapshot("PF_ETHUSD") is not None
    merge.drop("book", "PF_ETHUSD")
    merge.feed(up, snapshot("PF_ETHUSD", 20), 0.1)  # in flight before the unsubscribe
    assert merge.book_snapshot("PF_ETHUSD") is None and merge.trade_snapshot("PF_ETHUSD") is not None
    merge.expect([("book", "PF_ETHUSD")], 0.2)  # wanted again: a fresh snapshot serves
    merge.feed(up, snapshot("PF_ETHUSD", 30), 0.3)
    assert orjson.loads(merge.book_snapshot("PF_ETHUSD"))["seq"] == 30


def test_merge_keeps_a_full_kraken_trade_snapshot():
    merge, up = _merge()
    merge.feed(up, trades("PF_XBTUSD", TRADE_SNAPSHOT), 0.0)
    snap = orjson.loads(merge.trade_snapshot("PF_XBTUSD"))
    assert len(snap["trades"]) == TRADE_SNAPSHOT == 100
    assert [t["uid"] for t in snap["trades"][:2]] == ["u100", "u99"]  # newest first


# -- the endpoint ----------------------------------------------------------------------------------
class Conn:
    """The `Session` interface, recording what the endpoint sends."""

    def __init__(self, source: FuturesMerge) -> None:
        self.source = source
        self.ep_state = None
        self.connection_id = 1
        self.subs: set = set()
        self.relay_filter = None
        self.relay_subscribed = False
        self.out: list[dict] = []
        self.books: dict = {}
        self.errors = 0

    def queue(self, frame: bytes) -> None:
        self.out.append(orjson.loads(frame))

    def deliver(self, wire: bytes) -> None:
        n = wire[1] & 0x7F
        self.queue(wire[2 if n < 126 else 4 if n == 126 else 10 :])

    def deliver_book(self, key, wire: bytes, snapshot: bool) -> None:
        if self.books.get(key):
            self.deliver(wire)

    def open_book(self, key, snapshot: bool) -> None:
        snap = self.source.book_snapshot(key[1], key[2])
        self.books[key] = snap is not None
        if snap is not None:
            self.queue(snap)

    def stop_book(self, key) -> None:
        self.books.pop(key, None)

    def count_error(self) -> None:
        self.errors += 1

    def idle(self, now: float) -> float:
        return 0.0

    def take(self) -> list[dict]:
        out, self.out = self.out, []
        return out


class Stack:
    """Merge + endpoint + what the daemon would do on `resubscribe` (record the desired set)."""

    def __init__(self, warm: list[str], **dyn) -> None:
        self.merge, self.up = _merge()
        self.merge.line_status(self.up, "online", 0.0, "1")
        self.desired: list[list[SubKey]] = []
        cfg = DynamicSubscriptionsConfig(**{"release_after": 1.0, "timeout": 3.0, **dyn})
        self.ep = FuturesEndpoint(self.merge, {"book": warm, "trade": warm}, dynamic=cfg, resubscribe=self._resubscribe)

        for feed in ("book", "trade"):  # Kraken acknowledges the warm set
            for p in warm:
                self.upstream(sub(feed, p), 0.0)

    def _resubscribe(self) -> None:
        self.desired.append(self.ep.demanded_subscriptions())

    def upstream(self, raw: bytes, now: float = 0.5) -> None:
        self.merge.feed(self.up, raw, now)
        self.ep.publish(self.merge.take())

    def client(self) -> Conn:
        c = Conn(self.merge)
        self.ep.opened(c, 0.0)
        return c

    def send(self, c: Conn, msg: dict, now: float = 0.1) -> list[dict]:
        self.ep.message(c, orjson.dumps(msg), now)
        return c.take()


def test_a_product_outside_the_warm_set_is_subscribed_upstream_and_answered_on_first_data():
    s = Stack(["PF_XBTUSD"])
    c = s.client()
    assert c.take() == [{"event": "info", "version": 1}]
    assert s.send(c, {"event": "subscribe", "feed": "book", "product_ids": ["pf_ethusd"]}) == []  # waits
    assert s.desired[-1][0] == HEARTBEAT_KEY and SubKey("book", "PF_ETHUSD", 0) in s.desired[-1]
    s.upstream(sub("book", "PF_ETHUSD"))
    assert c.take() == []
    s.upstream(snapshot("PF_ETHUSD"))
    out = c.take()
    assert out[0] == {"event": "subscribed", "feed": "book", "product_ids": ["PF_ETHUSD"]}
    assert out[1]["feed"] == "book_snapshot" and out[1]["seq"] == 10 and len(out) == 2
    # a second client shares it: answered at once
    d = s.client()
    d.take()
    out = s.send(d, {"event": "subscribe", "feed": "book", "product_ids": ["PF_ETHUSD"]})
    assert [m.get("event") or m.get("feed") for m in out] == ["subscribed", "book_snapshot"]
    assert s.ep.tracker.refs(SubKey("book", "PF_ETHUSD", 0)) == 2
    # both leave: released `release_after` later, and the merge forgets its state
    s.ep.closed(c, 1.0)
    s.send(d, {"event": "unsubscribe", "feed": "book", "product_ids": ["PF_ETHUSD"]}, 1.0)
    s.ep.tick(1.5)
    assert SubKey("book", "PF_ETHUSD", 0) in s.ep.demanded_subscriptions()
    s.ep.tick(2.1)
    assert SubKey("book", "PF_ETHUSD", 0) not in s.desired[-1]
    assert s.merge.book_snapshot("PF_ETHUSD") is None


def test_kraken_refusal_is_forwarded_at_once_and_remembered():
    s = Stack(["PF_XBTUSD"])
    c = s.client()
    c.take()
    assert s.send(c, {"event": "subscribe", "feed": "trade", "product_ids": ["PF_NOPE"]}) == []
    s.upstream(BAD)
    assert c.take() == [{"event": "error", "message": "Invalid product id"}]
    assert SubKey("trade", "PF_NOPE", 0) not in s.desired[-1] and not s.ep.waiters
    # asked again: answered without asking Kraken
    n = len(s.desired)
    assert s.send(c, {"event": "subscribe", "feed": "book", "product_ids": ["PF_NOPE"]}, 0.6) == [
        {"event": "error", "message": "Invalid product id"}
    ]
    assert len(s.desired) == n


def test_every_subscribe_is_answered_with_subscribed_including_a_repeated_one():
    s = Stack(["PF_XBTUSD"])
    s.upstream(snapshot("PF_XBTUSD"))
    s.upstream(trades("PF_XBTUSD", 120))
    c = s.client()
    c.take()
    for _ in range(2):
        out = s.send(c, {"event": "subscribe", "feed": "trade", "product_ids": ["PF_XBTUSD"]})
        assert {"event": "subscribed", "feed": "trade", "product_ids": ["PF_XBTUSD"]} in out
        assert len(out[-1]["trades"]) == 100
    assert out[0] == {"event": "alert", "message": "Already subscribed to feed, re-requesting"}
    # on demand, repeated while waiting: one alert now, then subscribed + snapshot for each
    s.send(c, {"event": "subscribe", "feed": "book", "product_ids": ["PF_ETHUSD"]})
    assert s.send(c, {"event": "subscribe", "feed": "book", "product_ids": ["PF_ETHUSD"]}) == [
        {"event": "alert", "message": "Already subscribed to feed, re-requesting"}
    ]
    s.upstream(snapshot("PF_ETHUSD"))
    assert [m.get("event") or m.get("feed") for m in c.take()] == [
        "subscribed",
        "book_snapshot",
        "subscribed",
        "book_snapshot",
    ]


def test_cap_patterns_disabled_and_timeout_answers():
    s = Stack(["PF_XBTUSD"], max_subscriptions=1, deny=["PF_DOGE*"])
    c = s.client()
    c.take()
    s.send(c, {"event": "subscribe", "feed": "book", "product_ids": ["PF_ETHUSD"]})
    (err,) = s.send(c, {"event": "subscribe", "feed": "book", "product_ids": ["PF_SOLUSD"]})
    assert err["event"] == "error" and "server.dynamic_subscriptions.max_subscriptions" in err["message"]
    (err,) = s.send(c, {"event": "subscribe", "feed": "book", "product_ids": ["PF_DOGEUSD"]})
    assert err == {
        "event": "error",
        "message": "Product not served by this relay PF_DOGEUSD (server.dynamic_subscriptions)",
    }
    s.ep.tick(2.0)
    assert c.take() == []
    s.ep.tick(3.2)  # no data within `timeout`
    assert c.take() == [{"event": "error", "message": ERR_TIMEOUT}] and c.errors == 3
    off = Stack(["PF_XBTUSD"], enabled=False)
    d = off.client()
    d.take()
    (err,) = off.send(d, {"event": "subscribe", "feed": "book", "product_ids": ["PF_ETHUSD"]})
    assert "not served by this relay PF_ETHUSD" in err["message"]
    out = off.send(d, {"event": "subscribe", "feed": "book", "product_ids": ["PF_XBTUSD"]})
    assert out == [{"event": "subscribed", "feed": "book", "product_ids": ["PF_XBTUSD"]}]  # warm: at once
    assert off.ep.demanded_subscriptions() == [
        HEARTBEAT_KEY,
        SubKey("book", "PF_XBTUSD", 0),
        SubKey("trade", "PF_XBTUSD", 0),
    ]


def test_unsubscribe_answers_and_heartbeat_cadence():
    s = Stack(["PF_XBTUSD"])
    c = s.client()
    c.take()
    assert s.send(c, {"event": "unsubscribe", "feed": "book", "product_ids": ["PF_XBTUSD"]}) == [
        {"event": "unsubscribed_failed", "feed": "book", "product_ids": ["PF_XBTUSD"]}
    ]
    s.send(c, {"event": "subscribe", "feed": "book", "product_ids": ["PF_ETHUSD"]})
    assert s.send(c, {"event": "unsubscribe", "feed": "book", "product_ids": ["PF_ETHUSD"]}) == [
        {"event": "unsubscribed", "feed": "book", "product_ids": ["PF_ETHUSD"]}
    ]
    assert s.ep.tracker.refs(SubKey("book", "PF_ETHUSD", 0)) == 0 and not s.ep.waiters
    assert s.send(c, {"event": "subscribe", "feed": "heartbeat"}, 10.0) == [
        {"event": "subscribed", "feed": "heartbeat"}
    ]
    assert s.ep.heartbeat_interval == HEARTBEAT_INTERVAL
    s.ep.tick(10.0 + HEARTBEAT_INTERVAL - 0.5)
    assert c.take() == []
    s.ep.tick(10.0 + HEARTBEAT_INTERVAL)
    (hb,) = c.take()
    assert list(hb) == ["feed", "time"] and hb["feed"] == "heartbeat"


def test_reload_turns_a_removed_warm_product_with_clients_into_an_on_demand_one():
    from relay.config import parse_config

    s = Stack(["PF_XBTUSD", "PF_ETHUSD"])
    s.upstream(snapshot("PF_ETHUSD"))
    c = s.client()
    s.send(c, {"event": "subscribe", "feed": "book", "product_ids": ["PF_ETHUSD"]})
    cfg = parse_config(
        {
            "upstreams": [{"name": "f", "url": "wss://futures.kraken.com/ws/v1", "protocol": "futures"}],
            "futures": {"channels": {"book": {"products": ["PF_XBTUSD"]}}},
        },
        env={},
    )
    s.ep.reload(cfg)
    key = SubKey("book", "PF_ETHUSD", 0)
    assert key in s.ep.demanded_subscriptions() and s.ep.tracker.refs(key) == 1
    s.ep.closed(c, 5.0)
    s.ep.tick(6.5)
    assert key not in s.ep.demanded_subscriptions() and s.merge.book_snapshot("PF_ETHUSD") is None


def test_a_failed_upstream_ack_reaches_the_waiting_client_and_info_carries_the_upstream_version():
    s = Stack(["PF_XBTUSD"])
    s.merge.line_status(s.up, "online", 0.0, "2")
    c = s.client()
    assert c.take() == [{"event": "info", "version": 2}]
    s.send(c, {"event": "subscribe", "feed": "ticker", "product_ids": ["PF_ETHUSD"]})
    s.upstream(b'{"event":"subscribed_failed","feed":"ticker","product_ids":["PF_ETHUSD"],"message":"no"}')
    s.ep.upstream_rejected(SubKey("ticker", "PF_ETHUSD", 0), "no", 0.6)  # what the planner reports
    assert c.take() == [{"event": "error", "message": "no"}]
    assert SubKey("ticker", "PF_ETHUSD", 0) not in s.ep.demanded_subscriptions()
