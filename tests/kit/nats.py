"""Real `nats-server` processes on loopback for the NATS tests: one server, or a 3-node cluster,
JetStream on, each stopped by the test that started it. `.ci/install-tools` installs Debian's
`nats-server`; without it these tests skip with the reason."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.kit.net import free_port

BINARY = shutil.which("nats-server")
START_TIMEOUT = 15.0


def need_nats_server() -> str:
    if BINARY is None:
        pytest.skip("nats-server is not installed (Debian package nats-server; .ci/install-tools installs it)")
    return BINARY


class NatsServer:
    """One `nats-server` on 127.0.0.1 (`url`), optionally a cluster node; `stop()`, `start()` again."""

    def __init__(
        self,
        name: str,
        store: Path,
        *,
        port: int | None = None,
        cluster_port: int | None = None,
        routes: list[int] | None = None,
        jetstream: bool = True,
        args: list[str] | None = None,
    ) -> None:
        self.args = args or []  # more nats-server options (`--user`, `--pass`, ...)
        self.name = name
        self.port = port or free_port()
        self.cluster_port = cluster_port
        self.routes = routes or []
        self.store = store / name
        self.jetstream = jetstream
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = store / f"{name}.log"

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        cmd = [need_nats_server(), "-a", "127.0.0.1", "-p", str(self.port), "-n", self.name]
        cmd += self.args
        if self.jetstream:
            cmd += ["-js", "-sd", str(self.store)]
        if self.cluster_port is not None:
            cmd += ["--cluster_name", "relay-test", "--cluster", f"nats://127.0.0.1:{self.cluster_port}"]
            routes = ",".join(f"nats://127.0.0.1:{p}" for p in self.routes if p != self.cluster_port)
            if routes:
                cmd += ["--routes", routes]
        return cmd

    async def start(self) -> NatsServer:
        self.store.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while not _accepts(self.port):
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server {self.name} exited: {self.log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"nats-server {self.name} did not listen in {START_TIMEOUT} s")
            await asyncio.sleep(0.05)
        return self

    async def stop(self, sig: int = signal.SIGTERM) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            await asyncio.to_thread(proc.wait, 10)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait, 10)


class NatsCluster:
    """Three clustered `nats-server`s (JetStream on); `urls` is the comma-separated client list."""

    def __init__(self, store: Path, size: int = 3) -> None:
        cports = [free_port() for _ in range(size)]
        self.nodes = [NatsServer(f"n{i}", store, cluster_port=cports[i], routes=cports) for i in range(size)]

    @property
    def urls(self) -> str:
        return ",".join(n.url for n in self.nodes)

    async def start(self) -> NatsCluster:
        await asyncio.gather(*(n.start() for n in self.nodes))
        return self

    async def stop(self) -> None:
        await asyncio.gather(*(n.stop() for n in self.nodes))


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        try:
            s.connect(("127.0.0.1", port))
        except OSError:
            return False
        return True


@contextlib.asynccontextmanager
async def nats_server(jetstream: bool = True, args: list[str] | None = None) -> AsyncIterator[NatsServer]:
    need_nats_server()
    with tempfile.TemporaryDirectory(prefix="relay-nats-") as tmp:
        server = await NatsServer("n0", Path(tmp), jetstream=jetstream, args=args).start()
        try:
            yield server
        finally:
            await server.stop()


@contextlib.asynccontextmanager
async def nats_cluster(size: int = 3) -> AsyncIterator[NatsCluster]:
    need_nats_server()
    with tempfile.TemporaryDirectory(prefix="relay-nats-cluster-") as tmp:
        cluster = await NatsCluster(Path(tmp), size).start()
        try:
            yield cluster
        finally:
            await cluster.stop()


class BookFollower:
    """A plain nats-py consumer of one book subject, as README "NATS" shows it: subscribe, ask for
    the snapshot, apply what follows it by `Kraken-Relay-Seq`, fetch a snapshot again on a gap.

    `states`: the checksum after each applied frame; `gaps`: gaps detected by the header;
    `verifier.bad`: checksum mismatches (the book it holds disagrees with the relay's)."""

    def __init__(self, nc: object, prefix: str, symbol: str, depth: int = 10, stream: str = "book") -> None:
        from relay.core import bus
        from tests.kit.books import V2BookVerifier

        self.nc: Any = nc
        token = bus.symbol_token(symbol)
        self.subject = bus.data_subject(prefix, "v2", stream, token or "")
        self.snapshot_subject = bus.snapshot_subject(prefix, "v2", stream, token or "")
        self.verifier = V2BookVerifier(depth)
        self.check = bus.SeqCheck()
        self.states: list[int] = []
        self.seqs: list[int] = []
        self.gaps = 0
        self.snapshots = 0
        self._held: list[Any] = []
        self._syncing = True
        self._sub: Any = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> BookFollower:
        self._sub = await self.nc.subscribe(self.subject, cb=self._on_msg)
        self._resync()
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        with contextlib.suppress(Exception):
            await self._sub.unsubscribe()

    def _apply(self, data: bytes) -> None:
        ev = self.verifier.feed(data)
        self.states.append(ev.checksum)

    def _resync(self) -> None:
        self._syncing = True
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._snapshot())

    async def _snapshot(self) -> None:
        from relay.core import bus

        while True:
            try:
                reply = await self.nc.request(self.snapshot_subject, b"", timeout=2.0)
            except Exception:
                await asyncio.sleep(0.2)
                continue
            hdr = reply.headers or {}
            if hdr.get(bus.ERROR):
                await asyncio.sleep(0.2)
                continue
            self.snapshots += 1
            self.check.reset(hdr[bus.EPOCH], int(hdr[bus.SEQ]))
            self._apply(reply.data)
            held, self._held, self._syncing = self._held, [], False
            for msg in held:
                self._on_seq(msg)  # a gap among them: syncing again, by this same task
            if not self._syncing:
                return

    async def _on_msg(self, msg: Any) -> None:
        if self._syncing:
            self._held.append(msg)
        else:
            self._on_seq(msg)

    def _on_seq(self, msg: Any) -> None:
        from relay.core import bus

        if self._syncing:
            self._held.append(msg)
            return
        hdr = msg.headers or {}
        seq = int(hdr[bus.SEQ])
        verdict = self.check.check(hdr[bus.EPOCH], seq)
        if verdict.ok:
            self.seqs.append(seq)
            self._apply(msg.data)
        elif verdict.reason != "duplicate":
            self.gaps += 1
            self._held = [msg]
            self._resync()
