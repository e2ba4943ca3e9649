"""Spot v1 adapter, trade dedupe and endpoint requests (Sans-I/O units)."""

from __future__ import annotations

import orjson

from relay.config import DynamicSubscriptionsConfig
from relay.core.events import AckEvent, BookEvent, HeartbeatEvent, PongEvent, StatusEvent, UnknownEvent
from relay.core.outputs import MergeSettings
from relay.protocols.spot_v1.endpoint import ChannelIds, V1Endpoint
from relay.protocols.spot_v1.merge import V1Merge
from relay.protocols.spot_v1.wire import V1Parser, V1TradeEvent, encode_ping, encode_request, normalize
from tests.protocols.spot_v1.helpers import CF_TICKER, CF_TRADE, FakeSession, cryptofeed_frames, sdk_frames


def test_connection_frames_map_to_neutral_events():
    p = V1Parser()
    st = p.parse(b'{"connectionID":17843232920108168701,"event":"systemStatus","status":"online","version":"1.8.3"}')
    assert isinstance(st, StatusEvent) and st.system == "online" and st.connection_id == 17843232920108168701
    ack = p.parse(
        b'{"channelID":1664,"channelName":"book-1000","event":"subscriptionStatus","pair":"WAVES/EUR",'
        b'"reqid":4,"status":"subscribed","subscription":{"depth":1000,"name":"book"}}'
    )
    assert isinstance(ack, AckEvent)
    assert (ack.method, ack.success, ack.channel, ack.symbol, ack.req_id) == ("subscribe", True, "book", "WAVES/EUR", 4)
    rej = p.parse(
        b'{"errorMessage":"Currency pair not supported XBT/USDX","event":"subscriptionStatus",'
        b'"pair":"XBT/USDX","status":"error","subscription":{"name":"book"}}'
    )
    assert isinstance(rej, AckEvent) and not rej.success and "not supported" in rej.error
    # Kraken dropping a subscription by itself: an unsubscribe ack without reqid
    gone = p.parse(
        b'{"channelID":3,"channelName":"trade","event":"subscriptionStatus","pair":"XBT/USD",'
        b'"status":"unsubscribed","subscription":{"name":"trade"}}'
    )
    assert gone.method == "unsubscribe" and gone.success and gone.req_id is None
    assert isinstance(p.parse(b'{"event":"heartbeat"}'), HeartbeatEvent)
    assert p.parse(b'{"event":"pong","reqid":5}') == PongEvent(5)
    assert isinstance(p.parse(b'{"event":"error","errorMessage":"Malformed request"}'), AckEvent)
    assert isinstance(p.parse(b"[1,2"), UnknownEvent)
    assert isinstance(p.parse(b'[1,{"zz":1},"weird","XBT/USD"]'), UnknownEvent)


def test_book_frames_keep_lexemes_checksum_and_exchange_time():
    p = V1Parser()
    ev = p.parse(
        b'[336,{"a":[["27120.00000","0.00000000","1693415327.935623"],'
        b'["27130.70000","0.37770000","1693415327.468705","r"]]},{"b":[["27119.90000","1.50000000",'
        b'"1693415328.000001"]],"c":"3310070434"},"book-10","XBT/USD"]'
    )
    assert isinstance(ev, BookEvent) and not ev.snapshot
    assert [lv.price_text for lv in ev.asks] == [b"27120.00000", b"27130.70000"]
    assert ev.bids[0].qty_text == b"1.50000000"
    assert ev.checksum == 3310070434
    assert ev.timestamp == "1693415328.000001"  # newest non-republished level
    assert p.times.get("XBT/USD", b"27130.70000", b"0.37770000") == b"1693415327.468705"


def test_trade_ticker_spread_ohlc_frames():
    p = V1Parser()
    tr = p.parse(
        b'[0,[["5541.20000","0.15850568","1534614057.321597","s","l",""],'
        b'["6060.00000","0.02455000","1534614057.324998","b","l",""]],"trade","XBT/USD"]'
    )
    assert isinstance(tr, V1TradeEvent) and len(tr.trades) == 2
    assert tr.trades[1] == b'["6060.00000","0.02455000","1534614057.324998","b","l",""]'
    sp = p.parse(b'[0,["5698.40000","5700.00000","1542057299.545897","1.01234567","0.98765432"],"spread","XBT/USD"]')
    assert sp.time == "1542057299.545897" and sp.element.startswith(b'["5698.40000"')
    oh = p.parse(
        b'[42,["1542057314.748456","1542057360.435743","3586.70000","3586.70000","3586.60000",'
        b'"3586.60000","3586.68894","0.03373000",2],"ohlc-5","XBT/USD"]'
    )
    assert oh.interval == 5 and oh.trades == 2
    for raw in cryptofeed_frames(CF_TICKER) + cryptofeed_frames(CF_TRADE):
        ev = p.parse(raw)
        assert not isinstance(ev, UnknownEvent), raw


def test_normalize_makes_copies_from_different_connections_identical():
    a = b'[336,{"a":[["1.0","2.0","3.0"]],"c":"1"},"book-10","XBT/USD"]'
    b = b'[9911,{"a":[["1.0","2.0","3.0"]],"c":"1"},"book-10","XBT/USD"]'
    assert normalize(a) == normalize(b) == b'[0,{"a":[["1.0","2.0","3.0"]],"c":"1"},"book-10","XBT/USD"]'
    assert normalize(b'{"event":"heartbeat"}') == b'{"event":"heartbeat"}'


def test_requests_to_kraken():
    assert orjson.loads(encode_request("book", ["XBT/USD"], 7, depth=25, snapshot=True)) == {
        "event": "subscribe",
        "reqid": 7,
        "pair": ["XBT/USD"],
        "subscription": {"name": "book", "depth": 25, "snapshot": True},
    }
    assert orjson.loads(encode_request("ohlc", ["XBT/USD"], 8, method="unsubscribe", interval=5, snapshot=True)) == {
        "event": "unsubscribe",
        "reqid": 8,
        "pair": ["XBT/USD"],
        "subscription": {"name": "ohlc", "interval": 5},
    }
    assert orjson.loads(encode_ping(3)) == {"event": "ping", "reqid": 3}


def _trade(t: str, px: str = "100.0") -> bytes:
    return f'["{px}","1.00000000","{t}","b","l",""]'.encode()


def _tframe(cid: int, *trades: bytes) -> bytes:
    return b"[%d,[" % cid + b",".join(trades) + b'],"trade","XBT/USD"]'


def test_v1_trades_deduplicated_by_content_across_lines():
    m = V1Merge(MergeSettings())
    a, b = m.add_upstream("a"), m.add_upstream("b")
    t1, t2, t3 = _trade("1.000001"), _trade("1.000002"), _trade("1.000003")
    m.feed(a, _tframe(5, t1, t2), 0.0)
    m.feed(b, _tframe(9, t1), 0.0)  # the other line coalesced differently
    m.feed(b, _tframe(9, t2, t3), 0.0)
    m.feed(a, _tframe(5, t3), 0.0)
    pubs = m.take()
    published = [orjson.loads(p.frame)[1] for p in pubs if p.channel == "trade"]
    flat = [x for frame in published for x in frame]
    assert [t[2] for t in flat] == ["1.000001", "1.000002", "1.000003"]
    # two identical trades that both lines deliver are both published (multiplicity kept)
    m.feed(a, _tframe(5, t1 := _trade("2.0"), t1), 0.0)
    m.feed(b, _tframe(9, t1, t1), 0.0)
    again = [p for p in m.take() if p.channel == "trade"]
    assert len(again) == 1 and len(orjson.loads(again[0].frame)[1]) == 2
    # a reconnecting line's snapshot repeats recent trades: dropped
    m.upstream_down(b, 1.0)
    m.feed(b, _tframe(77, t2, t3), 1.0)
    assert [p for p in m.take() if p.channel == "trade"] == []
    snap = orjson.loads(m.trade_snapshot("XBT/USD", 3))
    assert snap[0] == 0 and len(snap[1]) == 3


def test_trade_window_is_bounded():
    m = V1Merge(MergeSettings())
    a = m.add_upstream("a")
    for i in range(5000):
        m.feed(a, _tframe(1, _trade(f"{i}.5")), 0.0)
    seen = m.trades["XBT/USD"].seen
    assert len(seen.order) <= seen.window and len(seen.published) <= seen.window
    assert len(seen.lines[a]) <= seen.window


def test_ticker_content_window_and_spread_newest_wins():
    m = V1Merge(MergeSettings())
    a, b = m.add_upstream("a"), m.add_upstream("b")
    t1 = b'{"a":["1.0",1,"1.0"],"b":["0.9",1,"1.0"]}'
    t2 = b'{"a":["1.1",1,"1.0"],"b":["0.9",1,"1.0"]}'
    for up, cid, t in ((a, 1, t1), (b, 2, t1), (a, 1, t2), (b, 2, t2)):
        m.feed(up, b"[%d," % cid + t + b',"ticker","XBT/USD"]', 0.0)
    assert [p.frame for p in m.take() if p.channel == "ticker"] == [
        b"[0," + t1 + b',"ticker","XBT/USD"]',
        b"[0," + t2 + b',"ticker","XBT/USD"]',
    ]
    s1 = b'["1.0","1.1","10.000001","1","1"]'
    s2 = b'["1.0","1.2","10.000002","1","1"]'
    for up, s in ((a, s2), (b, s1), (b, s2)):
        m.feed(up, b"[3," + s + b',"spread","XBT/USD"]', 0.0)
    assert [p.frame for p in m.take() if p.channel == "spread"] == [b"[0," + s2 + b',"spread","XBT/USD"]']
    assert m.spread_snapshot("XBT/USD") == b"[0," + s2 + b',"spread","XBT/USD"]'


def test_channel_ids_stable_and_stamped_once_per_publication():
    ids = ChannelIds()
    f = ids.stamp(("book", "XBT/USD", 10), b'[0,{"b":[],"c":"1"},"book","XBT/USD"]')
    assert f == b'[1,{"b":[],"c":"1"},"book-10","XBT/USD"]'
    assert ids.get("book-10", "XBT/USD") == 1 and ids.get("trade", "XBT/USD") == 2
    assert ids.stamp(("ohlc", "XBT/USD", 5), b'[0,[1],"ohlc","XBT/USD"]') == b'[3,[1],"ohlc-5","XBT/USD"]'


def _ep(dynamic: bool = True) -> tuple[V1Endpoint, FakeSession]:
    m = V1Merge(MergeSettings(book_depth=25))
    m.add_upstream("a")
    ep = V1Endpoint(
        m,
        {"book": ["XBT/USD"], "trade": ["XBT/USD"], "ohlc": ["XBT/USD"]},
        25,
        (1, 5),
        max_subscriptions_per_client=3,
        dynamic=DynamicSubscriptionsConfig(enabled=dynamic),
    )
    s = FakeSession(ep.source)
    ep.add_client(s)
    return ep, s


def test_endpoint_requests_and_errors_with_a_fixed_set():
    """On-demand serving off (`dynamic_subscriptions: {enabled: false}`): only the warm set."""
    ep, s = _ep(dynamic=False)
    send = lambda obj: ep.handle_message(s, orjson.dumps(obj))  # noqa: E731
    send({"event": "ping", "reqid": 9})
    send(
        {
            "event": "subscribe",
            "reqid": 1,
            "pair": ["XBT/USD", "ETH/USD"],
            "subscription": {"name": "book", "depth": 10},
        }
    )
    send({"event": "subscribe", "reqid": 2, "pair": ["XBT/USD"], "subscription": {"name": "book", "depth": 100}})
    send({"event": "subscribe", "reqid": 3, "pair": ["XBT/USD"], "subscription": {"name": "book", "depth": 10}})
    send({"event": "subscribe", "reqid": 4, "pair": ["XBT/USD"], "subscription": {"name": "ohlc", "interval": 60}})
    send({"event": "subscribe", "reqid": 5, "pair": ["XBT/USD"], "subscription": {"name": "bogus"}})
    send({"event": "subscribe", "reqid": 6, "pair": "XBT/USD", "subscription": {"name": "trade"}})
    send({"event": "unsubscribe", "reqid": 7, "pair": ["XBT/USD"], "subscription": {"name": "trade"}})
    ep.handle_message(s, b"not json")
    out = [orjson.loads(f) for f in s.frames]
    assert out[0] == {"event": "pong", "reqid": 9}
    ok = out[1]
    assert ok["status"] == "subscribed" and ok["channelName"] == "book-10" and ok["pair"] == "XBT/USD"
    assert ok["reqid"] == 1 and isinstance(ok["channelID"], int) and ok["subscription"] == {"depth": 10, "name": "book"}
    assert list(ok) == ["channelID", "channelName", "event", "pair", "reqid", "status", "subscription"]
    assert list(ok["subscription"]) == ["depth", "name"]  # Kraken's key order (the captures)
    errors = {(o.get("reqid"), o.get("pair"), o.get("errorMessage")) for o in out if o.get("status") == "error"}
    assert (1, "ETH/USD", "Currency pair not supported ETH/USD") in errors
    assert (2, "XBT/USD", "Subscription depth not supported") in errors  # deeper than the relay holds
    assert (3, "XBT/USD", "Already subscribed") in errors
    assert (4, "XBT/USD", "Subscription ohlc interval not supported") in errors
    assert (5, "XBT/USD", "Subscription name invalid") in errors
    assert (7, "XBT/USD", "Subscription Not Found") in errors
    generic = [o for o in out if o.get("event") == "error"]
    assert {o.get("reqid") for o in generic} == {6, None}


def test_endpoint_subscription_limit_and_unsubscribe_releases():
    ep, s = _ep()
    for i, (name, extra) in enumerate(
        (("book", {"depth": 10}), ("trade", {}), ("ohlc", {"interval": 5}), ("ohlc", {"interval": 1}))
    ):
        ep.handle_message(
            s,
            orjson.dumps(
                {"event": "subscribe", "reqid": i, "pair": ["XBT/USD"], "subscription": {"name": name, **extra}}
            ),
        )
    last = orjson.loads(s.frames[-1])
    assert last["status"] == "error" and last["errorMessage"] == "Subscription limit exceeded"
    assert ep.merge.books["XBT/USD"].view_refs == {10: 1}
    ep.handle_message(s, b'{"event":"unsubscribe","pair":["XBT/USD"],"subscription":{"name":"book","depth":10}}')
    assert orjson.loads(s.frames[-1])["status"] == "unsubscribed"
    assert ep.merge.books["XBT/USD"].view_refs == {}
    ep.remove_client(s)
    assert ep.subscription_count() == 0


def test_planner_resubscribes_what_kraken_unsubscribed_by_itself():
    from relay.protocols.spot_v1.spec import SPOT_V1 as V1
    from relay.protocols.spot_v1.spec import request_params
    from relay.upstream.subscriptions import SubKey, SubscriptionPlanner

    keys = [SubKey("book", "XBT/USD", 10), SubKey("ohlc", "XBT/USD", 1), SubKey("ohlc", "XBT/USD", 5)]
    planner = SubscriptionPlanner(
        keys, requests_per_second=100, burst=10, encode_request=V1.encode_request, params_for=request_params
    )
    planner.reset()
    frames = planner.poll(0.0)
    assert all(orjson.loads(f)["event"] == "subscribe" for f in frames)
    parser = V1Parser()
    for f in frames:
        req = orjson.loads(f)
        sub = req["subscription"]
        name = sub["name"] + (f"-{sub.get('depth', sub.get('interval'))}" if sub["name"] in ("book", "ohlc") else "")
        for pair in req["pair"]:
            planner.on_ack(
                parser.parse(
                    orjson.dumps(
                        {
                            "channelID": 1,
                            "channelName": name,
                            "event": "subscriptionStatus",
                            "pair": pair,
                            "reqid": req["reqid"],
                            "status": "subscribed",
                            "subscription": sub,
                        }
                    )
                ),
                0.1,
            )
    assert set(planner.states().values()) == {"active"}
    # Kraken drops ohlc-5 on its own: no reqid
    planner.on_ack(
        parser.parse(
            b'{"channelID":3,"channelName":"ohlc-5","event":"subscriptionStatus",'
            b'"pair":"XBT/USD","status":"unsubscribed","subscription":{"interval":5,"name":"ohlc"}}'
        ),
        1.0,
    )
    again = [orjson.loads(f) for f in planner.poll(1.0)]
    assert [(r["event"], r["subscription"]) for r in again] == [("subscribe", {"name": "ohlc", "interval": 5})]
    assert planner.states()["book:XBT/USD:10"] == "active"


def test_stamped_source_serves_snapshots_with_the_relay_ids():
    frames = sdk_frames()
    m = V1Merge(MergeSettings(book_depth=10))
    up = m.add_upstream("a")
    for raw in frames[:50]:
        m.feed(up, raw, 0.0)
    ep = V1Endpoint(m, {"book": ["XBT/USD"]}, 10)
    snap = ep.source.book_snapshot("XBT/USD", 10)
    msg = orjson.loads(snap)
    assert msg[0] == ep.ids.get("book-10", "XBT/USD") and msg[-2:] == ["book-10", "XBT/USD"]
    assert len(msg[1]["as"]) == 10 and "c" not in msg[1]  # v1 snapshots carry no checksum
    assert ep.source.book_snapshot("ETH/USD", 10) is None


def test_v1_config_section_errors_are_one_line_and_name_the_key():
    import pytest

    from relay.config import ConfigError, parse_config

    up = {"upstreams": [{"name": "a", "url": "wss://ws.kraken.com", "protocol": "v1"}]}
    cases = [
        ({}, "v1: is required (upstreams[0] has protocol v1)"),
        (
            {"v1": {"channels": {}}, "server": {"dynamic_subscriptions": {"enabled": False}}},
            "v1.channels: no pairs configured in any channel",
        ),
        ({"v1": {"channels": {"book": {"symbols": ["XBTUSD"]}}}}, "v1.channels.book.symbols"),
        ({"v1": {"channels": {"book": {"symbols": ["XBT/USD"], "depth": 20}}}}, "v1.channels.book.depth"),
        ({"v1": {"channels": {"ohlc": {"symbols": ["XBT/USD"], "intervals": [2]}}}}, "v1.channels.ohlc.intervals"),
        ({"v1": {"channels": {"spread": {"symbols": ["XBT/USD"]}}, "path": "/v2"}}, "v1.path: '/v2' is already used"),
    ]
    for extra, text in cases:
        with pytest.raises(ConfigError) as exc:
            parse_config({**up, **extra}, env={})
        assert text in str(exc.value) and "\n" not in str(exc.value), str(exc.value)
    v2_only = {
        "upstreams": [{"name": "a", "url": "wss://ws.kraken.com/v2"}],
        "channels": {"book": {"symbols": ["BTC/USD"]}},
        "v1": {"channels": {"book": {"symbols": ["XBT/USD"]}}},
    }
    with pytest.raises(ConfigError, match="v1: configured but no upstream has protocol v1"):
        parse_config(v2_only, env={})


def test_check_config_summarizes_the_v1_stack():
    from relay.config import parse_config
    from relay.ops.check_config import summary, warnings

    cfg = parse_config(
        {
            "upstreams": [
                {"name": "a", "url": "wss://ws.kraken.com", "protocol": "v1"},
                {"name": "b", "url": "wss://beta-ws.kraken.com", "protocol": "v1"},
            ],
            "v1": {
                "channels": {
                    "book": {"symbols": ["XBT/USD", "ETH/USD"], "depth": 25},
                    "spread": {"symbols": ["XBT/USD"]},
                }
            },
        },
        env={},
    )
    assert "Spot v1: 2 pairs, channels book/25 spread, serving ws://127.0.0.1:8765/" in summary(cfg)
    assert any(w.startswith("v1: server.tls is not set") for w in warnings(cfg))


def test_reload_changes_the_served_pairs_but_not_the_book_depth():
    from relay.config import parse_config
    from relay.protocols.spot_v1.spec import SPOT_V1 as V1

    def cfg(pairs, depth):
        return parse_config(
            {
                "upstreams": [{"name": "a", "url": "wss://ws.kraken.com", "protocol": "v1"}],
                "v1": {"channels": {"book": {"symbols": pairs, "depth": depth}}},
            },
            env={},
        )

    ep, s = _ep()  # depth 25, XBT/USD
    new = ep.reload(cfg(["XBT/USD", "ETH/USD"], 100))
    assert new.v1.channels.book.depth == 25 and new.v1.channels.book.symbols == ["XBT/USD", "ETH/USD"]
    assert {k.param for k in V1.desired(new.v1)} == {25}
    ep.handle_message(s, b'{"event":"subscribe","pair":["ETH/USD"],"subscription":{"name":"book","depth":10}}')
    assert orjson.loads(s.frames[-1])["status"] == "subscribed"


def test_heartbeats_only_to_subscribed_idle_clients():
    ep, s = _ep()
    idle = FakeSession(ep.source)
    ep.add_client(idle)
    s.last_out = idle.last_out = 0.0
    ep.handle_message(s, b'{"event":"subscribe","pair":["XBT/USD"],"subscription":{"name":"trade"}}')
    n = len(s.frames)
    ep.tick(0.5)
    assert len(s.frames) == n  # not idle long enough
    ep.tick(1.0)
    assert s.frames[n:] == [b'{"event":"heartbeat"}']
    assert idle.frames == []  # nothing subscribed: no heartbeats (as Kraken)


def test_sample_config_is_valid():
    from relay.config import load_config
    from relay.protocols.spot_v1.spec import SPOT_V1 as V1
    from tests.kit.paths import ROOT

    cfg = load_config(ROOT / "config" / "v1.yaml", env={})
    assert [u.protocol for u in cfg.upstreams] == ["v1", "v1"] and cfg.v1.path == "/"
    assert len(V1.desired(cfg.v1)) == 2 + 2 + 2 + 1 + 2


def test_unsubscribe_everything_of_a_pair_with_name_star():
    ep, s = _ep()
    ep.handle_message(s, b'{"event":"subscribe","pair":["XBT/USD"],"subscription":{"name":"book","depth":10}}')
    ep.handle_message(s, b'{"event":"subscribe","pair":["XBT/USD"],"subscription":{"name":"trade"}}')
    n = len(s.frames)
    ep.handle_message(s, b'{"event":"unsubscribe","reqid":5,"pair":["XBT/USD"],"subscription":{"name":"*"}}')
    out = [orjson.loads(f) for f in s.frames[n:]]
    assert {(o["status"], o["channelName"], o["reqid"]) for o in out} == {
        ("unsubscribed", "book-10", 5),
        ("unsubscribed", "trade", 5),
    }
    assert s.subs == set() and ep.subscription_count() == 0
    ep.handle_message(s, b'{"event":"unsubscribe","pair":["XBT/USD"],"subscription":{"name":"*"}}')
    assert orjson.loads(s.frames[-1])["errorMessage"] == "Subscription Not Found"


def test_ticker_value_that_comes_back_is_published_again_once():
    m = V1Merge(MergeSettings())
    a, b = m.add_upstream("a"), m.add_upstream("b")
    t1 = b'{"a":["1.0",1,"1.0"],"b":["0.9",1,"1.0"]}'
    t2 = b'{"a":["1.1",1,"1.0"],"b":["0.9",1,"1.0"]}'
    frame = lambda cid, t: b"[%d," % cid + t + b',"ticker","XBT/USD"]'  # noqa: E731
    for up, cid, t in ((a, 1, t1), (a, 1, t2), (a, 1, t1), (b, 2, t1), (b, 2, t2), (b, 2, t1)):
        m.feed(up, frame(cid, t), 0.0)
    assert [orjson.loads(p.frame)[1]["a"][0] for p in m.take() if p.channel == "ticker"] == ["1.0", "1.1", "1.0"]
    assert m.ticker_snapshot("XBT/USD") == frame(0, t1)
    # a line that reconnects restates the current value: not republished
    m.upstream_down(b, 1.0)
    m.feed(b, frame(7, t1), 1.0)
    assert [p for p in m.take() if p.channel == "ticker"] == []
    # a third line added later takes part too
    c = m.add_upstream("c")
    m.feed(c, frame(9, t1), 2.0)
    assert [p for p in m.take() if p.channel == "ticker"] == []


def test_v1_numbers_must_be_plain_decimals_and_unsolicited_pairs_hold_no_state() -> None:
    from relay.core.events import BookEvent as _Book
    from relay.core.events import UnknownEvent as _Unknown
    from relay.protocols.spot_v1.merge import V1Merge
    from relay.protocols.spot_v1.wire import V1Parser

    p = V1Parser()
    frame = b'[336,{"b":[["%s","%s","1534614057.321597"]],"c":"974942666"},"book-10","XBT/USD"]'
    assert isinstance(p.parse(frame % (b"6000.10000", b"1.00000000")), _Book)
    for price, qty in [(b"1e400", b"1.0"), (b"nan", b"1.0"), (b"6000.1", b"-1.0"), (b"inf", b"1.0")]:
        ev = p.parse(frame % (price, qty))
        assert isinstance(ev, _Unknown) and ev.symbol == "XBT/USD", (price, qty)
    trade = b'[0,[["%s","0.1","1534614057.321597","b","l",""]],"trade","XBT/USD"]'
    assert isinstance(p.parse(trade % b"-5.0"), _Unknown)
    m = V1Merge()
    a = m.add_upstream("a")
    m.line_status(a, "online", 0.0)
    m.set_subscribed([("book", "XBT/USD", 10)])
    snap = b'[336,{"as":[["6000.2","1.0","1534614057.321597"]],"bs":[["6000.1","1.0","1534614057.321597"]]},"book-10","%s"]'
    for i in range(500):
        m.feed(a, snap % f"X{i:03d}/USD".encode(), 0.1)
    assert m.books == {} and m.upstream_stats[a].unsolicited == 500
    assert m.parser.times.by_symbol == {}


def test_v1_ticker_spread_and_ohlc_numbers_must_be_plain() -> None:
    from relay.core.events import UnknownEvent as _Unknown
    from relay.protocols.spot_v1.wire import V1Parser

    p = V1Parser()
    ticker = (
        b'[1668,{"a":["13.253900",35,"35.72892241"],"b":["13.232900",185,"185.18432037"],'
        b'"c":["%s","3.71672000"],"v":["26560.85364463","72035.05488104"],"p":["13.529003","13.734728"],'
        b'"t":[640,1353],"l":["13.021800","13.021800"],"h":["13.942000","14.211200"],'
        b'"o":["13.804000","13.428300"]},"ticker","WAVES/EUR"]'
    )
    assert not isinstance(p.parse(ticker % b"13.253900"), _Unknown)
    spread = b'[0,["%s","5698.50000","1542057299.545897","1.01234567","0.98765432"],"spread","XBT/USD"]'
    assert not isinstance(p.parse(spread % b"5698.40000"), _Unknown)
    ohlc = b'[42,["1542057314.748456","1542057360.435743","3586.70000","3586.70000","3586.60000","%s","3586.68894","0.03373000",2],"ohlc-5","XBT/USD"]'
    assert not isinstance(p.parse(ohlc % b"3586.60000"), _Unknown)
    for bad in (b"1e400", b"nan", b"-1.0", b"inf"):
        for frame in (ticker, spread, ohlc):
            ev = p.parse(frame % bad)
            assert isinstance(ev, _Unknown) and ev.symbol, (frame[:30], bad)
