"""End-to-end benchmarks: simulator lines -> relay -> clients, all separate processes on loopback.

    python bench/e2e.py --quick          # every case, short windows (< 2 min), `make bench-e2e`
    python bench/e2e.py                  # 10 s windows
    python bench/e2e.py --only latency,failover

Writes `bench/results/<name>.json` (name: `e2e-quick` / `e2e`, or `--name`) and prints a markdown
table. Processes: `kraken-relay sim` (several lines), the relay (`bench/e2e_relay.py`, the same
`relay.app.Relay` as `kraken-relay run`), and client processes (`bench/e2e_client.py`, each
holding many raw websocket connections on one asyncio loop: 1 000 client *processes* would not
fit on 2 cores).

How latency is measured (no stamps in the frames: they stay Kraken-exact). Every client records
the CLOCK_MONOTONIC receive time of each book frame keyed by its exact `checksum,timestamp` text
(and each trade by `symbol:trade_id`). A client connected directly to a simulator line is the
reference: "added latency" = relay client's time - direct client's time for the same frame, the
relay being connected to that same line (zero configured latency/jitter). For redundancy the
reference is a third, zero-delay line the relay does not use, so each path's full latency is
visible. Frames the relay legitimately does not forward unchanged (a depth view that differs)
simply do not match; the match ratio is reported. CPU is % of one core over the window, read
from /proc for the relay, the simulator and the client processes (all on the same 2 cores).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench.harness as harness
from bench.harness import (
    ClientProc,
    CpuMeter,
    cpu_seconds,
    deltas,
    longest_gap,
    relay_config,
    rss_mb,
    start_client_group,
    start_clients,
    start_forwarder,
    start_relay,
    start_sim,
    stop_client_group,
    stop_clients,
    subs,
    summary_us,
    wait_relay_ready,
)
from bench.harness import _spawn as spawn
from bench.harness import _stop as stop_proc

SYMBOLS = ["BTC/USD", "ETH/USD", "SOL/USD", "XRP/USD"]
VISIBLE = 0.95  # frames at a depth-10 + trade subscriber per simulated book update (measured, see README)
RESULTS = Path(__file__).resolve().parent / "results"


def _sim_rate(frames_per_s: float) -> float:
    return frames_per_s / VISIBLE


def _count_in(books: dict, trades: dict, t0: float, t1: float) -> int:
    return sum(1 for t in books.values() if t0 <= t <= t1) + sum(1 for t in trades.values() if t0 <= t <= t1)


def _backlog_rate(
    ref_b: dict, ref_t: dict, rec: tuple[dict, dict], t0: float, t1: float, start: tuple[dict, dict] | None = None
) -> dict:
    """How a client received a stalled line's backlog: the frames the reference client
    (unstalled line) saw well inside the stall [t0 + 0.2, t1 - 0.2] arrive after the release as
    fast as the path allows. `rate` counts them from the first of them reaching the `start`
    client (a raw client on a released line) or this one, to the last reaching this one.
    Returns {rate, backlog, missing, first, last}; rate None if nothing arrived."""
    books, trades = rec
    a, b = t0 + 0.2, t1 - 0.2
    got, firsts, n = [], [], 0
    for w, (ref, mine) in enumerate(((ref_b, books), (ref_t, trades))):
        for k, t in ref.items():
            if a <= t <= b:
                n += 1
                x = mine.get(k)
                if x is not None:
                    got.append(x)
                if start is not None and k in start[w]:
                    firsts.append(start[w][k])
    out = {"rate": None, "backlog": n, "missing": n - len(got), "first": None, "last": None}
    if len(got) >= 2:
        first = min(firsts) if firsts else min(got)
        last = max(got)
        if last > first:
            out.update(rate=round(len(got) / (last - first)), first=first, last=last)
    return out


class CpuTrace:
    """CPU seconds of some processes sampled every few ms, to charge a window its CPU time."""

    def __init__(self, pids: list[int], every: float = 0.005) -> None:
        self.pids = pids
        self.every = every
        self.samples: dict[int, list[tuple[float, float]]] = {p: [] for p in pids}
        self.task: asyncio.Task | None = None

    def start(self) -> CpuTrace:
        async def run() -> None:
            while True:
                t = time.monotonic()
                for p in self.pids:
                    self.samples[p].append((t, cpu_seconds(p)))
                await asyncio.sleep(self.every)

        self.task = asyncio.create_task(run())
        return self

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    def between(self, pid: int, a: float, b: float) -> float:
        pts = self.samples[pid]

        def at(t: float) -> float:
            i = bisect.bisect_left(pts, (t, -1.0))
            if i <= 0:
                return pts[0][1]
            if i >= len(pts):
                return pts[-1][1]
            (t0, c0), (t1, c1) = pts[i - 1], pts[i]
            return c0 + (c1 - c0) * (t - t0) / max(1e-9, t1 - t0)

        return max(0.0, at(b) - at(a)) if pts else 0.0


def _frames_in(rec: tuple[dict, dict], a: float, b: float) -> int:
    return sum(1 for d in rec for t in d.values() if a <= t <= b)


BARE = """
import asyncio, sys, time, marshal, orjson, uvloop, websockets
async def main(port, symbols):
    times = []
    async with websockets.connect(f"ws://127.0.0.1:{port}/v2", compression=None, max_size=2**24,
                                  max_queue=None, ping_interval=None, open_timeout=120) as ws:
        await ws.send(orjson.dumps({"method": "subscribe", "params": {"channel": "book", "symbol": symbols,
                                                                      "depth": 10}}))
        await ws.send(orjson.dumps({"method": "subscribe", "params": {"channel": "trade", "symbol": symbols,
                                                                      "snapshot": False}}))
        print("ready", flush=True)
        stop = asyncio.ensure_future(asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline))
        mono = time.monotonic
        append = times.append
        async def recv():
            async for msg in ws:
                append((mono(), msg))
        task = asyncio.ensure_future(recv())
        await stop
        task.cancel()
    books, trades = {}, {}
    for t, msg in times:  # keys extracted after the run: the receive loop stays bare
        m = msg.encode() if isinstance(msg, str) else msg
        i = m.find(b'"checksum":')
        if i >= 0:
            books.setdefault(m[i + 11 : m.find(b'"}', i)], t)
        k = m.find(b'"trade_id":')
        while k >= 0:
            s = m.rfind(b'"symbol":"', 0, k)
            trades.setdefault(m[s + 10 : m.find(b'"', s + 10)] + b":" + m[k + 11 : m.find(b",", k)], t)
            k = m.find(b'"trade_id":', k + 11)
    sys.stdout.buffer.write(marshal.dumps((books, trades)))
uvloop.run(main(int(sys.argv[1]), sys.argv[2].split(",")))
"""


async def _start_bare(port: int, symbols: list[str]) -> asyncio.subprocess.Process:
    """A bare `websockets` client in its own process: only stamps each received message."""
    if harness.CLIENT_PORT_OVERRIDE is not None:
        port = harness.CLIENT_PORT_OVERRIDE
    proc = await spawn("-c", BARE, str(port), ",".join(symbols), stdin=True)
    assert proc.stdout is not None
    wait = harness.START_TIMEOUT + 120  # imports, then websockets' own open_timeout
    try:
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), wait)
        except TimeoutError:
            raise TimeoutError(f"bare websockets client not ready in {wait:g} s") from None
        if line.strip() != b"ready":
            err = (await asyncio.wait_for(proc.stderr.read(), 10)).decode() if proc.stderr else ""
            raise RuntimeError(f"bare websockets client did not start: {line!r} {err[-600:]}")
    except BaseException:
        await stop_proc(proc)
        raise
    return proc


async def _stop_bare(proc: asyncio.subprocess.Process) -> tuple[dict, dict]:
    import marshal

    try:
        out, _ = await asyncio.wait_for(proc.communicate(b"stop\n"), harness.STOP_TIMEOUT)
    finally:
        await stop_proc(proc)
    return marshal.loads(out) if out else ({}, {})


def _reason(exc: BaseException) -> str:
    """One line for the table: the exception's type and the start of its message."""
    text = " ".join(str(exc).split()) or "(no message)"
    return f"{type(exc).__name__}: {text[:300]}"


class CaseFailed(Exception):
    """A measurement that cannot be made (raised inside a case, reported as not measured)."""


def _first_of(ref_b: dict, ref_t: dict, r1: tuple, r2: tuple, t0: float, t1: float, relay: list | None = None) -> dict:
    """What an ideal first-arrival merge would see: per frame, the earlier of the two lines
    (vs the reference line); with `relay`: relay client's time minus that earlier arrival."""
    out = []
    for w, (ref, a, b) in enumerate(((ref_b, r1[0], r2[0]), (ref_t, r1[1], r2[1]))):
        for k, t in ref.items():
            if t0 <= t <= t1 and k in a and k in b:
                first = min(a[k], b[k])
                if relay is None:
                    out.append(first - t)
                else:
                    out += [rec[w][k] - first for rec in relay if k in rec[w]]
    return summary_us(out)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.window = args.window
        self.warm = args.warm
        self.cases: dict[str, Any] = {}
        self.sabotage: dict[str, str] = dict(getattr(args, "sabotage", {}) or {})

    def log(self, text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    def not_measured(self, name: str, reason: str, **extra: Any) -> None:
        self.cases[name] = {"kind": "not_measured", "not_measured": reason, **extra}
        self.log(f"{name}: NOT MEASURED: {reason}")

    @contextlib.asynccontextmanager
    async def case(self, *names: str):
        """One measurement (a table row, or several sharing one set of processes): any failure
        inside (a process that does not start, a timeout, a missing result) is recorded as
        "not measured: <reason>" for each of `names` not yet recorded, and the run goes on. The
        block gets `args.case_timeout` seconds: a safety net for a hang, well above the start-up
        deadlines (every process started inside is stopped by the blocks' own `finally`)."""
        try:
            async with asyncio.timeout(self.args.case_timeout):
                yield
        except Exception as exc:  # not CancelledError/KeyboardInterrupt: those end the run
            reason = _reason(exc)
            if isinstance(exc, TimeoutError) and not str(exc):
                reason = f"TimeoutError: no result within {self.args.case_timeout:g} s"
            for name in names:
                if name not in self.cases or self.cases[name].get("kind") == "not_measured":
                    self.not_measured(name, reason)

    # -- building blocks ----------------------------------------------------------------------
    async def _stack(
        self,
        lines: list[tuple[float, float]],
        relay_lines: list[int],
        rate: float,
        *,
        symbols: list[str] = SYMBOLS,
        depth: int = 10,
        levels: int = 1000,
        sim_extra: list[str] | None = None,
        **cfg: Any,
    ):
        """Simulator + relay, once the relay is ready. Start-up is tried twice: on a loaded
        machine a first start can miss even generous deadlines."""
        for attempt in (1, 2):
            try:
                return await self._stack_once(lines, relay_lines, rate, symbols, depth, levels, sim_extra, cfg)
            except (RuntimeError, TimeoutError, OSError) as exc:
                if attempt == 2:
                    raise
                self.log(f"start-up failed ({_reason(exc)}); trying once more")
                await asyncio.sleep(1.0)
        raise AssertionError("unreachable")

    async def _stack_once(self, lines, relay_lines, rate, symbols, depth, levels, sim_extra, cfg):
        sim = await start_sim(lines, symbols, rate, levels=levels, extra=sim_extra)
        try:
            relay = await start_relay(relay_config([sim.urls[i] for i in relay_lines], symbols, depth, **cfg))
        except BaseException:
            await sim.stop()
            raise
        try:
            await wait_relay_ready(relay)
        except BaseException:
            await relay.stop()
            await sim.stop()
            raise
        return sim, relay

    async def _measure(
        self,
        sim,
        relay,
        direct_lines: list[int],
        n_clients: int,
        sub: list[dict],
        n_record: int,
        during=None,
        floor: bool = False,
    ) -> dict:
        """Start direct + relay clients, warm up, measure one window; return raw material.
        `floor`: then, in a second window of its own (so neither hop takes CPU from the other on
        these 2 cores), the same clients on a do-nothing forwarder of the first direct line."""
        direct: list = []
        fres = None
        floor_error = None
        ft0 = ft1 = 0.0
        try:
            for i in direct_lines:
                direct.append(await start_clients(sim.ports[i], 1, sub, [0]))
            group = await start_client_group(relay.port, n_clients, sub, n_record)
            try:
                await asyncio.sleep(self.warm)
                pids_c = [c.pid for c in group]
                meters = {
                    "relay": CpuMeter([relay.pid]).start(),
                    "sim": CpuMeter([sim.pid]).start(),
                    "clients": CpuMeter(pids_c + [d.pid for d in direct]).start(),
                }
                t0 = time.monotonic()
                extra = await during(t0) if during else None
                remaining = t0 + self.window - time.monotonic()
                if remaining > 0:
                    await asyncio.sleep(remaining)
                t1 = time.monotonic()
                cpu = {k: m.stop() for k, m in meters.items()}
                rss = rss_mb(relay.pid)
            finally:
                gres = await stop_client_group(group)
            if floor:  # its own failure costs only the floor, not the relay's measurement
                try:
                    fwd = await start_forwarder(sim.ports[direct_lines[0]], sub)
                    try:
                        fgroup = await start_client_group(fwd.port, n_clients, sub, n_record)
                        try:
                            await asyncio.sleep(self.warm)
                            ft0 = time.monotonic()
                            await asyncio.sleep(self.window)
                            ft1 = time.monotonic()
                        finally:
                            fres = await stop_client_group(fgroup)
                    finally:
                        await fwd.stop()
                except Exception as exc:
                    floor_error = _reason(exc)
                    fres = None
                    self.log(f"forwarder floor not measured: {floor_error}")
        finally:
            dres = await stop_client_group(direct) if direct else None
        if dres is None or len(dres["records"]) != len(direct_lines):
            raise CaseFailed("direct reference client(s) returned no records")
        dres = [{"records": [r], "conns": [c]} for r, c in zip(dres["records"], dres["conns"], strict=True)]
        return {
            "t0": t0,
            "t1": t1,
            "cpu": cpu,
            "rss": rss,
            "direct": dres,
            "relay": gres,
            "extra": extra,
            "floor": fres,
            "floor_error": floor_error,
            "floor_t0": ft0,
            "floor_t1": ft1,
        }

    def _floor(self, m: dict) -> dict | None:
        """The forwarder window's latency over the direct path (None without one)."""
        if m.get("floor_error"):
            return {"not_measured": m["floor_error"]}
        if not m["floor"]:
            return None
        ref_b, ref_t = m["direct"][0]["records"][0]
        a, b = m["floor_t0"], m["floor_t1"] - 0.2
        d: list[float] = []
        miss = 0
        for books, trades in m["floor"]["records"]:
            for ref, mine in ((ref_b, books), (ref_t, trades)):
                got, x = deltas(ref, mine, a, b)
                d += got
                miss += x
        if not d:
            seen = _count_in(ref_b, ref_t, a, b)
            return {
                "not_measured": f"no forwarder frame matched the reference's {seen} in its window ({miss} unmatched)"
            }
        return summary_us(d)

    # -- cases --------------------------------------------------------------------------------
    @staticmethod
    def _require_reference(m: dict, ref_n: int, t0: float, t1: float) -> None:
        """A window whose direct reference client saw nothing measures nothing."""
        if ref_n == 0:
            conn = m["direct"][0]["conns"][0]
            raise CaseFailed(
                f"the direct reference client received no frames in the {t1 - t0:.1f} s window "
                f"({conn['books']} book frames, {conn['trades']} trades in all, closed: {conn['closed']})"
            )

    async def latency(self) -> None:
        """Added latency over the direct path at 1k and 10k frames/s with 1, 10, 100 clients."""
        for target in (1000, 10000):
            names = [f"latency {target}/s x{n}" for n in (1, 10, 100)]
            async with self.case(*names):
                sim, relay = await self._stack([(0.0, 0.0), (0.0, 0.0)], [0, 1], _sim_rate(target))
                try:
                    for n, name in zip((1, 10, 100), names, strict=True):
                        async with self.case(name):
                            await self._latency_one(sim, relay, target, n, name)
                finally:
                    await relay.stop()
                    await sim.stop()

    async def _latency_one(self, sim, relay, target: int, n: int, name: str) -> None:
        m = await self._measure(
            sim, relay, [0], n, subs(SYMBOLS, 10), min(n, 10), floor=n == 10 or not self.args.quick
        )  # --quick: < 2 min
        ref_b, ref_t = m["direct"][0]["records"][0]
        t0, t1 = m["t0"], m["t1"] - 0.2
        all_d: list[float] = []
        miss = 0
        for books, trades in m["relay"]["records"]:
            d, x = deltas(ref_b, books, t0, t1)
            all_d += d
            miss += x
            d, x = deltas(ref_t, trades, t0, t1)
            all_d += d
            miss += x
        ref_n = _count_in(ref_b, ref_t, t0, m["t1"])
        self._require_reference(m, ref_n, t0, m["t1"])
        delivered = sum(c["books"] + c["trades"] for c in m["relay"]["conns"])
        span = m["t1"] - m["t0"]
        case = {
            "kind": "latency",
            "target_fps": target,
            "clients": n,
            "direct_fps": round(ref_n / span),
            "added": summary_us(all_d),
            "unmatched": miss,
            "forwarder_floor": self._floor(m),
            "relay_cpu_pct": m["cpu"]["relay"],
            "sim_cpu_pct": m["cpu"]["sim"],
            "clients_cpu_pct": m["cpu"]["clients"],
            "relay_rss_mb": round(m["rss"], 1),
            "closed": sum(c["closed"] for c in m["relay"]["conns"]),
            "delivered_total": delivered,
            "delivered_fps_per_client": round(delivered / max(1e-9, span + self.warm) / n),
        }
        if not all_d:
            case["not_measured"] = f"no relay frame matched the reference's {ref_n} ({miss} unmatched)"
        self.cases[name] = case
        self.log(f"{name}: {case}")

    async def redundancy(self) -> None:
        """Two jittered lines: each line's latency and the relay's, against a zero-delay line.
        Quick: 1 ms + U(0, 2 ms) per line; full runs add 2 ms + U(0, 10 ms) (internet-like)."""
        variants = [(0.001, 0.002)] if self.args.quick else [(0.001, 0.002), (0.002, 0.010)]
        for lat, jit in variants:
            name = f"redundancy 2 lines {lat * 1e3:g} ms + U(0, {jit * 1e3:g} ms)"
            async with self.case(name):
                await self._redundancy(lat, jit, name)

    async def _redundancy(self, lat: float, jit: float, name: str) -> None:
        sim, relay = await self._stack([(0.0, 0.0), (lat, jit), (lat, jit)], [1, 2], _sim_rate(1000))
        try:
            m = await self._measure(sim, relay, [0, 1, 2], 10, subs(SYMBOLS, 10), 10)
        finally:
            await relay.stop()
            await sim.stop()
        t0, t1 = m["t0"], m["t1"] - 0.2
        ref_b, ref_t = m["direct"][0]["records"][0]
        self._require_reference(m, _count_in(ref_b, ref_t, t0, t1), t0, t1)

        def path(records: list) -> dict:
            out: list[float] = []
            for books, trades in records:
                out += deltas(ref_b, books, t0, t1)[0] + deltas(ref_t, trades, t0, t1)[0]
            return summary_us(out)

        case = {
            "kind": "redundancy",
            "line_latency_s": lat,
            "line_jitter_s": jit,
            "clients": 10,
            "line1": path([m["direct"][1]["records"][0]]),
            "line2": path([m["direct"][2]["records"][0]]),
            "relay": path(m["relay"]["records"]),
            "first_of_lines": _first_of(
                ref_b, ref_t, m["direct"][1]["records"][0], m["direct"][2]["records"][0], t0, t1
            ),
            "relay_minus_first_of_lines": _first_of(
                ref_b, ref_t, m["direct"][1]["records"][0], m["direct"][2]["records"][0], t0, t1, m["relay"]["records"]
            ),
            "relay_cpu_pct": m["cpu"]["relay"],
            "sim_cpu_pct": m["cpu"]["sim"],
            "clients_cpu_pct": m["cpu"]["clients"],
            "relay_rss_mb": round(m["rss"], 1),
        }
        if not case["relay"]["n"]:
            case["not_measured"] = "no relay frame matched the reference line"
        self.cases[name] = case
        self.log(f"{name}: {case}")

    async def throughput(self) -> None:
        """Highest unique-frame rate the relay forwards (2 and 3 lines, 1 client) vs a bare
        `websockets` client, both draining a backlog released at once by the simulator."""
        for n_lines in (2, 3):
            name = f"throughput {n_lines} lines"
            async with self.case(name):
                await self._throughput(n_lines, name)

    async def _throughput(self, n_lines: int, name: str) -> None:
        rate = 10000
        stall = self.args.stall
        lines = [(0.0, 0.0)] * (2 + n_lines)  # 0: reference, 1: bare client, 2..: relay
        relay_lines = list(range(2, 2 + n_lines))
        sim, relay = await self._stack(
            lines,
            relay_lines,
            _sim_rate(rate),
            liveness={"frame_timeout": 30.0, "ping_interval": 2.0, "stale_after": 30.0},
        )
        windows: list[tuple[str, float, float]] = []
        res: dict[str, Any] = {}  # name -> records of each client process that was started
        async with contextlib.AsyncExitStack() as procs:  # stopped in reverse order, each whatever happens

            async def sim_relay() -> None:
                await relay.stop()
                await sim.stop()

            procs.push_async_callback(sim_relay)

            async def clients(key: str, port: int) -> ClientProc:
                cp = await start_clients(port, 1, subs(SYMBOLS, 10), [0])

                async def stop() -> None:
                    res[key] = await stop_clients(cp)

                procs.push_async_callback(stop)
                return cp

            await clients("ref", sim.ports[0])
            await clients("raw1", sim.ports[1])  # when the bare client's backlog bytes are there
            await clients("raw2", sim.ports[2])  # when the relay's backlog bytes are there
            bare = await _start_bare(sim.ports[1], SYMBOLS)
            bare_pid = bare.pid

            async def stop_bare() -> None:
                res["bare"] = await _stop_bare(bare)

            procs.push_async_callback(stop_bare)
            group = await start_client_group(relay.port, 1, subs(SYMBOLS, 10), 1)

            async def stop_group() -> None:
                res["relay"] = await stop_client_group(group)

            procs.push_async_callback(stop_group)
            await asyncio.sleep(self.warm)
            meter = CpuMeter([relay.pid]).start()
            trace = CpuTrace([relay.pid, bare_pid]).start()
            try:
                for _ in range(self.args.reps):
                    # bare websockets client: its line's backlog
                    t = time.monotonic()
                    await sim.fault(1, "stall", stall)
                    await asyncio.sleep(stall + 0.05)
                    windows.append(("bare", t, time.monotonic()))
                    await asyncio.sleep(1.0)
                    # relay: every relay line stalled at once, then released together
                    t = time.monotonic()
                    await asyncio.gather(*(sim.fault(i, "stall", stall) for i in relay_lines))
                    await asyncio.sleep(stall + 0.05)
                    windows.append(("relay", t, time.monotonic()))
                    await asyncio.sleep(max(2.0, stall))
            finally:
                await trace.stop()
            cpu = meter.stop()
            rss = rss_mb(relay.pid)
        ref_b, ref_t = res["ref"]["records"][0]
        drains: dict[str, list] = {"bare": [], "relay": []}
        for who, t0, t1 in windows:
            # A client stamps a frame when its loop gets it, which may be after libuv read the
            # whole backlog (websockets parses it all first) or after the client was
            # descheduled; so a drain starts when the backlog's first bytes reached a raw
            # client on a line that was released, and ends with the last backlog frame seen.
            # Wall-clock rates swing with whatever else runs on the 2 cores; frames per CPU
            # second of the process (relay / bare client) during the drain do not.
            rec, start, pid = (
                (res["bare"], res["raw1"]["records"][0], bare_pid)
                if who == "bare"
                else (res["relay"]["records"][0], res["raw2"]["records"][0], relay.pid)
            )
            d = _backlog_rate(ref_b, ref_t, rec, t0, t1, start=start)
            d["frames_per_cpu_s"] = None
            if d["first"] is not None:
                frames = _frames_in(rec, d["first"], d["last"])
                cpu_s = trace.between(pid, d["first"], d["last"])
                d["frames_per_cpu_s"] = round(frames / cpu_s) if cpu_s > 0.01 else None
            drains[who].append(d)

        def best(who: str, key: str) -> int | None:
            return max((d[key] for d in drains[who] if d.get(key)), default=None)

        relay_fps, bare_fps = best("relay", "rate"), best("bare", "rate")
        relay_cap, bare_cap = best("relay", "frames_per_cpu_s"), best("bare", "frames_per_cpu_s")
        case = {
            "kind": "throughput",
            "lines": n_lines,
            "clients": 1,
            "reps": self.args.reps,
            "backlog_frames": [d["backlog"] for d in drains["relay"]],
            "relay_fps": relay_fps,
            "bare_websockets_fps": bare_fps,
            "ratio": round(relay_fps / bare_fps, 3) if relay_fps and bare_fps else None,
            "relay_frames_per_cpu_s": relay_cap,
            "bare_frames_per_cpu_s": bare_cap,
            "cpu_ratio": round(relay_cap / bare_cap, 3) if relay_cap and bare_cap else None,
            "drains": drains,
            "relay_cpu_pct": cpu,
            "relay_rss_mb": round(rss, 1),
        }
        missing = [k for k in ("relay_fps", "bare_websockets_fps") if case[k] is None]
        if missing:
            backlog = max(case["backlog_frames"], default=0)
            case["not_measured"] = (
                f"no complete backlog drain for {' and '.join(missing)} (backlog of {backlog} frames"
                f"{'' if backlog else ': the reference client saw nothing during the stalls'})"
            )
        self.cases[name] = case
        self.log(
            f"{name}: relay {relay_fps}/s ({relay_cap}/CPU s), bare {bare_fps}/s ({bare_cap}/CPU s)"
            + (f"; NOT MEASURED: {case['not_measured']}" if missing else "")
        )

    async def fanout(self) -> None:
        """1, 10, 100, 1 000 clients at a realistic 200 frames/s; then the peak rate to 100 clients."""
        counts = (1, 10, 100, 1000)
        names = [f"fanout {n} clients" for n in counts]
        async with self.case(*names):
            sim, relay = await self._stack(
                [(0.0, 0.0), (0.0, 0.0)],
                [0, 1],
                _sim_rate(200),
                liveness={"frame_timeout": 30.0, "ping_interval": 2.0, "stale_after": 30.0},
            )
            try:
                for n, name in zip(counts, names, strict=True):
                    async with self.case(name):
                        await self._fanout_one(sim, relay, n, name)
            finally:
                await relay.stop()
                await sim.stop()
        async with self.case("fanout peak 100 clients"):
            await self._fanout_peak()

    async def _fanout_one(self, sim, relay, n: int, name: str) -> None:
        m = await self._measure(
            sim,
            relay,
            [0],
            n,
            subs(SYMBOLS, 10),
            min(n, 10),
            floor=n == 1000 or n == 100 and not self.args.quick,
        )
        ref_b, ref_t = m["direct"][0]["records"][0]
        t0, t1 = m["t0"], m["t1"] - 0.2
        d: list[float] = []
        for books, trades in m["relay"]["records"]:
            d += deltas(ref_b, books, t0, t1)[0] + deltas(ref_t, trades, t0, t1)[0]
        ref_n = _count_in(ref_b, ref_t, m["t0"], m["t1"])
        self._require_reference(m, ref_n, m["t0"], m["t1"])
        span = m["t1"] - m["t0"]
        case = {
            "kind": "fanout",
            "clients": n,
            "direct_fps": round(ref_n / span),
            "delivered_fps": round(ref_n * n / span),
            "added": summary_us(d),
            "forwarder_floor": self._floor(m),
            "closed": sum(c["closed"] for c in m["relay"]["conns"]),
            "relay_cpu_pct": m["cpu"]["relay"],
            "sim_cpu_pct": m["cpu"]["sim"],
            "clients_cpu_pct": m["cpu"]["clients"],
            "relay_rss_mb": round(m["rss"], 1),
        }
        if not d:
            case["not_measured"] = f"no relay frame matched the reference's {ref_n}"
        self.cases[name] = case
        self.log(f"{name}: {case}")

    async def _fanout_peak(self) -> None:
        """Peak fan-out: a backlog released at once by both relay lines, delivered to 100 clients
        (line 0 is an unstalled reference line telling which frames were in the backlog)."""
        n = 100
        sim, relay = await self._stack(
            [(0.0, 0.0)] * 3,
            [1, 2],
            _sim_rate(5000),
            liveness={"frame_timeout": 30.0, "ping_interval": 2.0, "stale_after": 30.0},
        )
        res: dict[str, Any] = {}
        async with contextlib.AsyncExitStack() as procs:

            async def sim_relay() -> None:
                await relay.stop()
                await sim.stop()

            procs.push_async_callback(sim_relay)
            ref = await start_clients(sim.ports[0], 1, subs(SYMBOLS, 10), [0])

            async def stop_ref() -> None:
                res["ref"] = await stop_clients(ref)

            procs.push_async_callback(stop_ref)
            group = await start_client_group(relay.port, n, subs(SYMBOLS, 10), 4)

            async def stop_group() -> None:
                res["group"] = await stop_client_group(group)

            procs.push_async_callback(stop_group)
            await asyncio.sleep(self.warm)
            stall = 3.0  # ~14k frames (~2.8 MB): under the server's 4 MiB per-client buffer, so no resets
            meter = CpuMeter([relay.pid]).start()
            rs = time.monotonic()
            await asyncio.gather(sim.fault(1, "stall", stall), sim.fault(2, "stall", stall))
            await asyncio.sleep(stall + 0.05)
            re_ = time.monotonic()
            await asyncio.sleep(4.0)
            cpu = meter.stop()
        refres, gres = res["ref"], res["group"]
        ref_b, ref_t = refres["records"][0]
        a, b = rs + 0.2, re_ - 0.2
        keys = [(0, k) for k, t in ref_b.items() if a <= t <= b] + [(1, k) for k, t in ref_t.items() if a <= t <= b]
        firsts, lasts, got = [], [], 0
        for rec in gres["records"]:
            ts = [rec[w][k] for w, k in keys if k in rec[w]]
            got += len(ts)
            if ts:
                firsts.append(min(ts))
                lasts.append(max(ts))
        peak = None
        expected = len(keys) * len(gres["records"])
        if firsts and got >= 0.99 * expected:  # frames/s out to all n clients, from the recording ones
            peak = round(got / len(gres["records"]) * n / max(1e-9, max(lasts) - min(firsts)))
        case = {
            "kind": "fanout_peak",
            "clients": n,
            "backlog_frames": len(keys),
            "delivered_fps": peak,
            "recorded_complete": bool(expected) and got == expected,
            "recorded_fraction": round(got / expected, 4) if expected else None,
            "closed": sum(c["closed"] for c in gres["conns"]),
            "relay_cpu_pct": cpu,
        }
        if not keys:
            case["not_measured"] = "the reference client saw no frames during the stall: no backlog to time"
        elif peak is None:
            case["not_measured"] = (
                f"the recording clients saw {100 * got / max(1, expected):.1f}% of the backlog (< 99 %: the rest "
                "replaced by snapshot resets), no rate"
            )
        self.cases["fanout peak 100 clients"] = case
        self.log(f"fanout peak: {case}")

    async def failover(self) -> None:
        """A line killed mid-stream: the clients' longest gap vs the survivor's own; lost trades."""
        async with self.case("failover"):
            await self._failover()

    async def _failover(self) -> None:
        sim, relay = await self._stack([(0.0005, 0.001), (0.0005, 0.001)], [0, 1], _sim_rate(1000))
        kill_at = self.window / 3

        async def kill(t0: float) -> float:
            await asyncio.sleep(kill_at)
            await sim.fault(0, "refuse", 60.0)
            await sim.fault(0, "drop")
            return time.monotonic()

        try:
            m = await self._measure(sim, relay, [1], 10, subs(SYMBOLS, 10), 10, during=kill)
        finally:
            await relay.stop()
            await sim.stop()
        t0, t1 = m["t0"], m["t1"] - 0.3
        ref_b, ref_t = m["direct"][0]["records"][0]
        self._require_reference(m, _count_in(ref_b, ref_t, t0, t1), t0, t1)
        surv_gap = longest_gap(list(ref_b.values()) + list(ref_t.values()), t0, t1)
        client_gap, lost_trades, lost_books = 0.0, 0, 0
        for books, trades in m["relay"]["records"]:
            client_gap = max(client_gap, longest_gap(list(books.values()) + list(trades.values()), t0, t1))
            lost_trades += deltas(ref_t, trades, t0, t1)[1]
            lost_books += deltas(ref_b, books, t0, t1)[1]
        self.cases["failover"] = case = {
            "kind": "failover",
            "clients": 10,
            "killed_at_s": round(m["extra"] - t0, 2),
            "survivor_longest_gap_ms": round(surv_gap * 1e3, 2),
            "client_longest_gap_ms": round(client_gap * 1e3, 2),
            "ratio": round(client_gap / surv_gap, 2) if surv_gap else None,
            "trades_in_window": sum(1 for t in ref_t.values() if t0 <= t <= t1),
            "lost_trades": lost_trades,
            "book_frames_missing": lost_books,
            "closed": sum(c["closed"] for c in m["relay"]["conns"]),
            "relay_cpu_pct": m["cpu"]["relay"],
            "relay_rss_mb": round(m["rss"], 1),
        }
        self.log(f"failover: {case}")

    async def rss(self) -> None:
        """RSS with 50 symbols at depth 1000 and 100 clients subscribed to all of them."""
        async with self.case("rss 50 symbols depth 1000 x100"):
            await self._rss()

    async def _rss(self) -> None:
        from relay.sim.instruments import load_instruments

        # 50 pairs need the real instrument list: the simulator's built-in table has fewer
        path = harness.instrument_file()
        symbols = [s for s in load_instruments(path) if s.endswith("/USD")][:50]
        if len(symbols) < 50:
            self.log(f"rss: only {len(symbols)} /USD pairs (instrument file: {path}); set KRAKEN_FIXTURES")
        extra = ["--instruments", str(path)] if path else None
        sim, relay = await self._stack(
            [(0.0, 0.0), (0.0, 0.0)], [0, 1], 1000.0, symbols=symbols, depth=1000, sim_extra=extra
        )
        try:
            rss0 = rss_mb(relay.pid)
            meter = CpuMeter([relay.pid]).start()
            group = await start_client_group(relay.port, 100, subs(symbols, 1000), 0)
            samples = []
            try:
                end = time.monotonic() + max(5.0, self.window + self.warm)
                while time.monotonic() < end:
                    samples.append(rss_mb(relay.pid))
                    await asyncio.sleep(0.25)
                cpu = meter.stop()
                rss1 = rss_mb(relay.pid)
            finally:
                gres = await stop_client_group(group)
        finally:
            await relay.stop()
            await sim.stop()
        self.cases["rss 50 symbols depth 1000 x100"] = case = {
            "kind": "rss",
            "symbols": len(symbols),
            "depth": 1000,
            "clients": 100,
            "relay_rss_mb_before_clients": round(rss0, 1),
            "relay_rss_mb": round(rss1, 1),
            "relay_rss_mb_peak": round(max(samples, default=rss1), 1),
            "relay_cpu_pct": cpu,
            "delivered_frames": sum(c["books"] + c["trades"] for c in gres["conns"]),
            "closed": sum(c["closed"] for c in gres["conns"]),
        }
        self.log(f"rss: {case}")

    # -- driver -------------------------------------------------------------------------------
    async def run(self, only: list[str]) -> dict:
        for name in only:
            self.log(f"case {name}")
            what = self.sabotage.get(name)
            saved = (harness.START_TIMEOUT, harness.CONNECT_TIMEOUT, harness.CLIENT_PORT_OVERRIDE)
            if what == "port":  # every client of this case connects to a closed port
                harness.CLIENT_PORT_OVERRIDE, harness.CONNECT_TIMEOUT = _closed_port(), 3.0
            elif what == "timeout":  # every process of this case gets 0.05 s to start
                harness.START_TIMEOUT = 0.05
            try:
                async with self.case(f"{name} (case)"):  # anything the case's own guards missed
                    await getattr(self, name)()
            finally:
                harness.START_TIMEOUT, harness.CONNECT_TIMEOUT, harness.CLIENT_PORT_OVERRIDE = saved
        return self.cases


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CASES = ["latency", "redundancy", "throughput", "fanout", "failover", "rss"]


def _lat(d: dict | None) -> str:
    if d and d.get("not_measured"):
        return f"not measured: {d['not_measured']}"
    if not d or d.get("p50_us") is None:
        return "n/a"
    return f"{d['p50_us']} / {d['p99_us']} / {d['p999_us']} / {d['max_us']}"


def _cell(text: Any) -> str:
    """Table cells stay one line: no newlines or pipes from an error message."""
    return " ".join(str(text).split()).replace("|", "/")


def table(cases: dict) -> str:
    """The markdown table (one row per case) printed at the end of a run."""
    rows = [
        "| case | frames/s | latency µs p50 / p99 / p99.9 / max | result | relay CPU % | sim CPU % "
        "| clients CPU % | relay RSS MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, c in cases.items():
        try:
            fps, lat, res = _row(c)
        except (KeyError, TypeError, ValueError) as exc:  # a result missing a field: still a row
            fps, lat, res = "", "", f"not measured: incomplete result ({_reason(exc)})"
        if c.get("not_measured") and not res.startswith("not measured"):
            res = f"not measured: {_cell(c['not_measured'])}" + (f"; {res}" if res else "")
        rows.append(
            f"| {name} | {fps} | {lat} | {res} | {c.get('relay_cpu_pct', '')} | {c.get('sim_cpu_pct', '')} "
            f"| {c.get('clients_cpu_pct', '')} | {c.get('relay_rss_mb', '')} |"
        )
    return "\n".join(rows)


def _row(c: dict) -> tuple[str, str, str]:
    """(frames/s, latency, result) cells of one case."""
    k = c["kind"]
    fps, lat, res = "", "", ""
    if k == "not_measured":
        return fps, lat, f"not measured: {_cell(c['not_measured'])}"
    if k == "latency":
        fps, lat = f"{c['direct_fps']} per client", "added " + _lat(c["added"])
        if c.get("forwarder_floor"):
            lat += "<br>do-nothing forwarder " + _lat(c["forwarder_floor"])
        res = (
            f"{c['unmatched']} unmatched, {c['closed']} closed, ~{c.get('delivered_fps_per_client')} "
            f"frames/s received per relay client"
        )
    elif k == "redundancy":
        lat = (
            f"line1 {_lat(c['line1'])}<br>line2 {_lat(c['line2'])}<br>first-of-lines {_lat(c['first_of_lines'])}"
            f"<br>relay {_lat(c['relay'])}"
        )
        res = f"relay - first arrival: {_lat(c['relay_minus_first_of_lines'])}"
        fps = "~1000 per client, 10 clients"
    elif k == "throughput":
        fps = f"relay {c['relay_fps']} / bare websockets {c['bare_websockets_fps']}"
        res = (
            f"ratio {c['ratio']}; per CPU second: relay {c['relay_frames_per_cpu_s']} / bare "
            f"{c['bare_frames_per_cpu_s']} = {c['cpu_ratio']} (best of {c['reps']} drains of "
            f"~{max(c['backlog_frames'], default=0)} frames)"
        )
    elif k == "fanout":
        fps, lat = f"{c['direct_fps']} per client, {c['delivered_fps']} out", "added " + _lat(c["added"])
        if c.get("forwarder_floor"):
            lat += "<br>do-nothing forwarder " + _lat(c["forwarder_floor"])
        res = f"{c['closed']} closed"
    elif k == "fanout_peak":
        fps = f"{c['delivered_fps']} out"
        res = (
            f"backlog {c['backlog_frames']} frames x {c['clients']} clients, "
            f"{100 * (c['recorded_fraction'] or 0):.1f}% of them seen by the recording clients"
            + ("" if c["recorded_complete"] else " (the rest replaced by snapshot resets: no rate)")
        )
    elif k == "failover":
        res = (
            f"longest gap: clients {c['client_longest_gap_ms']} ms vs survivor {c['survivor_longest_gap_ms']} ms "
            f"(x{c['ratio']}); lost trades {c['lost_trades']}/{c['trades_in_window']}; "
            f"book frames missing {c['book_frames_missing']}"
        )
    elif k == "rss":
        res = (
            f"RSS {c['relay_rss_mb']} MB (peak {c['relay_rss_mb_peak']}, before clients "
            f"{c['relay_rss_mb_before_clients']})"
            + ("" if c.get("symbols") == 50 else f" with only {c.get('symbols')} symbols")
        )
    return _cell(fps), _cell(lat), _cell(res)


def environment() -> dict:
    import websockets

    try:
        import uvloop

        uv = uvloop.__version__
    except ImportError:  # pragma: no cover
        uv = None
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        pass
    return {
        "python": platform.python_version(),
        "websockets": websockets.__version__,
        "uvloop": uv,
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "loadavg_at_start": os.getloadavg(),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="short windows: every case in under 2 minutes")
    p.add_argument("--only", default="", help="comma-separated cases: " + ",".join(CASES))
    p.add_argument("--name", default=None, help="results file name (default e2e / e2e-quick)")
    p.add_argument("--window", type=float, default=None, help="seconds measured per case")
    p.add_argument(
        "--case-timeout",
        type=float,
        default=600.0,
        help="seconds one measurement may take before it is reported as not measured (a hang's safety net)",
    )
    p.add_argument(
        "--sabotage",
        action="append",
        default=[],
        metavar="CASE=port|timeout",
        help="testing the failure path: CASE's clients connect to a closed port, or its processes get "
        "0.05 s to start; the case is reported as not measured and the run goes on (repeatable)",
    )
    args = p.parse_args()
    sabotage = {}
    for item in args.sabotage:
        case, _, what = item.partition("=")
        if case not in CASES or what not in ("port", "timeout"):
            p.error(f"--sabotage {item}: expected CASE=port|timeout, CASE one of {','.join(CASES)}")
        sabotage[case] = what
    args.sabotage = sabotage
    args.window = args.window or (2.0 if args.quick else 10.0)
    args.warm = 0.7 if args.quick else 2.0
    args.stall = 1.5 if args.quick else 3.0
    args.reps = 2 if args.quick else 5
    only = [c for c in args.only.split(",") if c] or CASES
    unknown = [c for c in only if c not in CASES]
    if unknown:
        p.error(f"--only: unknown case(s) {','.join(unknown)}; cases: {','.join(CASES)}")
    name = args.name or ("e2e-quick" if args.quick else "e2e")
    import uvloop

    started = time.time()
    env_at_start = environment()  # load average before the run, not after it
    bench = Bench(args)
    cases = uvloop.run(bench.run(only))
    out = {
        "name": name,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "seconds": round(time.time() - started, 1),
        "window_s": args.window,
        "environment": env_at_start,
        "not_measured": {k: c["not_measured"] for k, c in cases.items() if c.get("not_measured")},
        "cases": cases,
    }
    if args.sabotage:
        out["sabotage"] = args.sabotage
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(out, indent=2))
    env = out["environment"]
    print(f"\n## kraken-relay end-to-end ({name}, {out['when']}, {out['seconds']} s, window {args.window} s)\n")
    print(
        f"{env['cpus']} CPUs ({env['cpu_model']}), Python {env['python']}, websockets {env['websockets']}, "
        f"uvloop {env['uvloop']}, load at start {', '.join(f'{x:.2f}' for x in env['loadavg_at_start'])}\n"
    )
    text = table(cases)
    print(text)
    (RESULTS / f"{name}.md").write_text(
        f"## kraken-relay end-to-end ({name}, {out['when']}, {out['seconds']} s, window {args.window} s)\n\n"
        f"{env['cpus']} CPUs ({env['cpu_model']}), Python {env['python']}, websockets {env['websockets']}, "
        f"uvloop {env['uvloop']}, load at start {', '.join(f'{x:.2f}' for x in env['loadavg_at_start'])}\n\n"
        + text
        + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
