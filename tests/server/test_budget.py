"""The global output budget (`server.total_buffer_bytes`): a thousand clients that stop reading
cannot take the relay's buffered output, nor its memory, past it."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import time

from relay.core.outputs import Publication
from relay.protocols.spot_v2.wire import now_rfc3339
from tests.kit.net import need_fds
from tests.server.conftest import channels
from tests.server.test_join import deep_frame

MiB = 1024 * 1024
N = 1000
BUDGET = 16 * MiB


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def masked_text(payload: bytes) -> bytes:
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    assert len(payload) < 126
    return bytes((0x81, 0x80 | len(payload))) + mask + body


async def stuck_client(port: int, request: bytes) -> socket.socket:
    """Handshake and subscribe, then never read again (a tiny receive buffer on its side)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16))
    await loop.sock_sendall(
        sock,
        b"GET /v2 HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    head = b""
    while b"\r\n\r\n" not in head:
        data = await asyncio.wait_for(loop.sock_recv(sock, 4096), 10)
        assert data, "closed during the handshake"
        head += data
    assert head.startswith(b"HTTP/1.1 101")
    await loop.sock_sendall(sock, masked_text(request))
    return sock


def book_update(pad: int) -> bytes:
    extra = b',"pad":"' + b"x" * pad + b'"'
    return (
        b'{"channel":"book","type":"update","data":[{"symbol":"BTC/USD","bids":[],"asks":[],"checksum":0,'
        b'"timestamp":"' + now_rfc3339().encode() + b'"' + extra + b"}]}"
    )


async def thousand_stuck(relay, request: bytes) -> list[socket.socket]:
    need_fds(2 * N + 500)
    socks: list[socket.socket] = []
    for _ in range(N // 100):
        socks += await asyncio.gather(*(stuck_client(relay.server.port, request) for _ in range(100)))
    server = relay.server
    deadline = time.monotonic() + 30
    while relay.endpoint.stats()["subscriptions"] < N:
        assert time.monotonic() < deadline, relay.endpoint.stats()
        await asyncio.sleep(0.02)
    for conn in server.open_clients:  # the relay's side: small kernel buffers, so it is the relay that holds
        conn.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    return socks


def relay_config() -> dict:
    return {"max_clients": N + 100, "client_buffer_bytes": 64 * 1024, "total_buffer_bytes": BUDGET}


async def test_thousand_stuck_book_readers_stay_within_the_global_budget(make_relay):
    ts = now_rfc3339()
    bids = [(b"%d.%d" % (50_000 - i, i % 10), b"%d.%08d" % (i % 7 + 1, 12345 + i)) for i in range(100)]
    asks = [(b"%d.%d" % (50_001 + i, i % 10), b"%d.%08d" % (i % 5 + 1, 54321 + i)) for i in range(100)]
    relay = await make_relay(relay_config(), chans=channels(book={"symbols": ["BTC/USD"], "depth": 100}))
    relay.feed(deep_frame("BTC/USD", True, ts, bids, asks))
    socks = await thousand_stuck(
        relay, b'{"method":"subscribe","params":{"channel":"book","symbol":["BTC/USD"],"depth":100}}'
    )
    server = relay.server
    try:
        await asyncio.sleep(0.2)
        base = rss()
        peak_buffered = peak_rss = 0
        frame = book_update(2000)
        # Without a global budget each client would hold its own 64 KiB budget: 1000 x 64 KiB.
        for _ in range(80):
            relay.publish([Publication("book", "BTC/USD", 100, frame, False)])
            await asyncio.sleep(0.003)
            peak_buffered = max(peak_buffered, server.stats()["buffered_bytes"])
            peak_rss = max(peak_rss, rss() - base)
        stats = server.stats()
        print(
            f"{N} stuck readers, budget {BUDGET / MiB:.0f} MiB: peak buffered {peak_buffered / MiB:.1f} MiB, "
            f"RSS growth {peak_rss / MiB:.1f} MiB, squeezed {stats.get('squeezed_clients')}, "
            f"book resets {stats['book_resets']}, slow closes {stats['slow_closes']}"
        )
        assert peak_buffered <= BUDGET
        assert peak_rss <= BUDGET + 16 * MiB
        assert stats["book_resets"] >= N // 2  # treated as slow: book frames dropped
        assert stats["clients"] >= N // 2  # most are not closed for it: their books were droppable
    finally:
        for s in socks:
            s.close()


async def test_thousand_stuck_trade_readers_are_closed_before_the_budget_is_exceeded(make_relay):
    relay = await make_relay(relay_config())
    socks = await thousand_stuck(relay, b'{"method":"subscribe","params":{"channel":"trade","symbol":["BTC/USD"]}}')
    server = relay.server
    try:
        await asyncio.sleep(0.2)
        base = rss()
        peak_buffered = peak_rss = 0
        frame = b'{"channel":"trade","type":"update","data":[],"pad":"' + b"y" * 2000 + b'"}'
        for _ in range(80):  # trades are never dropped: beyond their (lowered) budget they are closed
            relay.publish([Publication("trade", "BTC/USD", 0, frame, False)])
            await asyncio.sleep(0.003)
            peak_buffered = max(peak_buffered, server.stats()["buffered_bytes"])
            peak_rss = max(peak_rss, rss() - base)
        stats = server.stats()
        print(
            f"{N} stuck trade readers: peak buffered {peak_buffered / MiB:.1f} MiB, RSS growth "
            f"{peak_rss / MiB:.1f} MiB, slow closes {stats['slow_closes']} (budget {stats.get('budget_closes')})"
        )
        assert peak_buffered <= BUDGET
        assert peak_rss <= BUDGET + 16 * MiB
        assert stats["slow_closes"] > 0
    finally:
        for s in socks:
            s.close()
