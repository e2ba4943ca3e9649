"""Suite-wide test configuration: hypothesis profiles.

Paths and capture loaders live in tests.kit.paths; they are re-exported here for modules that
still import them from tests.conftest.
"""

from __future__ import annotations

import os

from tests.kit.paths import FIXTURES, INSTRUMENT_SNAPSHOT, ROOT, V2_WIRE, v2_wire_frames

__all__ = ["FIXTURES", "INSTRUMENT_SNAPSHOT", "ROOT", "V2_WIRE", "v2_wire_frames"]

try:  # hypothesis profiles: CI runs thousands of generated cases, local runs fewer
    from hypothesis import HealthCheck, settings

    settings.register_profile("ci", max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    settings.register_profile("dev", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
except ImportError:  # pragma: no cover
    pass
