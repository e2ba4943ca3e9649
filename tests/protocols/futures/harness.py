"""A futures rig: FuturesSimulator lines -> the real Relay (futures stack) -> websocket clients."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
from websockets.asyncio.client import connect

from relay.app import Relay
from relay.config import parse_config
from relay.sim.futures import FuturesSimConfig, FuturesSimulator
from relay.sim.server import LineConfig
from tests.protocols.futures.capture import ClientView
from tests.upstream.harness import until

__all__ = ["FuturesClient", "futures_rig", "until"]


def futures_config(urls: list[str], products: list[str], **extra: Any) -> Any:
    """A fast-timing relay config for the simulator's lines; `products`: the warm set (book, trade,
    ticker_lite); `extra`: top-level sections replaced (`server`, ...)."""
    data: dict[str, Any] = {
        "upstreams": [{"name": f"fut{i}", "url": u, "protocol": "futures"} for i, u in enumerate(urls)],
        "futures": {
            "channels": {
                "book": {"products": products},
                "trade": {"products": products},
                "ticker_lite": {"products": products},
            },
            "heartbeat_timeout": 1.5,
            "ping_interval": 5.0,
        },
        "reconnect": {"initial_delay": 0.05, "max_delay": 0.4, "stagger": 0.02, "handshake_timeout": 2.0},
        "liveness": {"frame_timeout": 0.8, "ping_interval": 0.25, "stale_after": 0.8},
        "subscribe": {"batch_size": 10, "requests_per_second": 50.0, "retry_delay": 0.2},
        "merge": {"trade_gap_wait": 0.2},
    }
    data.update(extra)
    return parse_config(data, env={})


class FuturesClient:
    """A raw futures client of the relay: every frame goes through a ClientView (seq checks)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.view = ClientView()
        self.events: list[dict[str, Any]] = []
        self.closed: str | None = None
        self._task: asyncio.Task | None = None
        self.ws: Any = None

    async def start(self) -> FuturesClient:
        self.ws = await connect(self.url, compression=None, max_size=1 << 24)
        self._task = asyncio.create_task(self._read())
        return self

    async def send(self, msg: dict[str, Any]) -> None:
        await self.ws.send(orjson.dumps(msg).decode())

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                data = raw if isinstance(raw, bytes) else raw.encode()
                if data.startswith(b'{"event"'):
                    self.events.append(orjson.loads(data))
                else:
                    self.view.feed(data)
        except Exception as exc:
            self.closed = repr(exc)
            return
        self.closed = f"closed {self.ws.close_code}"

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), 2)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task


class Rig:
    def __init__(self, sim: FuturesSimulator, relay: Relay, products: list[str]) -> None:
        self.sim, self.relay, self.products = sim, relay, products
        self.merge = relay.stack("futures").merge

    @property
    def url(self) -> str:
        return self.relay.server.url_for("/ws/v1")


@contextlib.asynccontextmanager
async def futures_rig(
    products: list[str] | None = None,
    lines: int = 2,
    *,
    warm: list[str] | None = None,
    relay_config: dict[str, Any] | None = None,
    **sim_kw: Any,
) -> AsyncIterator[Rig]:
    """The simulator's `products` on `lines` lines -> a relay whose warm set is `warm` (default:
    every simulated product), with `relay_config` sections on top of `futures_config`'s."""
    sim_cfg = FuturesSimConfig(
        products=products or ["PF_XBTUSD", "PF_ETHUSD"],
        rate=sim_kw.pop("rate", 200.0),
        trade_rate=sim_kw.pop("trade_rate", 20.0),
        seed=5,
        heartbeat_interval=sim_kw.pop("heartbeat_interval", 0.2),
        lines=[LineConfig(latency=0.0005 * (i + 1), jitter=0.0005) for i in range(lines)],
        **sim_kw,
    )
    sim = FuturesSimulator(sim_cfg)
    await sim.start()
    products = sim.market.products
    served = products if warm is None else warm
    relay = Relay(futures_config(sim.urls, served, **(relay_config or {})), server_port=0, http_port=0)
    relay.stack("futures").pool.planner_options = {
        "resync_min_interval": 0.2,
        "resync_max_interval": 1.0,
        "ack_timeout": 2.0,
    }
    relay.stack("futures").pool.stable_after = 0.5
    await relay.start()
    try:
        rig = Rig(sim, relay, products)
        assert await until(lambda: all(rig.merge.book_snapshot(p, 0) for p in served), 10.0)
        yield rig
    finally:
        await relay.stop()
        await sim.stop()
