"""The futures simulator speaks Kraken's futures protocol and serves REST instruments."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import urllib.request

import orjson
import pytest
from websockets.asyncio.client import connect

from relay.sim.futures import FuturesSimConfig, FuturesSimulator
from relay.sim.server import LineConfig
from tests.protocols.futures.capture import ClientView


async def test_protocol_snapshot_then_contiguous_deltas_and_errors():
    cfg = FuturesSimConfig(
        products=["PF_XBTUSD", "PI_ETHUSD"],
        rate=400.0,
        trade_rate=40.0,
        seed=3,
        heartbeat_interval=0.1,
        lines=[LineConfig(), LineConfig(latency=0.002)],
    )
    async with FuturesSimulator(cfg) as sim:
        views = []
        for url in sim.urls:
            async with connect(url) as ws:
                first = orjson.loads(await ws.recv())
                assert first == {"event": "info", "version": 1}
                await ws.send(b'{"event":"subscribe","feed":"book","product_ids":["pf_xbtusd"]}'.decode())
                await ws.send(b'{"event":"subscribe","feed":"trade","product_ids":["PF_XBTUSD"]}'.decode())
                await ws.send(b'{"event":"subscribe","feed":"heartbeat"}'.decode())
                await ws.send(b'{"event":"subscribe","feed":"book","product_ids":["PF_NOPE"]}'.decode())
                view = ClientView()
                msgs: list[dict] = []
                for _ in range(3000):
                    raw = await asyncio.wait_for(ws.recv(), 3)
                    raw = raw if isinstance(raw, bytes) else raw.encode()
                    msgs.append(orjson.loads(raw))
                    if not raw.startswith(b'{"event"'):
                        view.feed(raw)
                    if view.deltas >= 100 and any(m.get("feed") == "heartbeat" for m in msgs):
                        break
                events = [m for m in msgs if "event" in m]
                assert {"event": "subscribed", "feed": "book", "product_ids": ["PF_XBTUSD"]} in events
                assert {"event": "subscribed", "feed": "heartbeat"} in events
                assert {"event": "error", "message": "Invalid product id"} in events
                assert view.seq_errors == [] and view.snapshots == {"PF_XBTUSD": 1}
                assert any(m.get("feed") == "trade_snapshot" for m in msgs)
                views.append(view)
        # both lines number the same events alike (per-product seq of the market)
        assert views[0].books["PF_XBTUSD"]["seq"] > 0
        body = await asyncio.to_thread(
            lambda: urllib.request.urlopen(sim.rest_url + "/derivatives/api/v3/instruments", timeout=5).read()
        )
        ids = {i["symbol"] for i in orjson.loads(body)["instruments"]}
        assert {"PF_XBTUSD", "PI_ETHUSD", "PI_XBTUSD"} <= ids


async def test_skip_fault_makes_a_gap_on_that_line_only():
    cfg = FuturesSimConfig(
        products=["PF_XBTUSD"], rate=300.0, trade_rate=0.0, seed=4, lines=[LineConfig(), LineConfig()]
    )
    async with FuturesSimulator(cfg) as sim:
        async with connect(sim.urls[0]) as a, connect(sim.urls[1]) as b:
            for ws in (a, b):
                await ws.recv()
                await ws.send('{"event":"subscribe","feed":"book","product_ids":["PF_XBTUSD"]}')
            sim.inject(0, "skip", symbol="PF_XBTUSD", count=2)
            va, vb = ClientView(), ClientView()
            for ws, v in ((a, va), (b, vb)):
                for _ in range(500):
                    raw = await asyncio.wait_for(ws.recv(), 3)
                    raw = raw if isinstance(raw, bytes) else raw.encode()
                    if not raw.startswith(b'{"event"'):
                        v.feed(raw)
                    if v.deltas >= 60:
                        break
            assert len(va.seq_errors) == 1 and vb.seq_errors == []


@pytest.mark.slow
def test_cli_protocol_futures_runs():
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "relay",
            "sim",
            "--protocol",
            "futures",
            "--lines",
            "2",
            "--products",
            "PF_XBTUSD",
            "--rate",
            "20",
            "--duration",
            "0.5",
            "--fault",
            "0.2:1:skip:symbol=PF_XBTUSD,count=1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "/ws/v1" in proc.stdout and "fault line 1: skip" in proc.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "relay", "sim", "--protocol", "futures", "--fault", "1:0:maintenance:2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "not simulated for futures" in bad.stderr


async def test_futures_lines_keep_alive_with_rfc6455_pings():
    """Futures has no JSON ping: the upstream transport pings at the websocket level."""
    from relay.config import UpstreamConfig
    from relay.upstream.transport import open_connection

    async with FuturesSimulator(FuturesSimConfig(products=["PF_XBTUSD"], rate=0.0, trade_rate=0.0)) as sim:
        up = UpstreamConfig(name="f", url=sim.urls[0], protocol="futures")
        ws = await open_connection(up, handshake_timeout=2.0, ping_interval=0.05)
        try:
            assert orjson.loads(await ws.recv()) == {"event": "info", "version": 1}
            await asyncio.sleep(0.3)
            assert ws.latency > 0  # a pong came back for our ping
        finally:
            await ws.close()
