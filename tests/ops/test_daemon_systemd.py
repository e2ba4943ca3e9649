"""The real daemon under a fake systemd: `kraken-relay run` as a child process with $NOTIFY_SOCKET
and $WATCHDOG_USEC set, fed by the simulator. What systemd would see: READY=1 once data flows,
WATCHDOG=1 pings, a SIGHUP with a broken config survived, STOPPING=1 and exit 0 on SIGTERM, and
JSON log lines on stderr (not a TTY)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.kit.net import free_port
from tests.kit.paths import ROOT

SYMBOLS = ["BTC/USD", "ETH/USD"]


class SimThread:
    """The built-in simulator (two lines on free ports) on a background event loop."""

    def __init__(self) -> None:
        self.urls: list[str] = []
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            self.error = exc
            self._ready.set()

    async def _main(self) -> None:
        from relay.sim import LineConfig, SimConfig, Simulator

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        sim = Simulator(SimConfig(symbols=SYMBOLS, rate=100.0, seed=5, lines=[LineConfig(), LineConfig()]))
        await sim.start()
        self.urls = list(sim.urls)
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await sim.stop()

    def __enter__(self) -> SimThread:
        self._thread.start()
        if not self._ready.wait(20) or self.error:
            raise RuntimeError(f"simulator did not start: {self.error!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


def recv_until(sock: socket.socket, wanted: str, timeout: float) -> list[str]:
    """Datagrams received until one contains the line `wanted` (or the timeout passes)."""
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            msg = sock.recv(4096).decode()
        except TimeoutError:
            break
        got.append(msg)
        if wanted in msg.split("\n"):
            return got
    raise AssertionError(f"no {wanted!r} within {timeout}s; got {got[-5:]}")


@pytest.mark.slow
def test_daemon_speaks_sd_notify_and_handles_signals(tmp_path: Path) -> None:
    with SimThread() as sim:
        http_port = free_port()
        config = tmp_path / "relay.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "upstreams": [{"name": f"sim-{i}", "url": u} for i, u in enumerate(sim.urls)],
                    "channels": {"book": {"symbols": SYMBOLS, "depth": 10}, "trade": {"symbols": SYMBOLS}},
                    "server": {"listen": f"127.0.0.1:{free_port()}"},
                    "http": {"listen": f"127.0.0.1:{http_port}"},
                    "reconnect": {"initial_delay": 0.1, "stagger": 0.0},
                }
            )
        )
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(tmp_path / "notify.sock"))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KRAKEN_RELAY_", "NOTIFY_", "WATCHDOG_"))}
        env.update(NOTIFY_SOCKET=str(tmp_path / "notify.sock"), WATCHDOG_USEC="400000", PYTHONPATH=str(ROOT))
        stderr = open(tmp_path / "stderr.log", "wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "relay", "run", "--config", str(config)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            cwd=tmp_path,
        )
        try:
            recv_until(notify, "READY=1", 30)
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/readyz", timeout=5) as r:
                assert r.status == 200  # READY=1 means data flows: /readyz agrees
            for _ in range(3):
                recv_until(notify, "WATCHDOG=1", 2)  # pings every WATCHDOG_USEC/2 = 0.2 s

            # `systemctl reload` with a broken file: the relay keeps running on the old config
            good = config.read_text()
            config.write_text(good + "bogus: 1\n")
            proc.send_signal(signal.SIGHUP)
            time.sleep(0.5)
            assert proc.poll() is None
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz", timeout=5) as r:
                assert r.status == 200
            recv_until(notify, "WATCHDOG=1", 5)  # still pinging

            proc.send_signal(signal.SIGTERM)
            recv_until(notify, "STOPPING=1", 10)
            assert proc.wait(15) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
            notify.close()
            stderr.close()
        logs = [ln for ln in (tmp_path / "stderr.log").read_text().splitlines() if ln.strip()]
        records: list[dict[str, Any]] = [json.loads(ln) for ln in logs]  # every line is JSON off a TTY
        assert any("bogus: unknown key" in json.dumps(r) for r in records), logs[-10:]
