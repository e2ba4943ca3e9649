"""Fairness: light clients' latency while a few heavy subscribers churn deep book subscriptions
(prints a JSON last line).

The relay's LocalServer and a real V2Merge run in this process (uvloop by default), with one
BTC/USD book of `--levels` levels a side that changes `--book-rate` times a second (so every
late-joiner snapshot is encoded afresh, as on a live market). Two child processes of raw socket
clients (no frame parsing): `--light` clients subscribed to trades, stamped with
time.monotonic() (one clock for every process) at `--rate` trades/s; `--churners` clients
sending subscribe/unsubscribe of the depth-1000 book as fast as the request rate limit allows.
Phases: light clients alone, then with the churners, then alone again; p50/p99 per phase.

Example: python bench/server_fairness.py --churners 10 --duration 4
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STOP = b'"stop":1'


def _masked(payload: bytes) -> bytes:
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    n = len(payload)
    head = bytes((0x81, 0x80 | n)) if n < 126 else bytes((0x81, 0xFE)) + n.to_bytes(2, "big")
    return head + mask + body


async def _open(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 22)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        f"GET /v2 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    await reader.readuntil(b"\r\n\r\n")
    return reader, writer


async def _light(port: int, lat: list[float], ready: asyncio.Event, counter: list[int]) -> None:
    reader, writer = await _open(port)
    writer.write(_masked(b'{"method":"subscribe","params":{"channel":"trade","symbol":["BTC/USD"]}}'))
    counter[0] += 1
    if counter[0] == counter[1]:
        ready.set()
    tail = b""
    while True:
        data = await reader.read(1 << 20)
        if not data:
            return
        now = time.monotonic()
        pos = 0
        while (i := data.find(b'"sent":', pos)) >= 0:
            j = data.find(b"}", i)
            try:
                lat.append(now - float(data[i + 7 : j]))
            except ValueError:
                pass
            pos = j
        if STOP in tail + data:
            writer.close()
            return
        tail = data[-16:]


def symbols(n: int) -> list[str]:
    return ["BTC/USD"] + [f"S{i:02d}/USD" for i in range(1, n)]


async def _churner(port: int, depth: int, per_s: float, nsym: int, ready: asyncio.Event, counter: list[int]) -> None:
    reader, writer = await _open(port)
    syms = json.dumps(symbols(nsym)).encode()
    sub = _masked(b'{"method":"subscribe","params":{"channel":"book","symbol":%s,"depth":%d}}' % (syms, depth))
    unsub = _masked(b'{"method":"unsubscribe","params":{"channel":"book","symbol":%s,"depth":%d}}' % (syms, depth))

    async def drain() -> None:
        while await reader.read(1 << 20):
            pass

    task = asyncio.create_task(drain())
    counter[0] += 1
    if counter[0] == counter[1]:
        ready.set()
    loop = asyncio.get_running_loop()
    start, n = loop.time(), 0
    try:
        while True:
            due = int((loop.time() - start) * per_s) - n
            for _ in range(max(0, due)):
                writer.write(sub + unsub)
                n += 1
            await asyncio.sleep(0.005)
    finally:
        task.cancel()


async def _child(kind: str, port: int, n: int, depth: int, per_s: float, nsym: int) -> None:
    ready = asyncio.Event()
    counter = [0, n]
    lat: list[float] = []
    if kind == "light":
        tasks = [asyncio.create_task(_light(port, lat, ready, counter)) for _ in range(n)]
    else:
        tasks = [asyncio.create_task(_churner(port, depth, per_s, nsym, ready, counter)) for _ in range(n)]
    await ready.wait()
    print("ready", flush=True)
    if kind == "light":
        await asyncio.gather(*tasks)
        print(json.dumps(lat), flush=True)
    else:
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # until told to stop
    print("done", flush=True)


def _deep_book(symbol: str, levels: int, ts: str):
    from relay.core.book import Book
    from relay.protocols.spot_v2.wire import V2Parser, encode_book

    bids = [(b"%d.%d" % (50_000 - i // 10, i % 10), b"%d.%08d" % (i % 7 + 1, 12345 + i)) for i in range(levels)]
    asks = [(b"%d.%d" % (50_001 + i // 10, i % 10), b"%d.%08d" % (i % 5 + 1, 54321 + i)) for i in range(levels)]
    draft = encode_book(symbol, True, bids, asks, 0, ts)
    ev = V2Parser().parse(draft)
    crc = Book(symbol, levels).load_snapshot(ev.bids, ev.asks, ts)
    return encode_book(symbol, True, bids, asks, crc, ts)


def _bid_update(merge, symbol: str, i: int, ts: str) -> bytes:
    from relay.protocols.spot_v2.wire import V2Parser, encode_book

    level = [(b"49999.5", b"%d.%08d" % (1 + i % 3, i))]
    pub = merge.books[symbol].pub.copy()
    ev = V2Parser().parse(encode_book(symbol, False, level, [], 0, ts))
    crc = pub.apply(ev.bids, ev.asks, ts, None)
    return encode_book(symbol, False, level, [], crc, ts)


async def _parent(args: argparse.Namespace) -> dict:
    from relay.config import ChannelsConfig, ServerConfig
    from relay.core.outputs import MergeSettings, Publication
    from relay.protocols.spot_v2.endpoint import V2Endpoint
    from relay.protocols.spot_v2.merge import V2Merge
    from relay.protocols.spot_v2.wire import now_rfc3339
    from relay.server.listener import LocalServer

    cfg = ServerConfig(max_clients=1000, **json.loads(args.server))
    syms = symbols(args.symbols)
    chans = ChannelsConfig.model_validate({"book": {"symbols": syms, "depth": 1000}, "trade": {"symbols": ["BTC/USD"]}})
    merge = V2Merge(MergeSettings(book_depth=1000))
    endpoint = V2Endpoint(merge, chans, path=cfg.path, dynamic=cfg.dynamic_subscriptions)
    server = LocalServer(cfg, [endpoint], host="127.0.0.1", port=0)
    publish = server.publisher(endpoint)
    await server.start()
    now = time.monotonic()
    up = merge.add_upstream("a")
    merge.upstream_up(up, now)
    merge.line_status(up, "online", now)
    for sym in syms:
        merge.feed(up, _deep_book(sym, args.levels, now_rfc3339()), now)
    publish(merge.take())
    assert all(merge.book_snapshot(sym, 1000) is not None for sym in syms)

    async def spawn(kind: str, n: int) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--child",
            kind,
            str(server.port),
            str(n),
            str(args.depth),
            str(args.per_s),
            str(args.symbols),
            stdout=subprocess.PIPE,
            stdin=subprocess.PIPE,
            limit=1 << 26,
        )
        assert proc.stdout is not None
        assert (await proc.stdout.readline()).strip() == b"ready"
        return proc

    def trade(stamp: float | None, stop: bool = False) -> bytes:
        extra = b',"sent":' + repr(stamp).encode() if stamp is not None else b""
        if stop:
            extra += b"," + STOP
        return (
            b'{"channel":"trade","type":"update","data":[{"symbol":"BTC/USD","side":"buy","price":50000.1,'
            b'"qty":0.1,"ord_type":"market","trade_id":1,"timestamp":"2026-01-01T00:00:00.000000Z"' + extra + b"}]}"
        )

    counter = [0]

    async def phase(seconds: float) -> tuple[list[float], float]:
        light = await spawn("light", args.light)
        await asyncio.sleep(0.2)
        loop = asyncio.get_running_loop()
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        start = loop.time()
        sent = books = 0
        while loop.time() < start + seconds:
            t = loop.time() - start
            while books < int(t * args.book_rate):
                books += 1
                counter[0] += 1
                for sym in syms:
                    merge.feed(up, _bid_update(merge, sym, counter[0], now_rfc3339()), time.monotonic())
                publish(merge.take())
            if int(t * args.rate) > sent:
                sent += 1
                publish([Publication("trade", "BTC/USD", 0, trade(time.monotonic()), False)])
            await asyncio.sleep(0.0005)
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        publish([Publication("trade", "BTC/USD", 0, trade(None, True), False)])
        assert light.stdout is not None
        lat: list[float] = []
        while True:
            line = (await light.stdout.readline()).strip()
            if line == b"done" or not line:
                break
            if line.startswith(b"["):
                lat = json.loads(line)
        await light.wait()
        cpu = (cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime) / seconds
        return lat, cpu

    def summary(lat: list[float], cpu: float) -> dict:
        if not lat:
            return {"n": 0}
        q = statistics.quantiles(lat, n=100)
        return {
            "n": len(lat),
            "p50_ms": round(statistics.median(lat) * 1e3, 3),
            "p99_ms": round(q[98] * 1e3, 3),
            "relay_cpu": round(cpu, 2),
        }

    out: dict = {k: v for k, v in vars(args).items() if k != "asyncio"}
    out["alone"] = summary(*await phase(args.duration))
    churn = await spawn("churn", args.churners)
    bytes0, req0 = server.bytes_out, server.requests_total
    out["with_churners"] = summary(*await phase(args.duration))
    out["churn_requests_per_s"] = round((server.requests_total - req0) / args.duration)
    out["churn_mb_out_per_s"] = round((server.bytes_out - bytes0) / args.duration / 1e6, 1)
    out["rate_limited"] = server.rate_limited
    out["snapshots_paced"] = server.stats().get("snapshots_paced", 0)
    assert churn.stdin is not None
    churn.stdin.write(b"stop\n")
    await churn.stdin.drain()
    churn.kill()
    await churn.wait()
    out["alone_again"] = summary(*await phase(args.duration))
    base = min(out["alone"].get("p50_ms") or 1e9, out["alone_again"].get("p50_ms") or 1e9)
    if out["with_churners"].get("p50_ms") and base < 1e9:
        out["p50_ratio"] = round(out["with_churners"]["p50_ms"] / base, 2)
    await server.stop()
    return out


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        import uvloop

        kind, port, n, depth = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
        uvloop.run(_child(kind, port, n, depth, float(sys.argv[6]), int(sys.argv[7])))
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--light", type=int, default=5)
    p.add_argument("--churners", type=int, default=10)
    p.add_argument("--depth", type=int, default=1000)
    p.add_argument("--levels", type=int, default=1000)
    p.add_argument("--symbols", type=int, default=1, help="deep books, each churn request names them all")
    p.add_argument("--per-s", type=float, default=24.0, help="subscribe+unsubscribe pairs per churner per second")
    p.add_argument("--server", default="{}", help="ServerConfig overrides, JSON")
    p.add_argument("--rate", type=int, default=200, help="stamped trades per second")
    p.add_argument("--book-rate", type=int, default=50, help="book changes per second")
    p.add_argument("--duration", type=float, default=4.0)
    p.add_argument("--asyncio", action="store_true", help="the default asyncio loop instead of uvloop")
    args = p.parse_args()
    if args.asyncio:
        result = asyncio.run(_parent(args))
    else:
        import uvloop

        result = uvloop.run(_parent(args))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
