"""Fairness: clients churning deep book subscriptions get their snapshots paced
(`server.client_snapshot_bytes_per_second`), and a light client's latency barely moves.

The figure with more clients, a changing book and a separate process per side is
`bench/server_fairness.py`."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import statistics
import time

from relay.config import ServerConfig
from relay.core.outputs import MergeSettings, Publication
from relay.protocols.spot_v2.merge import V2Merge
from relay.protocols.spot_v2.wire import now_rfc3339
from tests.server.conftest import build_relay, channels
from tests.server.test_join import deep_frame

MiB = 1024 * 1024
SYMBOLS = [f"S{i}/USD" for i in range(5)]
RATE = 1 * MiB  # snapshot bytes per second per client, for the test


def masked(payload: bytes) -> bytes:
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    n = len(payload)
    head = bytes((0x81, 0x80 | n)) if n < 126 else bytes((0x81, 0xFE)) + n.to_bytes(2, "big")
    return head + mask + body


async def raw_ws(port: int) -> socket.socket:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
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
        head += await asyncio.wait_for(loop.sock_recv(sock, 65536), 10)
    return sock


def trade(stamp: float) -> bytes:
    return (
        b'{"channel":"trade","type":"update","data":[{"symbol":"BTC/USD","side":"buy","price":1.0,"qty":1.0,'
        b'"ord_type":"market","trade_id":1,"timestamp":"2026-01-01T00:00:00.000000Z","sent":'
        + repr(stamp).encode()
        + b"}]}"
    )


async def test_deep_subscription_churn_is_paced_and_others_keep_their_latency():
    cfg = ServerConfig(client_snapshot_bytes_per_second=RATE)
    chans = channels(book={"symbols": SYMBOLS, "depth": 1000}, trade={"symbols": ["BTC/USD"]})
    relay = build_relay(cfg, V2Merge(MergeSettings(book_depth=1000)), chans)
    await relay.server.start()
    loop = asyncio.get_running_loop()
    ts = now_rfc3339()
    for i, s in enumerate(SYMBOLS):
        bids = [(b"%d.%d" % (50_000 - k // 10, k % 10), b"%d.%08d" % (k % 7 + 1, i + k)) for k in range(1000)]
        asks = [(b"%d.%d" % (50_001 + k // 10, k % 10), b"%d.%08d" % (k % 5 + 1, i + k)) for k in range(1000)]
        relay.feed(deep_frame(s, True, ts, bids, asks))
    snap = sum(len(relay.merge.book_snapshot(s, 1000)) for s in SYMBOLS)
    assert snap > 300_000  # one subscribe request asks for ~350 KB of snapshots
    tasks: list[asyncio.Task] = []
    try:
        light = await raw_ws(relay.server.port)
        await loop.sock_sendall(
            light, masked(b'{"method":"subscribe","params":{"channel":"trade","symbol":["BTC/USD"]}}')
        )
        await asyncio.sleep(0.1)

        async def measure(seconds: float) -> list[float]:
            lat: list[float] = []

            async def read() -> None:
                while True:
                    data = await loop.sock_recv(light, 1 << 20)
                    now = time.monotonic()
                    pos = 0
                    while (i := data.find(b'"sent":', pos)) >= 0:
                        j = data.find(b"}", i)
                        lat.append(now - float(data[i + 7 : j]))
                        pos = j

            reader = asyncio.create_task(read())
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                relay.publish([Publication("trade", "BTC/USD", 0, trade(time.monotonic()), False)])
                await asyncio.sleep(0.005)
            await asyncio.sleep(0.05)
            reader.cancel()
            return lat

        alone = statistics.median(await measure(1.5))
        # three clients subscribing to and unsubscribing from five depth-1000 books, 20 times a second
        syms = b'["' + b'","'.join(s.encode() for s in SYMBOLS) + b'"]'
        sub = masked(b'{"method":"subscribe","params":{"channel":"book","symbol":%s,"depth":1000}}' % syms)
        unsub = masked(b'{"method":"unsubscribe","params":{"channel":"book","symbol":%s,"depth":1000}}' % syms)
        received = [0, 0, 0]

        async def churn(k: int) -> None:
            sock = await raw_ws(relay.server.port)

            async def drain() -> None:
                while data := await loop.sock_recv(sock, 1 << 20):
                    received[k] += len(data)

            tasks.append(asyncio.create_task(drain()))
            while True:
                await loop.sock_sendall(sock, sub + unsub)
                await asyncio.sleep(0.05)

        tasks += [asyncio.create_task(churn(k)) for k in range(3)]
        await asyncio.sleep(0.3)
        got0, t0 = list(received), time.monotonic()
        busy = statistics.median(await measure(2.0))
        elapsed = time.monotonic() - t0
        rates = [(received[k] - got0[k]) / elapsed for k in range(3)]
        print(
            f"light p50 {alone * 1e3:.3f} ms alone, {busy * 1e3:.3f} ms with 3 churners "
            f"({busy / alone:.2f}x); churners got {[round(r / MiB, 2) for r in rates]} MiB/s "
            f"(asked ~{20 * snap / MiB:.1f}); snapshots paced {relay.server.stats()['snapshots_paced']}"
        )
        assert all(r < 1.5 * RATE for r in rates)  # paced: ~RATE each, not the ~7 MB/s asked for
        assert all(r > 0.3 * RATE for r in rates)  # but served
        assert busy < 3 * alone + 0.0005
    finally:
        for t in tasks:
            t.cancel()
        await relay.server.stop()
