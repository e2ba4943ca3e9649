"""One simulator framework: the Futures simulator has the Spot one's fault schedule and control API,
and fixture data comes only through explicit options (`instruments=`, `--fixtures`, `--instruments`)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import urllib.request

import orjson
import pytest

from relay.sim import FaultSpec, LineConfig, SimConfig, Simulator
from relay.sim.faults import FUTURES_FAULT_KINDS, load_schedule, parse_fault
from relay.sim.futures import FuturesSimConfig, FuturesSimulator
from tests.kit.paths import FIXTURES, INSTRUMENT_SNAPSHOT, ROOT, need_fixture
from tests.sim.checker import connect, http_json

FUTURES_INSTRUMENTS = FIXTURES / "cryptofeed" / "sample_data" / "KRAKEN_FUTURES.0"


def _cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "KRAKEN_FIXTURES"}
    return subprocess.run(
        [sys.executable, "-m", "relay", "sim", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


async def test_futures_control_endpoint_injects_clears_and_reports() -> None:
    cfg = FuturesSimConfig(products=["PF_XBTUSD"], rate=100, seed=2, lines=[LineConfig(), LineConfig()], control_port=0)
    async with FuturesSimulator(cfg) as sim:
        base = f"http://127.0.0.1:{sim.control_port}"
        status, kinds = await asyncio.to_thread(http_json, base + "/faults")
        assert status == 200 and kinds == FUTURES_FAULT_KINDS and "skip" in kinds and "maintenance" not in kinds
        async with connect(sim.urls[1]) as ws:
            assert orjson.loads(await ws.recv()) == {"event": "info", "version": 1}
            status, body = await asyncio.to_thread(
                http_json, base + "/fault", {"line": 1, "kind": "stall", "duration": 5}
            )
            assert status == 200 and body["ok"]
            line1 = body["state"]["lines"][1]
            assert line1["connections"] == 1 and 0 < line1["faults"]["stall"]["remaining"] <= 5
            assert body["state"]["lines"][0]["faults"] == {}
            status, body = await asyncio.to_thread(
                http_json, base + "/fault", {"line": 0, "kind": "skip", "symbol": "pf_xbtusd", "count": 3}
            )
            assert status == 200 and body["state"]["lines"][0]["pending_skip"] == {"PF_XBTUSD": 3}
            status, body = await asyncio.to_thread(http_json, base + "/clear", {"line": 1})
            assert status == 200 and body["state"]["lines"][1]["faults"] == {}
        status, err = await asyncio.to_thread(http_json, base + "/fault", {"line": 0, "kind": "maintenance"})
        assert status == 400 and "not simulated for futures" in err["error"]
        status, err = await asyncio.to_thread(http_json, base + "/fault", {"line": 0, "kind": "nope"})
        assert status == 400 and "unknown fault kind" in err["error"]
        status, err = await asyncio.to_thread(http_json, base + "/fault", {"line": 7, "kind": "drop"})
        assert status == 400 and "no line 7" in err["error"]


async def test_futures_scripted_schedule_fires() -> None:
    log: list[str] = []
    cfg = FuturesSimConfig(
        products=["PF_XBTUSD"],
        rate=100,
        lines=[LineConfig(), LineConfig()],
        faults=[FaultSpec(0.05, 1, "stall", 0.2), FaultSpec(0.05, "all", "slow", None, {"delay": 0.01})],
        log=log.append,
    )
    async with FuturesSimulator(cfg) as sim:
        await asyncio.sleep(0.15)
        state = sim.state()
        assert "stall" in state["lines"][1]["faults"] and "stall" not in state["lines"][0]["faults"]
        assert all("slow" in ln["faults"] for ln in state["lines"])
        await asyncio.sleep(0.3)
        assert "stall" not in sim.state()["lines"][1]["faults"]
    assert any("fault line 1: stall" in t for t in log) and any("stall ended" in t for t in log)


def test_fault_kinds_are_checked_per_simulator(tmp_path) -> None:
    assert parse_fault("1:0:skip:symbol=PF_XBTUSD,count=2", "futures").params == {"symbol": "PF_XBTUSD", "count": 2}
    assert parse_fault("1:all:slow:delay=0.2", "futures").params == {"delay": 0.2}
    with pytest.raises(ValueError, match="not simulated for v2"):
        parse_fault("1:0:skip")
    with pytest.raises(ValueError, match="not simulated for futures"):
        parse_fault("1:0:maintenance:2", "futures")
    p = tmp_path / "f.yaml"
    p.write_text("- {at: 1, line: 0, kind: skip, symbol: PF_ETHUSD, count: 4}\n")
    assert load_schedule(p, "futures")[0].params == {"symbol": "PF_ETHUSD", "count": 4}
    with pytest.raises(ValueError):
        load_schedule(p)
    with pytest.raises(ValueError, match="not simulated for v2"):
        Simulator(SimConfig(faults=[FaultSpec(1, 0, "skip")]))
    with pytest.raises(ValueError, match="not simulated for futures"):
        FuturesSimulator(FuturesSimConfig(faults=[FaultSpec(1, 0, "cancel_only")]))


@pytest.mark.slow
def test_cli_futures_faults_file_and_control_port(tmp_path) -> None:
    schedule = tmp_path / "faults.yaml"
    schedule.write_text("- {at: 0.2, line: 1, kind: stall, duration: 0.2}\n")
    r = _cli(
        "--protocol", "futures", "--lines", "2", "--products", "PF_XBTUSD", "--rate", "20",
        "--control-port", "0", "--faults", str(schedule), "--duration", "0.8",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "/ws/v1" in r.stdout and "control: http://127.0.0.1:" in r.stdout
    assert "fault line 1: stall for 0.2s" in r.stdout
    schedule.write_text("- {at: 0.2, line: 1, kind: corrupt_checksum}\n")
    bad = _cli("--protocol", "futures", "--faults", str(schedule), "--duration", "0.5")
    assert bad.returncode == 2 and "not simulated for futures" in bad.stderr


def test_cli_replay_capture_needs_fixtures() -> None:
    r = _cli("--replay", "capture", "--duration", "0.5")
    assert r.returncode == 2 and "--replay capture" in r.stderr and "--fixtures" in r.stderr
    r = _cli("--protocol", "futures", "--replay", "capture", "--duration", "0.5")
    assert r.returncode == 2 and "--replay capture" in r.stderr
    r = _cli("--instruments", "/nonexistent/instruments.json", "--duration", "0.5")
    assert r.returncode == 2 and "--instruments" in r.stderr


@pytest.mark.slow
def test_cli_fixtures_option_gives_capture_and_real_instruments() -> None:
    need_fixture(INSTRUMENT_SNAPSHOT, "v2 instrument snapshot")
    need_fixture(FUTURES_INSTRUMENTS, "futures instruments")
    r = _cli("--fixtures", str(FIXTURES), "--replay", "capture", "--no-loop", "--duration", "0.5")
    assert r.returncode == 0, r.stderr
    assert "replay " in r.stdout and "python-kraken-sdk_orderbook-v2.wire.ndjson" in r.stdout
    r = _cli("--fixtures", str(FIXTURES), "--symbols", "ATOM/USD", "--duration", "0.5")
    assert r.returncode == 0, r.stderr
    r = _cli("--protocol", "futures", "--fixtures", str(FIXTURES), "--replay", "capture", "--duration", "0.5")
    assert r.returncode == 0, r.stderr
    assert "KRAKEN_FUTURES.ws.1.0" in r.stdout


async def test_instrument_files_are_explicit_options() -> None:
    with pytest.raises(ValueError, match="unknown symbols: ATOM/USD"):
        Simulator(SimConfig(symbols=["ATOM/USD"]))  # built-in table only
    need_fixture(INSTRUMENT_SNAPSHOT, "v2 instrument snapshot")
    need_fixture(FUTURES_INSTRUMENTS, "futures instruments")
    sim = Simulator(SimConfig(symbols=["ATOM/USD"], instruments=str(INSTRUMENT_SNAPSHOT)))
    assert sim.instruments[0].price_precision == sim.instruments[0].raw["price_precision"]

    def rest_ids(url: str) -> set[str]:
        body = urllib.request.urlopen(url + "/derivatives/api/v3/instruments", timeout=5).read()
        return {i["symbol"] for i in orjson.loads(body)["instruments"]}

    async with FuturesSimulator(FuturesSimConfig(products=["PF_XBTUSD"])) as fsim:
        ids = await asyncio.to_thread(rest_ids, fsim.rest_url)
        assert {"PF_XBTUSD", "PI_XBTUSD", "PI_ETHUSD"} <= ids and not any(i.startswith("FI_") for i in ids)
    async with FuturesSimulator(FuturesSimConfig(products=["PF_XBTUSD"], instruments=str(FUTURES_INSTRUMENTS))) as fsim:
        ids = await asyncio.to_thread(rest_ids, fsim.rest_url)
        assert {"PF_XBTUSD", "PI_XBTUSD", "FI_XBTUSD_210924"} <= ids
