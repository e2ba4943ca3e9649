"""Hostile and heavy input: request floods, rate limits, many connections, tokens, limits."""

from __future__ import annotations

import asyncio

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

import relay.server.client as client_mod
from relay.protocols.spot_v2.requests import Rejection, Subscription, parse_request
from tests.kit.tls import self_signed


async def test_request_burst_gets_rate_errors_and_others_keep_being_served(make_relay, clients):
    relay = await make_relay()
    flood = await clients(relay.url)
    other = await clients(relay.url)
    await flood.recv()
    await other.recv()
    n = 10_000
    msg = '{"method":"subscribe","params":{"channel":"trade","symbol":["BTC/USD"]},"req_id":%d}'
    await asyncio.gather(*(flood.ws.send(msg % i) for i in range(n)))
    await other.barrier(timeout=5)  # served while the flood is processed
    replies = [await flood.recv() for _ in range(n)]
    assert all(r["method"] == "subscribe" for r in replies)
    assert [r["req_id"] for r in replies] == list(range(n))
    ok = [r for r in replies if r["success"]]
    rate = [r for r in replies if r.get("error") == "Exceeded msg rate"]
    assert len(ok) == 1
    assert len(rate) > n - 200
    await flood.barrier()  # the connection is still usable
    assert relay.server.stats()["rate_limited"] >= len(rate)


async def test_rate_limit_replies_echo_method_and_req_id(make_relay, clients):
    relay = await make_relay({"max_requests_per_second": 5})
    c = await clients(relay.url)
    await c.recv()
    for i in range(20):
        await c.send({"method": "ping", "req_id": i})
    replies = [await c.recv() for _ in range(20)]
    pongs = [r for r in replies if r["method"] == "pong"]
    errors = [r for r in replies if r.get("error") == "Exceeded msg rate"]
    assert 5 <= len(pongs) <= 7 and len(pongs) + len(errors) == 20
    assert all(e["method"] == "ping" and e["success"] is False for e in errors)
    assert sorted(r["req_id"] for r in replies) == list(range(20))


async def test_500_connections_at_once_with_clean_refusals(make_relay, clients):
    relay = await make_relay({"max_clients": 400})
    keep = await clients(relay.url)
    await keep.recv()

    async def one():
        try:
            ws = await connect(relay.url, open_timeout=30, compression=None)
        except InvalidStatus as exc:
            return exc.response.status_code, None
        return 101, ws

    results = await asyncio.gather(*(one() for _ in range(500)))
    codes = [code for code, _ in results]
    assert codes.count(101) == 399 and codes.count(503) == 101
    opened = [ws for _, ws in results if ws is not None]
    first = await asyncio.wait_for(opened[-1].recv(), 5)
    assert '"channel":"status"' in first
    await keep.barrier()
    assert relay.server.stats()["clients"] == 400
    await asyncio.gather(*(ws.close() for ws in opened))
    for _ in range(200):
        if relay.server.stats()["clients"] == 1:
            break
        await asyncio.sleep(0.02)
    assert relay.server.stats()["clients"] == 1
    assert relay.server.stats()["refused"]["max_clients"] == 101


async def test_token_required_from_every_peer_loopback_included(make_relay):
    relay = await make_relay({"token": "s3cret"})
    with pytest.raises(InvalidStatus) as exc:
        await connect(relay.url, open_timeout=5)
    assert exc.value.response.status_code == 401
    with pytest.raises(InvalidStatus):
        await connect(relay.url, open_timeout=5, additional_headers={"Authorization": "Bearer wrong"})
    ws = await connect(relay.url, open_timeout=5, additional_headers={"Authorization": "Bearer s3cret"})
    assert '"status"' in await ws.recv()
    await ws.close()
    ws = await connect(relay.url + "?token=s3cret", open_timeout=5)
    assert '"status"' in await ws.recv()
    await ws.close()


async def test_loopback_exempt_from_the_token_only_when_configured(make_relay, monkeypatch):
    relay = await make_relay({"token": "s3cret", "token_exempt_loopback": True})
    ws = await connect(relay.url, open_timeout=5)
    assert '"status"' in await ws.recv()
    await ws.close()
    monkeypatch.setattr(client_mod, "is_loopback", lambda host: False)  # the exemption is loopback's only
    with pytest.raises(InvalidStatus) as exc:
        await connect(relay.url, open_timeout=5)
    assert exc.value.response.status_code == 401


def test_is_loopback():
    assert client_mod.is_loopback("127.0.0.1") and client_mod.is_loopback("::1")
    assert client_mod.is_loopback("::ffff:127.0.0.1")
    assert not client_mod.is_loopback("10.1.2.3") and not client_mod.is_loopback(None)


async def test_subscription_limit_per_client(make_relay, clients):
    relay = await make_relay({"max_subscriptions_per_client": 2})
    c = await clients(relay.url)
    await c.recv()
    await c.send({"method": "subscribe", "params": {"channel": "ticker", "symbol": ["BTC/USD"], "snapshot": False}})
    await c.send({"method": "subscribe", "params": {"channel": "trade", "symbol": ["BTC/USD"]}})
    await c.send({"method": "subscribe", "params": {"channel": "ohlc", "symbol": ["BTC/USD"], "snapshot": False}})
    replies = [await c.recv() for _ in range(3)]
    assert [r["success"] for r in replies] == [True, True, False]
    assert replies[2]["error"] == "Subscription limit exceeded" and replies[2]["symbol"] == "BTC/USD"


async def test_binary_and_fragmented_messages(make_relay, clients):
    relay = await make_relay()
    c = await clients(relay.url)
    await c.recv()
    await c.ws.send(b"\x00\x01")
    assert (await c.recv())["error"] == "Binary messages are not supported"
    await c.ws.send(['{"method":', '"ping",', '"req_id":3}'])  # one message in three frames
    pong = await c.recv()
    assert pong["method"] == "pong" and pong["req_id"] == 3


async def test_handshake_timeout_drops_idle_sockets(make_relay):
    relay = await make_relay(handshake_timeout=0.2)
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.server.port)
    data = await asyncio.wait_for(reader.read(), 3)
    assert data == b""
    writer.close()
    assert relay.server.stats()["refused"]["handshake_timeout"] == 1


@pytest.mark.parametrize(
    ("raw", "expect"),
    [
        (
            b'{"method":"subscribe","params":{"channel":"book","symbol":"BTC/USD"}}',
            Rejection,
        ),  # a list is required, as on Kraken
        (b'{"method":"subscribe","params":{"channel":"book","symbol":[]}}', Rejection),
        (b'{"method":"subscribe","params":{"channel":"book","symbol":[1]}}', Rejection),
        (b'{"method":"subscribe","params":{"channel":"trade"}}', Rejection),
        (b'{"method":"subscribe","params":{"channel":"instrument"}}', Subscription),
        (b'{"method":"subscribe","params":{"channel":"book","symbol":["A/B"],"snapshot":"yes"}}', Rejection),
        (b'{"method":"subscribe","req_id":"x","params":{"channel":"book","symbol":["A/B"]}}', Rejection),
        (b'{"method":"subscribe"}', Rejection),
        (b"[1,2]", Rejection),
    ],
)
def test_parse_request_shapes(raw, expect):
    assert isinstance(parse_request(raw), expect)


def test_trade_snapshot_defaults_false_others_true():
    trade = parse_request(b'{"method":"subscribe","params":{"channel":"trade","symbol":["A/B"]}}')
    book = parse_request(b'{"method":"subscribe","params":{"channel":"book","symbol":["A/B","A/B"]}}')
    assert trade.snapshot is False and book.snapshot is True and book.depth == 10
    assert book.symbols == ["A/B"]


async def test_tls_endpoint(make_relay, tmp_path):
    import ssl

    cert, key = self_signed(tmp_path)
    relay = await make_relay({"tls": {"cert": str(cert), "key": str(key)}})
    assert relay.server.url.startswith("wss://127.0.0.1:")
    ctx = ssl.create_default_context(cafile=str(cert))
    ws = await connect(relay.server.url, ssl=ctx, open_timeout=5)
    assert '"status"' in await ws.recv()
    await ws.send('{"method":"ping","req_id":5}')
    assert '"pong"' in await ws.recv()
    await ws.close()


async def test_fragmented_oversized_messages(make_relay, clients):
    relay = await make_relay()
    c = await clients(relay.url)
    await c.recv()
    await c.ws.send(["x" * 100_000, "y" * 100_000])  # over max_message_bytes: error reply, kept
    assert (await c.recv())["error"] == "Message too large"
    await c.barrier()
    await c.ws.send(["x" * 600_000, "y" * 600_000])  # over the hard cap: closed with 1009
    await asyncio.wait_for(c.ws.wait_closed(), 5)
    assert c.ws.close_code == 1009


async def test_plain_http_requests_get_a_clean_http_answer(make_relay):
    relay = await make_relay()
    for path, status in (("/v2", b" 426 "), ("/", b" 404 "), ("/metrics", b" 404 ")):
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.server.port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = await asyncio.wait_for(reader.read(), 5)  # answered, then closed
        writer.close()
        assert data.startswith(b"HTTP/1.1") and status in data.split(b"\r\n", 1)[0]
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.server.port)
    writer.write(b"\x16\x03\x01 garbage that is not http\r\n\r\n")
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert data == b"" or data.startswith(b"HTTP/1.1 400")
