"""The local v2 endpoint against a real Merge fed by captured Kraken BTC/USD traffic."""

from __future__ import annotations

import asyncio

import pytest

from tests.kit.paths import v2_wire_frames
from tests.server.conftest import Client
from tests.server.helpers import instrument_frame


async def test_status_on_connect_and_book_snapshot_then_live_updates(make_relay, clients):
    relay = await make_relay()
    frames = v2_wire_frames()
    relay.feed(frames[0])
    c = await clients(relay.url)
    status = await c.recv()
    assert status["channel"] == "status" and status["data"][0]["system"] == "online"
    assert status["data"][0]["api_version"] == "v2"
    await c.send({"method": "subscribe", "params": {"channel": "book", "symbol": ["BTC/USD"]}, "req_id": 7})
    ack = await c.recv()
    assert ack["success"] is True and ack["req_id"] == 7 and ack["method"] == "subscribe"
    assert ack["result"] == {"channel": "book", "depth": 10, "snapshot": True, "symbol": "BTC/USD"}
    assert "time_in" in ack and "time_out" in ack
    snap = await c.recv()
    assert snap["type"] == "snapshot" and len(snap["data"][0]["bids"]) == 10
    for raw in frames[1:200]:
        relay.feed(raw)
    await c.barrier()
    assert c.checksum_bad == 0 and c.checksums_ok > 50
    assert c.books["BTC/USD"].checksum == relay.merge.books["BTC/USD"].pub.checksum


async def test_late_joiners_at_every_point_see_valid_books(make_relay, clients):
    """Snapshot then live updates with nothing lost or duplicated, whenever a client joins."""
    relay = await make_relay()
    frames = v2_wire_frames()
    joined = []
    for i, raw in enumerate(frames[:300]):
        relay.feed(raw)
        if i % 60 == 0:
            c = await clients(relay.url)
            await c.recv()
            await c.send({"method": "subscribe", "params": {"channel": "book", "symbol": ["BTC/USD"], "depth": 10}})
            await c.until(lambda m: m.get("type") == "snapshot")
            joined.append(c)
    expected = Client(None)
    expected._book(relay.merge.book_snapshot("BTC/USD", 10), 10)
    for c in joined:
        await c.barrier()
        assert c.checksum_bad == 0 and c.checksums_ok >= 1
        assert c.books["BTC/USD"].bids.best(10) == expected.books["BTC/USD"].bids.best(10)
        assert c.books["BTC/USD"].asks.best(10) == expected.books["BTC/USD"].asks.best(10)
    assert joined[0].checksums_ok > 50


async def test_ping_pong_echoes_req_id(make_relay, clients):
    relay = await make_relay()
    c = await clients(relay.url)
    await c.recv()
    await c.send({"method": "ping", "req_id": 41})
    pong = await c.recv()
    assert pong["method"] == "pong" and pong["req_id"] == 41 and pong["time_in"] and pong["time_out"]
    await c.send({"method": "ping", "params": {}, "req_id": 0})  # some libraries always send params
    pong = await c.recv()
    assert pong["method"] == "pong" and pong["req_id"] == 0


@pytest.mark.parametrize(
    ("msg", "error", "symbol"),
    [
        ("not json", "Malformed request", None),
        ({"method": "frobnicate", "req_id": 1}, "Method not found", None),
        (
            {"method": "subscribe", "params": {"channel": "level3", "symbol": ["BTC/USD"]}, "req_id": 2},
            "Token required",
            None,
        ),
        (
            {"method": "subscribe", "params": {"channel": "candles", "symbol": ["BTC/USD"]}, "req_id": 2},
            "Channel not found",
            None,
        ),
        (
            {"method": "subscribe", "params": {"channel": "trade", "symbol": ["XBT/USD"]}, "req_id": 3},
            "Currency pair not supported XBT/USD",
            "XBT/USD",
        ),
        (
            {"method": "subscribe", "params": {"channel": "book", "symbol": ["BTC/USD"], "depth": 27}, "req_id": 4},
            "Subscription depth not supported",
            "BTC/USD",
        ),
        (
            {"method": "subscribe", "params": {"channel": "ohlc", "symbol": ["BTC/USD"], "interval": 7}, "req_id": 6},
            "Subscription ohlc interval not supported",
            "BTC/USD",
        ),
        (
            {"method": "unsubscribe", "params": {"channel": "trade", "symbol": ["BTC/USD"]}, "req_id": 8},
            "Subscription Not Found",
            "BTC/USD",
        ),
    ],
)
async def test_error_replies_keep_the_connection(make_relay, clients, msg, error, symbol):
    relay = await make_relay()
    relay.feed(instrument_frame("BTC/USD", "ETH/USD"))  # the list invalid symbols are refused by
    c = await clients(relay.url)
    await c.recv()
    if isinstance(msg, str):
        await c.ws.send(msg)
    else:
        await c.send(msg)
    reply = await c.recv()
    assert reply["success"] is False and reply["error"] == error
    assert reply.get("symbol") == symbol
    if isinstance(msg, dict):
        assert reply["method"] == msg["method"] and reply["req_id"] == msg["req_id"]
    await c.send({"method": "ping", "req_id": 99})
    assert (await c.recv())["req_id"] == 99


async def test_oversized_frame_gets_error_reply_and_connection_stays(make_relay, clients):
    relay = await make_relay()
    c = await clients(relay.url)
    await c.recv()
    big = '{"method":"ping","req_id":1,"pad":"' + "x" * (1024 * 1024 - 40) + '"}'
    assert len(big) <= 1024 * 1024
    await c.ws.send(big)
    reply = await c.recv()
    assert reply["success"] is False and reply["error"] == "Message too large"
    await c.send({"method": "ping", "req_id": 2})
    assert (await c.recv())["method"] == "pong"


async def test_frame_over_hard_cap_closes_1009(make_relay, clients):
    relay = await make_relay(hard_message_bytes=200_000)
    c = await clients(relay.url)
    await c.recv()
    await c.ws.send("x" * 300_000)
    await asyncio.wait_for(c.ws.wait_closed(), 5)
    assert c.ws.close_code == 1009


async def test_heartbeat_when_subscribed_and_idle(make_relay, clients):
    relay = await make_relay({"heartbeat_interval": 0.2})
    c = await clients(relay.url)
    await c.recv()
    await c.send({"method": "subscribe", "params": {"channel": "trade", "symbol": ["BTC/USD"]}})
    await c.recv()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    hb = await c.recv(timeout=3)
    assert hb == {"channel": "heartbeat"}
    assert loop.time() - t0 >= 0.1


async def test_no_heartbeat_without_subscription(make_relay, clients):
    relay = await make_relay({"heartbeat_interval": 0.1})
    c = await clients(relay.url)
    await c.recv()
    with pytest.raises(asyncio.TimeoutError):
        await c.recv(timeout=0.5)


async def test_unsubscribe_acks_per_symbol_and_stops_updates(make_relay, clients):
    relay = await make_relay()
    frames = v2_wire_frames()
    relay.feed(frames[0])
    c = await clients(relay.url)
    await c.recv()
    await c.send({"method": "subscribe", "params": {"channel": "book", "symbol": ["BTC/USD"], "depth": 25}})
    assert (await c.recv())["result"]["depth"] == 25
    await c.until(lambda m: m.get("type") == "snapshot")
    await c.send(
        {"method": "unsubscribe", "params": {"channel": "book", "symbol": ["BTC/USD"], "depth": 25}, "req_id": 3}
    )
    ack = await c.until(lambda m: m.get("method") == "unsubscribe")
    assert ack["success"] and ack["req_id"] == 3 and ack["result"]["symbol"] == "BTC/USD"
    for raw in frames[1:50]:
        relay.feed(raw)
    await c.send({"method": "ping", "req_id": 5})
    msg = await c.recv()
    assert msg["method"] == "pong"  # no book frame came in between
    assert relay.server.stats()["subscriptions"] == 0


async def test_v1_path_and_unknown_paths_answer_404(make_relay):
    relay = await make_relay()
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    for path in ("/", "/nope"):
        with pytest.raises(InvalidStatus) as exc:
            await connect(f"ws://127.0.0.1:{relay.server.port}{path}", open_timeout=5)
        assert exc.value.response.status_code == 404


async def test_max_clients_refused_with_503(make_relay, clients):
    relay = await make_relay({"max_clients": 2})
    from websockets.exceptions import InvalidStatus

    a = await clients(relay.url)
    b = await clients(relay.url)
    with pytest.raises(InvalidStatus) as exc:
        await clients(relay.url)
    assert exc.value.response.status_code == 503
    await a.recv()
    await b.send({"method": "ping", "req_id": 1})
    await b.until(lambda m: m.get("method") == "pong")


async def test_stop_closes_clients_with_1001(make_relay, clients):
    relay = await make_relay()
    c = await clients(relay.url)
    await c.recv()
    await relay.server.stop()
    await asyncio.wait_for(c.ws.wait_closed(), 5)
    assert c.ws.close_code == 1001
