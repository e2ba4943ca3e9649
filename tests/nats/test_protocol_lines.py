"""NATS lines for Spot v1 and Futures: a regional relay on the simulator publishes the protocol on
NATS, an edge relay reads it through one NATS line only, and a verifying client of the edge sees
every checksum valid and every trade once (the payloads are the regional relay's client frames)."""

from __future__ import annotations

from typing import Any

import pytest

from relay.app import Relay
from relay.config import parse_config
from relay.sim import LineConfig, SimConfig, Simulator
from relay.sim.futures import FuturesSimConfig, FuturesSimulator
from relay.verify.client import verify
from relay.verify.futures import FuturesVerifier
from relay.verify.spot_v1 import V1Verifier
from tests.kit.inprocess import FAST_RECONNECT, wait_for
from tests.kit.nats import nats_server

pytestmark = pytest.mark.timeout(120)


async def _through_nats(
    sim: Any, protocol: str, section: dict[str, Any], verifier: Any, urls: str = "urls"
) -> dict[str, Any]:
    async with nats_server(jetstream=False) as server:
        await sim.start()
        regional = edge = None
        try:
            lines = [{"name": f"line{i}", "url": u, "protocol": protocol} for i, u in enumerate(getattr(sim, urls))]
            base = {"reconnect": FAST_RECONNECT, **section}
            regional = Relay(
                parse_config(
                    {"upstreams": lines, **base, "nats": {"servers": [server.url], "subject_prefix": "kraken.r"}},
                    env={},
                ),
                server_port=0,
                http_port=0,
            )
            await regional.start()
            nats_line = {"name": "r", "url": server.url, "protocol": protocol, "subject_prefix": "kraken.r"}
            edge = Relay(parse_config({"upstreams": [nats_line], **base}, env={}), server_port=0, http_port=0)
            await edge.start()
            await wait_for(lambda: edge.ready()[0], 30, f"the {protocol} edge relay ready on its NATS line")
            url = edge.server.url_for(edge.stack(protocol).endpoint.path)
            report = await verify(url, verifier, 4.0)
            line = edge.stack(protocol).pool.connections[0]
            report["line_events"] = dict(line.line_events)
            return report
        finally:
            for relay in (edge, regional):
                if relay is not None:
                    await relay.stop()
            await sim.stop()


async def test_a_spot_v1_nats_line() -> None:
    pairs = ["XBT/USD", "ETH/USD"]
    sim = Simulator(SimConfig(symbols=["BTC/USD", "ETH/USD"], rate=200.0, seed=31, lines=[LineConfig(), LineConfig()]))
    section = {"v1": {"channels": {"book": {"symbols": pairs, "depth": 10}, "trade": {"symbols": pairs}}}}
    report = await _through_nats(sim, "v1", section, V1Verifier(pairs, 10), urls="v1_urls")
    assert report["ok"], report
    assert report["checksums_ok"] >= 100 and report["trades"] >= 10, report
    assert report["disconnects"] == 0 and report["line_events"]["snapshot"] >= 2, report


async def test_a_futures_nats_line() -> None:
    products = ["PF_XBTUSD", "PF_ETHUSD"]
    sim = FuturesSimulator(
        FuturesSimConfig(products=products, rate=200.0, trade_rate=20.0, seed=37, lines=[LineConfig(), LineConfig()])
    )
    section = {"futures": {"channels": {"book": {"products": products}, "trade": {"products": products}}}}
    report = await _through_nats(sim, "futures", section, FuturesVerifier(products))
    assert report["ok"], report
    assert report["trades"] >= 10, report
    assert report["disconnects"] == 0 and report["line_events"]["snapshot"] >= 2, report
