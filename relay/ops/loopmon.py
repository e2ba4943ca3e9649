"""Event-loop lag monitor: the one signal that says "this process can still do its job".

A periodic `call_later` timer measures how late it fires. A blocked loop cannot answer `/healthz`
at all, but a loop that is merely overloaded answers late; both show up here. `/healthz`, the
systemd watchdog pinger and the `kraken_relay_event_loop_lag_seconds` metric all read this one
object, so they agree on what "healthy" means.
"""

from __future__ import annotations

import asyncio
from collections import deque
from itertools import islice


class LoopLagMonitor:
    """Measures event-loop lag every `interval` seconds; keeps the last value and a windowed max.

    `lag()` is the worst lag of the last `recent` seconds, and also accounts for a timer that has
    not fired yet: if the loop has been stuck for 3 s, the pending tick is already 3 s late even
    though it could not record it. The short memory keeps a probe that arrives just after a
    stall from missing it.
    """

    def __init__(self, interval: float = 0.25, window: int = 240, threshold: float = 1.0, recent: float = 1.0) -> None:
        if interval <= 0 or window < 1 or threshold <= 0 or recent < 0:
            raise ValueError("interval and threshold must be > 0, window >= 1, recent >= 0")
        self.interval = interval
        self.threshold = threshold
        self._recent_ticks = max(1, min(window, round(recent / interval)))
        self._samples: deque[float] = deque(maxlen=window)  # bounded: last `window` ticks only
        self._last = 0.0
        self._due = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self.ticks = 0

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Start ticking on `loop` (default: the running loop). Idempotent."""
        if self._handle is not None:
            return
        self._loop = loop or asyncio.get_running_loop()
        self._schedule()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    @property
    def running(self) -> bool:
        return self._handle is not None

    def _schedule(self) -> None:
        assert self._loop is not None
        self._due = self._loop.time() + self.interval
        self._handle = self._loop.call_at(self._due, self._tick)

    def _tick(self) -> None:
        assert self._loop is not None
        lag = max(0.0, self._loop.time() - self._due)
        self._last = lag
        self._samples.append(lag)
        self.ticks += 1
        self._schedule()

    # -- readings ----------------------------------------------------------------------------
    def lag(self) -> float:
        """Current lag in seconds: the worst recent one, or how overdue the pending tick is."""
        recent = max(islice(reversed(self._samples), self._recent_ticks), default=0.0)
        if self._loop is None or self._handle is None:
            return recent
        return max(recent, self._loop.time() - self._due)

    def last(self) -> float:
        """The most recent single measurement."""
        return self._last

    def max_lag(self) -> float:
        """Worst lag over the recent window (about `window * interval` seconds)."""
        return max(self._samples, default=0.0)

    def healthy(self, threshold: float | None = None) -> bool:
        """True while running and the lag stays under `threshold` (default: self.threshold)."""
        limit = self.threshold if threshold is None else threshold
        return self.running and self.lag() <= limit
