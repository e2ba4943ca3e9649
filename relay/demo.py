"""`kraken-relay demo`: the relay against the built-in simulator, offline, with faults on a timer.

Two simulated Kraken lines, the relay merging them, and a built-in client (`relay.verify`)
verifying every book checksum and every trade_id it receives from the relay. Every few seconds one line is dropped,
stalled, corrupted or put into maintenance; the one-line status shows the lines going down and
coming back while the client's counters keep climbing with zero bad books and zero gaps.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from importlib import resources

from relay.app import Relay, run_loop
from relay.config import load_config, parse_config
from relay.ops.logging import configure_logging
from relay.sim import LineConfig, SimConfig, Simulator
from relay.verify import V2Verifier, VerifyingClient

DEFAULT_CONFIG = resources.files("relay") / "demo.yaml"  # package data: present in any install
FAULT_CYCLE = [  # (line, kind, duration seconds, params)
    (0, "drop", None, {}),
    (1, "corrupt_checksum", None, {"symbol": "BTC/USD"}),
    (0, "stall", 6.0, {}),
    (1, "close_1001", None, {}),
    (0, "maintenance", 5.0, {}),
    (1, "silent_symbol", 8.0, {"symbol": "ETH/USD"}),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="relay config (default: the bundled relay/demo.yaml)")
    parser.add_argument("--duration", type=float, default=0.0, help="seconds to run (0 = until Ctrl-C)")
    parser.add_argument("--fault-every", type=float, default=8.0, help="seconds between injected faults")
    parser.add_argument("--rate", type=float, default=400.0, help="simulated book updates per second")


def status_line(relay: Relay, client: VerifyingClient, note: str) -> str:
    stack = relay.stack("v2")
    lines = " ".join(f"{c.name}:{c.state}" for c in stack.pool.connections)
    v = client.verifier
    assert isinstance(v, V2Verifier)
    return (
        f"lines [{lines}] system={stack.merge.system_status()} | client: {v.book_frames} book frames, "
        f"{len(v.checksum_bad)} bad, {v.trade_count} trades, {len(v.trade_gaps)} gaps, {v.trade_dups} dups, "
        f"{client.disconnects} disconnects | {note}"
    )


async def demo(args: argparse.Namespace) -> int:
    if args.config:
        cfg = load_config(args.config)
    else:
        with resources.as_file(DEFAULT_CONFIG) as path:
            cfg = load_config(path)
    ports = [int(u.url.rsplit(":", 1)[1].split("/")[0]) for u in cfg.upstreams]
    symbols = cfg.channels.all_symbols()
    sim = Simulator(
        SimConfig(
            symbols=symbols,
            rate=args.rate,
            seed=7,
            lines=[LineConfig(latency=0.001 + 0.002 * i, jitter=0.002, port=p) for i, p in enumerate(ports)],
        )
    )
    await sim.start()
    relay = Relay(cfg)
    await relay.start()
    depth = cfg.channels.book.depth if cfg.channels.book else 10
    verifier = V2Verifier(symbols, min(depth, 25))
    client = VerifyingClient(relay.server.url, verifier)
    client_task = asyncio.create_task(client.run())
    print(
        f"demo: simulator lines {', '.join(sim.urls)}; relay at {relay.server.url}; metrics at "
        f"http://{relay.http.host}:{relay.http.port}/metrics. Ctrl-C stops.",
        flush=True,
    )
    loop = asyncio.get_running_loop()
    start = loop.time()
    next_fault, i, note = start + args.fault_every, 0, "all lines healthy"
    tty = sys.stdout.isatty()
    try:
        while not args.duration or loop.time() - start < args.duration:
            await asyncio.sleep(0.5)
            if loop.time() >= next_fault:
                line, kind, duration, params = FAULT_CYCLE[i % len(FAULT_CYCLE)]
                if line < len(sim.urls):
                    sim.inject(line, kind, duration, **params)
                    note = f"injected {kind} on line {line}" + (f" for {duration:g}s" if duration else "")
                i += 1
                next_fault = loop.time() + args.fault_every
            text = status_line(relay, client, note)
            print(("\r\x1b[2K" + text) if tty else text, end="" if tty else "\n", flush=True)
    finally:
        print()
        client_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await client_task
        await relay.stop()
        await sim.stop()
    return 0 if verifier.ok else 1


def main(args: argparse.Namespace) -> int:
    configure_logging("warning", "console" if sys.stderr.isatty() else "json")
    try:
        return run_loop(demo(args))
    except KeyboardInterrupt:
        return 0


__all__ = ["VerifyingClient", "add_arguments", "main", "parse_config"]
