"""The `futures:` config section, protocol cross-checks and the futures upstream planner."""

from __future__ import annotations

import pytest

from relay import protocols
from relay.config import ConfigError, parse_config
from relay.core.events import AckEvent
from relay.ops.check_config import summary
from relay.upstream.subscriptions import ACTIVE, SubKey, SubscriptionPlanner

FUT = {"channels": {"book": {"products": ["pf_xbtusd"]}, "trade": {"products": ["PF_XBTUSD", "PI_ETHUSD"]}}}


def _cfg(**data):
    base = {
        "upstreams": [{"name": "f", "url": "wss://futures.kraken.com/ws/v1", "protocol": "futures"}],
        "futures": FUT,
    }
    base.update(data)
    return parse_config(base, env={})


def test_futures_only_config_needs_no_channels_and_upper_cases_products():
    cfg = _cfg()
    assert cfg.futures.channels.book.products == ["PF_XBTUSD"]
    assert cfg.futures.path == "/ws/v1"
    assert "Futures: 2 products, feeds book trade, serving ws://127.0.0.1:8765/ws/v1" in summary(cfg)
    spec = protocols.get("futures")
    keys = spec.desired(spec.section(cfg))
    assert keys[0] == SubKey("heartbeat", "", 0)  # liveness first
    assert SubKey("trade", "PI_ETHUSD", 0) in keys
    assert spec.frame_timeout(cfg) == 90.0 and spec.ws_ping_interval(cfg) == 30.0 and spec.encode_ping is None
    assert [s.name for s in protocols.configured(cfg)] == ["futures"]


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"futures": None}, "futures: is required (upstreams[0] has protocol futures)"),
        (
            {"futures": {"channels": {"book": {"products": ["BTC/USD"]}}}},
            "futures.channels.book.products: 'BTC/USD' is not a Kraken Futures product id like PF_XBTUSD",
        ),
        (  # a fixed set: with on-demand serving (the default) an empty warm set is valid
            {"futures": {"channels": {}}, "server": {"dynamic_subscriptions": {"enabled": False}}},
            "futures.channels: no products configured in any feed",
        ),
        ({"futures": {**FUT, "path": "/v2"}}, "futures.path: '/v2' is already used by server.path"),
        ({"futures": {**FUT, "ping_interval": 90}}, "futures.ping_interval: must be <= 60"),
        ({"futures": {**FUT, "bogus": 1}}, "futures.bogus: unknown key"),
        ({"channels": {"book": {"symbols": ["BTC/USD"]}}}, "channels: configured but no upstream has protocol v2"),
    ],
)
def test_errors_are_one_line_and_name_the_key(data, error):
    with pytest.raises(ConfigError) as exc:
        _cfg(**data)
    assert str(exc.value).startswith(error) and "\n" not in str(exc.value)


def test_on_demand_serving_needs_no_warm_products():
    cfg = _cfg(futures={"channels": {}})
    spec = protocols.get("futures")
    assert spec.desired(spec.section(cfg)) == [SubKey("heartbeat", "", 0)]


def test_futures_section_without_futures_upstream_is_an_error():
    with pytest.raises(ConfigError, match=r"^futures: configured but no upstream has protocol futures"):
        parse_config(
            {
                "upstreams": [{"name": "s", "url": "wss://ws.kraken.com/v2"}],
                "channels": {"book": {"symbols": ["BTC/USD"]}},
                "futures": FUT,
            },
            env={},
        )
    with pytest.raises(ConfigError, match=r"^channels: is required"):
        parse_config({"upstreams": [{"name": "s", "url": "wss://ws.kraken.com/v2"}]}, env={})


def test_planner_matches_futures_acks_without_req_id_and_frees_its_bookkeeping():
    spec = protocols.get("futures")
    keys = [SubKey("heartbeat", "", 0), SubKey("book", "PF_XBTUSD", 0), SubKey("book", "PF_ETHUSD", 0)]
    p = SubscriptionPlanner(keys, encode_request=spec.encode_request, params_for=spec.request_params)
    p.reset()
    frames = sorted(p.poll(0.0))
    assert frames == [
        b'{"event":"subscribe","feed":"book","product_ids":["PF_XBTUSD","PF_ETHUSD"]}',
        b'{"event":"subscribe","feed":"heartbeat"}',
    ]
    parser = spec.parser()
    for raw in (
        b'{"event":"subscribed","feed":"heartbeat"}',
        b'{"event":"subscribed","feed":"book","product_ids":["PF_XBTUSD"]}',
        b'{"event":"subscribed_failed","feed":"book","product_ids":["PF_ETHUSD"],"message":"no"}',
    ):
        ev = parser.parse(raw)
        assert isinstance(ev, AckEvent) and ev.req_id is None
        p.on_ack(ev, 0.1)
    st = p.states()
    assert st["heartbeat"] == ACTIVE and st["book:PF_XBTUSD"] == ACTIVE and st["book:PF_ETHUSD"] == "retry"
    assert p._requests == {}  # answered requests are forgotten even without ids
    # a resync is unsubscribe + subscribe of that product alone
    assert p.resync("book", "PF_XBTUSD", 5.0) == "started"
    assert p.poll(5.0) == [b'{"event":"unsubscribe","feed":"book","product_ids":["PF_XBTUSD"]}']


def test_sample_futures_config_is_valid():
    from relay.config import load_config
    from tests.kit.paths import ROOT

    cfg = load_config(ROOT / "config" / "futures.yaml", env={})
    assert {u.protocol for u in cfg.upstreams} == {"futures"}
    assert cfg.futures.channels.all_products() == ["PF_XBTUSD", "PF_ETHUSD"]


def test_one_ack_naming_several_products_acknowledges_each():
    spec = protocols.get("futures")
    keys = [SubKey("trade", "PF_XBTUSD", 0), SubKey("trade", "PF_ETHUSD", 0), SubKey("book", "PF_XBTUSD", 0)]
    p = SubscriptionPlanner(keys, encode_request=spec.encode_request, params_for=spec.request_params)
    p.reset()
    p.poll(0.0)
    ev = spec.parser().parse(b'{"event":"subscribed","feed":"trade","product_ids":["pf_xbtusd","PF_ETHUSD"]}')
    res = p.on_ack(ev, 0.1)
    assert sorted(k.symbol for k in res.accepted) == ["PF_ETHUSD", "PF_XBTUSD"]
    assert p.states()["book:PF_XBTUSD"] == "sent"
