"""`kraken-relay sim`: run the Spot (default) or Futures simulator from the command line (on uvloop).

Example: `kraken-relay sim --ports 18001,18002 --symbols BTC/USD,ETH/USD --rate 2000
--latency 0.001,0.003 --jitter 0.002 --control-port 18100 --fault 10:0:stall:3`.
`--protocol futures` serves a Kraken Futures market instead, with the same line, fault
(`--fault`, `--faults FILE`) and control (`--control-port`) options.
Prints where it listens and every fault as it starts and ends; Ctrl-C stops it.

Fixture data is used only when asked for: `--fixtures DIR` (or env `KRAKEN_FIXTURES`) names a Kraken
fixtures directory (the layout of the repository's `shared/fixtures/kraken`), giving `--replay
capture` and the real instrument lists; `--instruments FILE` names the instrument file alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import signal
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from relay.sim.common import LineConfig
from relay.sim.faults import FAULT_KINDS, FUTURES_FAULT_KINDS, FaultSpec, load_schedule, parse_fault
from relay.sim.futures import FuturesSimConfig, FuturesSimulator
from relay.sim.server import SimConfig, Simulator

# inside a fixtures directory (`--fixtures`): Spot and Futures captures and instrument files
SPOT_CAPTURE = "derived/python-kraken-sdk_orderbook-v2.wire.ndjson"
SPOT_INSTRUMENTS = "kraken-data-recorder/test/data/instrument_snapshot.json"
FUTURES_CAPTURE = "cryptofeed/sample_data/KRAKEN_FUTURES.ws.1.0"
FUTURES_INSTRUMENTS = "cryptofeed/sample_data/KRAKEN_FUTURES.0"
FIXTURES_ENV = "KRAKEN_FIXTURES"


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
    parser.add_argument("--levels", type=int, default=1000, help="levels per book side (futures: at most 500)")
    parser.add_argument("--burst-every", type=float, default=5.0, help="seconds between rate bursts (0: none)")
    parser.add_argument("--burst-factor", type=float, default=4.0)
    parser.add_argument(
        "--subscribe-rate",
        type=float,
        default=20.0,
        help="subscribe requests/s per connection before 'Exceeded msg rate'",
    )
    parser.add_argument(
        "--fixtures",
        default=os.environ.get(FIXTURES_ENV) or None,
        metavar="DIR",
        help=f"Kraken fixtures directory (default: env {FIXTURES_ENV}; none: built-in data only): "
        "enables --replay capture and the real instrument lists",
    )
    parser.add_argument(
        "--instruments",
        default=None,
        metavar="FILE",
        help="instrument file: v2 `instrument` snapshot JSON (Spot: real precisions of every pair) or "
        "cryptofeed KRAKEN_FUTURES.0 (futures REST instruments); default: from --fixtures, else built-in",
    )
    parser.add_argument(
        "--replay",
        default=None,
        help="replay a capture instead of generating (Spot: v2 book ndjson; futures: cryptofeed "
        "KRAKEN_FUTURES.ws); 'capture' = the real capture in --fixtures",
    )
    parser.add_argument("--no-loop", action="store_true", help="replay once, do not loop")
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="T:LINE:KIND[:DUR][:k=v,..]",
        help="scripted fault, repeatable; kinds: "
        + ", ".join(FAULT_KINDS)
        + "; futures: "
        + ", ".join(FUTURES_FAULT_KINDS),
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


def _lines(args: argparse.Namespace) -> list[LineConfig]:
    ports = [int(p) for p in str(args.ports).split(",") if p.strip()] or [0]
    n = args.lines or len(ports)
    if len(ports) == 1 and n > 1:
        ports = [ports[0] + i if ports[0] else 0 for i in range(n)]
    if len(ports) != n:
        raise ValueError("--lines does not match the number of --ports")
    lat = _per_line(args.latency, n, "latency")
    jit = _per_line(args.jitter, n, "jitter")
    return [LineConfig(latency=lat[i], jitter=jit[i], port=ports[i]) for i in range(n)]


def _faults(args: argparse.Namespace, protocol: str) -> list[FaultSpec]:
    faults = [parse_fault(f, protocol) for f in args.fault]
    if args.faults:
        faults += load_schedule(args.faults, protocol)
    return faults


def _fixture(args: argparse.Namespace, rel: str) -> Path | None:
    """`rel` inside `--fixtures`, if given and present."""
    if not args.fixtures:
        return None
    path = Path(args.fixtures) / rel
    return path if path.exists() else None


def _instruments(args: argparse.Namespace, rel: str) -> str | None:
    if args.instruments:
        if not Path(args.instruments).exists():
            raise ValueError(f"--instruments: no such file {args.instruments}")
        return str(args.instruments)
    path = _fixture(args, rel)
    return None if path is None else str(path)


def _replay(args: argparse.Namespace, rel: str) -> str | None:
    if args.replay != "capture":
        return str(args.replay) if args.replay else None
    path = _fixture(args, rel)
    if path is None:
        where = f"{args.fixtures}/{rel} not found" if args.fixtures else f"give --fixtures DIR or set {FIXTURES_ENV}"
        raise ValueError(f"--replay capture: {where}")
    return str(path)


def _log(text: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {text}", flush=True)


def build_config(args: argparse.Namespace) -> SimConfig:
    """The Spot simulator config from `kraken-relay sim` arguments."""
    return SimConfig(
        symbols=[s.strip() for s in args.symbols.split(",") if s.strip()],
        rate=args.rate,
        trade_rate=args.trade_rate,
        seed=args.seed,
        host=args.host,
        lines=_lines(args),
        control_port=args.control_port,
        replay=_replay(args, SPOT_CAPTURE),
        replay_loop=not args.no_loop,
        instruments=_instruments(args, SPOT_INSTRUMENTS),
        levels=args.levels,
        burst_every=args.burst_every,
        burst_factor=args.burst_factor,
        subscribe_rate=args.subscribe_rate,
        faults=_faults(args, "v2"),
        log=_log,
    )


def build_futures_config(args: argparse.Namespace) -> FuturesSimConfig:
    """The Futures simulator config from the same `kraken-relay sim` arguments."""
    return FuturesSimConfig(
        products=[p.strip().upper() for p in args.products.split(",") if p.strip()],
        rate=args.rate,
        trade_rate=args.trade_rate,
        seed=args.seed,
        host=args.host,
        lines=_lines(args),
        control_port=args.control_port,
        replay=_replay(args, FUTURES_CAPTURE),
        replay_loop=not args.no_loop,
        instruments=_instruments(args, FUTURES_INSTRUMENTS),
        levels=min(args.levels, 500),
        faults=_faults(args, "futures"),
        log=_log,
    )


def _describe_spot(sim: Simulator) -> list[str]:
    config = sim.config
    what = f"replay {config.replay}" if config.replay else f"{', '.join(config.symbols)} at {config.rate:g} updates/s"
    out = [f"kraken-relay sim: {what}"]
    for line, lc in zip(sim.lines, config.lines):
        out.append(
            f"  line {line.idx}: {line.url}  (latency {lc.latency}s, jitter {lc.jitter}s)  REST "
            f"http://{config.host}:{line.port}/0/public/AssetPairs  Spot v1: {line.v1_url}"
        )
    return out


def _describe_futures(sim: FuturesSimulator) -> list[str]:
    cfg = sim.config
    what = f"replay {cfg.replay}" if cfg.replay else f"{', '.join(sim.market.products)} at {cfg.rate:g} deltas/s"
    out = [f"kraken-relay sim (futures): {what}"]
    for line in sim.lines:
        out.append(
            f"  line {line.idx}: {line.url}  (latency {line.cfg.latency}s, jitter {line.cfg.jitter}s)  REST "
            f"http://{cfg.host}:{line.port}/derivatives/api/v3/instruments"
        )
    return out


def _describe(sim: Simulator | FuturesSimulator) -> list[str]:
    return _describe_futures(sim) if isinstance(sim, FuturesSimulator) else _describe_spot(sim)


async def _run(sim: Simulator | FuturesSimulator, duration: float | None) -> None:
    await sim.start()
    gc.collect()
    gc.freeze()  # the books are long-lived: keep them out of every later GC pass (latency tails)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    lines = _describe(sim)
    if sim.control_port is not None:
        lines.append(f"  control: http://{sim.config.host}:{sim.control_port}/state  (POST /fault, POST /clear)")
    print("\n".join(lines), flush=True)
    try:
        if duration is None:
            await stop.wait()
        else:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), duration)
    finally:
        await sim.stop()


def _run_loop(coro: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a hard dependency
        asyncio.run(coro)
        return
    uvloop.run(coro)


def main(args: argparse.Namespace) -> int:
    sim: Simulator | FuturesSimulator
    try:
        # building the simulator validates symbols / products / replay file before binding anything
        if getattr(args, "protocol", "v2") == "futures":
            sim = FuturesSimulator(build_futures_config(args))
        else:
            sim = Simulator(build_config(args))
    except (ValueError, OSError) as exc:
        print(f"kraken-relay sim: {exc}", file=sys.stderr)
        return 2
    try:
        _run_loop(_run(sim, args.duration))
    except OSError as exc:
        print(f"kraken-relay sim: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


__all__ = ["add_arguments", "build_config", "build_futures_config", "main"]
