"""`kraken-relay sim` from the command line, and the HTTP control endpoint."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys

from relay.sim import LineConfig, SimConfig, Simulator
from tests.kit.paths import ROOT
from tests.sim.checker import connect, http_json, recv_json, subscribe, wait_for


async def test_control_endpoint_injects_and_reports() -> None:
    cfg = SimConfig(
        symbols=["BTC/USD"], rate=200, lines=[LineConfig(), LineConfig()], control_port=0, heartbeat_interval=0.2
    )
    async with Simulator(cfg) as sim:
        base = f"http://127.0.0.1:{sim.control_port}"
        async with connect(sim.urls[1]) as ws:
            await recv_json(ws)
            await subscribe(ws, "book", ["BTC/USD"])
            await wait_for(ws, lambda m: m.get("channel") == "book")
            status, body = await asyncio.to_thread(
                http_json, base + "/fault", {"line": 1, "kind": "maintenance", "duration": 5}
            )
            assert status == 200 and body["ok"]
            st = await wait_for(ws, lambda m: m.get("channel") == "status")
            assert st["data"][0]["system"] == "maintenance"
            status, state = await asyncio.to_thread(http_json, base + "/state")
            assert state["lines"][1]["system"] == "maintenance" and state["lines"][1]["connections"] == 1
            assert 0 < state["lines"][1]["faults"]["maintenance"]["remaining"] <= 5
            assert state["lines"][0]["system"] == "online"
            status, _ = await asyncio.to_thread(http_json, base + "/clear", {"line": 1})
            assert status == 200
            st = await wait_for(ws, lambda m: m.get("channel") == "status")
            assert st["data"][0]["system"] == "online"
        status, err = await asyncio.to_thread(http_json, base + "/fault", {"line": 0, "kind": "nope"})
        assert status == 400 and "unknown fault kind" in err["error"]
        status, err = await asyncio.to_thread(http_json, base + "/fault", {"line": 7, "kind": "drop"})
        assert status == 400


def test_cli_prints_urls_and_fires_scheduled_faults() -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "relay",
            "sim",
            "--ports",
            "0,0",
            "--symbols",
            "BTC/USD,ETH/USD",
            "--rate",
            "200",
            "--latency",
            "0.001,0.002",
            "--control-port",
            "0",
            "--seed",
            "3",
            "--fault",
            "1.0:0:close_1013",
            "--fault",
            "1.2:1:corrupt_checksum:symbol=ETH/USD",
            "--duration",
            "3",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    urls = re.findall(r"ws://127\.0\.0\.1:\d+/v2", out)
    assert len(urls) == 2 and urls[0] != urls[1]
    assert "control: http://127.0.0.1:" in out
    assert "fault start: line 0 close_1013" in out
    assert "fault start: line 1 corrupt_checksum symbol=ETH/USD" in out


def test_cli_rejects_unknown_symbol() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "relay", "sim", "--symbols", "NOPE/USD", "--duration", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2 and "unknown symbols: NOPE/USD" in r.stderr
