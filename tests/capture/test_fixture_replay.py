"""The real Kraken captures (`../shared/fixtures/kraken/`), converted to capture files by
`kraken-relay capture import`, replayed by `kraken-relay replay` as two lines into a relay: a
verifying client of the relay finds every checksum (Spot v2, v1) and every seq step (Futures)
valid, and receives the capture's updates (each once, the other line's copy dropped)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from relay.app import Relay
from relay.capture.fixtures import convert_file
from relay.capture.reader import Reader
from relay.capture.sessions import Schedule, build
from relay.capture.writer import CaptureWriter
from relay.config import parse_config
from relay.sim.capture_replay import ReplayServer
from relay.verify.client import Verifier, VerifyingClient
from relay.verify.futures import FuturesVerifier
from relay.verify.spot_v1 import V1Verifier
from relay.verify.spot_v2 import V2Verifier
from tests.kit.inprocess import FAST_RECONNECT, wait_for
from tests.kit.net import free_port
from tests.kit.paths import FIXTURES, need_fixture

CF = FIXTURES / "cryptofeed" / "sample_data"
V1_PAIRS = [
    "WAVES/EUR",
    "XMR/USD",
    "KSM/XBT",
    "GRT/ETH",
    "SC/EUR",
    "ETH/CHF",
    "OCEAN/XBT",
    "OMG/USD",
    "XBT/CHF",
    "ADA/XBT",
]
FUT_PRODUCTS = [
    "FI_BCHUSD_210730",
    "FI_BCHUSD_210924",
    "FI_ETHUSD_210730",
    "FI_ETHUSD_211231",
    "FI_XBTUSD_210730",
    "FI_XBTUSD_210924",
    "FI_XRPUSD_210924",
    "PI_ETHUSD",
    "PI_LTCUSD",
    "PI_XRPUSD",
]


def _import(fixture: Path, fmt: str, protocol: str, out: Path) -> None:
    """The fixture as two lines, `a` and `b` (the same frames, as two redundant connections)."""
    writer = CaptureWriter(out, batch_records=100_000, max_pending_batches=1024, max_pending_bytes=1 << 30)
    for line in ("a", "b"):
        for r in convert_file(need_fixture(fixture), fmt, protocol, line, None):
            writer.record(r.line, r.kind, r.data, r.wall_ns, r.mono_ns, **r.fields)
    writer.close(30)
    assert writer.records_dropped == 0


async def _replay(capture_dir: Path, config: dict[str, Any], verifier: Verifier, endpoint: str, speed: float) -> Any:
    capture = build(Reader([capture_dir]))
    server = ReplayServer(Schedule(capture, speed=speed), [free_port() for _ in capture.lines], close_grace=2.0)
    await server.start()
    urls = server.urls()
    ups = [{"name": n, "url": urls[n], **({"protocol": endpoint} if endpoint != "v2" else {})} for n in ("a", "b")]
    relay = Relay(
        parse_config({"upstreams": ups, "reconnect": FAST_RECONNECT, **config}, env={}), server_port=0, http_port=0
    )
    expected = {n: sum(len(s.frames) for s in h.sessions) for n, h in capture.lines.items()}
    task = None
    try:
        await relay.start()
        stack = relay.stack(endpoint)
        # subscribed before the first snapshot arrives: the client sees the whole capture
        client = VerifyingClient(relay.server.url_for(stack.endpoint.path), verifier)
        task = asyncio.create_task(client.run())
        conns = {c.name: c for c in stack.pool.connections}
        await wait_for(lambda: all(conns[n].frames >= k for n, k in expected.items()), 60, "every recorded frame")
        await asyncio.sleep(0.3)  # the last publications reach the client
    finally:
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await relay.stop()
        await server.stop()
    return client


@pytest.mark.slow
async def test_the_real_v2_capture_replays_with_every_checksum_valid(tmp_path: Path) -> None:
    _import(FIXTURES / "derived" / "python-kraken-sdk_orderbook-v2.wire.ndjson", "wire-ndjson", "v2", tmp_path)
    cfg = {"channels": {"book": {"symbols": ["BTC/USD"], "depth": 10}, "instrument": False}}
    verifier = V2Verifier(["BTC/USD"], 10, trades=False)
    client = await _replay(tmp_path, cfg, verifier, "v2", speed=100.0)
    report = client.report()
    assert report["checksum_bad"] == 0 and report["errors"] == 0, report
    assert report["checksums_ok"] >= 500, report  # of the capture's 510 frames


@pytest.mark.slow
async def test_the_real_v1_depth_1000_capture_replays_with_every_checksum_valid(tmp_path: Path) -> None:
    _import(CF / "KRAKEN.ws.50.0", "cryptofeed", "v1", tmp_path)
    cfg = {"v1": {"channels": {"book": {"symbols": V1_PAIRS, "depth": 1000}}}}
    verifier = V1Verifier(V1_PAIRS, 1000, trades=False)
    client = await _replay(tmp_path, cfg, verifier, "v1", speed=15.0)
    report = client.report()
    assert report["checksum_bad"] == 0 and report["errors"] == 0, report
    assert report["checksums_ok"] >= 4269 * 0.95, report  # 4269 updates in the capture


@pytest.mark.slow
async def test_the_real_v1_depth_10_capture_with_republish_levels_replays_valid(tmp_path: Path) -> None:
    _import(
        FIXTURES / "python-kraken-sdk" / "tests" / "spot" / "fixture" / "orderbook-v1.json",
        "kraken-sdk",
        "v1",
        tmp_path,
    )
    cfg = {"v1": {"channels": {"book": {"symbols": ["XBT/USD"], "depth": 10}}}}
    verifier = V1Verifier(["XBT/USD"], 10, trades=False)
    client = await _replay(tmp_path, cfg, verifier, "v1", speed=200.0)
    report = client.report()
    assert report["checksum_bad"] == 0 and report["errors"] == 0, report
    assert report["checksums_ok"] >= 979 * 0.95, report


@pytest.mark.slow
async def test_the_real_futures_capture_replays_with_every_seq_step_valid(tmp_path: Path) -> None:
    _import(CF / "KRAKEN_FUTURES.ws.1.0", "cryptofeed", "futures", tmp_path)
    cfg = {"futures": {"channels": {"book": {"products": FUT_PRODUCTS}}}}
    verifier = FuturesVerifier(FUT_PRODUCTS, trades=False)
    client = await _replay(tmp_path, cfg, verifier, "futures", speed=100.0)
    report = client.report()
    assert not report.get("seq_errors") and report["errors"] == 0, report
    assert report["book_frames"] >= 7014 * 0.95, report
