"""The daemon as an operator runs it: a `kraken-relay run` child process fed by the simulator.

SIGTERM under load closes every client with 1001 within 5 s and exits 0; SIGHUP adding a
symbol makes it available without disconnecting anyone; /readyz turns 503 when every line
stalls and back to 200 when they resume.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import websockets
import yaml

from relay.core.events import BookEvent
from relay.protocols.spot_v2.wire import encode_subscribe
from relay.sim import LineConfig, SimConfig, Simulator
from tests.kit.books import V2BookVerifier
from tests.kit.daemon import Daemon
from tests.kit.net import free_port
from tests.kit.paths import ROOT


def write_config(path: Path, urls: list[str], symbols: list[str], ws_port: int, http_port: int) -> None:
    cfg = {
        "upstreams": [{"name": f"line{i}", "url": u} for i, u in enumerate(urls)],
        "channels": {"book": {"symbols": symbols, "depth": 25}, "trade": {"symbols": symbols}},
        "server": {"listen": f"127.0.0.1:{ws_port}"},
        "http": {"listen": f"127.0.0.1:{http_port}"},
        "reconnect": {"initial_delay": 0.1, "max_delay": 1.0, "stagger": 0.05},
        "liveness": {"frame_timeout": 2.0, "ping_interval": 0.5, "stale_after": 2.0},
        "logging": {"level": "warning", "format": "json"},
    }
    path.write_text(yaml.safe_dump(cfg))


@contextlib.asynccontextmanager
async def relay_with_sim(
    tmp_path: Path, symbols: list[str], sim_symbols: list[str] | None = None
) -> AsyncIterator[tuple[Daemon, Simulator]]:
    sim = Simulator(
        SimConfig(symbols=sim_symbols or symbols, rate=400.0, seed=3, lines=[LineConfig(), LineConfig(latency=0.001)])
    )
    await sim.start()
    ws_port, http_port = free_port(), free_port()
    cfg = tmp_path / "relay.yaml"
    write_config(cfg, sim.urls, symbols, ws_port, http_port)
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay", "run", "--config", str(cfg)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    daemon = Daemon(proc, cfg, f"ws://127.0.0.1:{ws_port}/v2", f"http://127.0.0.1:{http_port}")
    try:
        await daemon.wait_ready()
        yield daemon, sim
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)
        await sim.stop()


class Client:
    """A book subscriber that verifies checksums and records how its connection ended."""

    def __init__(self, url: str, symbols: list[str]) -> None:
        self.url, self.symbols = url, symbols
        self.verifier = V2BookVerifier(depth=10, require_snapshot=False)
        self.close_code: int | None = None
        self.closed_at: float | None = None
        self.acks: list[dict] = []
        self.task: asyncio.Task | None = None

    @property
    def frames(self) -> int:
        return self.verifier.frames

    @property
    def bad(self) -> int:
        return self.verifier.bad

    async def run(self) -> None:
        parser = self.verifier.parser
        async with websockets.connect(self.url) as ws:
            await ws.send(encode_subscribe("book", self.symbols, 1, depth=10).decode())
            try:
                async for raw in ws:
                    raw = raw.encode() if isinstance(raw, str) else raw
                    ev = parser.parse(raw)
                    if isinstance(ev, BookEvent):
                        self.verifier.verify(ev)
                    elif b'"method":"subscribe"' in raw:
                        self.acks.append(orjson.loads(raw))
            except websockets.ConnectionClosed:
                pass
            self.close_code = ws.close_code
            self.closed_at = time.monotonic()

    def start(self) -> Client:
        self.task = asyncio.create_task(self.run())
        return self


async def wait_for(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_sigterm_under_load_closes_every_client_with_1001_within_5s(tmp_path: Path) -> None:
    async with relay_with_sim(tmp_path, ["BTC/USD", "ETH/USD"]) as (daemon, _sim):
        clients = [Client(daemon.ws_url, ["BTC/USD", "ETH/USD"]).start() for _ in range(20)]
        await wait_for(lambda: all(c.frames > 20 for c in clients), 15, "clients receiving books")
        t0 = time.monotonic()
        daemon.proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(asyncio.gather(*(c.task for c in clients)), 6)
        rc = await asyncio.to_thread(daemon.proc.wait, 6)
        elapsed = time.monotonic() - t0
        assert rc == 0, daemon.proc.stderr.read().decode()[-2000:]
        assert elapsed < 5.0
        assert [c.close_code for c in clients] == [1001] * 20
        assert all(c.closed_at - t0 < 5.0 for c in clients)
        assert sum(c.bad for c in clients) == 0


async def test_sighup_adds_a_symbol_without_disconnecting_anyone(tmp_path: Path) -> None:
    async with relay_with_sim(tmp_path, ["BTC/USD"], sim_symbols=["BTC/USD", "ETH/USD"]) as (daemon, sim):
        old = Client(daemon.ws_url, ["BTC/USD"]).start()
        await wait_for(lambda: old.frames > 10, 10, "first client streaming")
        cfg = yaml.safe_load(daemon.config_path.read_text())
        before = Client(daemon.ws_url, ["ETH/USD"]).start()
        await wait_for(lambda: before.acks, 5, "ETH/USD answered before the reload")
        assert before.acks[0]["success"] is True  # not configured yet: served on demand
        await wait_for(lambda: before.frames > 5, 10, "ETH/USD on demand streaming")
        cfg["channels"]["book"]["symbols"] = ["BTC/USD", "ETH/USD"]
        daemon.config_path.write_text(yaml.safe_dump(cfg))
        daemon.proc.send_signal(signal.SIGHUP)
        await wait_for(
            lambda: daemon.http("/readyz")[1]["symbols"].get("ETH/USD", {}).get("ready"), 15, "ETH/USD ready"
        )
        new = Client(daemon.ws_url, ["ETH/USD"]).start()
        await wait_for(lambda: new.frames > 5, 10, "ETH/USD frames after the reload")
        frames_then = old.frames
        await wait_for(lambda: old.frames > frames_then + 5, 10, "first client still streaming")
        assert new.acks and new.acks[0]["success"] is True
        frames_then = before.frames
        await wait_for(lambda: before.frames > frames_then + 5, 10, "the on-demand client kept streaming")
        assert old.close_code is None and new.close_code is None and before.close_code is None
        assert old.bad == new.bad == before.bad == 0
        assert daemon.proc.poll() is None


async def test_readyz_turns_503_when_every_line_stalls_and_200_when_they_resume(tmp_path: Path) -> None:
    async with relay_with_sim(tmp_path, ["BTC/USD"]) as (daemon, sim):
        assert daemon.http("/readyz")[0] == 200
        t0 = time.monotonic()
        for line in range(len(sim.urls)):
            sim.inject(line, "stall", 6.0)
        await wait_for(lambda: daemon.http("/readyz")[0] == 503, 5, "/readyz 503")
        detected = time.monotonic() - t0
        status, body = daemon.http("/readyz")
        assert body["symbols"]["BTC/USD"]["ready"] is False
        await wait_for(lambda: daemon.http("/readyz")[0] == 200, 20, "/readyz back to 200")
        assert detected <= 2.0 + 1.5  # the configured frame_timeout/stale_after window, plus polling slack
        assert daemon.http("/healthz")[0] == 200
