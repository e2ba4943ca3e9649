"""What to log about a line's engine status: its changes, not its frames (Sans-I/O).

Kraken sends `status` on connect and on every change; a flapping or hostile line can send
thousands a second (one line wrote 2.6 MB of logs in 10 s when every frame was logged). Each
change is logged, at most `burst` in any `window` seconds; past that, one notice, then the
changes are only counted and summarised once per window (count, current value).
"""

from __future__ import annotations

from collections import deque
from typing import Any

Record = tuple[str, str, dict[str, Any]]  # (level, event, fields)


class StatusLog:
    def __init__(self, burst: int = 5, window: float = 60.0) -> None:
        self.burst = burst
        self.window = window
        self.value: str | None = None
        self._logged: deque[float] = deque(maxlen=burst)  # times of the last logged changes
        self.suppressed = 0  # changes not logged since `_since`
        self._since = 0.0
        self.changes = 0  # every change seen (metrics, tests)

    def observe(self, value: str, now: float) -> list[Record]:
        """One status frame; returns the records to log now (none when nothing changed)."""
        if value == self.value:
            return []
        previous, self.value = self.value, value
        self.changes += 1
        out = self.flush(now)  # a summary that is due goes first
        logged = self._logged
        if not self.suppressed and (len(logged) < self.burst or now - logged[0] >= self.window):
            logged.append(now)
            return [*out, ("info", "upstream status", {"system": value, "previous": previous})]
        if not self.suppressed:
            self._since = now
            notice = {"system": value, "max_logged": self.burst, "window": self.window}
            out.append(("warning", "upstream status flapping: further changes summarised", notice))
        self.suppressed += 1
        return out

    def flush(self, now: float, force: bool = False) -> list[Record]:
        """The summary of suppressed changes, once `window` has passed since the first (or now,
        with `force`, e.g. when the line goes down)."""
        if not self.suppressed or (not force and now - self._since < self.window):
            return []
        n, since = self.suppressed, self._since
        self.suppressed = 0
        self._logged.clear()
        self._logged.append(now)
        fields = {"system": self.value, "changes": n, "seconds": round(now - since, 1)}
        return [("warning", "upstream status flapping", fields)]
