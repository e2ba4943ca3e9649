"""`kraken-relay run` with only a Spot v1 stack (no v2 upstreams at all), TLS on the listener,
as a child process: /readyz and /metrics list the v1 pairs, `/` speaks v1 with valid checksums,
SIGHUP adds a pair without dropping the client, SIGTERM closes it with 1001 and exits 0."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import urllib.request

import orjson
import pytest
import yaml
from websockets.asyncio.client import connect

from relay.sim import LineConfig, SimConfig, Simulator
from tests.kit.net import free_port
from tests.kit.paths import ROOT
from tests.protocols.spot_v1.conftest import client_ssl
from tests.protocols.spot_v1.helpers import V1Checker

pytestmark = [pytest.mark.slow]


def _cfg(sim: Simulator, ws_port: int, http_port: int, cert, key, pairs: list[str]) -> dict:
    return {
        "upstreams": [{"name": f"v1-{i}", "url": u, "protocol": "v1"} for i, u in enumerate(sim.v1_urls)],
        "v1": {"channels": {"book": {"symbols": pairs, "depth": 25}, "trade": {"symbols": pairs}}},
        "server": {"listen": f"127.0.0.1:{ws_port}", "tls": {"cert": str(cert), "key": str(key)}},
        "http": {"listen": f"127.0.0.1:{http_port}"},
        "reconnect": {"initial_delay": 0.1, "max_delay": 1.0, "stagger": 0.05},
        "liveness": {"frame_timeout": 2.0, "ping_interval": 0.5, "stale_after": 2.0},
        "logging": {"level": "warning", "format": "json"},
    }


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


async def test_daemon_serves_v1_only_over_tls(tmp_path, tls_cert):
    cert, key = tls_cert
    sim = Simulator(SimConfig(symbols=["BTC/USD", "ETH/USD"], rate=200.0, seed=4, lines=[LineConfig(), LineConfig()]))
    await sim.start()
    ws_port, http_port = free_port(), free_port()
    path = tmp_path / "relay.yaml"
    path.write_text(yaml.safe_dump(_cfg(sim, ws_port, http_port, cert, key, ["XBT/USD"])))
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay", "run", "--config", str(path)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    http = f"http://127.0.0.1:{http_port}"
    try:
        loop = asyncio.get_running_loop()
        end = loop.time() + 20
        status, body = 0, b""
        while loop.time() < end and status != 200:
            try:
                status, body = await asyncio.to_thread(_get, http + "/readyz")
            except OSError:
                pass
            await asyncio.sleep(0.2)
        assert status == 200 and b"v1:XBT/USD" in body
        checker = V1Checker()
        async with connect(f"wss://127.0.0.1:{ws_port}/", ssl=client_ssl(cert), open_timeout=5) as ws:
            assert orjson.loads(await ws.recv())["event"] == "systemStatus"
            await ws.send('{"event":"subscribe","pair":["XBT/USD"],"subscription":{"name":"book","depth":10}}')
            for _ in range(2000):
                checker.feed((await asyncio.wait_for(ws.recv(), 5)).encode())
                if checker.verified >= 30:
                    break
            assert checker.bad == [] and checker.verified >= 30
            # SIGHUP: ETH/USD added; the connected client keeps going and can subscribe to it
            path.write_text(yaml.safe_dump(_cfg(sim, ws_port, http_port, cert, key, ["XBT/USD", "ETH/USD"])))
            proc.send_signal(signal.SIGHUP)
            end = loop.time() + 10
            while loop.time() < end and b"v1:ETH/USD" not in (await asyncio.to_thread(_get, http + "/readyz"))[1]:
                await asyncio.sleep(0.2)
            await ws.send(
                '{"event":"subscribe","reqid":2,"pair":["ETH/USD"],"subscription":{"name":"book","depth":10}}'
            )
            before = checker.snapshots
            for _ in range(2000):
                checker.feed((await asyncio.wait_for(ws.recv(), 5)).encode())
                if checker.snapshots > before:
                    break
            assert checker.book("ETH/USD", 10) is not None and checker.bad == []
            metrics = (await asyncio.to_thread(_get, http + "/metrics"))[1]
            assert b'symbol="v1:XBT/USD"' in metrics and b'upstream="v1-1"' in metrics
            proc.send_signal(signal.SIGTERM)
            code = None
            try:
                for _ in range(5000):
                    await asyncio.wait_for(ws.recv(), 5)
            except Exception:
                code = ws.close_code
            assert code == 1001
        assert await asyncio.to_thread(proc.wait, 10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)
        await sim.stop()
