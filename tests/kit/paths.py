"""The repository root and the real Kraken captures (../shared/fixtures/kraken, or $KRAKEN_FIXTURES).

Capture-based tests get their files through `need_fixture`: a missing capture skips the test on a
developer machine and fails it under CI (CI=true), so CI can never go green without the captures.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(os.environ.get("KRAKEN_FIXTURES", ROOT.parent / "shared" / "fixtures" / "kraken"))
V2_WIRE = FIXTURES / "derived" / "python-kraken-sdk_orderbook-v2.wire.ndjson"
INSTRUMENT_SNAPSHOT = FIXTURES / "kraken-data-recorder" / "test" / "data" / "instrument_snapshot.json"


def in_ci() -> bool:
    """True when running under CI (the CI environment variable set to true, as CI services do)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def need_fixture(path: Path, what: str | None = None) -> Path:
    """`path` if it exists; otherwise fail under CI, skip elsewhere."""
    if path.exists():
        return path
    msg = f"{what or 'fixture'} not found: {path} (fixtures root {FIXTURES})"
    if in_ci():
        pytest.fail(f"{msg}; CI=true requires the Kraken captures", pytrace=False)
    pytest.skip(msg)


def v2_wire_frames() -> list[bytes]:
    """The real v2 BTC/USD depth-10 capture: 1 snapshot + 509 updates, wire lexemes."""
    need_fixture(V2_WIRE, "v2 wire capture")
    return [ln.strip() for ln in V2_WIRE.read_bytes().splitlines() if ln.strip()]
