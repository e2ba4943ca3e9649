"""Capture cost: the relay with the flight recorder off, on, and on + published, in one run.

    python bench/capture_bench.py --quick          # 3 rounds, short windows (< 3 min)
    python bench/capture_bench.py [--rounds N]     # 10 s windows, 4 drains per run (~8 min)
    python bench/capture_bench.py --only latency --rounds 5 --name capture-lat

Issue 16's acceptance: the relay's sustained unique-frame rate and added latency with capture on
are within 10 % of capture off, measured in the same run. The machinery is `bench/e2e.py`'s
(`bench/harness.py` processes: `kraken-relay sim`, the relay in `bench/e2e_relay.py`, raw client
processes in `bench/e2e_client.py`); the configurations alternate within the run (off, on,
on+published, off, on, ... for `--rounds`), so slow drifts of a noisy machine hit all three alike.
The ratios are medians over rounds of each round's on / off.

* **latency**: one simulator (2 zero-delay lines, ~1 000 frames/s to a depth-10 + trade client)
  and one direct reference client on line 0 run for the whole phase; each run starts a relay on
  both lines with the configuration, 10 recording clients, a warm-up, one window. Added latency =
  relay client's receive time - the direct client's for the same frame (e2e's method).
* **throughput**: one simulator at ~10 000 frames/s (line 0: reference, lines 1-2: the relay's);
  each run starts a relay with the configuration, a raw client on line 1 (when the backlog's
  first bytes are there), the reference client and 1 relay client, then stalls both relay lines
  at once and releases them, `reps` times (e2e's throughput method, relay side only): unique
  frames/s from the backlog's first bytes on a released line to its last frame at the relay's
  client (best drain of the run), and the same frames per CPU second of the relay. Over the
  whole phase, the relay's CPU µs per forwarded frame, split into its loop's (main) thread and
  its other threads (the capture writer), from /proc/PID/task sampled every 5 ms.
* **CPU / RSS**: the relay's CPU % of one core over the latency window (all threads) and that of
  its threads other than the main one (the capture writer thread, when capture is on); RSS at the
  end of the window and peak during the drains.
* **capture**: from the relay's /metrics (`kraken_relay_capture_*`) just before it stops: records
  written, dropped, write errors, bytes; after it stops, the files themselves are decoded (every
  zstd frame complete, records counted) and compared with the lines' frames received.

The capture directories live under one temporary directory, removed at the end. Results:
`bench/results/<name>.json` (`capture-quick` / `capture`, or `--name`), markdown table printed
(and kept in the file's `table`). The whole machine's busy % is recorded per window.

`--writer-experiment NAME` (EXPERIMENTS below) patches `CaptureWriter` in the relays that capture,
through a `sitecustomize` module in the temporary directory, to measure a change to
relay/capture/writer.py before making it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import zstandard

import bench.harness as harness
from bench.e2e import SYMBOLS, CpuTrace, _backlog_rate, _frames_in, _reason, _sim_rate, environment
from bench.harness import (
    CpuMeter,
    cpu_seconds,
    deltas,
    relay_config,
    rss_mb,
    start_client_group,
    start_clients,
    start_relay,
    start_sim,
    stop_client_group,
    stop_clients,
    subs,
    summary_us,
    wait_relay_ready,
)
from relay.capture.format import SUFFIX

RESULTS = Path(__file__).resolve().parent / "results"
CONFIGS = ("off", "on", "on+published")
PHASES = ("latency", "throughput")
# `--writer-experiment`: the relay processes of the "on" configurations get a patched
# `CaptureWriter` (a `sitecustomize` module in the run's temporary directory, active only in a
# process whose environment names the experiment; relay/ itself is not changed). For measuring
# what a change to relay/capture/writer.py would buy, not for production figures.
EXPERIMENTS = {
    "fast-encode": "records encoded without Record objects: frames by %-formatting + orjson.dumps(text), "
    "the rest by one dict; byte-identical output",
    "batch-256": "batch_records 256 instead of 2000 (shorter GIL holds per batch)",
    "fast-encode+batch-256": "both",
    "level-1": "zstd level 1 instead of 3",
    "fast-encode+level-1": "both",
    "floor-no-encode": "NOT the capture format: the thread compresses the frames' bytes only (what is left "
    "without encoding)",
    "floor-loop-only": "NOT a capture: the thread discards every batch (the loop side's record() alone)",
}
EXPERIMENT_ENV = "CAPTURE_BENCH_WRITER"
SITECUSTOMIZE = """
import os

_exp = os.environ.get("CAPTURE_BENCH_WRITER", "")
if _exp:
    import orjson

    import relay.capture.writer as _w
    from relay.capture.format import Record, encode

    _dumps = orjson.dumps

    def _fast_body(batch):
        out = []
        app = out.append
        heads = {}
        for w, m, ln, k, d, f in batch:
            if d is not None and not f:
                try:
                    text = d.decode()
                except UnicodeDecodeError:
                    app(encode(Record(w, m, ln, k, d, f)))
                    continue
                h = heads.get((ln, k))
                if h is None:
                    h = heads[(ln, k)] = b',"l":' + _dumps(ln) + b',"k":' + _dumps(k) + b',"d":'
                app(b'{"w":%d,"m":%d%b%b}\\n' % (w, m, h, _dumps(text)))
            elif d is not None:
                try:
                    obj = {"w": w, "m": m, "l": ln, "k": k, "d": d.decode()}
                except UnicodeDecodeError:
                    app(encode(Record(w, m, ln, k, d, f)))
                    continue
                obj.update(f)
                app(_dumps(obj) + b"\\n")
            else:
                app(encode(Record(w, m, ln, k, d, f)))
        return b"".join(out)

    _orig_write_batch = _w.CaptureWriter._write_batch
    _orig_init = _w.CaptureWriter.__init__

    def _write_with(body_of):
        def _write_batch(self, cctx, batch):
            frame = cctx.compress(body_of(batch))
            now = self.clock()
            if self._file is None or self._file_bytes >= self.max_file_bytes or (
                now - self._file_started >= self.max_file_seconds
            ):
                self._rotate(now)
            os.write(self._file, frame)
            self._file_bytes += len(frame)
            self.bytes_written += len(frame)
            self.records_written += len(batch)
            self._retain(now)

        return _write_batch

    if "fast-encode" in _exp:
        _w.CaptureWriter._write_batch = _write_with(_fast_body)
    if _exp == "floor-no-encode":
        _w.CaptureWriter._write_batch = _write_with(lambda b: b"\\n".join(r[4] or b"" for r in b))
    if _exp == "floor-loop-only":
        def _discard(self, cctx, batch):
            self.records_written += len(batch)

        _w.CaptureWriter._write_batch = _discard
    if "batch-256" in _exp or "level-1" in _exp:
        def _init(self, *a, **kw):
            if "batch-256" in _exp:
                kw.setdefault("batch_records", 256)
            if "level-1" in _exp:
                kw.setdefault("level", 1)
            _orig_init(self, *a, **kw)

        _w.CaptureWriter.__init__ = _init
"""
THROUGHPUT_LIVENESS = {"frame_timeout": 30.0, "ping_interval": 2.0, "stale_after": 30.0}  # as e2e's


RELAY_CPU, OTHERS_CPU = 0, 1  # --pin: the relay's threads alone on one core, everything else on the other


def pin_relay(pid: int) -> None:
    """--pin: the relay's event-loop thread onto RELAY_CPU, alone; its other threads (the capture
    writer) and its children (the capture child) onto OTHERS_CPU, as on a machine with spare cores.

    Done after start-up (the children inherit the bench's OTHERS_CPU, the loop thread is moved),
    so the relay's frame rate is its own core's and not shared with the simulator and clients
    that feed and read it."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(task.name), {RELAY_CPU if int(task.name) == pid else OTHERS_CPU})
        with contextlib.suppress(OSError):
            for child in (task / "children").read_text().split():
                for ctask in Path(f"/proc/{child}/task").iterdir():
                    with contextlib.suppress(OSError):
                        os.sched_setaffinity(int(ctask.name), {OTHERS_CPU})


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def thread_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process's threads other than its main one (/proc/PID/task)."""
    total = 0.0
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            if int(tid) == pid:
                continue
            try:
                with open(f"/proc/{pid}/task/{tid}/stat", "rb") as f:
                    parts = f.read().rsplit(b")", 1)[1].split()
                total += (int(parts[11]) + int(parts[12])) / harness.CLK_TCK
            except (OSError, IndexError, ValueError):
                continue
    return total


def task_cpu_seconds(pid: int, tid: int) -> float:
    """CPU seconds of one thread (/proc/PID/task/TID/stat)."""
    try:
        with open(f"/proc/{pid}/task/{tid}/stat", "rb") as f:
            parts = f.read().rsplit(b")", 1)[1].split()
        return (int(parts[11]) + int(parts[12])) / harness.CLK_TCK
    except (OSError, IndexError, ValueError):
        return 0.0


class ThreadTrace(CpuTrace):
    """e2e's CpuTrace for one process, split: `all` its threads, `main` its event loop's thread
    (the relay runs its loop on the main thread; the capture writer is another thread)."""

    def __init__(self, pid: int, every: float = 0.005) -> None:
        super().__init__([], every)
        self.pid = pid
        self.samples = {"all": [], "main": []}

    def start(self) -> ThreadTrace:
        async def run() -> None:
            while True:
                t = time.monotonic()
                self.samples["all"].append((t, cpu_seconds(self.pid)))
                self.samples["main"].append((t, task_cpu_seconds(self.pid, self.pid)))
                await asyncio.sleep(self.every)

        self.task = asyncio.create_task(run())
        return self

    def split_us(self, a: float, b: float, frames: int) -> dict[str, float | None]:
        """µs of CPU per frame in [a, b]: the loop's thread, the other threads, all."""
        if frames <= 0:
            return {"main": None, "other_threads": None, "all": None}
        total, main = self.between("all", a, b), self.between("main", a, b)
        f = lambda x: round(1e6 * x / frames, 2)  # noqa: E731
        return {"main": f(main), "other_threads": f(max(0.0, total - main)), "all": f(total)}


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine (/proc/stat): other work on the 2 cores."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0, 0.0
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return float(sum(v) - idle), float(sum(v))


class MachineMeter:
    """Busy % of the whole machine (100 % = every core) between `start()` and `stop()`."""

    def start(self) -> MachineMeter:
        self.b0, self.t0 = machine_cpu()
        return self

    def stop(self) -> float | None:
        b, t = machine_cpu()
        return round(100 * (b - self.b0) / (t - self.t0), 1) if t > self.t0 else None


_METRIC = re.compile(r"^(kraken_relay_[a-z_]+)(\{[^}]*\})? ([-+0-9.eE]+|NaN)$")


def parse_metrics(text: str) -> dict[str, float]:
    """The relay's capture counters and its lines' frames received, from /metrics."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = _METRIC.match(line)
        if not m:
            continue
        name, value = m.group(1), float(m.group(3))
        if name.startswith("kraken_relay_capture_"):
            out[name.removeprefix("kraken_relay_")] = value
        elif name == "kraken_relay_upstream_frames_received_total":
            out["frames_received_total"] = out.get("frames_received_total", 0.0) + value
    return out


def scan_capture(directory: Path) -> dict[str, Any]:
    """What the capture files hold: every zstd frame must be complete; records counted by kind.
    (`"l":"published"` and `"k":"frame"` cannot occur inside a record's `d`: its quotes are
    escaped there.)"""
    files = sorted(directory.glob(f"*{SUFFIX}"))
    out = {"files": len(files), "disk_bytes": 0, "records": 0, "frame_records": 0, "published_records": 0}
    incomplete = 0
    dctx = zstandard.ZstdDecompressor()
    for path in files:
        data = path.read_bytes()
        out["disk_bytes"] += len(data)
        while data:
            dobj = dctx.decompressobj()
            try:
                chunk = dobj.decompress(data)
            except zstandard.ZstdError:
                incomplete += 1
                break
            if not dobj.eof:
                incomplete += 1
                break
            data = dobj.unused_data
            out["records"] += chunk.count(b"\n")
            out["frame_records"] += chunk.count(b'"k":"frame"')
            out["published_records"] += chunk.count(b'"l":"published"')
    out["incomplete_files"] = incomplete
    out["line_frame_records"] = out["frame_records"] - out["published_records"]
    return out


def capture_report(metrics: dict[str, float], scan: dict[str, Any] | None) -> dict[str, Any]:
    """The capture's counters for one run (None fields when capture is off)."""
    rep: dict[str, Any] = {
        "frames_received": int(metrics.get("frames_received_total", 0)),
        "records_written": _int(metrics.get("capture_records_total")),
        "records_dropped": _int(metrics.get("capture_dropped_records_total")),
        "write_errors": _int(metrics.get("capture_write_errors_total")),
        "bytes_written": _int(metrics.get("capture_bytes_total")),
        "writer_lag_s": metrics.get("capture_writer_lag_seconds"),
    }
    if scan is not None:
        rep["files"] = scan
        # frames the lines received (counted before the relay stopped) with no record in the files
        rep["unrecorded_frames"] = max(0, rep["frames_received"] - scan["line_frame_records"])
    return rep


def _int(v: float | None) -> int | None:
    return None if v is None else int(v)


def _median(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return round(statistics.median(vals), 3) if vals else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


class CaptureBench:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args = args
        self.tmp = tmp
        self.runs: dict[str, list[dict[str, Any]]] = {p: [] for p in PHASES}
        self.not_measured: dict[str, str] = {}

    # -- building blocks ----------------------------------------------------------------------
    def _capture_cfg(self, config: str, tag: str) -> tuple[dict[str, Any], Path | None]:
        if config == "off":
            return {}, None
        d = self.tmp / tag
        return {"capture": {"dir": str(d), "published": config == "on+published"}}, d

    async def _relay(self, urls: list[str], cfg_extra: dict[str, Any]) -> harness.RelayProc:
        """A ready relay on `urls` (start-up tried twice, as e2e's `_stack`)."""
        for attempt in (1, 2):
            relay = None
            try:
                env = {EXPERIMENT_ENV: self.args.writer_experiment} if "capture" in cfg_extra else None
                if not self.args.writer_experiment:
                    env = None
                relay = await start_relay(relay_config(urls, SYMBOLS, 10, **cfg_extra), env=env)
                await wait_relay_ready(relay)
                if self.args.pin:
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

    async def _finish_relay(self, relay: harness.RelayProc, capdir: Path | None) -> dict[str, Any]:
        """/metrics, stop, then what the capture files hold (the directory is removed)."""
        try:
            metrics = parse_metrics(await relay.metrics())
        finally:
            await relay.stop()
        scan = None
        if capdir is not None:
            scan = await asyncio.to_thread(scan_capture, capdir) if capdir.is_dir() else {"files": 0}
            shutil.rmtree(capdir, ignore_errors=True)
        return capture_report(metrics, scan)

    # -- latency ------------------------------------------------------------------------------
    async def latency(self) -> None:
        a = self.args
        sub = subs(SYMBOLS, 10)
        sim = await start_sim([(0.0, 0.0), (0.0, 0.0)], SYMBOLS, _sim_rate(a.rate))
        pending: list[dict[str, Any]] = []
        try:
            direct = await start_clients(sim.ports[0], 1, sub, [0])
            try:
                for rnd in range(a.rounds):
                    for config in CONFIGS:
                        tag = f"latency-r{rnd + 1}-{config}"
                        try:
                            async with asyncio.timeout(a.run_timeout):
                                pending.append(await self._latency_run(sim, config, rnd + 1, tag, sub))
                        except Exception as exc:  # reported, the run goes on
                            self._failed("latency", tag, rnd + 1, config, exc)
            finally:
                dres = await stop_clients(direct)
        finally:
            await sim.stop()
        ref_b, ref_t = dres["records"][0]
        for run in pending:
            recs = run.pop("_records")
            t0, t1 = run["t0"], run["t1"] - 0.2
            ref_n = sum(1 for t in ref_b.values() if t0 <= t <= t1) + sum(1 for t in ref_t.values() if t0 <= t <= t1)
            all_d: list[float] = []
            miss = 0
            for books, trades in recs:
                for ref, mine in ((ref_b, books), (ref_t, trades)):
                    d, x = deltas(ref, mine, t0, t1)
                    all_d += d
                    miss += x
            run["direct_fps"] = round(ref_n / max(1e-9, t1 - t0))
            run["added"] = summary_us(all_d)
            run["unmatched"] = miss
            run["_deltas"] = all_d  # pooled per configuration below, not written out
            if not all_d:
                run["not_measured"] = f"no relay frame matched the reference's {ref_n} ({miss} unmatched)"
                self.not_measured[run["tag"]] = run["not_measured"]
            self.runs["latency"].append(run)
            log(f"{run['tag']}: added {run['added']}, relay CPU {run['relay_cpu_pct']} %")

    async def _latency_run(self, sim, config: str, rnd: int, tag: str, sub: list[dict]) -> dict[str, Any]:
        a = self.args
        cfg_extra, capdir = self._capture_cfg(config, tag)
        relay = await self._relay(sim.urls, cfg_extra)
        try:
            group = await start_client_group(relay.port, a.clients, sub, a.clients)
            try:
                await asyncio.sleep(a.warm)
                meters = {
                    "relay": CpuMeter([relay.pid]).start(),
                    "sim": CpuMeter([sim.pid]).start(),
                    "clients": CpuMeter([c.pid for c in group]).start(),
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
            finally:
                gres = await stop_client_group(group)
        finally:
            cap = await self._finish_relay(relay, capdir)
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
            "machine_busy_pct": busy,
            "loadavg": [round(x, 2) for x in os.getloadavg()],
            "relay_rss_mb": round(rss, 1),
            "closed": sum(c["closed"] for c in gres["conns"]),
            "capture": cap,
            "_records": gres["records"],
        }

    # -- throughput ---------------------------------------------------------------------------
    async def throughput(self) -> None:
        a = self.args
        lines = [(0.0, 0.0)] * 3
        sim = await start_sim(lines, SYMBOLS, _sim_rate(a.throughput_rate))
        try:
            for rnd in range(a.rounds):
                for config in CONFIGS:
                    tag = f"throughput-r{rnd + 1}-{config}"
                    t_run = time.monotonic()
                    try:
                        async with asyncio.timeout(a.run_timeout):
                            run = await self._throughput_run(sim, config, rnd + 1, tag)
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
                        f"{tag}: {run['relay_fps']} frames/s, {run['relay_frames_per_cpu_s']}/CPU s, "
                        f"dropped {run['capture'].get('records_dropped')}, {run['seconds']} s"
                    )
        finally:
            await sim.stop()

    async def _throughput_run(self, sim, config: str, rnd: int, tag: str) -> dict[str, Any]:
        a = self.args
        sub = subs(SYMBOLS, 10)
        cfg_extra, capdir = self._capture_cfg(config, tag)
        relay = await self._relay(sim.urls[1:3], {"liveness": THROUGHPUT_LIVENESS, **cfg_extra})
        res: dict[str, Any] = {}
        windows: list[tuple[float, float]] = []
        rss_peak = [0.0]
        try:
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
                meter = CpuMeter([relay.pid]).start()
                machine = MachineMeter().start()
                th0, tm0 = thread_cpu_seconds(relay.pid), time.monotonic()
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
                cpu = meter.stop()
                busy = machine.stop()
                threads = round(100 * (thread_cpu_seconds(relay.pid) - th0) / max(1e-9, time.monotonic() - tm0), 1)
                rss = rss_mb(relay.pid)
        finally:
            cap = await self._finish_relay(relay, capdir)
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
        # the whole phase (10 000 frames/s between the drains, the drains, the writer catching up)
        phase_frames = _frames_in(rec, phase_t0, phase_t1)
        best = lambda key: max((d[key] for d in drains if d.get(key)), default=None)  # noqa: E731
        run = {
            "tag": tag,
            "round": rnd,
            "config": config,
            "reps": a.reps,
            "backlog_frames": [d["backlog"] for d in drains],
            "missing": [d["missing"] for d in drains],
            "relay_fps": best("rate"),
            # the typical drain: steadier than the best one on a shared machine
            "relay_fps_median": _median([d["rate"] for d in drains if d.get("rate")]),
            "relay_frames_per_cpu_s": best("frames_per_cpu_s"),
            "phase_frames": phase_frames,
            "phase_cpu_us_per_frame": trace.split_us(phase_t0, phase_t1, phase_frames),
            "drains": [{k: v for k, v in d.items() if k not in ("first", "last")} for d in drains],
            "relay_cpu_pct": cpu,
            "relay_other_threads_cpu_pct": threads,
            "machine_busy_pct": busy,
            "loadavg": [round(x, 2) for x in os.getloadavg()],
            "reference_client": {k: ref_conn[k] for k in ("books", "trades", "closed", "truncated")},
            "relay_rss_mb": round(rss, 1),
            "relay_rss_mb_peak": round(max(rss_peak[0], rss), 1),
            "capture": cap,
        }
        if run["relay_fps"] is None:
            run["not_measured"] = (
                f"no complete backlog drain (backlogs {run['backlog_frames']}; reference client "
                f"{run['reference_client']}; simulator: {' | '.join(sim.log[-3:])})"
            )
            self.not_measured[tag] = run["not_measured"]
        return run

    def _failed(self, phase: str, tag: str, rnd: int, config: str, exc: BaseException) -> None:
        reason = _reason(exc)
        if isinstance(exc, TimeoutError) and not str(exc):
            reason = f"TimeoutError: no result within {self.args.run_timeout:g} s"
        self.not_measured[tag] = reason
        self.runs[phase].append({"tag": tag, "round": rnd, "config": config, "not_measured": reason})
        log(f"{tag}: NOT MEASURED: {reason}")

    # -- summary ------------------------------------------------------------------------------
    def summary(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """Per configuration: medians over rounds (and pooled latency); ratios on / off: the
        median over rounds of each round's ratio."""
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
            pooled = sorted(x for r in lat if r["config"] == c for x in r["_deltas"])
            caps = [r["capture"] for r in lat + thr if r["config"] == c]
            summ[c] = {
                "latency_rounds": len(get(lat, c, ("tag",))),
                "added_p50_us": _median(get(lat, c, ("added", "p50_us"))),
                "added_p99_us": _median(get(lat, c, ("added", "p99_us"))),
                "added_p999_us": _median(get(lat, c, ("added", "p999_us"))),
                "added_pooled": summary_us(pooled),
                "latency_relay_cpu_pct": _median(get(lat, c, ("relay_cpu_pct",))),
                "latency_relay_other_threads_cpu_pct": _median(get(lat, c, ("relay_other_threads_cpu_pct",))),
                "latency_relay_rss_mb": _median(get(lat, c, ("relay_rss_mb",))),
                "latency_machine_busy_pct": _median(get(lat, c, ("machine_busy_pct",))),
                "throughput_rounds": len(get(thr, c, ("tag",))),
                "relay_fps": _median(get(thr, c, ("relay_fps",))),
                "relay_fps_median_drain": _median(get(thr, c, ("relay_fps_median",))),
                "relay_frames_per_cpu_s": _median(get(thr, c, ("relay_frames_per_cpu_s",))),
                "throughput_relay_rss_mb_peak": _median(get(thr, c, ("relay_rss_mb_peak",))),
                "throughput_relay_other_threads_cpu_pct": _median(get(thr, c, ("relay_other_threads_cpu_pct",))),
                "phase_cpu_us_per_frame_main": _median(get(thr, c, ("phase_cpu_us_per_frame", "main"))),
                "phase_cpu_us_per_frame_other_threads": _median(
                    get(thr, c, ("phase_cpu_us_per_frame", "other_threads"))
                ),
                "phase_cpu_us_per_frame_all": _median(get(thr, c, ("phase_cpu_us_per_frame", "all"))),
                "throughput_machine_busy_pct": _median(get(thr, c, ("machine_busy_pct",))),
                "capture_records_written": sum(x.get("records_written") or 0 for x in caps),
                "capture_records_dropped": sum(x.get("records_dropped") or 0 for x in caps),
                "capture_write_errors": sum(x.get("write_errors") or 0 for x in caps),
                "capture_bytes_written": sum(x.get("bytes_written") or 0 for x in caps),
                "capture_unrecorded_frames": sum(x.get("unrecorded_frames") or 0 for x in caps),
                "capture_incomplete_files": sum((x.get("files") or {}).get("incomplete_files", 0) for x in caps),
            }
        pooled_off = summ["off"]["added_pooled"]

        def per_round(runs: list[dict], config: str, path: tuple[str, ...]) -> list[float | None]:
            """Each round's value for `config` / the same round's value for off."""
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
            }
            med["within_10pct"] = {
                k: None if v is None else (v >= 0.9 if k == "relay_fps" else v <= 1.1) for k, v in checks.items()
            }
            ratios[c] = {"median": med, "per_round": rr}
        return summ, ratios


def _fmt(v: Any, unit: str = "") -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        v = round(v) if abs(v) >= 100 else round(v, 1)
    return f"{v:,}{unit}".replace(",", " ")


def _r(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def table(summ: dict, ratios: dict, runs: dict) -> str:
    rows = [
        "| capture | added latency µs p50 / p99 (median of rounds; pooled) | per-round p50 / p99 "
        "| unique frames/s (median; rounds) | frames per relay CPU s (drains) "
        "| relay CPU µs per frame, throughput phase: loop + other threads | relay CPU % at 1k/s (other threads) "
        "| relay RSS MB (latency / drain peak) | records written / dropped / unrecorded | bytes written |",
        "|---|---|---|---|---|---|---|---|---|---|",
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
            f"| {_fmt(s['relay_frames_per_cpu_s'])} | {_fmt(s['phase_cpu_us_per_frame_main'])} + "
            f"{_fmt(s['phase_cpu_us_per_frame_other_threads'])} = {_fmt(s['phase_cpu_us_per_frame_all'])} "
            f"| {_fmt(s['latency_relay_cpu_pct'])} "
            f"({_fmt(s['latency_relay_other_threads_cpu_pct'])}) | {_fmt(s['latency_relay_rss_mb'])} / "
            f"{_fmt(s['throughput_relay_rss_mb_peak'])} | "
            + (
                "-"
                if c == "off"
                else f"{_fmt(s['capture_records_written'])} / {s['capture_records_dropped']} / "
                f"{s['capture_unrecorded_frames']}"
            )
            + f" | {'-' if c == 'off' else _fmt(s['capture_bytes_written'])} |"
        )
    rows += [
        "",
        "| ratio to off (median of per-round ratios) | added p50 | added p99 | added p50 / p99 pooled "
        "| unique frames/s | frames per CPU s | CPU µs per frame (throughput phase) | relay CPU at 1k/s "
        "| within 10 % (p50, p99, frames/s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c, r in ratios.items():
        m = r["median"]
        ok = m["within_10pct"]
        rows.append(
            f"| {c} | {_r(m['added_p50'])} | {_r(m['added_p99'])} | {_r(m['added_p50_pooled'])} / "
            f"{_r(m['added_p99_pooled'])} | {_r(m['relay_fps'])} | {_r(m['relay_frames_per_cpu_s'])} "
            f"| {_r(m['phase_cpu_us_per_frame'])} "
            f"| {_r(m['latency_relay_cpu'])} | "
            + ", ".join({True: "yes", False: "NO", None: "n/a"}[ok[k]] for k in ("added_p50", "added_p99", "relay_fps"))
            + " |"
        )
    rows += [
        "",
        "Whole machine busy (median %, 100 = both cores) during the latency windows: "
        + ", ".join(f"{c} {_fmt(summ[c]['latency_machine_busy_pct'])}" for c in CONFIGS)
        + "; during the drains phase: "
        + ", ".join(f"{c} {_fmt(summ[c]['throughput_machine_busy_pct'])}" for c in CONFIGS)
        + ".",
    ]
    return "\n".join(rows)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="short windows: the whole run in under 3 minutes")
    p.add_argument("--rounds", type=int, default=3, help="rounds of off, on, on+published (default 3)")
    p.add_argument("--only", default="", help="comma-separated phases: " + ",".join(PHASES))
    p.add_argument("--name", default=None, help="results file name (default capture / capture-quick)")
    p.add_argument("--window", type=float, default=None, help="seconds measured per latency run")
    p.add_argument("--rate", type=float, default=1000.0, help="latency phase: frames/s per client (default 1000)")
    p.add_argument("--clients", type=int, default=10, help="latency phase: relay clients (default 10)")
    p.add_argument("--throughput-rate", type=float, default=10000.0, help="throughput phase: frames/s simulated")
    p.add_argument(
        "--writer-experiment",
        choices=sorted(EXPERIMENTS),
        default="",
        help="patch the capture writer of the 'on' relays (an experiment; see EXPERIMENTS in the source)",
    )
    p.add_argument(
        "--pin",
        action="store_true",
        help="the relay alone on CPU 0; the simulator, clients and the capture child on CPU 1 (2+ CPUs)",
    )
    p.add_argument("--run-timeout", type=float, default=300.0, help="seconds one run may take (a hang's net)")
    args = p.parse_args()
    if args.rounds < 1:
        p.error("--rounds must be >= 1")
    only = [x for x in args.only.split(",") if x] or list(PHASES)
    unknown = [x for x in only if x not in PHASES]
    if unknown:
        p.error(f"--only: unknown phase(s) {','.join(unknown)}; phases: {','.join(PHASES)}")
    args.window = args.window or (2.0 if args.quick else 10.0)
    args.warm = 0.7 if args.quick else 2.0
    args.stall = 1.0 if args.quick else 3.0
    args.reps = 2 if args.quick else 4
    # after each release: the drain must be over before the next stall; the simulator keeps
    # sending meanwhile, so a backlog drains at (drain rate - simulated rate)
    args.settle = 2.2 if args.quick else 4.5
    name = args.name or ("capture-quick" if args.quick else "capture")
    if args.pin:
        if (os.cpu_count() or 1) < 2:
            p.error("--pin needs 2 CPUs")
        os.sched_setaffinity(0, {OTHERS_CPU})  # inherited by the simulator and the clients
    import uvloop

    started = time.time()
    env_at_start = environment()
    with tempfile.TemporaryDirectory(prefix="relay-capture-bench-") as tmp:
        bench = CaptureBench(args, Path(tmp))
        saved_path = os.environ.get("PYTHONPATH")
        if args.writer_experiment:  # children import it; only the "on" relays' environment enables it
            site = Path(tmp) / "site"
            site.mkdir()
            (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
            os.environ["PYTHONPATH"] = str(site) + (os.pathsep + saved_path if saved_path else "")

        async def run() -> None:
            for phase in only:
                log(f"phase {phase}: {args.rounds} rounds of {', '.join(CONFIGS)}")
                try:
                    await getattr(bench, phase)()
                except Exception as exc:  # a phase that cannot start: reported
                    bench.not_measured[phase] = _reason(exc)
                    log(f"phase {phase}: NOT MEASURED: {_reason(exc)}")

        try:
            uvloop.run(run())
        finally:
            if args.writer_experiment:
                if saved_path is None:
                    os.environ.pop("PYTHONPATH", None)
                else:
                    os.environ["PYTHONPATH"] = saved_path
    summ, ratios = bench.summary()
    for r in bench.runs["latency"]:
        r.pop("_deltas", None)
        r.pop("_records", None)
    text = table(summ, ratios, bench.runs)
    out = {
        "name": name,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "seconds": round(time.time() - started, 1),
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
                "pin",
            )
        },
        "writer_experiment": (
            {"name": args.writer_experiment, "what": EXPERIMENTS[args.writer_experiment]}
            if args.writer_experiment
            else None
        ),
        "environment": env_at_start,
        "not_measured": bench.not_measured,
        "summary": summ,
        "ratios": ratios,
        "runs": bench.runs,
        "table": text,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(out, indent=2))
    env = out["environment"]
    print(f"\n## kraken-relay capture cost ({name}, {out['when']}, {out['seconds']} s, {args.rounds} rounds)\n")
    print(
        f"{env['cpus']} CPUs ({env['cpu_model']}), Python {env['python']}, load at start "
        f"{', '.join(f'{x:.2f}' for x in env['loadavg_at_start'])}; latency: {args.rate:g} frames/s x "
        f"{args.clients} clients, {args.window:g} s windows; throughput: 2 lines, best of {args.reps} drains\n"
    )
    if args.writer_experiment:
        print(f"writer experiment `{args.writer_experiment}`: {EXPERIMENTS[args.writer_experiment]}\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
