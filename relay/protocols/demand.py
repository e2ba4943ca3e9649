"""On-demand upstream subscriptions, shared by every protocol's endpoint (Sans-I/O, clock-fed).

A client asking for something outside the configured (warm) set makes its endpoint `acquire`
the upstream subscription key for it (a `SubKey`, or whatever the protocol keys its upstream
subscriptions by). The first acquire of a key adds it to `keys()`, the endpoint's extra
upstream subscriptions, and calls `on_change` so the stack resubscribes every line. Each client
that leaves `release`s its reference; `release_after` seconds after the last one left, `tick`
drops the key (and calls `on_change`), unless a client came back in between, so a client that
reconnects causes no churn upstream.

Bounded by `max_subscriptions` keys per tracker (one tracker per protocol) and by the
operator's `allow` / `deny` patterns. The texts for refusals name the limit or rule, so a client
can tell "this relay does not serve it" from "Kraken does not list it".
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Generic, TypeVar

from relay.config import DynamicSubscriptionsConfig

K = TypeVar("K", bound=Hashable)

CAP_KEY = "server.dynamic_subscriptions.max_subscriptions"


def limit_text(cfg: DynamicSubscriptionsConfig) -> str:
    """The refusal when the cap is reached (Kraken's `Subscription limit exceeded`, plus which)."""
    return f"Subscription limit exceeded: relay on-demand limit of {cfg.max_subscriptions} ({CAP_KEY})"


def denied_text(symbol: str, noun: str = "Currency pair") -> str:
    """The refusal for a symbol the operator's allow/deny patterns exclude (`noun`: what the
    protocol calls a symbol, "Product" on Futures)."""
    return f"{noun} not served by this relay {symbol} (server.dynamic_subscriptions)"


def is_transient(error: str) -> bool:
    """An upstream refusal that a retry resolves (`Exceeded msg rate`, `Already subscribed`, no
    acknowledgement): the line's planner retries it; a waiting client keeps waiting."""
    text = error.lower()
    return "msg rate" in text or "already" in text or "acknowledgement" in text


@dataclass(slots=True)
class _Entry:
    refs: int = 0
    ready: bool = False
    release_at: float | None = None


class DemandTracker(Generic[K]):
    """Reference counts per on-demand upstream key, release timers, the cap, the patterns."""

    def __init__(
        self, cfg: DynamicSubscriptionsConfig, on_change: Callable[[], None] | None = None, noun: str = "Currency pair"
    ) -> None:
        self.cfg = cfg
        self.noun = noun
        self.on_change = on_change or (lambda: None)
        self.entries: dict[K, _Entry] = {}
        self.demanded = 0  # keys ever acquired (metrics)
        self.released = 0  # keys released upstream (metrics)
        self.refused = 0  # requests refused by the cap or the patterns (metrics)

    @property
    def enabled(self) -> bool:
        return self.cfg.enabled

    def permitted(self, symbol: str) -> bool:
        """Within the operator's `allow` (empty: anything) and outside `deny`."""
        cfg = self.cfg
        if cfg.allow and not any(fnmatchcase(symbol, p) for p in cfg.allow):
            return False
        return not any(fnmatchcase(symbol, p) for p in cfg.deny)

    def refusal(self, key: K, symbol: str) -> str | None:
        """Why `key` cannot be demanded now (a client-facing text), or None when it can."""
        if not self.enabled or not self.permitted(symbol):
            self.refused += 1
            return denied_text(symbol, self.noun)
        if key not in self.entries and len(self.entries) >= self.cfg.max_subscriptions:
            self.refused += 1
            return limit_text(self.cfg)
        return None

    def keys(self) -> list[K]:
        """The on-demand upstream subscriptions held now (released ones excluded)."""
        return list(self.entries)

    def known(self, key: K) -> bool:
        return key in self.entries

    def is_ready(self, key: K) -> bool:
        e = self.entries.get(key)
        return e is not None and e.ready

    def refs(self, key: K) -> int:
        e = self.entries.get(key)
        return 0 if e is None else e.refs

    def acquire(self, key: K) -> bool:
        """One more client wants `key`; True when it is new upstream (`on_change` was called)."""
        e = self.entries.get(key)
        if e is None:
            self.entries[key] = _Entry(refs=1)
            self.demanded += 1
            self.on_change()
            return True
        e.refs += 1
        e.release_at = None
        return False

    def release(self, key: K, now: float) -> None:
        """One client less; the upstream release is scheduled when nobody is left."""
        e = self.entries.get(key)
        if e is None:
            return
        e.refs = max(0, e.refs - 1)
        if e.refs == 0:
            e.release_at = now + self.cfg.release_after

    def hold(self, key: K, refs: int) -> None:
        """`refs` clients already hold `key`, which left the configured set (a reload): it is on
        demand from now on, released `release_after` after the last one leaves. No cap check
        (they are served already); the caller replans."""
        e = self.entries.get(key)
        if e is None:
            e = self.entries[key] = _Entry()
            self.demanded += 1
        e.refs, e.ready, e.release_at = refs, True, None

    def mark_ready(self, key: K) -> None:
        e = self.entries.get(key)
        if e is not None:
            e.ready = True

    def forget(self, key: K) -> None:
        """Upstream refused `key`: drop it at once."""
        if self.entries.pop(key, None) is not None:
            self.on_change()

    def tick(self, now: float) -> list[K]:
        """Release every key whose timer expired; returns them."""
        due = [k for k, e in self.entries.items() if e.refs == 0 and e.release_at is not None and e.release_at <= now]
        for k in due:
            del self.entries[k]
            self.released += 1
        if due:
            self.on_change()
        return due
