"""Output leaves while a long upstream read is still being processed.

One upstream read can carry dozens of frames; uvloop only performs `transport.write` at the end of
the loop pass, so without the early flush + write-through the first frame of a read would wait for
the last. These tests look at the client's kernel socket buffer from inside the same callback."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import time

import orjson

from tests.server.helpers import trade_frame


def client_frame(payload: bytes) -> bytes:
    """A masked client text frame with an all-zero mask (payload unchanged), < 126 bytes."""
    assert len(payload) < 126
    return bytes((0x81, 0x80 | len(payload))) + b"\0\0\0\0" + payload


async def raw_subscriber(port: int) -> socket.socket:
    """A raw websocket client subscribed to BTC/USD trades, its pending input drained."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    await loop.sock_sendall(
        sock,
        (
            f"GET /v2 HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode(),
    )
    sub = {"method": "subscribe", "params": {"channel": "trade", "symbol": ["BTC/USD"], "snapshot": False}}
    await loop.sock_sendall(sock, client_frame(orjson.dumps(sub)))
    got = b""
    while b'"success":true' not in got:
        got += await asyncio.wait_for(loop.sock_recv(sock, 65536), 5)
    await asyncio.sleep(0.05)
    try:
        while sock.recv(65536):
            pass
    except BlockingIOError:
        pass
    return sock


def pending(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536, socket.MSG_PEEK)
    except BlockingIOError:
        return b""


async def check_long_read(relay) -> None:
    relay.feed(trade_frame(1))
    sock = await raw_subscriber(relay.server.port)
    seen = []

    def long_read() -> None:  # what an upstream read of many frames does, in one callback
        for tid in range(2, 12):
            relay.feed(trade_frame(tid))
            t = time.perf_counter()
            while time.perf_counter() - t < 0.0003:  # ~the merge's work for a few frames
                pass
            seen.append(pending(sock))

    asyncio.get_running_loop().call_soon(long_read)
    await asyncio.sleep(0.05)
    assert b'"trade_id":2,' in seen[3]  # out while the read was still being processed
    assert relay.server.stats()["early_flushes"] >= 1
    data = b""
    while b'"trade_id":11,' not in data:
        data += await asyncio.wait_for(asyncio.get_running_loop().sock_recv(sock, 65536), 5)
    ids = [int(x.split(b",")[0]) for x in data.split(b'"trade_id":')[1:]]
    assert ids == list(range(2, 12))  # in order, once each
    sock.close()


async def test_first_frames_of_a_long_read_reach_the_client_before_it_ends(make_relay):
    await check_long_read(await make_relay())


def test_first_frames_leave_early_on_uvloop_too() -> None:
    """uvloop defers `transport.write` to the end of the pass: the write-through matters there."""
    import uvloop

    from relay.config import ServerConfig
    from relay.core.outputs import MergeSettings
    from relay.protocols.spot_v2.merge import V2Merge
    from tests.server.conftest import build_relay, channels

    async def main() -> None:
        merge = V2Merge(MergeSettings(book_depth=100))
        relay = build_relay(ServerConfig(), merge, channels())
        server = relay.server
        await server.start()
        try:
            await check_long_read(relay)
        finally:
            await server.stop()

    uvloop.run(main())


async def test_many_clients_keep_one_write_per_pass(make_relay):
    """The early flush waits longer with more clients (writes cost more): a short read to 50
    clients is written once at the end of the pass, not once per frame."""
    relay = await make_relay()
    relay.feed(trade_frame(1))
    socks = [await raw_subscriber(relay.server.port) for _ in range(50)]
    relay.server.flush_clients()
    relay.server._write_cost = 5e-6  # what a client write costs on a slow machine

    def short_read() -> None:
        for tid in range(2, 6):
            relay.feed(trade_frame(tid))

    before = relay.server.stats()["early_flushes"]
    asyncio.get_running_loop().call_soon(short_read)
    await asyncio.sleep(0.05)
    assert relay.server.stats()["early_flushes"] == before
    for s in socks:
        data = b""
        while b'"trade_id":5,' not in data:
            data += await asyncio.wait_for(asyncio.get_running_loop().sock_recv(s, 65536), 5)
        assert [int(x.split(b",")[0]) for x in data.split(b'"trade_id":')[1:]] == [2, 3, 4, 5]
        s.close()
