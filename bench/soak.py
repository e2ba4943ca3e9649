"""Chaos soak: 3 simulator lines with random faults of every kind, the relay, and real clients.

    python bench/soak.py                      # 10 minutes (`make soak`)
    python bench/soak.py --duration 60        # the CI version (tests/soak/test_soak.py)

Processes: `kraken-relay sim` (3 lines, several symbols at a realistic rate) and the relay
(`bench/e2e_relay.py`, each upstream leaving from its own loopback address 127.0.0.1/2/3 so a
429 on one line does not block the others' egress, as with separate Kraken IPs). In this
process: `relay.verify`'s v2 verifying client (every book checksum, every trade id), python-kraken-sdk's
`SpotOrderBookClient` (checks checksums itself) and ccxt's `watch_order_book` (books checked
against every frame's checksum by `tests/clients.py`).

Faults: every `--fault-every` seconds (jittered) one kind, drawn round-robin-shuffled over every
kind the simulator knows, hits one random line. A line counts as unhealthy from its fault until
the fault's duration plus `--recovery` seconds (reconnect, resubscribe) have passed; at most
`--concurrent` lines (default 2 of 3; never all of them unless `--allow-all`) are unhealthy at once,
so at every moment some line is healthy and clients must see nothing at all.

Asserts (exit 1 and `"ok": false` otherwise): zero client disconnects (our clients' own counters
and the relay's connected-clients gauge), zero checksum mismatches at the clients, trades exactly
once with no gap, relay RSS growth under 10 % from the end of warm-up to the end. Writes
`bench/results/soak-<duration>s.json` and prints a summary.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.harness import CpuMeter, relay_config, rss_mb, start_relay, start_sim, wait_relay_ready  # noqa: E402

SYMBOLS = ["BTC/USD", "ETH/USD", "SOL/USD", "XRP/USD", "DOGE/USD", "ADA/USD"]
KINDS = [
    "drop",
    "close_1001",
    "close_1013",
    "stall",
    "silent_symbol",
    "corrupt_checksum",
    "maintenance",
    "cancel_only",
    "refuse",
    "slow",
    "budget",
]
RESULTS = ROOT / "bench" / "results"


def draw_fault(kind: str, rng: random.Random) -> tuple[float | None, dict[str, Any]]:
    """(duration, params) for one fault of `kind`."""
    if kind in ("drop", "close_1001", "close_1013"):
        return None, {}
    if kind == "corrupt_checksum":
        return None, {"symbol": rng.choice(SYMBOLS)}
    if kind == "silent_symbol":
        return rng.uniform(2, 7), {"symbol": rng.choice(SYMBOLS)}
    if kind == "stall":
        return rng.uniform(1, 4), {}
    if kind in ("maintenance", "cancel_only"):
        return rng.uniform(2, 6), {}
    if kind == "refuse":
        return rng.uniform(2, 5), rng.choice([{}, {"mode": "tcp"}])
    if kind == "slow":
        return rng.uniform(2, 5), {"delay": round(rng.uniform(0.02, 0.3), 3)}
    if kind == "budget":
        return rng.uniform(5, 10), {"limit": 1, "window": 10}
    raise ValueError(kind)


# A fault that leaves the session up but needs a reconnect afterwards to be useful again makes
# the line unhealthy until reconnected: refuse/budget are paired with a drop so they bite.
PAIR_WITH_DROP = {"refuse", "budget"}


async def _connected(relay: Any) -> int:
    """The relay's connected-clients gauge (-1 if /metrics did not answer)."""
    with contextlib.suppress(Exception):
        for ln in (await relay.metrics()).splitlines():
            if ln.startswith("kraken_relay_clients_connected "):
                return int(float(ln.split()[1]))
    return -1


async def run(
    duration: float,
    *,
    rate: float = 300.0,
    fault_every: float = 4.0,
    recovery: float = 6.0,
    concurrent: int = 2,
    allow_all: bool = False,
    seed: int = 1,
    sdk: bool = True,
    ccxt: bool = True,
    log=print,
) -> dict:
    from relay.verify import V2Verifier, VerifyingClient

    rng = random.Random(seed)
    lines = [(0.001, 0.001), (0.002, 0.002), (0.003, 0.001)]
    n_lines = len(lines)
    max_bad = n_lines if allow_all else min(concurrent, n_lines - 1)
    sim = await start_sim(lines, SYMBOLS, rate, seed=seed, burst_every=5.0)
    cfg = relay_config(
        sim.urls,
        SYMBOLS,
        100,
        ticker=True,
        reconnect={"initial_delay": 0.2, "max_delay": 2.0, "stagger": 0.1},
        liveness={"frame_timeout": 3.0, "ping_interval": 1.0, "stale_after": 5.0},
    )
    for i, up in enumerate(cfg["upstreams"]):
        up["source_address"] = f"127.0.0.{i + 1}"
    relay = None
    tasks: list[asyncio.Task] = []
    summary: dict[str, Any] = {
        "duration_s": duration,
        "rate": rate,
        "symbols": SYMBOLS,
        "lines": n_lines,
        "max_unhealthy_lines": max_bad,
        "seed": seed,
    }
    try:
        relay = await start_relay(cfg)
        await wait_relay_ready(relay, 30)
        url = f"ws://127.0.0.1:{relay.port}/v2"
        verifier = V2Verifier(SYMBOLS, 25)
        vc = VerifyingClient(url, verifier)
        tasks.append(asyncio.create_task(vc.run()))
        n_clients = 1
        sdk_task = ccxt_task = None
        if sdk:
            from tests.clients import run_kraken_sdk_orderbook

            sdk_task = asyncio.create_task(run_kraken_sdk_orderbook(url, SYMBOLS[:3], 10, 10**9, duration + 5))
            n_clients += 1
        if ccxt:
            from tests.clients import run_ccxt_watch_order_book

            ccxt_task = asyncio.create_task(run_ccxt_watch_order_book(url, None, SYMBOLS[:2], 10**9, duration + 5, 10))
            n_clients += 1
        await asyncio.sleep(3.0)  # clients subscribed and holding books before the first fault
        for _ in range(100):  # ccxt loads its markets first: wait (bounded) until all are connected
            if await _connected(relay) >= n_clients:
                break
            await asyncio.sleep(0.2)
        loop = asyncio.get_running_loop()
        t_start = loop.time()
        warm = min(60.0, max(10.0, duration * 0.2))
        unhealthy_until = [0.0] * n_lines
        faults: list[dict] = []
        rss: list[tuple[float, float]] = []
        connected_min = 10**9
        bag: list[str] = []
        meter = CpuMeter([relay.pid]).start()
        next_fault = t_start + 2.0
        next_sample = t_start
        while (now := loop.time()) < t_start + duration:
            if now >= next_sample:
                rss.append((now - t_start, rss_mb(relay.pid)))
                c = await _connected(relay)
                if c >= 0:
                    connected_min = min(connected_min, c)
                next_sample = now + 1.0
            if now >= next_fault and now < t_start + duration - recovery:
                free = [i for i in range(n_lines) if unhealthy_until[i] <= now]
                busy = n_lines - len(free)
                if free and busy < max_bad:
                    if not bag:
                        bag = KINDS[:]
                        rng.shuffle(bag)
                    kind = bag.pop()
                    line = rng.choice(free)
                    dur, params = draw_fault(kind, rng)
                    await sim.fault(line, kind, dur, **params)
                    if kind in PAIR_WITH_DROP:
                        await sim.fault(line, "drop")
                    unhealthy_until[line] = now + (dur or 0.0) + recovery
                    faults.append({"t": round(now - t_start, 2), "line": line, "kind": kind, "duration": dur, **params})
                    log(f"[{now - t_start:6.1f}s] line {line}: {kind} {dur and round(dur, 1) or ''} {params or ''}")
                next_fault = now + rng.uniform(0.5, 1.5) * fault_every
            await asyncio.sleep(0.1)
        cpu = meter.stop()
        await asyncio.sleep(1.0)
        sdk_res = await sdk_task if sdk_task else None
        ccxt_res = await ccxt_task if ccxt_task else None
        metrics = await relay.metrics()
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if relay is not None:
            await relay.stop()
        await sim.stop()

    def client_errors(res: Any) -> list[str]:
        return [e for e in (res.errors if res else []) if not e.startswith("timeout after")]

    def metric(name: str) -> float:
        total = 0.0
        for ln in metrics.splitlines():
            if ln.startswith(name + " ") or ln.startswith(name + "{"):
                total += float(ln.rsplit(" ", 1)[1])
        return total

    after = [v for t, v in rss if t >= warm]
    base = after[0] if after else (rss[0][1] if rss else 0.0)
    growth = (after[-1] - base) / base if after and base else 0.0
    summary.update(
        {
            "faults": len(faults),
            "fault_kinds": sorted({f["kind"] for f in faults}),
            "verifying_client": {
                "book_frames": verifier.book_frames,
                "bad_checksums": len(verifier.checksum_bad),
                "trades": verifier.trade_count,
                "gaps": len(verifier.trade_gaps),
                "duplicates": verifier.trade_dups,
                "disconnects": vc.disconnects,
            },
            "kraken_sdk": None
            if sdk_res is None
            else {"frames": sdk_res.frames, "invalid": sdk_res.invalid, "errors": client_errors(sdk_res)},
            "ccxt": None
            if ccxt_res is None
            else {"frames": ccxt_res.frames, "invalid": ccxt_res.invalid, "errors": client_errors(ccxt_res)},
            "relay_clients_connected_min": connected_min,
            "clients": n_clients,
            "relay": {
                "cpu_pct": cpu,
                "rss_mb_after_warmup": round(base, 1),
                "rss_mb_end": round(after[-1], 1) if after else None,
                "rss_mb_max": round(max(v for _, v in rss), 1) if rss else None,
                "rss_growth_pct": round(100 * growth, 1),
                "upstream_checksum_mismatches": metric("kraken_relay_upstream_checksum_mismatches_total"),
                "resyncs": metric("kraken_relay_upstream_resyncs_total"),
                "slow_closes": metric("kraken_relay_client_slow_closes_total"),
                "snapshot_resets": metric("kraken_relay_client_snapshot_resets_total"),
            },
            "fault_log": faults,
        }
    )
    problems = []
    if vc.disconnects or connected_min < n_clients:
        problems.append(
            f"client disconnects (verifying client {vc.disconnects}, relay gauge min {connected_min}/{n_clients})"
        )
    if verifier.checksum_bad or (sdk_res and sdk_res.invalid) or (ccxt_res and ccxt_res.invalid):
        problems.append("checksum mismatches at clients")
    if verifier.trade_dups or (verifier.trade_gaps and not allow_all):
        problems.append(f"trades: {len(verifier.trade_gaps)} gaps, {verifier.trade_dups} duplicates")
    if verifier.book_frames == 0 or verifier.trade_count == 0:
        problems.append("verifying client received no data")
    for name, res in (("kraken_sdk", sdk_res), ("ccxt", ccxt_res)):
        if res is not None and (client_errors(res) or res.frames == 0):
            problems.append(f"{name}: {client_errors(res) or 'no frames'}")
    if growth >= 0.10:
        problems.append(f"relay RSS grew {100 * growth:.1f}% after warm-up")
    summary["problems"] = problems
    summary["ok"] = not problems
    return summary


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=600.0)
    p.add_argument("--rate", type=float, default=300.0, help="simulated book updates per second (whole market)")
    p.add_argument("--fault-every", type=float, default=4.0, help="mean seconds between faults")
    p.add_argument(
        "--recovery", type=float, default=6.0, help="seconds a faulted line counts unhealthy after its fault"
    )
    p.add_argument("--concurrent", type=int, default=2, help="lines that may be unhealthy at once (< lines)")
    p.add_argument("--allow-all", action="store_true", help="allow faults on every line at once (gaps then allowed)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--no-sdk", action="store_true")
    p.add_argument("--no-ccxt", action="store_true")
    args = p.parse_args()
    import uvloop

    summary = uvloop.run(
        run(
            args.duration,
            rate=args.rate,
            fault_every=args.fault_every,
            recovery=args.recovery,
            concurrent=args.concurrent,
            allow_all=args.allow_all,
            seed=args.seed,
            sdk=not args.no_sdk,
            ccxt=not args.no_ccxt,
        )
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"soak-{int(args.duration)}s.json").write_text(json.dumps(summary, indent=2))
    brief = {k: v for k, v in summary.items() if k != "fault_log"}
    print(json.dumps(brief, indent=1))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
