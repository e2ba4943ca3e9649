"""Shared test helpers: where the real Kraken captures live, and small loaders for them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("KRAKEN_FIXTURES", ROOT.parent / "shared" / "fixtures" / "kraken"))
V2_WIRE = FIXTURES / "derived" / "python-kraken-sdk_orderbook-v2.wire.ndjson"
INSTRUMENT_SNAPSHOT = FIXTURES / "kraken-data-recorder" / "test" / "data" / "instrument_snapshot.json"


def v2_wire_frames() -> list[bytes]:
    """The real v2 BTC/USD depth-10 capture: 1 snapshot + 509 updates, wire lexemes."""
    if not V2_WIRE.exists():
        pytest.skip(f"fixtures not found at {FIXTURES}")
    return [ln.strip() for ln in V2_WIRE.read_bytes().splitlines() if ln.strip()]


try:  # hypothesis profiles: CI runs thousands of generated cases, local runs fewer
    from hypothesis import HealthCheck, settings

    settings.register_profile("ci", max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    settings.register_profile("dev", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
except ImportError:  # pragma: no cover
    pass
