"""Fixtures for ops tests: fake relay scrape targets served from a thread, a throw-away Prometheus."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest

from relay.ops.http import HttpServer
from relay.ops.metrics import RelayMetrics
from tests.ops.fakes import DegradedRelay, FakeLoop, OutageRelay
from tests.ops.promql import Prometheus, prometheus_available


class ThreadedTarget:
    """An HttpServer exposing RelayMetrics(stats) on 127.0.0.1:<free port>, on its own loop thread,
    so synchronous test code (polling Prometheus) never blocks the scrapes."""

    def __init__(self, stats: Callable[[], Mapping[str, Any]], loop_lag: float = 0.8) -> None:
        self.metrics = RelayMetrics(self._stats, FakeLoop(loop_lag))  # type: ignore[arg-type]
        self._inner = stats
        self._samplers = {name: self.metrics.lag_sampler(name, every=1) for name in ("primary", "beta")}
        self.port = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    def _stats(self) -> Mapping[str, Any]:
        for i, sampler in enumerate(self._samplers.values()):  # give the lag histogram observations
            sampler.observe(0.02 + 0.03 * i)
        return self._inner()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = HttpServer("127.0.0.1", 0, self.metrics.registry, lambda: (False, {}))
        await server.start()
        self.port = server.port
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await server.stop()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> ThreadedTarget:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("target server did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


@pytest.fixture
def fake_relays() -> Iterator[tuple[ThreadedTarget, ThreadedTarget]]:
    """A degraded relay and a relay in a full outage (see tests/ops/fakes.py)."""
    degraded = ThreadedTarget(DegradedRelay()).start()
    outage = ThreadedTarget(OutageRelay()).start()
    try:
        yield degraded, outage
    finally:
        degraded.stop()
        outage.stop()


@pytest.fixture
def prometheus() -> Iterator[Callable[..., Prometheus]]:
    """Factory: `prometheus(["127.0.0.1:PORT", ...], scrape_interval=0.5)` -> a started Prometheus."""
    if not prometheus_available():
        pytest.skip("prometheus binary not installed (run .ci/install-tools or apt-get install prometheus)")
    started: list[Prometheus] = []

    def start(targets: list[str], **kw: Any) -> Prometheus:
        prom = Prometheus(targets, **kw).start()
        started.append(prom)
        return prom

    yield start
    for prom in started:
        prom.stop()
