"""The daemon's `Relay` in-process on the built-in simulator: one context manager for the tests
that need the whole stack (on-demand planning, the pool, the listener) without a child process."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from relay.app import Relay
from relay.config import parse_config
from relay.sim import SimConfig, Simulator

# Compressed reconnect times: what is seconds in production is tenths here.
FAST_RECONNECT = {"initial_delay": 0.05, "max_delay": 0.4, "stagger": 0.02}


async def wait_for(pred: Callable[[], Any], timeout: float, what: str) -> None:
    """Poll `pred` until it is true; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def relay_on_sim(
    sim_config: SimConfig,
    config: dict[str, Any],
    ready: Callable[[Relay], Any] | None = None,
    timeout: float = 15.0,
) -> AsyncIterator[tuple[Relay, Simulator]]:
    """Start the simulator, then a relay with one Spot v2 upstream per simulator line (plus
    `config`), wait until `ready(relay)` holds, yield both; stop both."""
    sim = Simulator(sim_config)
    await sim.start()
    try:
        data = {
            "upstreams": [{"name": f"line{i}", "url": url} for i, url in enumerate(sim.urls)],
            "reconnect": FAST_RECONNECT,
            **config,
        }
        relay = Relay(parse_config(data, env={}), server_port=0, http_port=0)
        await relay.start()
        try:
            if ready is not None:
                await wait_for(lambda: ready(relay), timeout, "the relay to be ready")
            yield relay, sim
        finally:
            await relay.stop()
    finally:
        await sim.stop()
