"""Example budgets for expensive hypothesis tests.

The `ci` profile (tests/conftest.py) runs 3000 examples, which cheap property tests afford. A
test whose single example costs tens of milliseconds caps its count with `capped(n)`: the loaded
profile's `max_examples`, but at most `n`, so `dev` runs stay as they are and `ci` runs stay well
under half the 120 s pytest timeout even on a loaded 2-core machine.
"""

from __future__ import annotations

from hypothesis import settings


def capped(n: int) -> int:
    """max_examples for an expensive test: the active profile's count, at most `n`."""
    return min(n, settings.default.max_examples)
