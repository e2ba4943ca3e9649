"""Connection-attempt budget per egress address (sliding window).

Cloudflare allows about 150 connect attempts per IP per rolling 10 minutes and then blocks the
IP for 10 minutes; every line leaving from the same address shares that allowance. One
`AttemptBudget` per egress (source address, proxy address, or "default") keeps the relay under a
configured limit. Sans-I/O: callers pass `now`.
"""

from __future__ import annotations

from collections import deque
from urllib.parse import urlsplit

from relay.config import BudgetConfig, UpstreamConfig
from relay.upstream.backoff import Stagger


def egress_of(up: UpstreamConfig) -> str:
    """The address Kraken sees: the proxy's when a proxy is used, else the source address (a
    NATS line: its servers, so it never spends a Kraken address's attempt budget)."""
    if up.is_nats:
        return "nats:" + up.url.split(",")[0].split("://", 1)[-1].rsplit("@", 1)[-1]
    if up.proxy:
        parts = urlsplit(up.proxy)
        return f"proxy:{parts.hostname}:{parts.port}"
    return up.source_address or "default"


class AttemptBudget:
    """At most `attempts` acquisitions in any window of `window` seconds."""

    def __init__(self, attempts: int, window: float) -> None:
        self.attempts = attempts
        self.window = window
        self._times: deque[float] = deque(maxlen=attempts)
        self.granted = 0
        self.denied = 0
        self.blocked_until = float("-inf")  # set by an HTTP 429: the whole address backs off

    def _expire(self, now: float) -> None:
        times = self._times
        while times and times[0] <= now - self.window:
            times.popleft()

    def wait_time(self, now: float) -> float:
        """0 if an attempt is allowed now, else seconds until the oldest one leaves the window."""
        self._expire(now)
        blocked = self.blocked_until - now
        if len(self._times) < self.attempts:
            return max(0.0, blocked)
        return max(blocked, self._times[0] + self.window - now)

    def block(self, until: float) -> None:
        """Cloudflare answered 429 to this address: no attempt from it before `until`."""
        self.blocked_until = max(self.blocked_until, until)

    def try_acquire(self, now: float) -> float:
        """Take one attempt if allowed (returns 0.0), else return the wait time and take nothing."""
        wait = self.wait_time(now)
        if wait > 0:
            self.denied += 1
            return wait
        self._times.append(now)
        self.granted += 1
        return 0.0

    def used(self, now: float) -> int:
        self._expire(now)
        return len(self._times)


class BudgetRegistry:
    """One budget per egress address, created on first use."""

    def __init__(self, cfg: BudgetConfig) -> None:
        self.cfg = cfg
        self.budgets: dict[str, AttemptBudget] = {}

    def for_upstream(self, up: UpstreamConfig) -> AttemptBudget:
        key = egress_of(up)
        budget = self.budgets.get(key)
        if budget is None:
            budget = self.budgets[key] = AttemptBudget(self.cfg.attempts, self.cfg.window)
        return budget


class AttemptGate:
    """When may one upstream attempt a connection: first a pool-wide stagger slot, then one
    attempt from its egress budget. Sans-I/O: `poll(now)` returns 0.0 when the attempt may go
    now (budget taken), else how long to sleep before polling again. `poll(now, urgent=True)`
    skips the stagger (no other line serves, or an immediate retry): only the budget applies."""

    def __init__(self, stagger: Stagger, budget: AttemptBudget) -> None:
        self.stagger = stagger
        self.budget = budget
        self._slot: float | None = None
        self.budget_limited = False  # the last wait came from the budget (or a 429 block)

    def poll(self, now: float, urgent: bool = False) -> float:
        if urgent:
            self._slot = None
        elif self._slot is None:
            self._slot = now + self.stagger.reserve(now)
        if self._slot is not None and now < self._slot:
            self.budget_limited = False
            return self._slot - now
        self._slot = None
        wait = self.budget.try_acquire(now)
        self.budget_limited = wait > 0
        return wait
