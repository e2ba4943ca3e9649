"""Suite-wide test configuration: hypothesis profiles. Paths, captures and shared helpers live
in `tests.kit`."""

from __future__ import annotations

import os

try:  # hypothesis profiles: CI runs thousands of generated cases, local runs fewer
    from hypothesis import HealthCheck, settings

    settings.register_profile("ci", max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    settings.register_profile("dev", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
except ImportError:  # pragma: no cover
    pass
