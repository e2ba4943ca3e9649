"""NATS cost and reach: the relay with its NATS publisher off and on, in one run (issue 17).

    python bench/nats_bench.py --quick         # 4 rounds, 2 s windows, 2 drains per run: ~2 min
    python bench/nats_bench.py                 # 5 rounds, 10 s windows, 4 drains per run: ~9-10 min
    python bench/nats_bench.py --only e2e,fanout --consumers 200 --name nats-try
      [--pin] [--rounds N] [--flush-interval S] [--max-pending-bytes B] [--subs-per-conn K]
      [--subscriber raw|nats-py]

Issue 17's benchmark line: the publishing relay's sustained unique-frame rate and added latency
with NATS on within 10 % of off, measured in the same run; end-to-end latency relay -> NATS ->
edge relay -> client next to relay -> client; fan-out to 1 000 consumers through NATS versus
through the websocket endpoint. The machinery is `bench/e2e.py`'s and `bench/capture_bench.py`'s
(`bench/harness.py` processes: `kraken-relay sim`, the relay in `bench/e2e_relay.py`, raw client
processes in `bench/e2e_client.py`), plus a `nats-server` per phase (`harness.start_nats_server`,
loopback, no JetStream) and NATS consumer processes (`bench/nats_client.py`: the same raw,
record-after-the-run clients, speaking the NATS protocol; a relay's NATS payload is the websocket
frame byte for byte, so e2e's keys match it).

Phases:

* **latency** (configs `off` and `on` alternating per round as in capture_bench; off, on in odd
  rounds, on, off in even ones): one simulator (2 zero-delay lines, ~1 000 frames/s), one direct
  reference client on line 0, one nats-server and one NATS subscriber process on `kraken.a.>` (so
  the messages flow; a raw-protocol reader, or nats-py with `--subscriber nats-py`) for the whole
  phase; each run is a fresh relay (`on`: `nats: {servers: [that server], subject_prefix:
  kraken.a, name: a}`) with 10 recording clients. Added latency = relay client - direct client
  for the same frame.
* **throughput** (same alternation): e2e's backlog drain, relay side only (both relay lines of a
  10 000 frames/s simulator stalled and released together): unique frames/s over each drain
  (best and median of the run), frames per relay CPU second, the relay's CPU µs per forwarded
  frame over the whole phase; with NATS on, every one of those frames is also published, and the
  subscriber reads them all.
* **e2e**: relay A (2 simulator lines, NATS on) -> nats-server -> edge relay (one NATS line on
  `kraken.a`) -> client, next to a client on relay A and a raw NATS consumer of relay A's
  subjects, all recording at once; added latency of each path against the direct client of
  line 0, pooled over the window and per slice of it.
* **fanout**: one relay (2 lines at ~200 frames/s per consumer, NATS on), then `--consumers`
  consumers of book (depth 10) + trade of the 4 symbols, in windows of their own, alternating:
  (a) websocket clients on the relay; (b) NATS consumers through nats-server, each its own
  connection with one subscription per subject (8), in processes of 250 connections like the
  websocket clients (`--subs-per-conn K` puts K consumers' subscriptions on one connection).
  Per path: added latency of 10 recording consumers vs the direct client, messages delivered/s
  (the relay's `client_frames_sent`; nats-server's `out_msgs`), the relay's, nats-server's and the
  consumer processes' CPU, and whether consumers kept up (frames a recording consumer never got,
  connections closed, the relay's slow-client closes and resets, nats-server's slow consumers).

`--pin` puts the publishing relay's event-loop thread alone on CPU 0 and everything else
(simulator, clients, nats-server, the edge relay) on CPU 1, as capture_bench does.
Results: `bench/results/<name>.json` (`nats-quick` / `nats`, or `--name`), markdown tables printed
and kept in the file's `table`. The whole machine's busy % is recorded per window.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench.harness as harness
from bench.capture_bench import (
    OTHERS_CPU,
    RELAY_CPU,
    THROUGHPUT_LIVENESS,
    MachineMeter,
    ThreadTrace,
    _fmt,
    _median,
    _r,
    _ratio,
    log,
    pin_relay,
    thread_cpu_seconds,
)
from bench.e2e import SYMBOLS, _backlog_rate, _count_in, _frames_in, _reason, _sim_rate, environment
from bench.harness import (
    CpuMeter,
    NatsServerProc,
    deltas,
    relay_config,
    rss_mb,
    start_client_group,
    start_clients,
    start_nats_server,
    start_relay,
    start_sim,
    stop_client_group,
    stop_clients,
    subs,
    summary_us,
    wait_relay_ready,
)

RESULTS = Path(__file__).resolve().parent / "results"
CONFIGS = ("off", "on")
PHASES = ("latency", "throughput", "e2e", "fanout")
PREFIX = "kraken.a"
NATS_CLIENT = "nats_client.py"
E2E_PATHS = {  # e2e phase: the paths measured at once, against the direct client of line 0
    "relay": "relay A -> client",
    "relay_nats": "relay A -> NATS -> raw NATS consumer",
    "relay_nats_edge": "relay A -> NATS -> edge relay -> client",
}
FANOUT_LIVENESS = {"frame_timeout": 30.0, "ping_interval": 2.0, "stale_after": 30.0}  # as e2e's fanout


def pin_process(pid: int, cpu: int) -> None:
    """Every thread of process `pid` onto `cpu` (nats-server is a Go program: many threads)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(task.name), {cpu})


def round_order(rnd: int) -> tuple[str, ...]:
    """off, on in even rounds (0, 2, ...), on, off in odd ones: a drift of the machine over a
    round then favours neither configuration."""
    return CONFIGS if rnd % 2 == 0 else CONFIGS[::-1]


def data_subjects(symbols: list[str], prefix: str = PREFIX) -> list[str]:
    """The subjects a book (configured depth) + trade consumer of `symbols` subscribes to."""
    return [f"{prefix}.v2.{stream}.{s.replace('/', '-')}" for stream in ("book", "trade") for s in symbols]


_METRIC = re.compile(r"^kraken_relay_([a-z_]+)(\{[^}]*\})? ([-+0-9.eE]+|NaN)$")
WANTED = (
    "nats_published_messages_total",
    "nats_dropped_messages_total",
    "nats_connected",
    "nats_disconnects_total",
    "upstream_frames_received_total",
    "client_frames_sent_total",
    "client_slow_closes_total",
    "client_snapshot_resets_total",
    "clients_connected",
)


def parse_metrics(text: str) -> dict[str, float]:
    """The relay's NATS and client counters from /metrics (labels summed; the drop reasons kept)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = _METRIC.match(line)
        if not m or m.group(1) not in WANTED:
            continue
        name, value = m.group(1), float(m.group(3))
        if name == "nats_dropped_messages_total" and m.group(2):
            reason = re.search(r'reason="([^"]*)"', m.group(2))
            if reason:
                out[f"nats_dropped_{reason.group(1)}"] = value
        out[name] = out.get(name, 0.0) + value
    return out


async def relay_metrics(relay: harness.RelayProc) -> dict[str, float]:
    try:
        return parse_metrics(await relay.metrics())
    except (OSError, TimeoutError) as exc:
        log(f"relay /metrics failed: {_reason(exc)}")
        return {}


async def varz(ns: NatsServerProc | None) -> dict[str, float]:
    """nats-server's counters that matter here (empty without a server or on failure)."""
    if ns is None:
        return {}
    try:
        v = await ns.varz()
    except (OSError, TimeoutError, ValueError) as exc:
        log(f"nats-server /varz failed: {_reason(exc)}")
        return {}
    return {k: float(v.get(k, 0)) for k in ("in_msgs", "out_msgs", "in_bytes", "out_bytes", "slow_consumers")}


def vdelta(a: dict[str, float], b: dict[str, float]) -> dict[str, int | None]:
    return {k: (int(b[k] - a[k]) if k in a and k in b else None) for k in ("in_msgs", "out_msgs", "slow_consumers")}


def mdelta(a: dict[str, float], b: dict[str, float], key: str) -> int | None:
    return int(b[key] - a[key]) if key in a and key in b else None


def _added(ref: tuple[dict, dict], records: list[tuple[dict, dict]], t0: float, t1: float) -> tuple[list[float], int]:
    """All recording clients' receive-time differences to the reference in [t0, t1], and the
    reference's frames they never got."""
    ref_b, ref_t = ref
    out: list[float] = []
    miss = 0
    for books, trades in records:
        for r, mine in ((ref_b, books), (ref_t, trades)):
            d, x = deltas(r, mine, t0, t1)
            out += d
            miss += x
    return out, miss


class NatsBench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.runs: dict[str, list[dict[str, Any]]] = {p: [] for p in PHASES}
        self.cases: dict[str, Any] = {}  # e2e and fanout results
        self.not_measured: dict[str, str] = {}
        self._at_connect: dict[int, dict[str, float]] = {}  # relay pid: /metrics once NATS was connected

    # -- building blocks ----------------------------------------------------------------------
    def _nats_cfg(self, config: str, ns: NatsServerProc) -> dict[str, Any]:
        if config == "off":
            return {}
        cfg: dict[str, Any] = {"servers": [ns.url], "subject_prefix": PREFIX, "name": "a"}
        if self.args.flush_interval is not None:
            cfg["flush_interval"] = self.args.flush_interval
        if self.args.max_pending_bytes is not None:
            cfg["max_pending_bytes"] = self.args.max_pending_bytes
        return {"nats": cfg}

    async def _relay(self, cfg: dict[str, Any], pin: bool = True) -> harness.RelayProc:
        """A ready relay (start-up tried twice, as e2e's `_stack`); `--pin`: pinned."""
        for attempt in (1, 2):
            relay = None
            try:
                relay = await start_relay(cfg)
                await wait_relay_ready(relay)
                if self.args.pin and pin:
                    pin_relay(relay.pid)
                return relay
            except (RuntimeError, TimeoutError, OSError) as exc:
                if relay is not None:
                    await relay.stop()
                if attempt == 2:
                    raise
                log(f"relay start-up failed ({_reason(exc)}); trying once more")
                await asyncio.sleep(1.0)
        raise AssertionError("unreachable")

    async def _wait_nats(self, relay: harness.RelayProc, timeout: float = 30.0) -> None:
        """Until the relay's publisher is connected (it connects in the background, once the
        relay is ready: what it publishes before that is dropped as `disconnected`, and counted
        apart from the drops after it by `_finish_relay`)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = await relay_metrics(relay)
            if m.get("nats_connected") == 1:
                self._at_connect[relay.pid] = m
                return
            await asyncio.sleep(0.1)
        raise TimeoutError(f"the relay's NATS publisher did not connect in {timeout:g} s")

    async def _finish_relay(self, relay: harness.RelayProc) -> dict[str, Any]:
        """The relay's NATS counters from /metrics, then stop it."""
        try:
            m = await relay_metrics(relay)
        finally:
            await relay.stop()
        return nats_report(m, self._at_connect.pop(relay.pid, None))

    def _failed(self, phase: str, tag: str, rnd: int, config: str, exc: BaseException) -> None:
        reason = _reason(exc)
        if isinstance(exc, TimeoutError) and not str(exc):
            reason = f"TimeoutError: no result within {self.args.run_timeout:g} s"
        self.not_measured[tag] = reason
        self.runs[phase].append({"tag": tag, "round": rnd, "config": config, "not_measured": reason})
        log(f"{tag}: NOT MEASURED: {reason}")

    async def _subscriber(self, ns: NatsServerProc) -> harness.ClientProc:
        """The phase's plain NATS subscriber on `kraken.a.>` (counts everything it reads)."""
        mode = self.args.subscriber
        return await start_clients(ns.port, 1, [f"{PREFIX}.>"], [], script=NATS_CLIENT, job_extra={"mode": mode})

    # -- latency ------------------------------------------------------------------------------
    async def latency(self) -> None:
        a = self.args
        sub = subs(SYMBOLS, 10)
        pending: list[dict[str, Any]] = []
        ns = await start_nats_server()
        try:
            sim = await start_sim([(0.0, 0.0), (0.0, 0.0)], SYMBOLS, _sim_rate(a.rate))
            try:
                direct = await start_clients(sim.ports[0], 1, sub, [0])
                try:
                    subscriber = await self._subscriber(ns)
                    if a.pin:
                        # NATS on the relay's core for the latency phase: at 1 000 frames/s that core
                        # is idle between frames, and nats-server and its subscriber (which wake at
                        # the instant the relay writes) must not compete with the websocket clients
                        # being timed on the other one; in production NATS runs on other machines.
                        pin_process(ns.pid, RELAY_CPU)
                        pin_process(subscriber.pid, RELAY_CPU)
                    try:
                        for rnd in range(a.rounds):
                            for config in round_order(rnd):
                                tag = f"latency-r{rnd + 1}-{config}"
                                try:
                                    async with asyncio.timeout(a.run_timeout):
                                        pending.append(
                                            await self._latency_run(sim, ns, subscriber, config, rnd + 1, tag, sub)
                                        )
                                except Exception as exc:  # reported, the run goes on
                                    self._failed("latency", tag, rnd + 1, config, exc)
                    finally:
                        sres = await stop_clients(subscriber)
                finally:
                    dres = await stop_clients(direct)
            finally:
                await sim.stop()
        finally:
            await ns.stop()
        self.cases["latency_subscriber"] = {k: sres["conns"][0][k] for k in ("books", "trades", "closed")}
        ref = dres["records"][0]
        for run in pending:
            recs = run.pop("_records")
            t0, t1 = run["t0"], run["t1"] - 0.2
            ref_n = _count_in(ref[0], ref[1], t0, t1)
            all_d, miss = _added(ref, recs, t0, t1)
            run["direct_fps"] = round(ref_n / max(1e-9, t1 - t0))
            run["added"] = summary_us(all_d)
            run["unmatched"] = miss
            run["_deltas"] = all_d  # pooled per configuration below, not written out
            if not all_d:
                run["not_measured"] = f"no relay frame matched the reference's {ref_n} ({miss} unmatched)"
                self.not_measured[run["tag"]] = run["not_measured"]
            self.runs["latency"].append(run)
            log(
                f"{run['tag']}: added {run['added']}, relay CPU {run['relay_cpu_pct']} %, "
                f"nats-server {run['nats_server_cpu_pct']} %"
            )

    async def _latency_run(self, sim, ns, subscriber, config: str, rnd: int, tag: str, sub: list[dict]) -> dict:
        a = self.args
        relay = await self._relay(relay_config(sim.urls, SYMBOLS, 10, **self._nats_cfg(config, ns)))
        try:
            if config != "off":
                await self._wait_nats(relay)
            group = await start_client_group(relay.port, a.clients, sub, a.clients)
            try:
                await asyncio.sleep(a.warm)
                m0, v0 = await relay_metrics(relay), await varz(ns)
                meters = {
                    "relay": CpuMeter([relay.pid]).start(),
                    "sim": CpuMeter([sim.pid]).start(),
                    "clients": CpuMeter([c.pid for c in group]).start(),
                    "nats_server": CpuMeter([ns.pid]).start(),
                    "subscriber": CpuMeter([subscriber.pid]).start(),
                }
                machine = MachineMeter().start()
                th0, tm0 = thread_cpu_seconds(relay.pid), time.monotonic()
                t0 = time.monotonic()
                await asyncio.sleep(a.window)
                t1 = time.monotonic()
                cpu = {k: m.stop() for k, m in meters.items()}
                busy = machine.stop()
                threads = round(100 * (thread_cpu_seconds(relay.pid) - th0) / max(1e-9, time.monotonic() - tm0), 1)
                rss = rss_mb(relay.pid)
                m1, v1 = await relay_metrics(relay), await varz(ns)
            finally:
                gres = await stop_client_group(group)
        finally:
            nats = await self._finish_relay(relay)
        return {
            "tag": tag,
            "round": rnd,
            "config": config,
            "clients": a.clients,
            "t0": t0,
            "t1": t1,
            "relay_cpu_pct": cpu["relay"],
            "relay_other_threads_cpu_pct": threads,
            "sim_cpu_pct": cpu["sim"],
            "clients_cpu_pct": cpu["clients"],
            "nats_server_cpu_pct": cpu["nats_server"],
            "subscriber_cpu_pct": cpu["subscriber"],
            "machine_busy_pct": busy,
            "loadavg": [round(x, 2) for x in os.getloadavg()],
            "relay_rss_mb": round(rss, 1),
            "closed": sum(c["closed"] for c in gres["conns"]),
            "nats_window": {**vdelta(v0, v1), "relay_published": mdelta(m0, m1, "nats_published_messages_total")},
            "nats": nats,
            "_records": gres["records"],
        }

    # -- throughput ---------------------------------------------------------------------------
    async def throughput(self) -> None:
        a = self.args
        lines = [(0.0, 0.0)] * 3
        ns = await start_nats_server()
        try:
            subscriber = await self._subscriber(ns)
            try:
                sim = await start_sim(lines, SYMBOLS, _sim_rate(a.throughput_rate))
                try:
                    for rnd in range(a.rounds):
                        for config in round_order(rnd):
                            tag = f"throughput-r{rnd + 1}-{config}"
                            t_run = time.monotonic()
                            try:
                                async with asyncio.timeout(a.run_timeout):
                                    run = await self._throughput_run(sim, ns, subscriber, config, rnd + 1, tag)
                                    run["seconds"] = round(time.monotonic() - t_run, 1)
                            except Exception as exc:  # reported, the run goes on
                                self._failed("throughput", tag, rnd + 1, config, exc)
                                run = None
                            if run is None or run.get("not_measured"):  # a fresh simulator for the next run
                                await sim.stop()
                                sim = await start_sim(lines, SYMBOLS, _sim_rate(a.throughput_rate))
                            if run is None:
                                continue
                            self.runs["throughput"].append(run)
                            log(
                                f"{tag}: {run['relay_fps']} frames/s (median drain {run['relay_fps_median']}), "
                                f"{run['relay_frames_per_cpu_s']}/CPU s, nats {run['nats']}, {run['seconds']} s"
                            )
                finally:
                    await sim.stop()
            finally:
                sres = await stop_clients(subscriber)
        finally:
            await ns.stop()
        self.cases["throughput_subscriber"] = {k: sres["conns"][0][k] for k in ("books", "trades", "closed")}

    async def _throughput_run(self, sim, ns, subscriber, config: str, rnd: int, tag: str) -> dict[str, Any]:
        a = self.args
        sub = subs(SYMBOLS, 10)
        relay = await self._relay(
            relay_config(sim.urls[1:3], SYMBOLS, 10, liveness=THROUGHPUT_LIVENESS, **self._nats_cfg(config, ns))
        )
        res: dict[str, Any] = {}
        windows: list[tuple[float, float]] = []
        rss_peak = [0.0]
        try:
            if config != "off":
                await self._wait_nats(relay)
            async with contextlib.AsyncExitStack() as procs:
                # ref: which frames make a backlog; raw: when its first bytes are on a released
                # line; relay: the relay's client. Started together, each stopped whatever happens.
                started = await asyncio.gather(
                    start_clients(sim.ports[0], 1, sub, [0]),
                    start_clients(sim.ports[1], 1, sub, [0]),
                    start_clients(relay.port, 1, sub, [0]),
                    return_exceptions=True,
                )
                live = {k: cp for k, cp in zip(("ref", "raw", "relay"), started) if isinstance(cp, harness.ClientProc)}

                async def stop_all() -> None:  # together: each one's records, the first error raised
                    got = await asyncio.gather(*(stop_clients(cp) for cp in live.values()), return_exceptions=True)
                    for k, r in zip(live, got):
                        if isinstance(r, BaseException):
                            raise r
                        res[k] = r

                procs.push_async_callback(stop_all)
                for cp in started:
                    if isinstance(cp, BaseException):
                        raise cp
                await asyncio.sleep(a.warm)

                async def sample_rss() -> None:
                    while True:
                        rss_peak[0] = max(rss_peak[0], rss_mb(relay.pid))
                        await asyncio.sleep(0.05)

                sampler = asyncio.create_task(sample_rss())
                m0 = await relay_metrics(relay)
                v0 = await varz(ns)
                meter = CpuMeter([relay.pid]).start()
                ns_meter = CpuMeter([ns.pid]).start()
                sub_meter = CpuMeter([subscriber.pid]).start()
                machine = MachineMeter().start()
                trace = ThreadTrace(relay.pid).start()
                await asyncio.sleep(0.02)
                phase_t0 = time.monotonic()
                try:
                    for _ in range(a.reps):
                        t = time.monotonic()
                        await asyncio.gather(*(sim.fault(i, "stall", a.stall) for i in (1, 2)))
                        await asyncio.sleep(a.stall + 0.05)
                        windows.append((t, time.monotonic()))
                        await asyncio.sleep(a.settle)
                    phase_t1 = time.monotonic()
                    await asyncio.sleep(0.02)
                finally:
                    await trace.stop()
                    sampler.cancel()
                cpu, ns_cpu, sub_cpu = meter.stop(), ns_meter.stop(), sub_meter.stop()
                ns_cpu_s = ns_cpu * (time.monotonic() - ns_meter.t0) / 100
                busy = machine.stop()
                v1 = await varz(ns)
                m1 = await relay_metrics(relay)
                rss = rss_mb(relay.pid)
        finally:
            nats = await self._finish_relay(relay)
        ref_b, ref_t = res["ref"]["records"][0]
        rec, start = res["relay"]["records"][0], res["raw"]["records"][0]
        ref_conn = res["ref"]["conns"][0]
        drains = []
        for t0, t1 in windows:
            d = _backlog_rate(ref_b, ref_t, rec, t0, t1, start=start)
            d["frames_per_cpu_s"] = d["cpu_us_per_frame"] = None
            if d["first"] is not None:
                frames = _frames_in(rec, d["first"], d["last"])
                cpu_s = trace.between("all", d["first"], d["last"])
                d["frames_per_cpu_s"] = round(frames / cpu_s) if cpu_s > 0.01 else None
                d["cpu_us_per_frame"] = trace.split_us(d["first"], d["last"], frames)
            drains.append(d)
        phase_frames = _frames_in(rec, phase_t0, phase_t1)
        best = lambda key: max((d[key] for d in drains if d.get(key)), default=None)  # noqa: E731
        window = vdelta(v0, v1)
        published = mdelta(m0, m1, "nats_published_messages_total")
        run = {
            "tag": tag,
            "round": rnd,
            "config": config,
            "reps": a.reps,
            "backlog_frames": [d["backlog"] for d in drains],
            "missing": [d["missing"] for d in drains],
            "relay_fps": best("rate"),
            "relay_fps_median": _median([d["rate"] for d in drains if d.get("rate")]),
            "relay_frames_per_cpu_s": best("frames_per_cpu_s"),
            "phase_frames": phase_frames,
            "phase_cpu_us_per_frame": trace.split_us(phase_t0, phase_t1, phase_frames),
            "drains": [{k: v for k, v in d.items() if k not in ("first", "last")} for d in drains],
            "relay_cpu_pct": cpu,
            "nats_server_cpu_pct": ns_cpu,
            "nats_server_cpu_us_per_frame": round(1e6 * ns_cpu_s / phase_frames, 2) if phase_frames else None,
            "subscriber_cpu_pct": sub_cpu,
            "machine_busy_pct": busy,
            "loadavg": [round(x, 2) for x in os.getloadavg()],
            "reference_client": {k: ref_conn[k] for k in ("books", "trades", "closed", "truncated")},
            "relay_rss_mb": round(rss, 1),
            "relay_rss_mb_peak": round(max(rss_peak[0], rss), 1),
            "nats_window": {**window, "relay_published": published},
            "nats": nats,
        }
        if run["relay_fps"] is None:
            run["not_measured"] = (
                f"no complete backlog drain (backlogs {run['backlog_frames']}; reference client "
                f"{run['reference_client']}; simulator: {' | '.join(sim.log[-3:])})"
            )
            self.not_measured[tag] = run["not_measured"]
        return run

    # -- e2e ----------------------------------------------------------------------------------
    async def e2e(self) -> None:
        """relay A -> nats-server -> edge relay -> client, next to relay A -> client and relay A
        -> nats-server -> a raw consumer, all recording in one window."""
        a = self.args
        sub = subs(SYMBOLS, 10)
        ns = await start_nats_server()
        stack = contextlib.AsyncExitStack()
        try:
            sim = await start_sim([(0.0, 0.0), (0.0, 0.0)], SYMBOLS, _sim_rate(a.rate))
            stack.push_async_callback(sim.stop)
            relay = await self._relay(relay_config(sim.urls, SYMBOLS, 10, **self._nats_cfg("on", ns)))
            relay_box: dict[str, Any] = {}

            async def finish_a() -> None:
                relay_box["a"] = await self._finish_relay(relay)

            stack.push_async_callback(finish_a)
            await self._wait_nats(relay)
            edge_cfg = relay_config(
                [],
                SYMBOLS,
                10,
                upstreams=[{"name": "a", "url": ns.url, "protocol": "v2", "subject_prefix": PREFIX}],
            )
            edge = await self._relay(edge_cfg, pin=False)
            stack.push_async_callback(edge.stop)
            n = a.e2e_clients
            groups: dict[str, list[harness.ClientProc]] = {}
            results: dict[str, dict] = {}

            async def stop_groups() -> None:
                got = await asyncio.gather(*(stop_client_group(g) for g in groups.values()), return_exceptions=True)
                for k, r in zip(groups, got):
                    if isinstance(r, BaseException):
                        raise r
                    results[k] = r

            stack.push_async_callback(stop_groups)
            groups["direct"] = [await start_clients(sim.ports[0], 1, sub, [0])]
            groups["relay"] = await start_client_group(relay.port, n, sub, n)
            groups["relay_nats"] = await start_client_group(ns.port, n, data_subjects(SYMBOLS), n, script=NATS_CLIENT)
            groups["relay_nats_edge"] = await start_client_group(edge.port, n, sub, n)
            await asyncio.sleep(a.warm)
            meters = {
                "relay": CpuMeter([relay.pid]).start(),
                "edge": CpuMeter([edge.pid]).start(),
                "nats_server": CpuMeter([ns.pid]).start(),
                "sim": CpuMeter([sim.pid]).start(),
                "clients": CpuMeter([c.pid for g in groups.values() for c in g]).start(),
            }
            machine = MachineMeter().start()
            t0 = time.monotonic()
            await asyncio.sleep(a.e2e_window)
            t1 = time.monotonic()
            cpu = {k: m.stop() for k, m in meters.items()}
            busy = machine.stop()
            edge_m = await relay_metrics(edge)
            await stack.aclose()
        finally:
            await stack.aclose()
            await ns.stop()
        ref = results["direct"]["records"][0]
        end = t1 - 0.2
        slices = max(1, int(round((end - t0) / a.e2e_slice)))
        edges = [t0 + i * (end - t0) / slices for i in range(slices + 1)]
        paths: dict[str, Any] = {}
        for path in E2E_PATHS:
            recs = results[path]["records"]
            d, miss = _added(ref, recs, t0, end)
            per_slice = []
            for s0, s1 in zip(edges, edges[1:]):
                ds = summary_us(_added(ref, recs, s0, s1)[0])
                per_slice.append([ds["p50_us"], ds["p99_us"]])
            paths[path] = {
                "added": summary_us(d),
                "unmatched": miss,
                "slices": per_slice,
                "closed": sum(c["closed"] for c in results[path]["conns"]),
            }
        ref_n = _count_in(ref[0], ref[1], t0, end)
        self.cases["e2e"] = {
            "clients_per_path": n,
            "window_s": round(t1 - t0, 2),
            "slice_s": round((end - t0) / slices, 2),
            "direct_fps": round(ref_n / max(1e-9, end - t0)),
            "paths": paths,
            "cpu_pct": cpu,
            "machine_busy_pct": busy,
            "loadavg": [round(x, 2) for x in os.getloadavg()],
            "relay_a_nats": relay_box.get("a"),
            "edge_frames_received": edge_m.get("upstream_frames_received_total"),
        }
        if not paths["relay_nats_edge"]["added"]["n"]:
            self.not_measured["e2e"] = f"no edge client frame matched the reference's {ref_n}"
        log(f"e2e: {json.dumps(self.cases['e2e'], ensure_ascii=False)}")

    # -- fanout -------------------------------------------------------------------------------
    async def fanout(self) -> None:
        a = self.args
        sub = subs(SYMBOLS, 10)
        ns = await start_nats_server()
        try:
            sim = await start_sim([(0.0, 0.0), (0.0, 0.0)], SYMBOLS, _sim_rate(a.fanout_rate))
            try:
                relay = await self._relay(
                    relay_config(sim.urls, SYMBOLS, 10, liveness=FANOUT_LIVENESS, **self._nats_cfg("on", ns))
                )
                try:
                    await self._wait_nats(relay)
                    direct = await start_clients(sim.ports[0], 1, sub, [0])
                    pending = []
                    try:
                        for rnd in range(a.fanout_rounds):
                            for path in ("websocket", "nats"):
                                tag = f"fanout-r{rnd + 1}-{path}"
                                try:
                                    async with asyncio.timeout(a.run_timeout):
                                        pending.append(await self._fanout_run(sim, relay, ns, path, rnd + 1, tag))
                                except Exception as exc:  # reported, the run goes on
                                    self._failed("fanout", tag, rnd + 1, path, exc)
                    finally:
                        dres = await stop_clients(direct)
                finally:
                    relay_nats = await self._finish_relay(relay)
            finally:
                await sim.stop()
        finally:
            await ns.stop()
        self.cases["fanout_relay_nats"] = relay_nats
        ref = dres["records"][0]
        for run in pending:
            recs = run.pop("_records")
            t0, t1 = run["t0"], run["t1"] - 0.2
            d, miss = _added(ref, recs, t0, t1)
            ref_n = _count_in(ref[0], ref[1], t0, t1)
            run["direct_fps"] = round(ref_n / max(1e-9, t1 - t0))
            run["added"] = summary_us(d)
            run["missed_by_recording_consumers"] = miss
            run["recording_consumers"] = len(recs)
            run["expected_fps"] = round(ref_n / max(1e-9, t1 - t0) * run["consumers"])
            if not d:
                run["not_measured"] = f"no consumer frame matched the reference's {ref_n} ({miss} unmatched)"
                self.not_measured[run["tag"]] = run["not_measured"]
            problems = (
                run["closed"],
                run.get("relay_slow_closes") or 0,
                run.get("relay_resets") or 0,
                run.get("nats_slow_consumers") or 0,
                miss,
            )
            run["kept_up"] = bool(d) and not any(problems)
            self.runs["fanout"].append(run)
            log(
                f"{run['tag']}: added {run['added']}, delivered {run['delivered_msgs_per_s']}/s, relay "
                f"{run['relay_cpu_pct']} %, nats-server {run['nats_server_cpu_pct']} %, kept up {run['kept_up']}"
            )

    async def _fanout_run(self, sim, relay, ns, path: str, rnd: int, tag: str) -> dict[str, Any]:
        a = self.args
        n = a.consumers
        n_rec = min(n, 10)
        if path == "websocket":
            group = await start_client_group(relay.port, n, subs(SYMBOLS, 10), n_rec)
            conns = n
        else:
            k = a.subs_per_conn
            conns = -(-n // k)
            per_proc = max(1, 250 // k) if k < 250 else 1
            group = await start_client_group(
                ns.port, conns, data_subjects(SYMBOLS) * k, min(conns, n_rec), per_proc=per_proc, script=NATS_CLIENT
            )
        try:
            await asyncio.sleep(a.warm)
            m0, v0 = await relay_metrics(relay), await varz(ns)
            meters = {
                "relay": CpuMeter([relay.pid]).start(),
                "nats_server": CpuMeter([ns.pid]).start(),
                "consumers": CpuMeter([c.pid for c in group]).start(),
                "sim": CpuMeter([sim.pid]).start(),
            }
            machine = MachineMeter().start()
            t0 = time.monotonic()
            await asyncio.sleep(a.fanout_window)
            t1 = time.monotonic()
            cpu = {key: m.stop() for key, m in meters.items()}
            busy = machine.stop()
            m1, v1 = await relay_metrics(relay), await varz(ns)
            rss = rss_mb(relay.pid)
        finally:
            gres = await stop_client_group(group)
        span = max(1e-9, t1 - t0)

        def dm(key: str) -> int | None:
            return mdelta(m0, m1, key)

        vd = vdelta(v0, v1)
        # one websocket frame = one NATS message: frames the relay sent its clients / messages
        # nats-server sent its consumers
        delivered = dm("client_frames_sent_total") if path == "websocket" else vd["out_msgs"]
        closed = sum(c["closed"] for c in gres["conns"])
        slow = (
            {"relay_slow_closes": dm("client_slow_closes_total"), "relay_resets": dm("client_snapshot_resets_total")}
            if path == "websocket"
            else {"nats_slow_consumers": vd["slow_consumers"]}
        )
        return {
            "tag": tag,
            "round": rnd,
            "config": path,
            "path": path,
            "consumers": n,
            "connections": conns,
            "processes": len(group),
            "t0": t0,
            "t1": t1,
            "delivered_msgs_per_s": None if delivered is None else round(delivered / span),
            "relay_cpu_pct": cpu["relay"],
            "nats_server_cpu_pct": cpu["nats_server"],
            "consumers_cpu_pct": cpu["consumers"],
            "sim_cpu_pct": cpu["sim"],
            "machine_busy_pct": busy,
            "loadavg": [round(x, 2) for x in os.getloadavg()],
            "relay_rss_mb": round(rss, 1),
            "closed": closed,
            **slow,
            "nats_window": vd,
            "relay_nats_published": dm("nats_published_messages_total"),
            "relay_nats_dropped": dm("nats_dropped_messages_total"),
            "_records": gres["records"],
            "kept_up": None,  # set once the records are matched
        }

    # -- summary ------------------------------------------------------------------------------
    def summary(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """Per configuration: medians over rounds (and pooled latency); ratios on / off: the
        median over rounds of each round's ratio (capture_bench's method)."""
        lat = [r for r in self.runs["latency"] if not r.get("not_measured")]
        thr = [r for r in self.runs["throughput"] if not r.get("not_measured")]

        def get(runs: list[dict], config: str, path: tuple[str, ...]) -> list[Any]:
            out = []
            for r in runs:
                if r["config"] != config:
                    continue
                v: Any = r
                for k in path:
                    v = v.get(k) if isinstance(v, dict) else None
                out.append(v)
            return out

        summ: dict[str, Any] = {}
        for c in CONFIGS:
            pooled = sorted(x for r in lat if r["config"] == c for x in r.get("_deltas", []))
            nats = [r["nats"] for r in lat + thr if r["config"] == c]
            summ[c] = {
                "latency_rounds": len(get(lat, c, ("tag",))),
                "added_p50_us": _median(get(lat, c, ("added", "p50_us"))),
                "added_p99_us": _median(get(lat, c, ("added", "p99_us"))),
                "added_p999_us": _median(get(lat, c, ("added", "p999_us"))),
                "added_pooled": summary_us(pooled),
                "latency_relay_cpu_pct": _median(get(lat, c, ("relay_cpu_pct",))),
                "latency_nats_server_cpu_pct": _median(get(lat, c, ("nats_server_cpu_pct",))),
                "latency_subscriber_cpu_pct": _median(get(lat, c, ("subscriber_cpu_pct",))),
                "latency_relay_rss_mb": _median(get(lat, c, ("relay_rss_mb",))),
                "latency_machine_busy_pct": _median(get(lat, c, ("machine_busy_pct",))),
                "throughput_rounds": len(get(thr, c, ("tag",))),
                "relay_fps": _median(get(thr, c, ("relay_fps",))),
                "relay_fps_median_drain": _median(get(thr, c, ("relay_fps_median",))),
                "relay_frames_per_cpu_s": _median(get(thr, c, ("relay_frames_per_cpu_s",))),
                "throughput_relay_rss_mb_peak": _median(get(thr, c, ("relay_rss_mb_peak",))),
                "phase_cpu_us_per_frame_main": _median(get(thr, c, ("phase_cpu_us_per_frame", "main"))),
                "phase_cpu_us_per_frame_other_threads": _median(
                    get(thr, c, ("phase_cpu_us_per_frame", "other_threads"))
                ),
                "phase_cpu_us_per_frame_all": _median(get(thr, c, ("phase_cpu_us_per_frame", "all"))),
                "throughput_nats_server_cpu_pct": _median(get(thr, c, ("nats_server_cpu_pct",))),
                "throughput_nats_server_cpu_us_per_frame": _median(get(thr, c, ("nats_server_cpu_us_per_frame",))),
                "throughput_subscriber_cpu_pct": _median(get(thr, c, ("subscriber_cpu_pct",))),
                "throughput_machine_busy_pct": _median(get(thr, c, ("machine_busy_pct",))),
                "nats_published": sum(x.get("published") or 0 for x in nats),
                "nats_published_in_windows": sum(
                    (r["nats_window"].get("relay_published") or 0) for r in lat + thr if r["config"] == c
                ),
                "nats_dropped": sum(x.get("dropped") or 0 for x in nats),
                "nats_dropped_before_connect": sum(x.get("dropped_before_connect") or 0 for x in nats),
                "nats_disconnects": sum(x.get("disconnects") or 0 for x in nats),
                "nats_delivered_to_subscriber": sum(
                    (r["nats_window"].get("out_msgs") or 0) for r in lat + thr if r["config"] == c
                ),
                "nats_received_by_server": sum(
                    (r["nats_window"].get("in_msgs") or 0) for r in lat + thr if r["config"] == c
                ),
                "nats_slow_consumers": sum(
                    (r["nats_window"].get("slow_consumers") or 0) for r in lat + thr if r["config"] == c
                ),
            }
        pooled_off = summ["off"]["added_pooled"]

        def per_round(runs: list[dict], config: str, path: tuple[str, ...]) -> list[float | None]:
            by = {}
            for r in runs:
                v: Any = r
                for k in path:
                    v = v.get(k) if isinstance(v, dict) else None
                by[(r["round"], r["config"])] = v
            return [_ratio(by.get((n, config)), by.get((n, "off"))) for n in sorted({r["round"] for r in runs})]

        ratios: dict[str, Any] = {}
        for c in CONFIGS[1:]:
            rr = {
                "added_p50": per_round(lat, c, ("added", "p50_us")),
                "added_p99": per_round(lat, c, ("added", "p99_us")),
                "relay_fps": per_round(thr, c, ("relay_fps",)),
                "relay_fps_median_drain": per_round(thr, c, ("relay_fps_median",)),
                "relay_frames_per_cpu_s": per_round(thr, c, ("relay_frames_per_cpu_s",)),
                "phase_cpu_us_per_frame": per_round(thr, c, ("phase_cpu_us_per_frame", "all")),
                "latency_relay_cpu": per_round(lat, c, ("relay_cpu_pct",)),
                "latency_relay_rss": per_round(lat, c, ("relay_rss_mb",)),
            }
            med = {k: _median(v) for k, v in rr.items()}
            med["added_p50_pooled"] = _ratio(summ[c]["added_pooled"]["p50_us"], pooled_off["p50_us"])
            med["added_p99_pooled"] = _ratio(summ[c]["added_pooled"]["p99_us"], pooled_off["p99_us"])
            checks = {
                "added_p50": med["added_p50"],
                "added_p99": med["added_p99"],
                "relay_fps": med["relay_fps"],
                "relay_fps_median_drain": med["relay_fps_median_drain"],
            }
            med["within_10pct"] = {
                k: None if v is None else (v >= 0.9 if k.startswith("relay_fps") else v <= 1.1)
                for k, v in checks.items()
            }
            ratios[c] = {"median": med, "per_round": rr}
        return summ, ratios

    def fanout_summary(self) -> dict[str, Any]:
        """Per path: medians over its windows; `kept_up` per window."""
        out: dict[str, Any] = {}
        for path in ("websocket", "nats"):
            rs = [r for r in self.runs["fanout"] if r.get("path") == path and not r.get("not_measured")]
            if not rs:
                continue
            med = lambda k, rs=rs: _median([r.get(k) for r in rs])  # noqa: E731
            out[path] = {
                "windows": len(rs),
                "consumers": rs[0]["consumers"],
                "connections": rs[0]["connections"],
                "processes": rs[0]["processes"],
                "added_p50_us": med_path(rs, ("added", "p50_us")),
                "added_p99_us": med_path(rs, ("added", "p99_us")),
                "delivered_msgs_per_s": med("delivered_msgs_per_s"),
                "expected_fps": med("expected_fps"),
                "relay_cpu_pct": med("relay_cpu_pct"),
                "nats_server_cpu_pct": med("nats_server_cpu_pct"),
                "consumers_cpu_pct": med("consumers_cpu_pct"),
                "sim_cpu_pct": med("sim_cpu_pct"),
                "machine_busy_pct": med("machine_busy_pct"),
                "missed_by_recording_consumers": sum(r["missed_by_recording_consumers"] for r in rs),
                "closed": sum(r["closed"] for r in rs),
                "relay_slow_closes": sum(r.get("relay_slow_closes") or 0 for r in rs),
                "relay_resets": sum(r.get("relay_resets") or 0 for r in rs),
                "nats_slow_consumers": sum(r.get("nats_slow_consumers") or 0 for r in rs),
                "kept_up": all(r["kept_up"] for r in rs),
            }
        return out


def med_path(runs: list[dict], path: tuple[str, ...]) -> float | None:
    vals = []
    for r in runs:
        v: Any = r
        for k in path:
            v = v.get(k) if isinstance(v, dict) else None
        vals.append(v)
    return _median(vals)


def nats_report(m: dict[str, float], at_connect: dict[str, float] | None = None) -> dict[str, Any]:
    """The publisher's counters for one relay's life (None: NATS off). `dropped`: after the
    publisher first connected (`at_connect`, the /metrics then); `dropped_before_connect`: the
    frames published between the relay being ready and its NATS connection."""
    if "nats_published_messages_total" not in m:
        return {"published": None, "dropped": None}
    before = int((at_connect or {}).get("nats_dropped_messages_total", 0))
    return {
        "published": int(m.get("nats_published_messages_total", 0)),
        "dropped": int(m.get("nats_dropped_messages_total", 0)) - before,
        "dropped_before_connect": before,
        "dropped_by_reason": {
            k.removeprefix("nats_dropped_"): int(v)
            for k, v in m.items()
            if k.startswith("nats_dropped_") and k != "nats_dropped_messages_total" and v
        },
        "disconnects": int(m.get("nats_disconnects_total", 0)),
        "frames_received": int(m.get("upstream_frames_received_total", 0)),
    }


# -- tables ------------------------------------------------------------------------------------
def _yn(v: bool | None) -> str:
    return {True: "yes", False: "NO", None: "n/a"}[v]


def table(summ: dict, ratios: dict, runs: dict, cases: dict, fan: dict) -> str:
    """The markdown tables of the phases that ran."""
    rows: list[str] = []
    if runs["latency"] or runs["throughput"]:
        rows += [
            "| NATS | added latency µs p50 / p99 (median of rounds; pooled) | per-round p50 / p99 "
            "| unique frames/s: best drain (median; rounds) | median drain | frames per relay CPU s "
            "| relay CPU µs per frame, throughput phase | relay CPU % at 1k/s "
            "| nats-server CPU %: 1k/s, drains (µs per frame) | subscriber CPU %: 1k/s, drains "
            "| in the windows: published / dropped / delivered to subscriber | relay RSS MB (latency / drain peak) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for c in CONFIGS:
            s = summ[c]
            lat_rounds = ", ".join(
                f"{r['added']['p50_us']}/{r['added']['p99_us']}"
                for r in runs["latency"]
                if r["config"] == c and not r.get("not_measured")
            )
            fps_rounds = ", ".join(
                _fmt(r["relay_fps"]) for r in runs["throughput"] if r["config"] == c and not r.get("not_measured")
            )
            p = s["added_pooled"]
            rows.append(
                f"| {c} | {_fmt(s['added_p50_us'])} / {_fmt(s['added_p99_us'])}; {_fmt(p['p50_us'])} / "
                f"{_fmt(p['p99_us'])} | {lat_rounds} | {_fmt(s['relay_fps'])}; {fps_rounds} "
                f"| {_fmt(s['relay_fps_median_drain'])} | {_fmt(s['relay_frames_per_cpu_s'])} "
                f"| {_fmt(s['phase_cpu_us_per_frame_all'])} | {_fmt(s['latency_relay_cpu_pct'])} "
                f"| {_fmt(s['latency_nats_server_cpu_pct'])}, {_fmt(s['throughput_nats_server_cpu_pct'])} "
                f"({_fmt(s['throughput_nats_server_cpu_us_per_frame'])}) "
                f"| {_fmt(s['latency_subscriber_cpu_pct'])}, {_fmt(s['throughput_subscriber_cpu_pct'])} | "
                + (
                    "-"
                    if c == "off"
                    else f"{_fmt(s['nats_published_in_windows'])} / {s['nats_dropped']} / "
                    f"{_fmt(s['nats_delivered_to_subscriber'])}"
                )
                + f" | {_fmt(s['latency_relay_rss_mb'])} / {_fmt(s['throughput_relay_rss_mb_peak'])} |"
            )
        rows += [
            "",
            "| ratio to off (median of per-round ratios) | added p50 | added p99 | added p50 / p99 pooled "
            "| unique frames/s (best drain) | median drain | frames per CPU s | CPU µs per frame (throughput phase) "
            "| relay CPU at 1k/s | within 10 % (p50, p99, frames/s best, median drain) |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for c, r in ratios.items():
            m = r["median"]
            ok = m["within_10pct"]
            rows.append(
                f"| {c} | {_r(m['added_p50'])} | {_r(m['added_p99'])} | {_r(m['added_p50_pooled'])} / "
                f"{_r(m['added_p99_pooled'])} | {_r(m['relay_fps'])} | {_r(m['relay_fps_median_drain'])} "
                f"| {_r(m['relay_frames_per_cpu_s'])} | {_r(m['phase_cpu_us_per_frame'])} "
                f"| {_r(m['latency_relay_cpu'])} | "
                + ", ".join(_yn(ok[k]) for k in ("added_p50", "added_p99", "relay_fps", "relay_fps_median_drain"))
                + " |"
            )
        rows += [
            "",
            "Whole machine busy (median %, 100 = both cores) during the latency windows: "
            + ", ".join(f"{c} {_fmt(summ[c]['latency_machine_busy_pct'])}" for c in CONFIGS)
            + "; during the drains phase: "
            + ", ".join(f"{c} {_fmt(summ[c]['throughput_machine_busy_pct'])}" for c in CONFIGS)
            + f". nats-server slow consumers: {summ['on']['nats_slow_consumers']}.",
        ]
        if summ["on"]["nats_dropped"]:
            rows.append(
                f"\n**NATS on: the publisher dropped {_fmt(summ['on']['nats_dropped'])} messages after connecting** "
                f"({_fmt(summ['on']['nats_published'])} published; by reason per run in the results file): the "
                "'on' figures then include publishing only part of the frames."
            )
    e = cases.get("e2e")
    if e:
        rows += [
            "",
            f"| end to end, {e['direct_fps']} frames/s, {e['clients_per_path']} client(s) per path, "
            f"{e['window_s']:g} s | added µs p50 | p99 | p99.9 | matched / unmatched | per {e['slice_s']:g} s slice "
            "p50/p99 |",
            "|---|---|---|---|---|---|",
        ]
        for path, p in e["paths"].items():
            d = p["added"]
            rows.append(
                f"| {E2E_PATHS[path]} | {_fmt(d['p50_us'])} | {_fmt(d['p99_us'])} | {_fmt(d['p999_us'])} "
                f"| {_fmt(d['n'])} / {_fmt(p['unmatched'])} | " + ", ".join(f"{a}/{b}" for a, b in p["slices"]) + " |"
            )
        cpu = e["cpu_pct"]
        rows.append(
            f"\nCPU % of one core in the e2e window: relay A {_fmt(cpu['relay'])}, edge relay {_fmt(cpu['edge'])}, "
            f"nats-server {_fmt(cpu['nats_server'])}, simulator {_fmt(cpu['sim'])}, clients {_fmt(cpu['clients'])}; "
            f"machine busy {_fmt(e['machine_busy_pct'])} %."
        )
    if fan:
        rows += [
            "",
            "| fan-out path | consumers (connections, processes) | added µs p50 / p99 (median of windows) "
            "| delivered msgs/s (expected) | relay CPU % | nats-server CPU % | consumer processes CPU % "
            "| machine busy % | kept up: missed / closed / slow |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for path, f in fan.items():
            slow = (
                f"{f['relay_slow_closes']} slow closes, {f['relay_resets']} resets"
                if path == "websocket"
                else f"{f['nats_slow_consumers']} slow consumers"
            )
            label = "websocket (relay)" if path == "websocket" else "NATS (relay -> nats-server)"
            rows.append(
                f"| {label} | {_fmt(f['consumers'])} ({_fmt(f['connections'])}, {f['processes']}) "
                f"| {_fmt(f['added_p50_us'])} / {_fmt(f['added_p99_us'])} "
                f"| {_fmt(f['delivered_msgs_per_s'])} ({_fmt(f['expected_fps'])}) | {_fmt(f['relay_cpu_pct'])} "
                f"| {_fmt(f['nats_server_cpu_pct'])} | {_fmt(f['consumers_cpu_pct'])} | {_fmt(f['machine_busy_pct'])} "
                f"| {_yn(f['kept_up'])}: {f['missed_by_recording_consumers']} / {f['closed']} / {slow} |"
            )
    return "\n".join(rows)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="short windows: the whole run in under 3 minutes")
    p.add_argument("--rounds", type=int, default=None, help="rounds of off, on (latency, throughput; 4 quick, 5 full)")
    p.add_argument("--only", default="", help="comma-separated phases: " + ",".join(PHASES))
    p.add_argument("--name", default=None, help="results file name (default nats / nats-quick)")
    p.add_argument("--window", type=float, default=None, help="seconds measured per latency run")
    p.add_argument("--rate", type=float, default=1000.0, help="latency and e2e: frames/s per client (default 1000)")
    p.add_argument("--clients", type=int, default=10, help="latency phase: relay clients (default 10)")
    p.add_argument("--throughput-rate", type=float, default=10000.0, help="throughput phase: frames/s simulated")
    p.add_argument(
        "--subscriber",
        choices=("raw", "nats-py"),
        default="raw",
        help="latency/throughput: the kraken.a.> subscriber (raw protocol reader, or nats-py with a callback)",
    )
    p.add_argument("--flush-interval", type=float, default=None, help="nats.flush_interval (default: the relay's)")
    p.add_argument(
        "--max-pending-bytes",
        type=int,
        default=None,
        help="nats.max_pending_bytes (default: the relay's, 8 MiB; a 3 s backlog overflows it, see bench/README.md)",
    )
    p.add_argument("--e2e-clients", type=int, default=1, help="e2e: recording clients per path (default 1)")
    p.add_argument("--consumers", type=int, default=1000, help="fanout: consumers per path (default 1000)")
    p.add_argument("--subs-per-conn", type=int, default=1, help="fanout: NATS consumers per connection (default 1)")
    p.add_argument("--fanout-rate", type=float, default=200.0, help="fanout: frames/s per consumer (default 200)")
    p.add_argument("--fanout-rounds", type=int, default=None, help="fanout: windows per path (1 quick, 2 full)")
    p.add_argument(
        "--pin",
        action="store_true",
        help="the publishing relay's loop thread alone on CPU 0; everything else on CPU 1 (2+ CPUs)",
    )
    p.add_argument("--run-timeout", type=float, default=300.0, help="seconds one run may take (a hang's net)")
    args = p.parse_args()
    args.rounds = args.rounds or (4 if args.quick else 5)
    if args.rounds < 1 or args.consumers < 1 or args.subs_per_conn < 1:
        p.error("--rounds, --consumers and --subs-per-conn must be >= 1")
    only = [x for x in args.only.split(",") if x] or list(PHASES)
    unknown = [x for x in only if x not in PHASES]
    if unknown:
        p.error(f"--only: unknown phase(s) {','.join(unknown)}; phases: {','.join(PHASES)}")
    args.window = args.window or (2.0 if args.quick else 10.0)
    args.warm = 0.7 if args.quick else 2.0
    args.stall = 1.0 if args.quick else 3.0
    args.reps = 2 if args.quick else 4
    args.settle = 2.2 if args.quick else 4.5
    args.e2e_window = 4.0 if args.quick else 20.0
    args.e2e_slice = 2.0 if args.quick else 5.0
    args.fanout_window = 3.0 if args.quick else 10.0
    args.fanout_rounds = args.fanout_rounds or (1 if args.quick else 2)
    name = args.name or ("nats-quick" if args.quick else "nats")
    if args.pin:
        if (os.cpu_count() or 1) < 2:
            p.error("--pin needs 2 CPUs")
        os.sched_setaffinity(0, {OTHERS_CPU})  # inherited by nats-server, the simulator and the clients
    import uvloop

    started = time.time()
    env_at_start = environment()
    bench = NatsBench(args)
    phase_seconds: dict[str, float] = {}

    async def run() -> None:
        for phase in only:
            log(f"phase {phase}")
            t = time.monotonic()
            try:
                await getattr(bench, phase)()
            except Exception as exc:  # a phase that cannot start: reported
                bench.not_measured[phase] = _reason(exc)
                log(f"phase {phase}: NOT MEASURED: {_reason(exc)}")
            phase_seconds[phase] = round(time.monotonic() - t, 1)

    uvloop.run(run())
    summ, ratios = bench.summary()
    fan = bench.fanout_summary()
    for r in bench.runs["latency"]:
        r.pop("_deltas", None)
        r.pop("_records", None)
    text = table(summ, ratios, bench.runs, bench.cases, fan)
    out = {
        "name": name,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "seconds": round(time.time() - started, 1),
        "phase_seconds": phase_seconds,
        "settings": {
            k: getattr(args, k)
            for k in (
                "quick",
                "rounds",
                "window",
                "warm",
                "rate",
                "clients",
                "throughput_rate",
                "stall",
                "settle",
                "reps",
                "subscriber",
                "flush_interval",
                "max_pending_bytes",
                "e2e_clients",
                "e2e_window",
                "e2e_slice",
                "consumers",
                "subs_per_conn",
                "fanout_rate",
                "fanout_window",
                "fanout_rounds",
                "pin",
            )
        },
        "environment": env_at_start,
        "not_measured": bench.not_measured,
        "summary": summ,
        "ratios": ratios,
        "e2e": bench.cases.get("e2e"),
        "fanout": fan,
        "cases": {k: v for k, v in bench.cases.items() if k != "e2e"},
        "runs": bench.runs,
        "table": text,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(out, indent=2, ensure_ascii=False))
    env = out["environment"]
    print(f"\n## kraken-relay NATS ({name}, {out['when']}, {out['seconds']} s, {args.rounds} rounds)\n")
    print(
        f"{env['cpus']} CPUs ({env['cpu_model']}), Python {env['python']}, load at start "
        f"{', '.join(f'{x:.2f}' for x in env['loadavg_at_start'])}; latency: {args.rate:g} frames/s x "
        f"{args.clients} clients, {args.window:g} s windows; throughput: 2 lines, {args.reps} drains per run; "
        f"fanout: {args.consumers} consumers at {args.fanout_rate:g} frames/s, {args.fanout_window:g} s windows"
        + ("; pinned" if args.pin else "")
        + "\n"
    )
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
