"""A v1 rig: the simulator's v1 lines -> the assembled relay (v1 stack only) -> TLS listener."""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from relay.app import Relay
from relay.config import parse_config
from relay.sim import LineConfig, SimConfig, Simulator
from tests.kit.tls import self_signed

PAIRS = ["XBT/USD", "ETH/USD"]


@pytest.fixture(scope="session")
def tls_cert(tmp_path_factory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (openssl CLI)."""
    return self_signed(tmp_path_factory.mktemp("tls"))


def client_ssl(cert: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert))


def v1_config(
    urls: list[str],
    cert: Path | None,
    key: Path | None,
    depth: int = 100,
    *,
    warm: list[str] | None = None,
    intervals: list[int] | None = None,
    dynamic: dict[str, Any] | None = None,
) -> Any:
    """The rig's relay config: `warm` pairs (default `PAIRS`) on every channel."""
    server: dict[str, Any] = {}  # ports: Relay(server_port=0, http_port=0)
    if cert is not None:
        server["tls"] = {"cert": str(cert), "key": str(key)}
    if dynamic is not None:
        server["dynamic_subscriptions"] = dynamic
    pairs = PAIRS if warm is None else warm
    return parse_config(
        {
            "upstreams": [{"name": f"line{i}", "url": u, "protocol": "v1"} for i, u in enumerate(urls)],
            "v1": {
                "channels": {
                    "book": {"symbols": pairs, "depth": depth},
                    "trade": {"symbols": pairs},
                    "ticker": {"symbols": pairs},
                    "spread": {"symbols": pairs},
                    "ohlc": {"symbols": pairs, "intervals": intervals or [1]},
                }
            },
            "server": server,
            "reconnect": {"initial_delay": 0.05, "max_delay": 0.4, "stagger": 0.02, "handshake_timeout": 2.0},
            "liveness": {"frame_timeout": 0.8, "ping_interval": 0.25, "stale_after": 2.0},
            "subscribe": {"batch_size": 10, "requests_per_second": 50.0, "retry_delay": 0.2},
            "budget": {"attempts": 100, "window": 600.0},
        },
        env={},
    )


class Rig:
    def __init__(self, sim: Simulator, relay: Relay) -> None:
        self.sim = sim
        self.relay = relay

    @property
    def url(self) -> str:
        return self.relay.server.url_for(self.relay.stack("v1").endpoint.path)


@contextlib.asynccontextmanager
async def v1_rig(
    cert: Path | None = None,
    key: Path | None = None,
    lines: int = 2,
    rate: float = 300.0,
    depth: int = 100,
    *,
    symbols: list[str] | None = None,
    warm: list[str] | None = None,
    dynamic: dict[str, Any] | None = None,
) -> AsyncIterator[Rig]:
    """Simulator lines (`symbols`, v2 names) -> the relay's v1 stack (warm `warm`, v1 names)."""
    cfg = SimConfig(
        symbols=symbols or ["BTC/USD", "ETH/USD"],
        rate=rate,
        seed=11,
        lines=[LineConfig(latency=0.001 * i, jitter=0.002) for i in range(lines)],
    )
    async with Simulator(cfg) as sim:
        relay = Relay(v1_config(sim.v1_urls, cert, key, depth, warm=warm, dynamic=dynamic), server_port=0, http_port=0)
        await relay.start()
        try:
            yield Rig(sim, relay)
        finally:
            await relay.stop()
