"""`kraken-relay sim`: run the simulator from the command line (on uvloop).

Example: `kraken-relay sim --ports 18001,18002 --symbols BTC/USD,ETH/USD --rate 2000
--latency 0.001,0.003 --jitter 0.002 --control-port 18100 --fault 10:0:stall:3`.
Prints where it listens and every fault as it starts and ends; Ctrl-C stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import signal
import sys
import time
from pathlib import Path

from relay.sim.faults import FAULT_KINDS, load_schedule, parse_fault
from relay.sim.server import LineConfig, SimConfig, Simulator

CAPTURE = (
    Path(__file__).resolve().parents[3] / "shared/fixtures/kraken/derived/python-kraken-sdk_orderbook-v2.wire.ndjson"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--protocol",
        choices=("v2", "futures"),
        default="v2",
        help="futures: a Kraken Futures market on /ws/v1 (see relay.sim.futures)",
    )
    parser.add_argument("--products", default="PF_XBTUSD,PF_ETHUSD", help="futures product ids (--protocol futures)")
    parser.add_argument("--symbols", default="BTC/USD,ETH/USD", help="comma-separated v2 symbols")
    parser.add_argument("--rate", type=float, default=500.0, help="book updates per second, whole market")
    parser.add_argument("--trade-rate", type=float, default=None, help="trades per second (default rate/10)")
    parser.add_argument("--lines", type=int, default=None, help="number of lines (default: one per --ports)")
    parser.add_argument("--ports", default="0", help="comma-separated ports, one per line (0 = any free)")
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default loopback)")
    parser.add_argument("--latency", default="0", help="seconds, one value or one per line")
    parser.add_argument("--jitter", default="0", help="seconds, one value or one per line")
    parser.add_argument("--control-port", type=int, default=None, help="HTTP control port (POST /fault, GET /state)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--levels", type=int, default=1000, help="levels per book side")
    parser.add_argument("--burst-every", type=float, default=5.0, help="seconds between rate bursts (0: none)")
    parser.add_argument("--burst-factor", type=float, default=4.0)
    parser.add_argument(
        "--subscribe-rate",
        type=float,
        default=20.0,
        help="subscribe requests/s per connection before 'Exceeded msg rate'",
    )
    parser.add_argument(
        "--replay",
        default=None,
        help="replay a v2 book capture (ndjson) instead of generating; 'capture' = the shared "
        "real BTC/USD capture (fixtures)",
    )
    parser.add_argument("--no-loop", action="store_true", help="replay once, do not loop")
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="T:LINE:KIND[:DUR][:k=v,..]",
        help="scripted fault, repeatable; kinds: " + ", ".join(FAULT_KINDS),
    )
    parser.add_argument("--faults", default=None, metavar="FILE", help="YAML/JSON fault schedule")
    parser.add_argument("--duration", type=float, default=None, help="stop after this many seconds")


def _per_line(text: str, n: int, what: str) -> list[float]:
    vals = [float(v) for v in text.split(",") if v.strip()] or [0.0]
    if len(vals) == 1:
        return vals * n
    if len(vals) != n:
        raise ValueError(f"--{what}: give one value or one per line ({n})")
    return vals


def build_config(args: argparse.Namespace) -> SimConfig:
    ports = [int(p) for p in args.ports.split(",") if p.strip()] or [0]
    n = args.lines or len(ports)
    if len(ports) == 1 and n > 1:
        ports = [ports[0] + i if ports[0] else 0 for i in range(n)]
    if len(ports) != n:
        raise ValueError("--lines does not match the number of --ports")
    lat = _per_line(args.latency, n, "latency")
    jit = _per_line(args.jitter, n, "jitter")
    faults = [parse_fault(f) for f in args.fault]
    replay = args.replay
    if replay == "capture":
        replay = str(CAPTURE)
    if args.faults:
        faults += load_schedule(args.faults)
    return SimConfig(
        symbols=[s.strip() for s in args.symbols.split(",") if s.strip()],
        rate=args.rate,
        trade_rate=args.trade_rate,
        seed=args.seed,
        host=args.host,
        lines=[LineConfig(latency=lat[i], jitter=jit[i], port=ports[i]) for i in range(n)],
        control_port=args.control_port,
        replay=replay,
        replay_loop=not args.no_loop,
        levels=args.levels,
        burst_every=args.burst_every,
        burst_factor=args.burst_factor,
        subscribe_rate=args.subscribe_rate,
        faults=faults,
        log=lambda text: print(f"{time.strftime('%H:%M:%S')} {text}", flush=True),
    )


async def _run(config: SimConfig, duration: float | None) -> None:
    sim = Simulator(config)
    await sim.start()
    gc.collect()
    gc.freeze()  # the books are long-lived: keep them out of every later GC pass (latency tails)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    what = f"replay {config.replay}" if config.replay else f"{', '.join(config.symbols)} at {config.rate:g} updates/s"
    print(f"kraken-relay sim: {what}", flush=True)
    for line, lc in zip(sim.lines, config.lines):
        print(
            f"  line {line.idx}: {line.url}  (latency {lc.latency}s, jitter {lc.jitter}s)  REST "
            f"http://{config.host}:{line.port}/0/public/AssetPairs  Spot v1: {line.v1_url}",
            flush=True,
        )
    if sim.control_port is not None:
        print(f"  control: http://{config.host}:{sim.control_port}/state  (POST /fault, POST /clear)", flush=True)
    try:
        if duration is None:
            await stop.wait()
        else:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), duration)
    finally:
        await sim.stop()


def main(args: argparse.Namespace) -> int:
    if getattr(args, "protocol", "v2") == "futures":
        from relay.sim.futures import main as futures_main

        return futures_main(args)
    try:
        config = build_config(args)
        Simulator(config)  # validate symbols / replay file before binding anything
    except (ValueError, OSError) as exc:
        print(f"kraken-relay sim: {exc}", file=sys.stderr)
        return 2
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a hard dependency
        runner = asyncio.run
    try:
        runner(_run(config, args.duration))
    except OSError as exc:
        print(f"kraken-relay sim: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0
