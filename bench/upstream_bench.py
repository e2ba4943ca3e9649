"""Upstream read-path overhead: frames/s through an UpstreamConnection vs a bare websockets recv loop.

A child process serves a status frame, acks every subscription, then sends `--frames` copies of
a real ~170 B v2 book update as fast as it can. In this process (uvloop) we read them with
(a) a bare `recv(decode=False)` loop and (b) an `UpstreamPool` with one line and a null merge
(`feed` drops book frames, `take` returns []), so (b) - (a) is the upstream layer's own per-frame cost
(counters, deadline bookkeeping, merge calls). Prints a JSON last line.
Example: python bench/upstream_bench.py --frames 300000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson
import uvloop

FRAME = (
    b'{"channel":"book","type":"update","data":[{"symbol":"BTC/USD","bids":[{"price":45283.5,'
    b'"qty":0.10000000}],"asks":[],"checksum":3310070434,"timestamp":"2025-01-01T00:00:00.000000Z"}]}'
)


async def _serve(n: int) -> None:
    from websockets.asyncio.server import serve

    async def handler(ws):  # type: ignore[no-untyped-def]
        await ws.send(
            '{"channel":"status","type":"update","data":[{"system":"online","api_version":"v2",'
            '"connection_id":1,"version":"2.0.0"}]}'
        )
        async for msg in ws:
            req = orjson.loads(msg)
            if req.get("method") != "subscribe":
                continue
            for sym in req["params"].get("symbol", []):
                await ws.send(
                    orjson.dumps(
                        {
                            "method": "subscribe",
                            "req_id": req.get("req_id"),
                            "success": True,
                            "result": {"channel": req["params"]["channel"], "symbol": sym},
                        }
                    ).decode()
                )
            if req["params"]["channel"] == "book":
                text = FRAME.decode()
                for _ in range(n):
                    await ws.send(text)
                await ws.close()

    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.Future()


class NullMerge:
    def __init__(self) -> None:
        from relay.protocols.spot_v2.wire import V2Parser

        self.parser = V2Parser()

    def add_upstream(self, name: str) -> int:
        return 0

    def upstream_up(self, up: int, now: float) -> None: ...
    def upstream_down(self, up: int, now: float) -> None: ...
    def line_status(self, up: int, system: str, now: float) -> None: ...
    def symbol_resubscribing(self, *a: object) -> None: ...
    def tick(self, now: float) -> None: ...
    def take_requests(self) -> list:
        return []

    def symbol_state(self, symbol: str) -> dict:
        return {}

    def feed(self, up: int, raw: bytes, now: float) -> object:
        if raw.startswith(b'{"channel":"book"'):
            return None  # data: what the real merge does with it is benchmarked elsewhere
        return self.parser.parse(raw)  # control frames (status, acks) drive the session

    def take(self) -> list:
        return []


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def _bare(url: str, n: int) -> tuple[float, float]:
    from websockets.asyncio.client import connect

    async with connect(url, compression=None, max_size=1 << 24) as ws:
        await ws.recv()
        await ws.send(
            orjson.dumps({"method": "subscribe", "params": {"channel": "book", "symbol": ["BTC/USD"]}}).decode()
        )
        await ws.recv()
        t0, c0 = time.perf_counter(), _cpu()
        got = 0
        try:
            while True:
                await ws.recv(decode=False)
                got += 1
        except Exception:
            pass
        return got / (time.perf_counter() - t0), _cpu() - c0


async def _pool(url: str, n: int) -> tuple[float, float]:
    from relay.config import parse_config
    from relay.protocols.spot_v2.spec import SPOT_V2
    from relay.upstream.pool import UpstreamPool

    cfg = parse_config(
        {"upstreams": [{"name": "a", "url": url}], "channels": {"book": {"symbols": ["BTC/USD"]}, "instrument": False}},
        env={},
    )
    pool = UpstreamPool(cfg, NullMerge(), lambda pubs: None, protocol=SPOT_V2)
    await pool.start()
    conn = pool.connections[0]
    while conn.frames < 3:
        await asyncio.sleep(0.001)
    t0, c0, f0 = time.perf_counter(), _cpu(), conn.frames
    while conn.connects < 1 or not conn.disconnects:
        await asyncio.sleep(0.005)
    dt, cpu = time.perf_counter() - t0, _cpu() - c0
    frames = conn.frames - f0
    await pool.stop()
    return frames / dt, cpu


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=300_000)
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        uvloop.run(_serve(args.frames))
        return
    out: dict[str, float] = {"frames": args.frames}
    for name, fn in (("bare", _bare), ("pool", _pool)):
        child = subprocess.Popen(
            [sys.executable, __file__, "--serve", "--frames", str(args.frames)], stdout=subprocess.PIPE, text=True
        )
        try:
            port = int(child.stdout.readline())  # type: ignore[union-attr]
            rate, cpu = uvloop.run(fn(f"ws://127.0.0.1:{port}/v2", args.frames))
            out[f"{name}_frames_per_s"] = round(rate)
            out[f"{name}_cpu_us_per_frame"] = round(cpu / args.frames * 1e6, 2)
        finally:
            child.kill()
            child.wait()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
