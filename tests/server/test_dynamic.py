"""On-demand subscriptions on the v2 endpoint: what clients ask beyond the warm set becomes an
upstream subscription (the endpoint's plan), answered once data is there, released after the
last client, bounded by the cap and the patterns; invalid symbols are refused at once."""

from __future__ import annotations

import asyncio
import re
import time

from relay.config import parse_config
from relay.core.keys import SubKey
from relay.protocols.demand import limit_text
from tests.core.streams import book_stream
from tests.kit.paths import v2_wire_frames
from tests.server.conftest import channels
from tests.server.helpers import instrument_frame, ticker_frame

DYN = {
    "dynamic_subscriptions": {
        "allow": ["ETH/USD", "SOL/USD", "ADA/USD"],
        "max_subscriptions": 2,
        "release_after": 0.2,
        "timeout": 0.5,
    }
}


async def wait_for(pred, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def plan(relay) -> list[tuple]:
    return [tuple(k) for k in relay.endpoint.demanded_subscriptions()]


async def test_demand_ack_after_data_shared_then_released_after_last_client(make_relay, clients):
    relay = await make_relay(DYN)
    changes: list[list[tuple]] = []
    relay.endpoint.resubscribe = lambda: changes.append(plan(relay))
    c = await clients(relay.url)
    await c.recv()
    await c.send({"method": "subscribe", "params": {"channel": "ticker", "symbol": ["ETH/USD"]}, "req_id": 1})
    await wait_for(lambda: changes)
    assert ("ticker", "ETH/USD", 0) in changes[-1]  # subscribed upstream on every line
    assert len(c.log) == 1  # no ack before data
    relay.feed(ticker_frame("ETH/USD"))
    ack = await c.recv()
    assert ack["success"] and ack["req_id"] == 1 and ack["result"]["symbol"] == "ETH/USD"
    snap = await c.recv()
    assert snap["channel"] == "ticker" and snap["type"] == "snapshot" and snap["data"][0]["symbol"] == "ETH/USD"
    d = await clients(relay.url)  # a second client is served at once, from the same subscription
    await d.recv()
    await d.send({"method": "subscribe", "params": {"channel": "ticker", "symbol": ["ETH/USD"]}})
    assert (await d.recv())["success"]
    assert len(changes) == 1
    relay.feed(ticker_frame("ETH/USD", last=b"29431.0", ts="2023-07-30T15:30:01.000000Z"))
    for cl in (c, d):
        upd = await cl.until(lambda m: m.get("channel") == "ticker" and m.get("type") == "update")
        assert upd["data"][0]["last"] == 29431.0
    await c.send({"method": "unsubscribe", "params": {"channel": "ticker", "symbol": ["ETH/USD"]}})
    await d.close()
    await c.until(lambda m: m.get("method") == "unsubscribe")
    await wait_for(lambda: len(changes) == 2)  # release_after, then released upstream
    assert ("ticker", "ETH/USD", 0) not in changes[-1]
    assert "ETH/USD" not in relay.merge.tickers  # nothing held for what nobody subscribed


async def test_refusals_name_the_rule_the_cap_and_kraken_s_answer(make_relay, clients):
    relay = await make_relay(DYN)
    c = await clients(relay.url)
    await c.recv()
    await c.send({"method": "subscribe", "params": {"channel": "trade", "symbol": ["DOGE/USD"]}})
    err = await c.recv()
    assert err["error"] == "Currency pair not served by this relay DOGE/USD (server.dynamic_subscriptions)"
    assert err["symbol"] == "DOGE/USD"
    await c.send(
        {
            "method": "subscribe",
            "params": {"channel": "trade", "symbol": ["ETH/USD", "SOL/USD", "ADA/USD"]},
            "req_id": 9,
        }
    )
    err = await c.recv()
    assert err["symbol"] == "ADA/USD" and err["error"] == limit_text(relay.endpoint.hub.demand.cfg)
    assert "max_subscriptions" in err["error"] and "2" in err["error"]
    # Kraken refuses SOL/USD on a line: the waiting client gets Kraken's text, no timeout
    relay.endpoint.upstream_rejected(SubKey("trade", "SOL/USD", 0), "Currency pair not supported SOL/USD", 0.0)
    err = await c.recv()
    assert err == {**err, "symbol": "SOL/USD", "req_id": 9, "success": False}
    assert err["error"] == "Currency pair not supported SOL/USD"
    assert ("trade", "SOL/USD", 0) not in plan(relay)
    timeout = await c.recv(timeout=5)  # no data for ETH/USD within `timeout`
    assert timeout["error"] == "Timed out waiting for market data" and timeout["symbol"] == "ETH/USD"


async def test_invalid_symbol_refused_at_once_from_the_instrument_list(make_relay, clients):
    relay = await make_relay()
    relay.feed(instrument_frame("BTC/USD", "ETH/USD"))
    c = await clients(relay.url)
    await c.recv()
    before = plan(relay)
    started = time.monotonic()
    await c.send({"method": "subscribe", "params": {"channel": "book", "symbol": ["XBT/USD"]}, "req_id": 5})
    err = await c.recv()
    assert time.monotonic() - started < 1.0
    assert err["error"] == "Currency pair not supported XBT/USD" and err["symbol"] == "XBT/USD"
    assert plan(relay) == before  # nothing asked upstream


async def test_on_demand_off_serves_the_fixed_set_and_says_why_not_more(make_relay, clients):
    relay = await make_relay({"dynamic_subscriptions": {"enabled": False}})
    before = plan(relay)
    c = await clients(relay.url)
    await c.recv()
    await c.send({"method": "subscribe", "params": {"channel": "book", "symbol": ["ETH/USD", "BTC/USD"]}})
    replies = [await c.recv() for _ in range(2)]
    assert re.match(r"Currency pair not served by this relay ETH/USD \(", replies[0]["error"])
    assert replies[1]["success"] and replies[1]["result"]["symbol"] == "BTC/USD"
    await c.send({"method": "subscribe", "params": {"channel": "ohlc", "symbol": ["BTC/USD"], "interval": 240}})
    err = await c.recv()
    assert err["error"].startswith("Currency pair not served by this relay ohlc BTC/USD")
    assert plan(relay) == before


async def test_client_leaving_while_waiting_releases_the_demand(make_relay, clients):
    relay = await make_relay(DYN)
    c = await clients(relay.url)
    await c.recv()
    await c.send({"method": "subscribe", "params": {"channel": "book", "symbol": ["SOL/USD"]}})
    await wait_for(lambda: ("book", "SOL/USD", 10) in plan(relay))
    await c.close()
    await wait_for(lambda: ("book", "SOL/USD", 10) not in plan(relay))
    assert relay.endpoint.stats()["pending_subscriptions"] == 0
    assert "SOL/USD" not in relay.merge.books


async def test_on_demand_book_without_a_configured_book_channel(make_relay, clients):
    relay = await make_relay(DYN, chans=channels(book=None))
    c = await clients(relay.url)
    await c.recv()
    await c.send(
        {"method": "subscribe", "params": {"channel": "book", "symbol": ["ETH/USD"], "depth": 25}, "req_id": 3}
    )
    await wait_for(lambda: ("book", "ETH/USD", 25) in plan(relay))
    for raw in [f.replace(b"BTC/USD", b"ETH/USD") for f in v2_wire_frames()[:40]]:
        relay.feed(raw)
    ack = await c.recv()
    assert ack["success"] and ack["req_id"] == 3 and ack["result"]["depth"] == 25
    c.depth = 25
    await c.barrier()
    assert c.books["ETH/USD"] and c.checksum_bad == 0 and c.checksums_ok >= 1


async def test_deeper_book_resubscribes_upstream_without_disturbing_current_subscribers(make_relay, clients):
    """Warm at depth 10; a client asks 1000: the symbol's one upstream subscription becomes depth
    1000 (the lines resubscribe), the depth-10 subscriber keeps its book with no new snapshot."""
    chans = channels(book={"symbols": ["BTC/USD"], "depth": 10})
    relay = await make_relay(DYN | {"dynamic_subscriptions": {"release_after": 0.2}}, chans=chans)
    shallow_line = book_stream(60, depth=10, seed=5, deep=600)
    deep_line = book_stream(300, depth=1000, seed=6, deep=600)  # what a depth-1000 subscription sends
    relay.feed(shallow_line.snapshot, up=0)
    for raw in shallow_line.updates[:30]:
        relay.feed(raw, up=0)
    shallow = await clients(relay.url)
    await shallow.recv()
    await shallow.send({"method": "subscribe", "params": {"channel": "book", "symbol": ["BTC/USD"], "depth": 10}})
    shallow.depth = 10
    await shallow.until(lambda m: m.get("type") == "snapshot")
    deep = await clients(relay.url)
    await deep.recv()
    await deep.send({"method": "subscribe", "params": {"channel": "book", "symbol": ["BTC/USD"], "depth": 1000}})
    deep.depth = 1000
    await wait_for(lambda: ("book", "BTC/USD", 1000) in plan(relay))  # one subscription, the deepest
    assert not any(k[:2] == ("book", "BTC/USD") and k[2] != 1000 for k in plan(relay))
    for raw in shallow_line.updates[30:]:  # line 0 before it resubscribes: still served
        relay.feed(raw, up=0)
    assert len(deep.log) == 1  # not complete to depth 1000 yet: no ack
    relay.feed(deep_line.snapshot, up=1)  # line 1 resubscribed at depth 1000
    for raw in deep_line.updates:
        relay.feed(raw, up=1)
    ack = await deep.until(lambda m: m.get("method") == "subscribe")
    assert ack["success"] and ack["result"]["depth"] == 1000
    snap = await deep.until(lambda m: m.get("channel") == "book")
    assert snap["type"] == "snapshot" and len(snap["data"][0]["bids"]) > 500
    for cl in (shallow, deep):
        await cl.barrier()
        assert cl.checksum_bad == 0 and cl.checksums_ok >= 10
    final = deep_line.books[-1]
    assert shallow.books["BTC/USD"].bids.best(10) == final.bids.best(10)  # the shallow client followed
    assert deep.books["BTC/USD"].bids.best(1000) == final.bids.best(1000)
    snapshots = [m for m in shallow.log if m.get("channel") == "book" and m.get("type") == "snapshot"]
    print([(m.get("type"), m.get("method")) for m in shallow.log])
    assert len(snapshots) == 1  # the shallow subscriber never saw a break
    await deep.close()
    await wait_for(lambda: ("book", "BTC/USD", 10) in plan(relay))  # back to the warm depth
    assert relay.merge.book_depth("BTC/USD") == 10


async def test_status_carries_each_connection_s_id_and_kraken_s_version(make_relay, clients):
    relay = await make_relay()
    relay.merge.line_status(relay.ups[0], "online", time.monotonic(), "2.0.10")
    a, b = await clients(relay.url), await clients(relay.url)
    first = [(await c.recv())["data"][0] for c in (a, b)]
    assert first[0]["connection_id"] != first[1]["connection_id"]
    assert all(s["connection_id"] > 0 and s["version"] == "2.0.10" and s["api_version"] == "v2" for s in first)
    for up in relay.ups:
        relay.merge.line_status(up, "maintenance", time.monotonic())
    relay.flush()
    for c, st in zip((a, b), first, strict=True):
        upd = (await c.until(lambda m: m.get("channel") == "status"))["data"][0]
        assert upd["system"] == "maintenance"
        assert upd["connection_id"] == st["connection_id"] and upd["version"] == "2.0.10"


async def test_reload_changes_the_warm_depth_like_an_on_demand_depth(make_relay, clients):
    relay = await make_relay(chans=channels(book={"symbols": ["BTC/USD"], "depth": 10}))
    assert ("book", "BTC/USD", 10) in plan(relay)
    cfg = parse_config(
        {
            "upstreams": [{"name": "a", "url": "ws://127.0.0.1:1/v2"}],
            "channels": {"book": {"symbols": ["BTC/USD"], "depth": 100}},
        },
        env={},
    )
    assert relay.endpoint.reload(cfg).channels.book.depth == 100  # applied, not vetoed
    assert ("book", "BTC/USD", 100) in plan(relay) and ("book", "BTC/USD", 10) not in plan(relay)
    assert relay.merge.book_depth("BTC/USD") == 100  # no published book yet: at once


async def test_transient_upstream_refusals_keep_the_client_waiting(make_relay, clients):
    relay = await make_relay(DYN)
    c = await clients(relay.url)
    await c.recv()
    await c.send({"method": "subscribe", "params": {"channel": "ticker", "symbol": ["ETH/USD"]}, "req_id": 2})
    await wait_for(lambda: ("ticker", "ETH/USD", 0) in plan(relay))
    relay.endpoint.upstream_rejected(SubKey("ticker", "ETH/USD", 0), "Exceeded msg rate", 0.0)
    relay.feed(ticker_frame("ETH/USD"))  # the line's retry succeeded
    ack = await c.recv()
    assert ack["success"] is True and ack["req_id"] == 2
