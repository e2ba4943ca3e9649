"""Event-loop lag monitor: notices a blocked loop, including while it is still blocked."""

from __future__ import annotations

import asyncio
import time

import pytest

from relay.ops.loopmon import LoopLagMonitor


async def test_lag_is_small_when_idle_and_large_after_blocking() -> None:
    mon = LoopLagMonitor(interval=0.01, threshold=0.3, recent=0.1)
    assert not mon.healthy()  # not started yet
    mon.start()
    mon.start()  # idempotent
    try:
        await asyncio.sleep(0.1)
        assert mon.ticks >= 3
        assert mon.healthy()
        time.sleep(0.5)  # blocks the loop: the pending tick is overdue right now
        assert mon.lag() >= 0.45 and not mon.healthy()
        await asyncio.sleep(0)  # let the overdue tick record it
        await asyncio.sleep(0.02)
        assert mon.max_lag() >= 0.45
        for _ in range(200):
            await asyncio.sleep(0.01)
            if mon.healthy():
                break
        assert mon.healthy()
        assert mon.max_lag() >= 0.45  # still remembered in the window
    finally:
        mon.stop()
    assert not mon.running and not mon.healthy()


def test_rejects_nonsense_settings() -> None:
    with pytest.raises(ValueError):
        LoopLagMonitor(interval=0)
    with pytest.raises(ValueError):
        LoopLagMonitor(window=0)
