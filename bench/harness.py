"""Process plumbing shared by `bench/e2e.py` and `bench/soak.py`: the simulator, the relay and
client processes on loopback, their CPU/RSS from /proc, and fault injection over the simulator's
HTTP control endpoint. Every wait is bounded; every process started here is stopped by its pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import marshal
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import yaml

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")
# Start-up deadlines are generous: on a loaded 2-core machine a Python process can take many
# seconds to import and bind. Read at call time, so a caller may change them for a while.
START_TIMEOUT = float(os.environ.get("BENCH_START_TIMEOUT", "60"))  # a process's first line
CONNECT_TIMEOUT = float(os.environ.get("BENCH_CONNECT_TIMEOUT", "120"))  # a client process's connections
READY_TIMEOUT = float(os.environ.get("BENCH_READY_TIMEOUT", "120"))  # relay /readyz
CONTROL_TIMEOUT = float(os.environ.get("BENCH_CONTROL_TIMEOUT", "30"))  # simulator control request
STOP_TIMEOUT = 120.0  # a client process scanning and writing its records
START_ATTEMPTS = 2  # a client process that fails to start is started once more
CLIENT_PORT_OVERRIDE: int | None = None  # testing the failure path: clients connect here instead


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            parts = f.read().rsplit(b")", 1)[1].split()
        return (int(parts[11]) + int(parts[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return 0.0


def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class CpuMeter:
    """CPU % of one core used by a set of pids between `start()` and `stop()`."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.t0 = 0.0
        self.c0: list[float] = []

    def start(self) -> CpuMeter:
        self.t0 = time.monotonic()
        self.c0 = [cpu_seconds(p) for p in self.pids]
        return self

    def stop(self) -> float:
        dt = max(1e-9, time.monotonic() - self.t0)
        return round(100 * sum(cpu_seconds(p) - c for p, c in zip(self.pids, self.c0)) / dt, 1)


def _die_with_parent() -> None:
    """In the child: SIGTERM when the benchmark process dies, so no simulator or relay outlives
    an interrupted run (Linux prctl PR_SET_PDEATHSIG; a no-op elsewhere)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGTERM))
    except (OSError, AttributeError):
        pass


async def _spawn(
    *args: str, stdin: bool = False, env_extra: dict[str, str] | None = None
) -> asyncio.subprocess.Process:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env_extra or {}))
    return await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=str(ROOT),
        preexec_fn=_die_with_parent,
    )


async def _stop(proc: asyncio.subprocess.Process, grace: float = 5.0) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


async def _drain(stream: asyncio.StreamReader | None, keep: list[str], limit: int = 200) -> None:
    """Keep reading a child's pipe (a full pipe would block it); remember the last lines."""
    if stream is None:
        return
    while True:
        line = await stream.readline()
        if not line:
            return
        keep.append(line.decode(errors="replace").rstrip())
        del keep[:-limit]


# -- simulator ------------------------------------------------------------------------------
@dataclass
class Sim:
    proc: asyncio.subprocess.Process
    urls: list[str]
    ports: list[int]
    control: int
    log: list[str] = field(default_factory=list)
    tasks: list[asyncio.Task] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def fault(self, line: int | str, kind: str, duration: float | None = None, **params: Any) -> dict:
        body = {"line": line, "kind": kind, **params}
        if duration is not None:
            body["duration"] = duration
        return await control_request(self.control, "/fault", body)

    async def clear(self, line: int | str, kind: str | None = None) -> dict:
        body: dict[str, Any] = {"line": line}
        if kind:
            body["kind"] = kind
        return await control_request(self.control, "/clear", body)

    async def state(self) -> dict:
        return await control_request(self.control, "/state", None)

    async def stop(self) -> None:
        await _stop(self.proc)
        for t in self.tasks:
            t.cancel()


async def control_request(port: int, path: str, body: dict | None) -> dict:
    """One request to the simulator's control endpoint. Connecting is retried (nothing was sent
    yet); the request itself is not (a fault could then apply twice), but waits CONTROL_TIMEOUT."""
    deadline = time.monotonic() + CONTROL_TIMEOUT
    delay = 0.1
    while True:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port), max(0.1, deadline - time.monotonic())
            )
            break
        except OSError as exc:
            if time.monotonic() + delay >= deadline:
                raise RuntimeError(f"simulator control port {port} unreachable: {exc!r}") from exc
            await asyncio.sleep(delay)
            delay = min(1.0, delay * 2)
    data = orjson.dumps(body) if body is not None else b""
    method = "POST" if body is not None else "GET"
    writer.write(
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(data)}\r\n"
        f"Connection: close\r\n\r\n".encode()
        + data
    )
    try:
        raw = await asyncio.wait_for(reader.read(), max(1.0, deadline - time.monotonic()))
    except TimeoutError:
        raise TimeoutError(f"simulator control {path} {body}: no answer in {CONTROL_TIMEOUT:g} s") from None
    finally:
        writer.close()
    head, _, payload = raw.partition(b"\r\n\r\n")
    return orjson.loads(payload) if payload else {}


async def start_sim(
    lines: list[tuple[float, float]],
    symbols: list[str],
    rate: float,
    *,
    seed: int = 1,
    trade_rate: float | None = None,
    burst_every: float = 0.0,
    levels: int = 1000,
    extra: list[str] | None = None,
) -> Sim:
    """`kraken-relay sim` with one line per (latency, jitter), ports chosen by the OS."""
    args = [
        "-m",
        "relay",
        "sim",
        "--ports",
        ",".join("0" * len(lines)),
        "--latency",
        ",".join(str(a) for a, _ in lines),
        "--jitter",
        ",".join(str(b) for _, b in lines),
        "--symbols",
        ",".join(symbols),
        "--rate",
        str(rate),
        "--seed",
        str(seed),
        "--control-port",
        "0",
        "--burst-every",
        str(burst_every),
        "--levels",
        str(levels),
        "--subscribe-rate",
        "100",
    ]
    if trade_rate is not None:
        args += ["--trade-rate", str(trade_rate)]
    proc = await _spawn(*args, *(extra or []))
    urls: list[str] = []
    control = 0
    log: list[str] = []
    assert proc.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT
    try:
        while not control:
            try:
                raw = await asyncio.wait_for(proc.stdout.readline(), max(0.01, deadline - time.monotonic()))
            except TimeoutError:
                raise TimeoutError(f"simulator did not start in {START_TIMEOUT:g} s: {log[-3:]}") from None
            line = raw.decode()
            if not line:
                err = (await proc.stderr.read()).decode() if proc.stderr else ""
                raise RuntimeError(f"simulator exited: {err[-2000:]}")
            log.append(line.rstrip())
            m = re.search(r"line \d+: (ws://\S+)", line)
            if m:
                urls.append(m.group(1))
            m = re.search(r"control: http://[\d.]+:(\d+)/", line)
            if m:
                control = int(m.group(1))
    except BaseException:
        await _stop(proc)
        raise
    ports = [int(u.rsplit(":", 1)[1].split("/")[0]) for u in urls]
    sim = Sim(proc, urls, ports, control, log)
    sim.tasks = [asyncio.create_task(_drain(proc.stdout, log)), asyncio.create_task(_drain(proc.stderr, log))]
    return sim


# -- relay ------------------------------------------------------------------------------------
@dataclass
class RelayProc:
    proc: asyncio.subprocess.Process
    port: int
    http_port: int
    config_path: str
    log: list[str] = field(default_factory=list)
    tasks: list[asyncio.Task] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def metrics(self) -> str:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.http_port), 5)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        raw = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        return raw.partition(b"\r\n\r\n")[2].decode(errors="replace")

    async def stop(self) -> None:
        await _stop(self.proc, 8.0)
        for t in self.tasks:
            t.cancel()
        with contextlib.suppress(OSError):
            os.unlink(self.config_path)


def relay_config(
    urls: list[str], symbols: list[str], depth: int, *, trades: bool = True, ticker: bool = False, **sections: Any
) -> dict:
    cfg: dict[str, Any] = {
        "upstreams": [{"name": f"line{i}", "url": u} for i, u in enumerate(urls)],
        "channels": {"book": {"depth": depth, "symbols": symbols}, "instrument": True},
        "server": {"listen": "127.0.0.1:8765", "max_clients": 2000, "max_requests_per_second": 1000},
        "reconnect": {"initial_delay": 0.2, "max_delay": 2.0, "stagger": 0.1},
        "subscribe": {"requests_per_second": 20},
        "liveness": {"frame_timeout": 5.0, "stale_after": 10.0},
        "logging": {"level": "warning", "format": "json"},
    }
    if trades:
        cfg["channels"]["trade"] = {"symbols": symbols}
    if ticker:
        cfg["channels"]["ticker"] = {"symbols": symbols}
    for k, v in sections.items():
        cfg[k] = {**cfg.get(k, {}), **v} if isinstance(v, dict) else v
    return cfg


async def start_relay(cfg: dict, env: dict[str, str] | None = None) -> RelayProc:
    fd, path = tempfile.mkstemp(prefix="relay-bench-", suffix=".yaml")
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(cfg, f)
    proc = await _spawn(str(BENCH / "e2e_relay.py"), path, env_extra=env)
    assert proc.stdout is not None
    try:
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT)
        except TimeoutError:
            raise TimeoutError(f"relay did not start in {START_TIMEOUT:g} s") from None
        if not line.startswith(b"{"):
            err = (await asyncio.wait_for(proc.stderr.read(), 10)).decode() if proc.stderr else ""
            raise RuntimeError(f"relay did not start: {line!r} {err[-2000:]}")
    except BaseException:
        await _stop(proc)
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    info = orjson.loads(line)
    rp = RelayProc(proc, info["port"], info["http_port"], path)
    rp.tasks = [asyncio.create_task(_drain(proc.stdout, rp.log)), asyncio.create_task(_drain(proc.stderr, rp.log))]
    return rp


async def wait_relay_ready(relay: RelayProc, timeout: float | None = None) -> None:
    """Until /readyz says every configured symbol has valid data (READY_TIMEOUT by default)."""
    timeout = READY_TIMEOUT if timeout is None else timeout
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", relay.http_port), 2)
            writer.write(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            raw = await asyncio.wait_for(reader.read(), 2)
            writer.close()
            if raw.startswith(b"HTTP/1.1 200") or raw.startswith(b"HTTP/1.0 200"):
                return
        except (TimeoutError, OSError):
            pass
        if relay.proc.returncode is not None:
            raise RuntimeError(f"relay exited ({relay.proc.returncode}): " + " | ".join(relay.log[-5:]))
        await asyncio.sleep(0.2)
    raise TimeoutError(f"relay not ready in {timeout:g} s: " + " | ".join(relay.log[-5:]))


@dataclass
class Forwarder:
    proc: asyncio.subprocess.Process
    port: int

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def stop(self) -> None:
        await _stop(self.proc)


async def start_forwarder(upstream_port: int, sub: list[dict]) -> Forwarder:
    """`bench/e2e_forwarder.py`: a do-nothing hop (latency floor of any relay process)."""
    proc = await _spawn(str(BENCH / "e2e_forwarder.py"), str(upstream_port), orjson.dumps(sub).decode())
    assert proc.stdout is not None
    try:
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT)
        except TimeoutError:
            raise TimeoutError(f"forwarder did not start in {START_TIMEOUT:g} s") from None
        if not line.startswith(b"{"):
            err = (await asyncio.wait_for(proc.stderr.read(), 10)).decode() if proc.stderr else ""
            raise RuntimeError(f"forwarder did not start: {line!r} {err[-2000:]}")
        info = orjson.loads(line)
    except BaseException:
        await _stop(proc)
        raise
    return Forwarder(proc, info["port"])


# -- nats-server -------------------------------------------------------------------------------
@dataclass
class NatsServerProc:
    """A `nats-server` on 127.0.0.1 (no JetStream), with its HTTP monitoring port (`varz()`)."""

    proc: asyncio.subprocess.Process
    port: int
    monitor_port: int
    log: list[str] = field(default_factory=list)
    tasks: list[asyncio.Task] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    async def varz(self) -> dict:
        """The server's /varz (in_msgs, out_msgs, slow_consumers, connections, ...)."""
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.monitor_port), 5)
        writer.write(b"GET /varz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        raw = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        return orjson.loads(raw.partition(b"\r\n\r\n")[2])

    async def stop(self) -> None:
        await _stop(self.proc)
        for t in self.tasks:
            t.cancel()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def start_nats_server(binary: str = "nats-server") -> NatsServerProc:
    """`nats-server -a 127.0.0.1 -p PORT -m MONITOR` on free ports, once it accepts connections
    (tried with new ports once more if it does not start)."""
    import shutil

    exe = shutil.which(binary)
    if exe is None:
        raise RuntimeError(f"{binary} is not on PATH")
    last: BaseException | None = None
    for _attempt in range(START_ATTEMPTS):
        port, mon = _free_port(), _free_port()
        args = ["-a", "127.0.0.1", "-p", str(port), "-m", str(mon), "-n", f"bench-{port}"]
        proc = await asyncio.create_subprocess_exec(
            exe,
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            preexec_fn=_die_with_parent,
        )
        ns = NatsServerProc(proc, port, mon)
        ns.tasks = [asyncio.create_task(_drain(proc.stdout, ns.log)), asyncio.create_task(_drain(proc.stderr, ns.log))]
        deadline = time.monotonic() + START_TIMEOUT
        try:
            while True:
                if proc.returncode is not None:
                    raise RuntimeError(f"nats-server exited ({proc.returncode}): {' | '.join(ns.log[-3:])}")
                try:
                    await ns.varz()
                    return ns
                except (OSError, TimeoutError, orjson.JSONDecodeError):
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"nats-server did not start in {START_TIMEOUT:g} s: {' | '.join(ns.log[-3:])}")
                await asyncio.sleep(0.05)
        except (RuntimeError, TimeoutError) as exc:
            last = exc
            await ns.stop()
    assert last is not None
    raise last


def instrument_file() -> Path | None:
    """The real Kraken instrument snapshot from the captures (`tests.kit.paths`: ../shared beside
    the checkout, or env KRAKEN_FIXTURES), for cases that need more pairs than the simulator's
    built-in table."""
    from tests.kit.paths import INSTRUMENT_SNAPSHOT

    return INSTRUMENT_SNAPSHOT if INSTRUMENT_SNAPSHOT.is_file() else None


# -- clients -----------------------------------------------------------------------------------
def subs(symbols: list[str], depth: int | None, trades: bool = True) -> list[dict]:
    out = []
    if depth:
        out.append(
            {"method": "subscribe", "params": {"channel": "book", "symbol": symbols, "depth": depth}, "req_id": 1}
        )
    if trades:
        out.append(
            {"method": "subscribe", "params": {"channel": "trade", "symbol": symbols, "snapshot": False}, "req_id": 2}
        )
    return out


@dataclass
class ClientProc:
    proc: asyncio.subprocess.Process
    out: str
    n: int

    @property
    def pid(self) -> int:
        return self.proc.pid


async def start_clients(
    port: int,
    n: int,
    sub: list[dict],
    record: list[int] | tuple[int, ...] = (),
    path: str = "/v2",
    script: str = "e2e_client.py",
    job_extra: dict | None = None,
) -> ClientProc:
    """A client process with n connections, once all are upgraded and subscribed. The process
    retries its own connections for CONNECT_TIMEOUT; a process that still fails (or does not
    report in time) is started again, START_ATTEMPTS in all, then the last error is raised.
    `script`: the client program in bench/ (`nats_client.py`: NATS consumers, same job and output);
    `job_extra`: more fields for its job (`{"mode": "nats-py"}`)."""
    last: BaseException | None = None
    for _attempt in range(START_ATTEMPTS):
        try:
            return await _start_clients_once(port, n, sub, record, path, script, job_extra)
        except (RuntimeError, TimeoutError, OSError) as exc:
            last = exc
            await asyncio.sleep(0.5)
    assert last is not None
    raise last


async def _start_clients_once(
    port: int,
    n: int,
    sub: list[dict],
    record: list[int] | tuple[int, ...],
    path: str,
    script: str = "e2e_client.py",
    job_extra: dict | None = None,
) -> ClientProc:
    if CLIENT_PORT_OVERRIDE is not None:
        port = CLIENT_PORT_OVERRIDE
    fd, out = tempfile.mkstemp(prefix="relay-bench-client-", suffix=".marshal")
    os.close(fd)
    job = {
        "host": "127.0.0.1",
        "port": port,
        "path": path,
        "n": n,
        "subs": sub,
        "record": list(record),
        "out": out,
        "connect_timeout": CONNECT_TIMEOUT,
        **(job_extra or {}),
    }
    wait = START_TIMEOUT + CONNECT_TIMEOUT
    try:
        proc = await _spawn(str(BENCH / script), orjson.dumps(job).decode(), stdin=True)
        assert proc.stdout is not None
        try:
            try:
                line = await asyncio.wait_for(proc.stdout.readline(), wait)
            except TimeoutError:
                raise TimeoutError(f"client process ({n} connections to {port}) not ready in {wait:g} s") from None
            if line.strip() != b"ready":
                err = (await asyncio.wait_for(proc.stderr.read(), 10)).decode() if proc.stderr else ""
                last = next((ln for ln in reversed(err.splitlines()) if ln.strip()), "(no error output)")
                raise RuntimeError(f"client did not start ({n} connections to {port}): {last[-600:]}")
        except BaseException:
            await _stop(proc)
            raise
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(out)
        raise
    return ClientProc(proc, out, n)


async def stop_clients(cp: ClientProc) -> dict:
    """Ask the client process for its records (it writes them to its out file) and read them."""
    assert cp.proc.stdin is not None and cp.proc.stdout is not None
    try:
        cp.proc.stdin.write(b"stop\n")
        await cp.proc.stdin.drain()
        while True:
            line = await asyncio.wait_for(cp.proc.stdout.readline(), STOP_TIMEOUT)
            if not line or line.strip() == b"done":
                break
        with open(cp.out, "rb") as f:
            return marshal.load(f)
    finally:
        await _stop(cp.proc)
        with contextlib.suppress(OSError):
            os.unlink(cp.out)


async def start_client_group(
    port: int, n: int, sub: list[dict], n_record: int, per_proc: int = 250, script: str = "e2e_client.py"
) -> list[ClientProc]:
    """n connections over ceil(n / per_proc) processes; `n_record` recording connections spread evenly."""
    procs = max(1, -(-n // per_proc))
    sizes = [n // procs + (1 if i < n % procs else 0) for i in range(procs)]
    step = max(1, n // max(1, n_record))
    rec_global = set(list(range(0, n, step))[:n_record] + ([n - 1] if n_record > 1 else []))
    out: list[ClientProc] = []
    base = 0
    try:
        for size in sizes:
            rec = [i - base for i in rec_global if base <= i < base + size]
            out.append(await start_clients(port, size, sub, rec, script=script))
            base += size
    except BaseException:
        for cp in out:  # the ones already started are not left running
            await _stop(cp.proc)
            with contextlib.suppress(OSError):
                os.unlink(cp.out)
        raise
    return out


async def stop_client_group(group: list[ClientProc]) -> dict:
    """Merged results: every connection's counters, and the recording connections' records.
    Every process is stopped even if one of them fails; then the first failure is raised."""
    results = await asyncio.gather(*(stop_clients(cp) for cp in group), return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    conns: list[dict] = []
    records: list[tuple[dict, dict]] = []
    for r in results:
        conns += r["conns"]
        records += [r["records"][i] for i in sorted(r["records"])]
    return {"conns": conns, "records": records}


# -- statistics --------------------------------------------------------------------------------
def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return values[min(len(values) - 1, int(q * len(values)))]


def summary_us(deltas: list[float]) -> dict:
    """p50/p99/p99.9/max of a list of seconds, in µs."""
    d = sorted(deltas)
    f = lambda v: None if v is None else round(v * 1e6)  # noqa: E731
    return {
        "n": len(d),
        "p50_us": f(pct(d, 0.5)),
        "p99_us": f(pct(d, 0.99)),
        "p999_us": f(pct(d, 0.999)),
        "max_us": f(d[-1] if d else None),
    }


def deltas(ref: dict[bytes, float], other: dict[bytes, float], t0: float, t1: float) -> tuple[list[float], int]:
    """Receive-time differences `other - ref` for keys the reference saw in [t0, t1]; and how many
    of those keys `other` never saw."""
    out, missing = [], 0
    for k, t in ref.items():
        if t0 <= t <= t1:
            o = other.get(k)
            if o is None:
                missing += 1
            else:
                out.append(o - t)
    return out, missing


def longest_gap(times: list[float], t0: float, t1: float) -> float:
    ts = sorted(t for t in times if t0 <= t <= t1)
    return max((b - a for a, b in zip(ts, ts[1:])), default=0.0)
