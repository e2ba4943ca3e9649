"""python-kraken-sdk and ccxt, offline, against the simulator: every book they build is valid."""

from __future__ import annotations

import asyncio

import pytest

from relay.sim import LineConfig, SimConfig, Simulator
from tests.clients import KRAKEN_REST_CAPTURE, run_ccxt_watch_order_book, run_kraken_sdk_orderbook
from tests.kit.paths import need_fixture

pytestmark = pytest.mark.clients


async def test_kraken_sdk_orderbook_client_all_books_valid() -> None:
    pytest.importorskip("kraken.spot")
    async with Simulator(
        SimConfig(symbols=["BTC/USD", "ETH/USD"], rate=1000, seed=2, lines=[LineConfig(latency=0.001, jitter=0.001)])
    ) as sim:
        r = await run_kraken_sdk_orderbook(sim.urls[0], ["BTC/USD", "ETH/USD"], depth=25, n_updates=400, timeout=30)
    assert r.ok, r
    assert r.updates >= 400 and r.valid == r.frames
    assert set(r.per_symbol) == {"BTC/USD", "ETH/USD"}


async def test_kraken_sdk_notices_a_corrupted_checksum(monkeypatch: pytest.MonkeyPatch) -> None:
    """The harness must be able to fail: one wrong checksum is reported by the sdk."""
    pytest.importorskip("kraken.spot")
    real_sleep = asyncio.sleep
    monkeypatch.setattr("kraken.spot.orderbook.asyncio_sleep", lambda s: real_sleep(min(s, 0.05)))
    async with Simulator(SimConfig(symbols=["BTC/USD"], rate=500, seed=3)) as sim:
        sim.inject(0, "corrupt_checksum", symbol="BTC/USD")
        r = await run_kraken_sdk_orderbook(sim.urls[0], ["BTC/USD"], depth=10, n_updates=200, timeout=20)
    assert not r.ok and r.invalid >= 1


async def test_ccxt_watch_order_book_with_simulator_rest() -> None:
    pytest.importorskip("ccxt.pro")
    async with Simulator(SimConfig(symbols=["BTC/USD", "DOGE/USD"], rate=1000, seed=4)) as sim:
        r = await run_ccxt_watch_order_book(
            sim.urls[0], sim.rest_url, ["BTC/USD", "DOGE/USD"], n=250, timeout=30, depth=25
        )
    assert r.ok, r
    assert min(r.per_symbol.values()) >= 250 and r.valid == r.frames


async def test_ccxt_watch_order_book_with_captured_markets() -> None:
    pytest.importorskip("ccxt.pro")
    need_fixture(KRAKEN_REST_CAPTURE, "Kraken REST AssetPairs capture")
    async with Simulator(SimConfig(symbols=["BTC/USD", "ETH/USD"], rate=1000, seed=5)) as sim:
        r = await run_ccxt_watch_order_book(sim.urls[0], None, ["BTC/USD", "ETH/USD"], n=200, timeout=30)
    assert r.ok, r
