"""End to end: simulator (2 lines) -> upstream pool -> merge -> LocalServer -> real client libraries.

python-kraken-sdk's SpotOrderBookClient verifies every checksum itself; ccxt's book is checked
per frame by the shared harness (tests/clients.py); our own verifying client covers depths 10, 25
and 100 on one symbol and trade ids. Faults are injected on line 1 while they all run.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from relay.protocols.spot_v2.spec import SPOT_V2
from relay.server.listener import LocalServer
from relay.sim import LineConfig, SimConfig, Simulator
from relay.upstream.pool import UpstreamPool
from tests.server.conftest import Client, build_relay
from tests.upstream.harness import PLANNER, make_merge, small_config, until

pytestmark = [pytest.mark.slow, pytest.mark.clients]

SYMBOLS = ["BTC/USD", "ETH/USD"]


class Rig:
    def __init__(self, sim: Simulator, pool: UpstreamPool, server: LocalServer) -> None:
        self.sim, self.pool, self.server = sim, pool, server
        self.merge = pool.merge

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.server.port}/v2"

    async def all_live(self, timeout: float = 8.0) -> bool:
        return await until(lambda: all(c.state == "live" for c in self.pool.connections), timeout)


@contextlib.asynccontextmanager
async def rig(warm: list[str] | None = None, **sim_kw: Any) -> AsyncIterator[Rig]:
    """`warm`: the configured symbols (default SYMBOLS); the clients' SYMBOLS outside it are
    served on demand."""
    warm = warm or SYMBOLS
    sim = Simulator(
        SimConfig(
            symbols=list(dict.fromkeys([*SYMBOLS, *warm])),
            rate=sim_kw.pop("rate", 300.0),
            trade_rate=20.0,
            seed=11,
            levels=100,
            heartbeat_interval=0.2,
            lines=[LineConfig(latency=0.0005, jitter=0.0005), LineConfig(latency=0.001, jitter=0.0005)],
            **sim_kw,
        )
    )
    await sim.start()
    ups = [{"name": f"line{i}", "url": url} for i, url in enumerate(sim.urls)]
    cfg = small_config(
        ups,
        warm,
        channels={"book": {"symbols": warm, "depth": 100}, "ticker": {"symbols": warm}, "instrument": True},
    )
    merge = make_merge(cfg)
    relay = build_relay(cfg.server, merge, cfg.channels)
    server = relay.server
    await server.start()
    pool = UpstreamPool(cfg, merge, relay.publish, protocol=SPOT_V2, planner_options=PLANNER, stable_after=0.5)
    relay.endpoint.resubscribe = lambda: pool.set_desired(relay.endpoint.demanded_subscriptions())  # as app.Stack
    pool.on_rejected = relay.endpoint.upstream_rejected
    await pool.start()
    try:
        r = Rig(sim, pool, server)
        assert await r.all_live()
        assert await until(lambda: all(merge.book_snapshot(s, 100) for s in warm), 8.0)
        yield r
    finally:
        await pool.stop()
        await server.stop()
        await sim.stop()


class Verifier(Client):
    """Our client at one depth: every book frame checked, trade ids once each and in order."""

    def __init__(self, ws, depth: int) -> None:
        super().__init__(ws)
        self.depth = depth
        self.trade_ids: dict[str, list[int]] = {}
        self.trade_errors: list[str] = []

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                msg = await self.recv(timeout=0.5)
            except TimeoutError:
                continue
            if msg.get("channel") == "trade":
                for t in msg["data"]:
                    ids = self.trade_ids.setdefault(t["symbol"], [])
                    if ids and t["trade_id"] != ids[-1] + 1:
                        self.trade_errors.append(f"{t['symbol']}: {t['trade_id']} after {ids[-1]}")
                    ids.append(t["trade_id"])
            self.log.clear()  # keep memory flat


async def verifier(url: str, depth: int, trades: bool = False) -> Verifier:
    c = await Client.open(url)
    v = Verifier(c.ws, depth)
    await v.recv()
    await v.send({"method": "subscribe", "params": {"channel": "book", "symbol": SYMBOLS, "depth": depth}})
    if trades:
        await v.send({"method": "subscribe", "params": {"channel": "trade", "symbol": SYMBOLS}})
    return v


async def test_depth_views_and_trades_survive_faults_on_one_line():
    async with rig() as r:
        stop = asyncio.Event()
        vs = [await verifier(r.url, d, trades=(d == 10)) for d in (10, 25, 100)]
        tasks = [asyncio.create_task(v.run(stop)) for v in vs]
        await asyncio.sleep(1.0)
        for kind, duration, params in (
            ("drop", None, {}),
            ("stall", 1.0, {}),
            ("corrupt_checksum", None, {"symbol": "BTC/USD"}),
        ):
            r.sim.inject(1, kind, duration, **params)
            await asyncio.sleep((duration or 0) + 0.8)
            assert await until(lambda: all(c.state == "live" for c in r.pool.connections), 6.0)
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.gather(*tasks)
        for v in vs:
            assert v.checksum_bad == 0, v.depth
            assert v.checksums_ok > 100, (v.depth, v.checksums_ok)
            assert v.ws.close_code is None  # the connection never closed
        assert vs[0].trade_errors == []
        assert sum(len(ids) for ids in vs[0].trade_ids.values()) > 20
        print({v.depth: v.checksums_ok for v in vs}, r.server.stats())
        for v in vs:
            await v.ws.close()


async def ccxt_watch(ws_url: str, rest_url: str, kind: str, symbol: str, seconds: float) -> dict[str, Any]:
    """ccxt.pro kraken `watch_trades` / `watch_ticker` for `seconds`; what it saw."""
    import ccxt.pro as ccxtpro

    ex = ccxtpro.kraken({"enableRateLimit": False, "timeout": 10000})
    ex.urls["api"]["ws"]["publicV2"] = ws_url
    ex.urls["api"]["ws"]["public"] = ws_url
    ex.urls["api"]["public"] = rest_url.rstrip("/")
    seen: dict[str, Any] = {"ids": [], "tickers": 0, "errors": []}
    end = time.monotonic() + seconds
    try:
        await asyncio.wait_for(ex.load_markets(), 10)
        while time.monotonic() < end:
            try:
                if kind == "trades":
                    trades = await asyncio.wait_for(ex.watch_trades(symbol), max(0.05, end - time.monotonic()))
                    for t in trades:
                        if not seen["ids"] or int(t["id"]) > seen["ids"][-1]:
                            seen["ids"].append(int(t["id"]))
                else:
                    tick = await asyncio.wait_for(ex.watch_ticker(symbol), max(0.05, end - time.monotonic()))
                    assert tick["symbol"] == symbol and tick["last"] is not None
                    seen["tickers"] += 1
            except TimeoutError:
                break
    except Exception as exc:
        seen["errors"].append(f"{type(exc).__name__}: {exc}")
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ex.close(), 5)
    return seen


async def sdk_ws_client(base_url: str, seconds: float) -> dict[str, Any]:
    """python-kraken-sdk `SpotWSClient`: ticker + trade on the relay for `seconds`."""
    import logging

    from kraken.spot import SpotWSClient

    seen: dict[str, Any] = {"acks": [], "trade_ids": [], "tickers": 0, "errors": [], "statuses": 0}

    async def on_message(msg: Any) -> None:
        if not isinstance(msg, dict):
            return
        if msg.get("method") == "subscribe":
            seen["acks"].append(msg.get("success"))
        elif msg.get("channel") == "status":
            seen["statuses"] += 1
        elif msg.get("channel") == "ticker":
            seen["tickers"] += 1
        elif msg.get("channel") == "trade" and msg.get("type") == "update":
            seen["trade_ids"] += [t["trade_id"] for t in msg["data"] if t["symbol"] == "BTC/USD"]
        elif "error" in msg:
            seen["errors"].append(msg["error"])

    logging.getLogger("kraken").setLevel(logging.CRITICAL)
    client = SpotWSClient(callback=on_message, ws_url=base_url)
    try:
        await asyncio.wait_for(client.start(), 10)
        await client.subscribe(params={"channel": "ticker", "symbol": SYMBOLS})
        await client.subscribe(params={"channel": "trade", "symbol": ["BTC/USD"]})
        await asyncio.sleep(seconds)
        if client.exception_occur:
            seen["errors"].append("client reported an exception")
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.close(), 5)
    return seen


@pytest.mark.parametrize("warm", [None, ["SOL/USD"]], ids=["configured", "on-demand"])
async def test_real_clients_against_the_relay_while_one_line_fails(warm):
    """The clients' symbols configured, or all of them outside the warm set (served on demand)."""
    from tests.clients import run_ccxt_watch_order_book, run_kraken_sdk_orderbook

    async with rig(warm) as r:

        async def faults() -> None:
            await asyncio.sleep(1.0)
            for kind, duration, params in (
                ("drop", None, {}),
                ("stall", 1.0, {}),
                ("corrupt_checksum", None, {"symbol": "ETH/USD"}),
            ):
                r.sim.inject(1, kind, duration, **params)
                await asyncio.sleep((duration or 0) + 0.8)

        before = r.server.stats()["accepted"]
        sdk, ccxt_book, trades, ticker, sdkws, _ = await asyncio.gather(
            run_kraken_sdk_orderbook(r.url, SYMBOLS, depth=10, n_updates=100_000, timeout=5.5),
            run_ccxt_watch_order_book(r.url, r.sim.rest_url, SYMBOLS, n=100_000, timeout=5.5, depth=25),
            ccxt_watch(r.url, r.sim.rest_url, "trades", "BTC/USD", 5.0),
            ccxt_watch(r.url, r.sim.rest_url, "ticker", "ETH/USD", 5.0),
            sdk_ws_client(r.url[: -len("/v2")], 5.0),
            faults(),
        )
        print("sdk", sdk.frames, sdk.valid, sdk.invalid, sdk.errors[:3])
        print("ccxt book", ccxt_book.frames, ccxt_book.valid, ccxt_book.invalid, ccxt_book.errors[:3])
        print("ccxt trades", len(trades["ids"]), trades["errors"], "ticker", ticker)
        assert sdk.invalid == 0 and sdk.frames > 200
        assert [e for e in sdk.errors if not e.startswith("timeout")] == []
        assert ccxt_book.invalid == 0 and ccxt_book.frames > 200
        assert [e for e in ccxt_book.errors if not e.startswith("timeout")] == []
        ids = trades["ids"]
        assert trades["errors"] == [] and len(ids) > 10
        assert ids == list(range(ids[0], ids[0] + len(ids)))  # exactly once, no gap
        assert ticker["errors"] == [] and ticker["tickers"] > 5
        print("sdk ws", {k: (v if not isinstance(v, list) or len(v) < 5 else len(v)) for k, v in sdkws.items()})
        assert sdkws["errors"] == [] and sdkws["acks"] == [True, True, True] and sdkws["statuses"] >= 1
        tids = sdkws["trade_ids"]
        assert len(tids) > 10 and tids == list(range(tids[0], tids[0] + len(tids)))
        assert sdkws["tickers"] > 5
        assert r.server.stats()["accepted"] - before == 5  # nobody had to reconnect
