"""Local server fan-out: frames/s written to N clients, and the added latency (prints a JSON last line).

The LocalServer runs in this process on uvloop with a V2Merge holding one BTC/USD book; N clients run in a child
process (sharing the machine's 2 cores, as real clients would). Clients are raw sockets that do
the websocket handshake, subscribe to one book, and then only scan the byte stream (no frame
parsing), so the figure measures the server, not a client library.

Two phases:
  throughput: `--frames` ~200 B book frames published in batches of `--batch` per loop
    iteration; reported frames_out_per_s = clients x frames / time until every client saw the
    end marker, plus the server's CPU seconds.
  latency: `--rate` frames/s for `--duration` s, each stamped with time.time(); clients record
    receive - send for every frame; p50/p99/p999 over all clients.
Example: python bench/server_bench.py --clients 100 --frames 20000
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import uvloop

END = b'"end":1'


async def _client(port: int, stamps: list[float] | None, ready: asyncio.Event, counter: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        f"GET /v2 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    await reader.readuntil(b"\r\n\r\n")
    payload = b'{"method":"subscribe","params":{"channel":"book","symbol":["BTC/USD"],"depth":10}}'
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    writer.write(bytes([0x81, 0x80 | len(payload)]) + mask + masked)
    await writer.drain()
    counter[0] += 1
    if counter[0] == counter[1]:
        ready.set()
    tail = b""
    while True:
        data = await reader.read(1 << 20)
        if not data:
            return
        if stamps is not None:
            now = time.time()
            pos = 0
            while True:
                i = data.find(b'"sent":', pos)
                if i < 0:
                    break
                j = data.find(b"}", i)
                try:
                    stamps.append(now - float(data[i + 7 : j]))
                except ValueError:
                    pass
                pos = j
        if END in tail + data:
            writer.close()
            return
        tail = data[-16:]


async def _child(port: int, n: int, latency: bool) -> None:
    ready = asyncio.Event()
    counter = [0, n]
    stamps: list[float] | None = [] if latency else None
    tasks = [asyncio.create_task(_client(port, stamps, ready, counter)) for _ in range(n)]
    await ready.wait()
    print("ready", flush=True)
    await asyncio.gather(*tasks)
    if stamps is not None:
        stamps.sort()
        k = len(stamps)
        pct = lambda q: stamps[min(k - 1, int(q * k))] * 1e3 if k else None  # noqa: E731
        print(json.dumps({"n": k, "p50_ms": pct(0.5), "p99_ms": pct(0.99), "p999_ms": pct(0.999)}), flush=True)
    print("done", flush=True)


def frame(i: int, stamp: float | None = None) -> bytes:
    extra = b',"sent":' + repr(stamp).encode() if stamp is not None else b""
    return (
        b'{"channel":"book","type":"update","data":[{"symbol":"BTC/USD","bids":[{"price":29430.2,"qty":0.'
        + str(10000000 + i).encode()
        + b'}],"asks":[],"checksum":'
        + str(i).encode()
        + b',"timestamp":"2026-01-01T00:00:00.000000Z"'
        + extra
        + b"}]}"
    )


async def _parent(args: argparse.Namespace) -> dict:
    from relay.config import ChannelsConfig, ServerConfig
    from relay.core.outputs import MergeSettings, Publication
    from relay.protocols.spot_v2.endpoint import V2Endpoint
    from relay.protocols.spot_v2.merge import V2Merge
    from relay.protocols.spot_v2.wire import now_rfc3339
    from relay.server.listener import LocalServer
    from tests.server.test_join import deep_frame

    cfg = ServerConfig(max_clients=max(1000, args.clients + 10), max_requests_per_second=1000)
    chans = ChannelsConfig.model_validate({"book": {"symbols": ["BTC/USD"], "depth": 10}})
    merge = V2Merge(MergeSettings(book_depth=10))
    endpoint = V2Endpoint(merge, chans, path=cfg.path, dynamic=cfg.dynamic_subscriptions)
    server = LocalServer(cfg, [endpoint], host="127.0.0.1", port=0)
    publish = server.publisher(endpoint)
    await server.start()
    now = time.monotonic()
    up = merge.add_upstream("bench")
    merge.upstream_up(up, now)
    merge.line_status(up, "online", now)
    levels = [(b"%d.0" % (50_000 - i), b"1.00000000") for i in range(10)]
    asks = [(b"%d.0" % (50_001 + i), b"1.00000000") for i in range(10)]
    merge.feed(up, deep_frame("BTC/USD", True, now_rfc3339(), levels, asks), now)
    publish(merge.take())
    out: dict = {"clients": args.clients}
    loop = asyncio.get_running_loop()

    async def run_child(latency: bool):
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--child",
            str(server.port),
            str(args.clients),
            "1" if latency else "0",
            stdout=subprocess.PIPE,
        )
        assert proc.stdout is not None
        assert (await proc.stdout.readline()).strip() == b"ready"
        for _ in range(200):  # every subscription registered
            if endpoint.hub.subscription_count() >= args.clients:
                break
            await asyncio.sleep(0.01)
        return proc

    # throughput
    proc = await run_child(False)
    frames = [frame(i) for i in range(args.batch)]
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    for _ in range(args.frames // args.batch):
        publish([Publication("book", "BTC/USD", 10, f, False) for f in frames])
        await asyncio.sleep(0)
    publish([Publication("book", "BTC/USD", 10, frame(0)[:-3] + b"," + END + b"}]}", False)])
    assert proc.stdout is not None
    while (await proc.stdout.readline()).strip() != b"done":
        pass
    elapsed = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    await proc.wait()
    total = args.clients * (args.frames // args.batch) * args.batch
    out.update(
        frames_out=total,
        seconds=round(elapsed, 3),
        frames_out_per_s=round(total / elapsed),
        server_cpu_s=round(cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime, 3),
        slow_closes=server.slow_closes,
        book_resets=server.book_resets,
    )
    # latency
    proc = await run_child(True)
    start = loop.time()
    sent = 0
    while loop.time() < start + args.duration:
        due = int((loop.time() - start) * args.rate) - sent  # paced by schedule, not by sleep granularity
        if due > 0:
            now = time.time()
            publish([Publication("book", "BTC/USD", 10, frame(1, now), False) for _ in range(due)])
            sent += due
        await asyncio.sleep(0.0005)
    publish([Publication("book", "BTC/USD", 10, frame(0)[:-3] + b"," + END + b"}]}", False)])
    lat = None
    while True:
        line = (await proc.stdout.readline()).strip()
        if line == b"done" or not line:
            break
        if line.startswith(b"{"):
            lat = json.loads(line)
    await proc.wait()
    out.update(rate=args.rate, latency=lat)
    await server.stop()
    return out


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        uvloop.run(_child(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"))
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--frames", type=int, default=20000)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--rate", type=int, default=1000)
    p.add_argument("--duration", type=float, default=3.0)
    args = p.parse_args()
    print(json.dumps(uvloop.run(_parent(args))))


if __name__ == "__main__":
    main()
