"""Reconnect delays: capped exponential backoff with full jitter, plus Kraken's special cases.

The jitter maths is tenacity's `wait_random_exponential` (delay uniform in
[0, min(max_delay, initial_delay * 2**(n-1))]), so redundant lines that drop together do not
come back together. On top of it:

* while Kraken reports maintenance on a line, attempts are at least `maintenance_delay` apart
  (Kraken: no benefit reconnecting faster, and it spends the Cloudflare budget);
* an HTTP 429 on the handshake backs off to at least `max_delay`;
* the attempt counter resets only after a connection stayed up for `stable_after` seconds, so
  a line that connects and drops at once keeps backing off instead of hammering;
* a line that was live (subscribed, serving) when it dropped tries again at once: no jitter,
  and no stagger slot (`immediate`). Every line dropped by one proxy restart races back, as a
  direct client would. Up to `immediate_reconnects` such attempts in a row; a stable session
  (`stable_after`) renews them, so a line dropping each time it goes live still backs off.

Also `Stagger`: one shared schedule that keeps attempts of different upstreams `stagger`
seconds apart. Everything here is Sans-I/O: callers pass `now` and sleep themselves.
"""

from __future__ import annotations

from tenacity import RetryCallState, wait_random_exponential

from relay.config import ReconnectConfig

RATE_LIMITED = "429"
# Close codes that ask us to wait (1013 "try again later", 1008 policy): never an immediate retry.
WAIT_CODES = ("1008", "1013")


class ReconnectPolicy:
    """Delay before the next connection attempt of one upstream. Never gives up."""

    def __init__(self, cfg: ReconnectConfig, stable_after: float = 10.0) -> None:
        self.cfg = cfg
        self.stable_after = stable_after
        self._wait = wait_random_exponential(multiplier=cfg.initial_delay, max=cfg.max_delay)
        self._state = RetryCallState(None, None, (), {})  # type: ignore[arg-type]  # tenacity only reads attempt_number
        self.failures = 0  # consecutive failed attempts / short-lived connections
        self.immediate_left = cfg.immediate_reconnects
        self.immediate = False  # the last delay is an immediate retry: skip the stagger too
        self._connected_at: float | None = None

    def on_connected(self, now: float) -> None:
        self._connected_at = now

    def next_delay(self, now: float, reason: str, maintenance: bool = False, was_live: bool = False) -> float:
        """Called after a failed attempt or a disconnect (`was_live`: that session was serving);
        returns the delay before the next try."""
        stable = self._connected_at is not None and now - self._connected_at >= self.stable_after
        if stable:
            self.failures = 0  # it was a healthy connection: start again from the bottom
            self.immediate_left = self.cfg.immediate_reconnects
        self._connected_at = None
        self.immediate = (
            was_live
            and self.immediate_left > 0
            and not maintenance
            and reason != RATE_LIMITED
            and not reason.startswith(WAIT_CODES)
        )
        if self.immediate:
            self.immediate_left -= 1
            return 0.0
        self.failures += 1
        self._state.attempt_number = min(self.failures, 64)  # 2**64 is plenty and avoids overflow
        delay = float(self._wait(self._state))
        if reason == RATE_LIMITED:
            delay = max(delay, self.cfg.max_delay)
        if maintenance:
            delay = max(delay, self.cfg.maintenance_delay)
        return delay


class Stagger:
    """Hands out attempt slots at least `interval` apart, shared by every upstream of a pool."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last: float | None = None

    def reserve(self, now: float) -> float:
        """Reserve the next slot at or after `now`; returns how long to wait for it."""
        slot = now if self._last is None else max(now, self._last + self.interval)
        self._last = slot
        return slot - now
