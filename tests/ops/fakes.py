"""Fake `stats()` snapshots in the shape documented in relay/ops/metrics.py.

`DegradedRelay` is a bad day on one relay: one line down with its connect budget nearly spent,
checksum mismatches and resyncs on the other, a stale symbol, a symbol left with one valid line,
missing trades, slow clients, not ready; its NATS publisher is connected but dropping (buffer
full), and its third line `eu` is a NATS line losing messages (sequence gaps). `OutageRelay` has
every line down during a Kraken maintenance, and NATS unreachable with JetStream not set up.
Counters grow on every call (one call per scrape), so rate()/increase() expressions see movement.
"""

from __future__ import annotations

import time
from typing import Any


class FakeLoop:
    """Stands in for LoopLagMonitor in the collector: a lagging event loop."""

    def __init__(self, lag: float = 0.8) -> None:
        self._lag = lag

    def lag(self) -> float:
        return self._lag

    def max_lag(self) -> float:
        return self._lag * 1.5


class DegradedRelay:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> dict[str, Any]:
        self.calls += 1
        n = self.calls
        return {
            "upstreams": [
                {
                    "name": "primary",
                    "up": 1,
                    "state": "live",
                    "system": "online",
                    "connects": 2,
                    "attempts": 3,
                    "budget_remaining": 97,
                    "disconnects": {"close_1006": 1},
                    "frames": 1000 * n,
                    "bytes": 180_000 * n,
                    "last_frame_age": 0.05,
                    "wins": 700 * n,
                    "duplicates": 250 * n,
                    "checksum_mismatches": 10 * n,
                    "resyncs": {"checksum": 10 * n, "stale": 0, "gap": 10 * n},
                },
                {
                    "name": "beta",
                    "up": 0,
                    "state": "backoff",
                    "system": "maintenance",
                    "connects": 40,
                    "attempts": 95,
                    "budget_remaining": 5,
                    "disconnects": {"close_1001": 10 * n, "frame_timeout": n},
                    "frames": 300 * n,
                    "bytes": 54_000 * n,
                    "last_frame_age": 42.0,
                    "wins": 300 * n,
                    "duplicates": 700 * n,
                    "checksum_mismatches": 0,
                    "resyncs": {"checksum": 0, "stale": n, "gap": 0},
                },
                {  # a NATS line (another relay's publications): the usual line stats plus its events
                    "name": "eu",
                    "up": 1,
                    "state": "live",
                    "system": "online",
                    "connects": 1,
                    "attempts": 1,
                    "budget_remaining": 99,
                    "disconnects": {},
                    "frames": 900 * n,
                    "bytes": 160_000 * n,
                    "last_frame_age": 0.2,
                    "wins": 100 * n,
                    "duplicates": 800 * n,
                    "checksum_mismatches": 0,
                    "resyncs": {},
                    "line_events": {"gap": 5 * n, "epoch": 1, "snapshot": 5 * n + 20, "snapshot_unavailable": n},
                },
            ],
            "symbols": [
                {
                    "symbol": "BTC/USD",
                    "channel": "book",
                    "state": "ok",
                    "published": 500 * n,
                    "age": 0.1,
                    "upstreams": {"primary": "valid", "beta": "down"},
                },
                {
                    "symbol": "ETH/USD",
                    "channel": "book",
                    "state": "stale",
                    "published": 10,
                    "age": 30.0,
                    "upstreams": {"primary": "stale", "beta": "down"},
                },
                {
                    "symbol": "BTC/USD",
                    "channel": "trade",
                    "state": "ok",
                    "published": 50 * n,
                    "age": 0.5,
                    "upstreams": {"primary": "valid", "beta": "down"},
                    "gaps": n,
                    "missing_trades": 4 * n,
                },
                {
                    "symbol": "BTC/USD",
                    "channel": "ticker",
                    "state": "ok",
                    "published": 20 * n,
                    "age": 1.0,
                    "upstreams": {"primary": "valid", "beta": "down"},
                },
            ],
            "clients": {
                "connected": 12,
                "subscriptions": 40,
                "buffer_bytes": 3_000_000,
                "buffer_max_bytes": 2_500_000,
                "frames_sent": 6000 * n,
                "snapshot_resets": n,
                "slow_closes": n,
                "rejected": {"rate_limit": n, "bad_request": 0},
            },
            "on_demand": [{"protocol": "v2", "held": 3, "pending": 1, "demanded": 5 * n, "released": 2, "refused": n}],
            # a recorder on a slow disk: it drops, fails and lags
            "capture": {
                "records_written": 1000 * n,
                "records_dropped": 50 * n,
                "bytes_written": 40_000 * n,
                "write_errors": n,
                "disk_bytes": 5_000_000,
                "lag_seconds": 40.0,
            },
            # the NATS publisher: connected, but NATS takes less than it is given
            "nats": {
                "connected": 1,
                "messages": 5000 * n,
                "bytes": 900_000 * n,
                "dropped": {"disconnected": 10, "buffer_full": 30 * n, "unroutable": 0},
                "pending_bytes": 8_000_000,
                "snapshot_requests": {"ok": 20 * n, "unavailable": n, "bad_subject": 0},
                "connects": 2,
                "disconnects": 1,
                "down_since": None,
                "jetstream_ok": True,
                "keyframes": 8 * n,
            },
            "system_status": "online",
            "ready": 0,
        }


class OutageRelay:
    def __init__(self) -> None:
        self.calls = 0
        self.nats_down_since = time.time() - 90

    def __call__(self) -> dict[str, Any]:
        self.calls += 1
        return {
            "upstreams": [
                {
                    "name": "primary",
                    "up": 0,
                    "state": "maintenance",
                    "system": "maintenance",
                    "connects": 5,
                    "attempts": 5 + self.calls,
                    "budget_remaining": 90,
                    "last_frame_age": 120.0,
                },
                {
                    "name": "beta",
                    "up": 0,
                    "state": "maintenance",
                    "system": "maintenance",
                    "connects": 5,
                    "attempts": 5 + self.calls,
                    "budget_remaining": 90,
                    "last_frame_age": 120.0,
                },
            ],
            "symbols": [
                {
                    "symbol": "BTC/USD",
                    "channel": "book",
                    "state": "down",
                    "published": 100,
                    "age": 120.0,
                    "upstreams": {"primary": "down", "beta": "down"},
                },
            ],
            "clients": {"connected": 0, "subscriptions": 0},
            # NATS unreachable: everything published is dropped; the stream was never set up
            "nats": {
                "connected": 0,
                "messages": 0,
                "bytes": 0,
                "dropped": {"disconnected": 50 * self.calls},
                "pending_bytes": 0,
                "snapshot_requests": {},
                "connects": 0,
                "disconnects": 0,
                "down_since": self.nats_down_since,
                "jetstream_ok": False,
                "keyframes": 0,
            },
            "system_status": "maintenance",
            "ready": 0,
        }
