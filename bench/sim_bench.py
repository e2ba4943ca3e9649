"""Simulator throughput: frames/s sent vs scheduled, with N clients (prints a JSON last line).

The simulator runs in this process on uvloop; the clients run in a child process (they share the
machine's 2 cores, as they would in real use). Each client subscribes to every symbol's book at
`--depth` on its line and counts frames. Reported:
  scheduled_updates / generated_updates: book updates the schedule asked for vs produced;
  frames_sent / frames_received (and per second): frames written to / read by clients;
  delivery_lag_mean_ms / delivery_lag_max_ms: how late frames left vs their scheduled time;
  sim_cpu_s: CPU used by the simulator process.
Example: python bench/sim_bench.py --rate 10000 --clients 2 --lines 2 --duration 10
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

SYMBOLS = "BTC/USD,ETH/USD,SOL/USD"


async def _client_main(urls: list[str], symbols: list[str], depth: int, duration: float) -> None:
    import websockets

    counts = [0] * len(urls)
    ready = 0

    async def one(i: int, url: str) -> None:
        nonlocal ready
        async with websockets.connect(url, compression=None, max_size=1 << 24, max_queue=None) as ws:
            await ws.send(
                orjson.dumps(
                    {"method": "subscribe", "params": {"channel": "book", "symbol": symbols, "depth": depth}}
                ).decode()
            )
            ready += 1
            end = time.monotonic() + duration
            n = 0
            while True:
                left = end - time.monotonic()
                if left <= 0:
                    break
                try:
                    await asyncio.wait_for(ws.recv(decode=False), left)
                except TimeoutError:
                    break
                n += 1
                counts[i] = n

    await asyncio.gather(*(one(i, u) for i, u in enumerate(urls)))
    print(json.dumps({"received": sum(counts)}), flush=True)


async def _bench(args: argparse.Namespace) -> dict:
    from relay.sim import LineConfig, SimConfig, Simulator

    symbols = args.symbols.split(",")
    cfg = SimConfig(
        symbols=symbols,
        rate=args.rate,
        seed=1,
        trade_rate=args.rate / 20,
        lines=[LineConfig(latency=0.001, jitter=0.001) for _ in range(args.lines)],
        burst_every=args.burst_every,
        burst_factor=args.burst_factor,
    )
    sim = Simulator(cfg)
    await sim.start()
    urls = [sim.urls[i % args.lines] for i in range(args.clients)]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--client",
        ",".join(urls),
        "--symbols",
        args.symbols,
        "--depth",
        str(args.depth),
        "--duration",
        str(args.duration),
        stdout=subprocess.PIPE,
    )
    # wait until every client is subscribed, then measure a clean window
    deadline = time.monotonic() + 15
    while sum(len(ln.conns) for ln in sim.lines) < args.clients and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    u0 = resource.getrusage(resource.RUSAGE_SELF)
    upd0 = sim.market.book_updates
    sent0 = sum(ln.sent_frames for ln in sim.lines)
    for ln in sim.lines:
        ln.late_max = 0.0
        ln.late_sum = 0.0
    q0 = sim.market.seq
    window = max(1.0, args.duration - 2.0)
    await asyncio.sleep(window)
    t1 = loop.time()
    u1 = resource.getrusage(resource.RUSAGE_SELF)
    generated = sim.market.book_updates - upd0
    sent = sum(ln.sent_frames for ln in sim.lines) - sent0
    events = sim.market.seq - q0
    lag_sum = sum(ln.late_sum for ln in sim.lines)
    lag_max = max(ln.late_max for ln in sim.lines)
    queued = sum(len(ln.queue) for ln in sim.lines)
    out, _ = await proc.communicate()
    await sim.stop()
    received = json.loads(out.decode().strip().splitlines()[-1])["received"]
    elapsed = t1 - t0
    # book updates due in the window: the schedule (bursts included) plus one per trade
    start = sim.market._start or t0
    scheduled = sim.market.scheduled(t1 - start) - sim.market.scheduled(t0 - start) + cfg.trade_rate * elapsed
    return {
        "bench": "sim",
        "rate": args.rate,
        "lines": args.lines,
        "clients": args.clients,
        "depth": args.depth,
        "window_s": round(elapsed, 3),
        "scheduled_updates_per_s": round(scheduled / elapsed, 1),
        "generated_updates_per_s": round(generated / elapsed, 1),
        "generated_vs_scheduled": round(generated / scheduled, 4) if scheduled else None,
        "frames_sent_per_s": round(sent / elapsed, 1),
        "frames_received_total": received,
        "delivery_lag_mean_ms": round(1000 * lag_sum / max(1, events * args.lines), 3),
        "delivery_lag_max_ms": round(1000 * lag_max, 3),
        "queued_at_end": queued,
        "sim_cpu_s": round((u1.ru_utime + u1.ru_stime) - (u0.ru_utime + u0.ru_stime), 3),
        "sim_cpu_pct": round(100 * ((u1.ru_utime + u1.ru_stime) - (u0.ru_utime + u0.ru_stime)) / elapsed, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=10000.0, help="book updates/s, whole market")
    ap.add_argument("--lines", type=int, default=2)
    ap.add_argument("--clients", type=int, default=2, help="client connections (spread over lines)")
    ap.add_argument("--depth", type=int, default=1000)
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--symbols", default=SYMBOLS)
    ap.add_argument("--burst-every", type=float, default=0.0)
    ap.add_argument("--burst-factor", type=float, default=4.0)
    ap.add_argument("--client", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.client:
        uvloop.run(_client_main(args.client.split(","), args.symbols.split(","), args.depth, args.duration))
        return
    result = uvloop.run(_bench(args))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
