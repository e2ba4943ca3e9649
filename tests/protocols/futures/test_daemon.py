"""`kraken-relay run` with a Spot v2 and a Futures stack on one listener (child process, uvloop):
/readyz and /metrics cover both, each path speaks its protocol, SIGTERM closes futures clients
with 1001 and exits 0."""

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
from relay.sim.futures import FuturesSimConfig, FuturesSimulator
from tests.kit.daemon import Daemon
from tests.kit.net import free_port
from tests.kit.paths import ROOT
from tests.protocols.futures.capture import ClientView

pytestmark = [pytest.mark.slow]


async def test_daemon_serves_v2_and_futures_side_by_side(tmp_path):
    fsim = FuturesSimulator(
        FuturesSimConfig(
            products=["PF_XBTUSD"],
            rate=100.0,
            trade_rate=5.0,
            seed=9,
            heartbeat_interval=0.2,
            lines=[LineConfig(), LineConfig()],
        )
    )
    sim = Simulator(SimConfig(symbols=["BTC/USD"], rate=100.0, seed=3, lines=[LineConfig()]))
    await fsim.start()
    await sim.start()
    ws_port, http_port = free_port(), free_port()
    cfg = {
        "upstreams": [{"name": "spot0", "url": sim.urls[0]}]
        + [{"name": f"fut{i}", "url": u, "protocol": "futures"} for i, u in enumerate(fsim.urls)],
        "channels": {"book": {"symbols": ["BTC/USD"], "depth": 10}},
        "futures": {
            "channels": {"book": {"products": ["PF_XBTUSD"]}, "trade": {"products": ["PF_XBTUSD"]}},
            "heartbeat_timeout": 2.0,
        },
        "server": {"listen": f"127.0.0.1:{ws_port}"},
        "http": {"listen": f"127.0.0.1:{http_port}"},
        "reconnect": {"initial_delay": 0.1, "max_delay": 1.0, "stagger": 0.05},
        "liveness": {"frame_timeout": 2.0, "ping_interval": 0.5, "stale_after": 2.0},
        "logging": {"level": "warning", "format": "json"},
    }
    path = tmp_path / "relay.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay", "run", "--config", str(path)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    daemon = Daemon(proc, path, f"ws://127.0.0.1:{ws_port}/v2", f"http://127.0.0.1:{http_port}")
    try:
        await daemon.wait_ready()
        status, detail = await asyncio.to_thread(daemon.http, "/readyz")
        assert status == 200
        text = await asyncio.to_thread(lambda: urllib.request.urlopen(daemon.http_url + "/metrics", timeout=5).read())
        assert b'symbol="PF_XBTUSD"' in text and b'symbol="BTC/USD"' in text and b'upstream="fut1"' in text
        view = ClientView()
        async with connect(f"ws://127.0.0.1:{ws_port}/ws/v1") as ws:
            assert orjson.loads(await ws.recv()) == {"event": "info", "version": 1}
            await ws.send('{"event":"subscribe","feed":"book","product_ids":["PF_XBTUSD"]}')
            for _ in range(500):
                raw = await asyncio.wait_for(ws.recv(), 5)
                raw = raw if isinstance(raw, bytes) else raw.encode()
                if not raw.startswith(b'{"event"'):
                    view.feed(raw)
                if view.deltas >= 30:
                    break
            assert view.snapshots == {"PF_XBTUSD": 1} and view.seq_errors == [] and view.deltas >= 30
            async with connect(daemon.ws_url) as spot:
                assert b'"channel":"status"' in (await asyncio.wait_for(spot.recv(), 5)).encode()
            proc.send_signal(signal.SIGTERM)
            code = None
            try:
                for _ in range(500):
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
        await fsim.stop()
