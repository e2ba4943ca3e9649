"""Dynamic subscriptions: which extra (channel, symbol) pairs clients asked the relay to fetch.

Sans-I/O and clock-fed. Symbols configured in advance are always live and never pass through
here. A client asking for another symbol (when `server.dynamic_subscriptions.enabled`) makes the
relay call `on_demand(channel, symbol)` on the upstream side (within `allow` and `max_symbols`);
when the last client leaves, `on_release(channel, symbol)` follows `release_after` seconds later
unless a client came back in between, so a client that reconnects does not cause churn upstream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from relay.config import DynamicSubscriptionsConfig


class DemandHandler(Protocol):
    """Subscribes / unsubscribes one (channel, symbol) upstream (`endpoint.DemandedSymbols`).

    Both are called from the event loop and must not block. The upstream side reports back
    through `V2Endpoint.demand_ready(channel, symbol, now)` (optional: the first published data
    counts too) and `V2Endpoint.demand_failed(channel, symbol, error, now)` (Kraken refused it; no
    on_release follows).
    """

    def on_demand(self, channel: str, symbol: str) -> None: ...

    def on_release(self, channel: str, symbol: str) -> None: ...


@dataclass(slots=True)
class _Entry:
    refs: int = 0
    ready: bool = False
    release_at: float | None = None


class DemandTracker:
    """Reference counts per demanded (channel, symbol), release timers, the symbol cap."""

    def __init__(self, cfg: DynamicSubscriptionsConfig, handler: DemandHandler | None) -> None:
        self.cfg = cfg
        self.handler = handler
        self.entries: dict[tuple[str, str], _Entry] = {}
        self.demanded = 0
        self.released = 0

    @property
    def enabled(self) -> bool:
        return self.cfg.enabled and self.handler is not None

    def allowed(self, symbol: str) -> bool:
        return not self.cfg.allow or symbol in self.cfg.allow

    def symbols(self) -> set[str]:
        return {sym for _, sym in self.entries}

    def known(self, channel: str, symbol: str) -> bool:
        return (channel, symbol) in self.entries

    def is_ready(self, channel: str, symbol: str) -> bool:
        e = self.entries.get((channel, symbol))
        return e is not None and e.ready

    def can_add(self, channel: str, symbol: str) -> bool:
        """Would demanding this pair stay within `max_symbols` (distinct symbols)?"""
        if (channel, symbol) in self.entries:
            return True
        syms = self.symbols()
        return symbol in syms or len(syms) < self.cfg.max_symbols

    def acquire(self, channel: str, symbol: str) -> bool:
        """One more client wants it; returns True when it was newly demanded upstream."""
        key = (channel, symbol)
        e = self.entries.get(key)
        if e is None:
            e = self.entries[key] = _Entry()
            self.demanded += 1
            assert self.handler is not None
            self.handler.on_demand(channel, symbol)
            e.refs = 1
            return True
        e.refs += 1
        e.release_at = None
        return False

    def release(self, channel: str, symbol: str, now: float) -> None:
        """One client less; the upstream release is scheduled when nobody is left."""
        e = self.entries.get((channel, symbol))
        if e is None:
            return
        e.refs = max(0, e.refs - 1)
        if e.refs == 0:
            e.release_at = now + self.cfg.release_after

    def mark_ready(self, channel: str, symbol: str) -> None:
        e = self.entries.get((channel, symbol))
        if e is not None:
            e.ready = True

    def forget(self, channel: str, symbol: str) -> None:
        """Upstream refused the pair: drop it without an on_release."""
        self.entries.pop((channel, symbol), None)

    def tick(self, now: float) -> list[tuple[str, str]]:
        """Release every pair whose timer expired; returns them."""
        due = [k for k, e in self.entries.items() if e.refs == 0 and e.release_at is not None and e.release_at <= now]
        for channel, symbol in due:
            del self.entries[(channel, symbol)]
            self.released += 1
            if self.handler is not None:
                self.handler.on_release(channel, symbol)
        return due
