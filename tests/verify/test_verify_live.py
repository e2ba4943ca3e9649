"""`relay.verify` against live endpoints: the relay over two faulty simulator lines verifies
clean; a simulator line that corrupts a checksum fails verification (the tool can fail)."""

from __future__ import annotations

import pytest

from relay.app import Relay
from relay.sim import LineConfig, SimConfig, Simulator
from relay.verify import V2Verifier, verify
from relay.verify.client import main as verify_main
from tests.upstream.harness import small_config

SYMBOLS = ["BTC/USD", "ETH/USD"]
pytestmark = [pytest.mark.slow]


async def test_relay_feed_verifies_through_a_line_drop():
    sim = Simulator(
        SimConfig(
            symbols=SYMBOLS,
            rate=200.0,
            trade_rate=20.0,
            seed=5,
            levels=50,
            lines=[LineConfig(latency=0.001), LineConfig(latency=0.002)],
        )
    )
    await sim.start()
    cfg = small_config([{"name": f"l{i}", "url": u} for i, u in enumerate(sim.urls)], SYMBOLS)
    relay = Relay(cfg, server_port=0, http_port=0)
    await relay.start()
    try:
        sim.inject(0, "drop")
        report = await verify(relay.server.url, V2Verifier(SYMBOLS, depth=10), 3.0)
    finally:
        await relay.stop()
        await sim.stop()
    assert report["ok"] and report["checksum_bad"] == 0 and report["book_frames"] > 50, report


async def test_a_corrupted_checksum_fails_verification():
    sim = Simulator(SimConfig(symbols=SYMBOLS, rate=200.0, seed=5, levels=50, lines=[LineConfig()]))
    await sim.start()
    try:
        sim.inject(0, "corrupt_checksum", symbol="BTC/USD")
        report = await verify(sim.urls[0], V2Verifier(SYMBOLS, depth=10, trades=False), 2.0)
    finally:
        await sim.stop()
    assert not report["ok"] and report["checksum_bad"] >= 1, report


def test_cli_exit_code_is_1_when_nothing_arrives(capsys):
    import argparse

    args = argparse.Namespace(
        url="ws://127.0.0.1:9/v2",
        protocol="v2",
        symbols="BTC/USD",
        depth=10,
        duration=0.5,
        no_trades=False,
        insecure=False,
    )
    assert verify_main(args) == 1
    assert '"ok":false' in capsys.readouterr().out
