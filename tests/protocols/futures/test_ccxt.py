"""ccxt's `krakenfutures` (pro) runs unchanged against the relay's /ws/v1 endpoint, offline: only
its URLs point at the relay (websocket) and the futures simulator (REST instruments)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import pytest

from tests.protocols.futures.harness import futures_rig

pytestmark = [pytest.mark.slow, pytest.mark.clients]

PRODUCTS = ["PF_XBTUSD", "PF_ETHUSD"]


async def ccxt_futures(ws_url: str, rest_url: str, seconds: float) -> dict[str, Any]:
    import ccxt.pro as ccxtpro

    ex = ccxtpro.krakenfutures({"enableRateLimit": False, "timeout": 10000})
    ex.urls["api"]["ws"] = ws_url
    ex.urls["api"]["public"] = rest_url.rstrip("/") + "/derivatives/api/"
    seen: dict[str, Any] = {"books": 0, "bad_books": [], "trades": [], "errors": [], "symbol": None}
    end = time.monotonic() + seconds
    try:
        await asyncio.wait_for(ex.load_markets(), 10)
        symbol = ex.markets_by_id["PF_XBTUSD"][0]["symbol"]
        seen["symbol"] = symbol

        async def books() -> None:
            while time.monotonic() < end:
                ob = await asyncio.wait_for(ex.watch_order_book(symbol), max(0.05, end - time.monotonic()))
                seen["books"] += 1
                bids = ob["bids"]
                asks = ob["asks"]
                if bids and asks and bids[0][0] >= asks[0][0]:
                    seen["bad_books"].append((bids[0], asks[0]))

        async def trades() -> None:
            while time.monotonic() < end:
                got = await asyncio.wait_for(ex.watch_trades(symbol), max(0.05, end - time.monotonic()))
                for t in got:
                    if t["id"] not in seen["trades"]:
                        seen["trades"].append(t["id"])

        results = await asyncio.gather(books(), trades(), return_exceptions=True)
        for r in results:
            if isinstance(r, Exception) and not isinstance(r, asyncio.TimeoutError):
                seen["errors"].append(f"{type(r).__name__}: {r}")
        ob = ex.orderbooks.get(symbol)
        if ob is not None:
            seen["final_book"] = ({p: a for p, a in ob["bids"]}, {p: a for p, a in ob["asks"]})
    except Exception as exc:
        seen["errors"].append(f"{type(exc).__name__}: {exc}")
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ex.close(), 5)
    return seen


@pytest.mark.parametrize("warm", [PRODUCTS, ["PF_ETHUSD"]], ids=["configured", "on_demand"])
async def test_ccxt_krakenfutures_watch_order_book_and_trades(warm):
    """PF_XBTUSD configured, or outside the warm set (the relay subscribes it when ccxt asks)."""
    async with futures_rig(products=PRODUCTS, warm=warm, rate=200.0, trade_rate=20.0) as rig:
        task = asyncio.create_task(ccxt_futures(rig.url, rig.sim.rest_url, 3.0))
        await asyncio.sleep(1.0)
        rig.sim.inject(0, "drop")  # a line lost under the client: nothing visible to it
        await asyncio.sleep(1.2)
        rig.sim.paused = True  # the market stops; ccxt receives what is in flight
        seen = await task
        assert seen["errors"] == []
        assert seen["symbol"] == "BTC/USD:USD"
        assert seen["books"] > 50 and seen["bad_books"] == []
        assert len(seen["trades"]) > 5
        # ccxt's book equals the market's own book, level for level
        market = rig.sim.market.books["PF_XBTUSD"]
        bids, asks = seen["final_book"]
        assert bids == {lv.price: lv.qty for lv in market.bids.values()}
        assert asks == {lv.price: lv.qty for lv in market.asks.values()}
