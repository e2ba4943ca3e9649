"""Trade/ticker/ohlc/instrument snapshots, status changes, the relay channel, and recovery."""

from __future__ import annotations

import time
from types import SimpleNamespace

import orjson

from relay.core.outputs import Publication
from tests.kit.paths import v2_wire_frames
from tests.server.helpers import ohlc_frame, ticker_frame, trade_frame


async def test_trade_snapshot_only_when_asked_and_trades_once(make_relay, clients):
    relay = await make_relay()
    for tid in range(100, 110):
        relay.feed(trade_frame(tid))
    plain = await clients(relay.url)
    snap = await clients(relay.url)
    for c in (plain, snap):
        await c.recv()
    await plain.send({"method": "subscribe", "params": {"channel": "trade", "symbol": ["BTC/USD"]}})
    await snap.send({"method": "subscribe", "params": {"channel": "trade", "symbol": ["BTC/USD"], "snapshot": True}})
    ack = await plain.recv()
    assert ack["result"] == {"channel": "trade", "snapshot": False, "symbol": "BTC/USD"}
    assert (await snap.recv())["success"]
    first = await snap.recv()
    assert first["type"] == "snapshot" and [t["trade_id"] for t in first["data"]] == list(range(100, 110))
    for tid in range(110, 113):
        relay.feed(trade_frame(tid))
        relay.feed(trade_frame(tid), up=1)  # the second line repeats it: published once
    for c in (plain, snap):
        await c.barrier()
        ids = [t["trade_id"] for m in c.log if m.get("channel") == "trade" and m["type"] == "update" for t in m["data"]]
        assert ids == [110, 111, 112]


async def test_ticker_ohlc_instrument_snapshots(make_relay, clients):
    relay = await make_relay()
    relay.feed(ticker_frame())
    relay.feed(ohlc_frame(1))
    inst = orjson.dumps(
        {
            "channel": "instrument",
            "type": "snapshot",
            "data": {
                "assets": [],
                "pairs": [
                    {
                        "symbol": "BTC/USD",
                        "base": "BTC",
                        "quote": "USD",
                        "status": "online",
                        "price_precision": 1,
                        "qty_precision": 8,
                    }
                ],
            },
        }
    )
    relay.feed(inst)
    c = await clients(relay.url)
    await c.recv()
    await c.send({"method": "subscribe", "params": {"channel": "ticker", "symbol": ["BTC/USD"]}, "req_id": 1})
    ack = await c.recv()
    assert ack["result"] == {"channel": "ticker", "event_trigger": "trades", "snapshot": True, "symbol": "BTC/USD"}
    tick = await c.recv()
    assert tick["channel"] == "ticker" and tick["type"] == "snapshot" and tick["data"][0]["last"] == 29430.3
    await c.send({"method": "subscribe", "params": {"channel": "ohlc", "symbol": ["BTC/USD"], "interval": 1}})
    assert (await c.recv())["result"]["interval"] == 1
    candle = await c.recv()
    assert candle["channel"] == "ohlc" and candle["type"] == "snapshot" and candle["data"][0]["trades"] == 5
    await c.send({"method": "subscribe", "params": {"channel": "instrument"}})
    assert (await c.recv())["result"] == {"channel": "instrument", "snapshot": True}
    snap = await c.recv()
    assert snap["channel"] == "instrument" and snap["data"]["pairs"][0]["symbol"] == "BTC/USD"
    relay.feed(ticker_frame(last=b"29431.0", ts="2023-07-30T15:30:01.000000Z"))
    upd = await c.until(lambda m: m.get("channel") == "ticker")
    assert upd["type"] == "update" and upd["data"][0]["last"] == 29431.0
    await c.send(
        {"method": "subscribe", "params": {"channel": "ticker", "symbol": ["BTC/USD"], "event_trigger": "bbo"}}
    )
    ack = await c.until(lambda m: m.get("method") == "subscribe")
    assert ack["success"] is True
    assert ack["result"] == {"channel": "ticker", "event_trigger": "bbo", "snapshot": True, "symbol": "BTC/USD"}
    snap = await c.until(lambda m: m.get("channel") == "ticker")
    assert snap["type"] == "snapshot" and snap["data"][0]["last"] == 29431.0
    assert relay.endpoint.demanded_subscriptions()[-1] == ("ticker", "BTC/USD", 1)  # upstream: bbo now


async def test_status_update_reaches_every_client(make_relay, clients):
    relay = await make_relay()
    a, b = await clients(relay.url), await clients(relay.url)
    for c in (a, b):
        assert (await c.recv())["data"][0]["system"] == "online"
    for up in relay.ups:
        relay.merge.line_status(up, "maintenance", time.monotonic())
    relay.flush()
    for c in (a, b):
        msg = await c.until(lambda m: m.get("channel") == "status")
        assert msg["data"][0]["system"] == "maintenance"
    late = await clients(relay.url)
    assert (await late.recv())["data"][0]["system"] == "maintenance"


async def test_relay_channel_reports_symbol_state_and_changes(make_relay, clients):
    relay = await make_relay()
    relay.feed(v2_wire_frames()[0])
    relay.merge.tick(time.monotonic())
    relay.flush()
    c = await clients(relay.url)
    await c.recv()
    await c.send({"method": "subscribe", "params": {"channel": "relay"}, "req_id": 4})
    ack = await c.recv()
    assert ack["success"] and ack["req_id"] == 4 and ack["result"]["channel"] == "relay"
    snap = await c.recv()
    assert snap["channel"] == "relay" and snap["type"] == "snapshot"
    btc = next(d for d in snap["data"] if d["symbol"] == "BTC/USD")
    assert btc["book"] == "ok" and set(btc["upstreams"]) == {"primary", "secondary"}
    relay.merge.upstream_down(0, time.monotonic())
    relay.flush()
    upd = await c.until(lambda m: m.get("channel") == "relay")
    assert upd["type"] == "update"
    assert upd["data"][0]["upstreams"]["primary"] == "down"


async def test_book_subscribers_get_fresh_snapshot_after_all_lines_return(make_relay, clients):
    relay = await make_relay()
    frames = v2_wire_frames()
    for raw in frames[:50]:
        relay.feed(raw)
    c = await clients(relay.url)
    await c.recv()
    await c.send({"method": "subscribe", "params": {"channel": "book", "symbol": ["BTC/USD"], "depth": 100}})
    c.depth = 100
    await c.until(lambda m: m.get("type") == "snapshot")
    base = relay.merge.book_snapshot("BTC/USD", 100)
    now = time.monotonic()
    for up in relay.ups:
        relay.merge.upstream_down(up, now)
    relay.flush()
    relay.merge.upstream_up(0, now)
    relay.merge.line_status(0, "online", now)
    relay.feed(base.replace(b'"type":"update"', b'"type":"snapshot"').replace(b'Z"}]}', b'1Z"}]}'))
    for raw in frames[50:80]:
        relay.feed(raw)
    await c.barrier()
    books = [m for m in c.log if m.get("channel") == "book"]
    second = [i for i, m in enumerate(books) if m["type"] == "snapshot"]
    assert len(second) == 2 and len(books) > second[1] + 1
    assert c.checksum_bad == 0


async def test_direct_publications_fan_out_unchanged(make_relay, clients):
    """Frames are forwarded byte for byte to every subscriber of (channel, symbol, key)."""
    relay = await make_relay()
    relay.feed(ticker_frame())
    cs = [await clients(relay.url) for _ in range(3)]
    for c in cs:
        await c.recv()
        await c.send({"method": "subscribe", "params": {"channel": "ticker", "symbol": ["BTC/USD"], "snapshot": False}})
        await c.recv()
    frame = ticker_frame(last=b"29999.9")
    relay.publish([Publication("ticker", "BTC/USD", 0, frame, False)])
    for c in cs:
        raw = await c.ws.recv(decode=False)
        assert raw == frame


async def test_reload_adds_symbols_without_dropping_clients(make_relay, clients):
    from tests.server.conftest import channels

    relay = await make_relay({"dynamic_subscriptions": {"enabled": False}})  # a fixed set
    c = await clients(relay.url)
    await c.recv()
    await c.send({"method": "subscribe", "params": {"channel": "ticker", "symbol": ["ETH/USD"]}})
    err = await c.recv()
    assert (
        err["error"] == "Currency pair not served by this relay ETH/USD (server.dynamic_subscriptions.enabled is false)"
    )
    # SIGHUP's path: the endpoint takes the new channels (and tells the merge what is subscribed)
    relay.endpoint.reload(SimpleNamespace(channels=channels(ticker={"symbols": ["BTC/USD", "ETH/USD"]})))
    relay.feed(ticker_frame("ETH/USD"))
    await c.send({"method": "subscribe", "params": {"channel": "ticker", "symbol": ["ETH/USD"]}})
    assert (await c.recv())["success"]
    assert (await c.recv())["data"][0]["symbol"] == "ETH/USD"


async def test_a_failing_publication_does_not_stop_the_others(make_relay, clients):
    relay = await make_relay()
    relay.feed(ticker_frame())
    c = await clients(relay.url)
    await c.recv()
    await c.send({"method": "subscribe", "params": {"channel": "ticker", "symbol": ["BTC/USD"], "snapshot": False}})
    await c.recv()
    bad = Publication("book", "BTC/USD", 10, b"", False)._replace(key=None)
    relay.endpoint.hub.subs[("book", "BTC/USD", None)] = {object()}  # a broken subscriber
    relay.publish([bad, Publication("ticker", "BTC/USD", 0, ticker_frame(last=b"1.0"), False)])
    msg = await c.recv()
    assert msg["channel"] == "ticker" and relay.endpoint.hub.dispatch_errors == 1
