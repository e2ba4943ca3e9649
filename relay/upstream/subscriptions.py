"""Sans-I/O subscription planner for one upstream connection.

It owns the desired set of (channel, symbol, param) subscriptions and turns it into request
frames: batched per (channel, param) up to `batch_size` symbols, paced by a token bucket
(`requests_per_second`) so neither the initial subscribe nor repeated resyncs trip Kraken's
`Exceeded msg rate`. Every per-symbol acknowledgement is checked: a rejected symbol is retried
with a growing delay and never holds back the others; a missing ack counts as a rejection.

Resyncs (checksum mismatch, stale symbol) are unsubscribe + subscribe of that one symbol,
limited per symbol by a minimum interval that doubles on repeated resyncs and decays when the
symbol stays quiet. After a reconnect `reset()` replays exactly the desired set.

Fed a clock; `poll(now)` returns frames to send, `next_wakeup(now)` when to call it again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from relay.core.events import AckEvent
from relay.core.keys import SubKey
from relay.core.rate import TokenBucket

# Entry states.
PENDING = "pending"  # subscribe to be sent
SENT = "sent"  # subscribe sent, waiting for its ack
ACTIVE = "active"
RETRY = "retry"  # rejected; subscribe again at retry_at
DEFERRED = "deferred"  # resync asked for, waiting for the per-symbol minimum interval
UNSUB = "unsub"  # unsubscribe to be sent (resync or removal)
UNSUB_SENT = "unsub_sent"
IN_FLIGHT = frozenset((PENDING, SENT, UNSUB, UNSUB_SENT))


@dataclass(slots=True)
class Entry:
    key: SubKey
    state: str = PENDING
    wanted: bool = True
    req_id: int | None = None
    sent_at: float = 0.0
    rejections: int = 0  # consecutive rejections, drives the retry delay
    retry_at: float = 0.0
    last_error: str | None = None
    needs_unsub: bool = False  # Kraken says it is still subscribed: unsubscribe first
    resync_level: int = 0
    last_resync: float = float("-inf")
    resync_at: float = 0.0
    resyncs: int = 0


@dataclass(slots=True)
class _Request:
    method: str
    channel: str
    param: int
    keys: list[SubKey]
    open: set[SubKey] = field(default_factory=set)


@dataclass(slots=True)
class AckResult:
    accepted: list[SubKey] = field(default_factory=list)
    rejected: list[tuple[SubKey, str]] = field(default_factory=list)
    unsubscribed: list[SubKey] = field(default_factory=list)


class SubscriptionPlanner:
    """Desired subscriptions of one connection -> paced request frames; acks -> retries."""

    def __init__(
        self,
        desired: Iterable[SubKey],
        *,
        batch_size: int = 20,
        requests_per_second: float = 5.0,
        burst: float = 2.0,
        retry_delay: float = 5.0,
        max_retry_delay: float = 300.0,
        resync_min_interval: float = 1.0,
        resync_max_interval: float = 60.0,
        ack_timeout: float = 10.0,
        first_req_id: int = 1,
        encode_request: Callable[..., bytes],
        params_for: Callable[[str, int], dict[str, Any]],
    ) -> None:
        # The protocol's request encoder `(channel, symbols | None, req_id, method=, **params)`
        # and channel parameters (its `relay.protocols` spec).
        self.encode_request = encode_request
        self.params_for = params_for
        self.batch_size = batch_size
        self.retry_delay = retry_delay
        self.max_retry_delay = max(max_retry_delay, retry_delay)
        self.resync_min_interval = resync_min_interval
        self.resync_max_interval = max(resync_max_interval, resync_min_interval)
        self.ack_timeout = ack_timeout
        self.bucket = TokenBucket(requests_per_second, max(1.0, burst))
        self.entries: dict[SubKey, Entry] = {k: Entry(k) for k in desired}
        self._params: dict[str, set[int]] = {}  # channel -> params in use, for O(1) resync lookup
        self._index_params()
        self._requests: dict[int, _Request] = {}
        self._req_id = first_req_id - 1
        self.requests_sent = 0
        self.rejections_total = 0
        self.connected = False
        self.last_timeouts: list[tuple[SubKey, str]] = []

    def _index_params(self) -> None:
        for key in self.entries:
            self._params.setdefault(key.channel, set()).add(key.param)

    # -- lifecycle ------------------------------------------------------------------------
    def next_req_id(self) -> int:
        self._req_id += 1
        return self._req_id

    def reset(self) -> None:
        """A new connection: nothing is subscribed there; replay every wanted subscription."""
        for key in [k for k, e in self.entries.items() if not e.wanted]:
            del self.entries[key]
        for e in self.entries.values():
            e.state, e.req_id, e.rejections, e.needs_unsub, e.last_error = PENDING, None, 0, False, None
        self._requests.clear()
        self.bucket.fill()
        self.connected = True

    def disconnected(self) -> None:
        self.connected = False

    def set_desired(self, desired: Iterable[SubKey]) -> None:
        """Config reload: add new subscriptions, unsubscribe removed ones."""
        want = dict.fromkeys(desired)
        for key in want:
            e = self.entries.get(key)
            if e is None:
                self.entries[key] = Entry(key)
            else:
                e.wanted = True
        self._index_params()
        for key, e in list(self.entries.items()):
            if key in want:
                continue
            e.wanted = False
            if e.state in (PENDING, RETRY) or not self.connected:
                del self.entries[key]
            elif e.state in (ACTIVE, DEFERRED):
                e.state = UNSUB
            # SENT / UNSUB / UNSUB_SENT: resolved when the ack arrives

    # -- resync ---------------------------------------------------------------------------
    def resync(self, channel: str, symbol: str, now: float) -> str:
        """Resubscribe one symbol. Returns started | deferred | in_progress | unknown."""
        entries = self.entries
        keys = (SubKey(channel, symbol, p) for p in self._params.get(channel, ()))
        found = [e for k in keys if (e := entries.get(k)) is not None and e.wanted]
        if not found:
            return "unknown"
        result = "in_progress"
        for e in found:
            if e.state != ACTIVE:
                continue
            if now - e.last_resync > 2 * self.resync_max_interval:
                e.resync_level = 0  # quiet for long: forgive earlier trouble
            interval = min(self.resync_min_interval * (2 ** min(e.resync_level, 32)), self.resync_max_interval)
            earliest = e.last_resync + interval
            if now >= earliest:
                self._start_resync(e, now)
                result = "started"
            else:
                e.state, e.resync_at = DEFERRED, earliest
                if result != "started":
                    result = "deferred"
        return result

    def _start_resync(self, e: Entry, now: float) -> None:
        e.state = UNSUB
        e.last_resync = now
        e.resync_level += 1
        e.resyncs += 1

    # -- acks -----------------------------------------------------------------------------
    def on_ack(self, ev: AckEvent, now: float) -> AckResult:
        res = AckResult()
        req = self._requests.get(ev.req_id) if ev.req_id is not None else None
        if req is not None:
            if ev.symbol is not None:
                keys = [k for k in req.open if k.symbol == ev.symbol]
            elif req.channel == "instrument" or ev.success is False or len(req.open) == 1:
                keys = list(req.open)  # a whole-request answer (instrument, or rejection w/o symbol)
            else:
                keys = []
            method = req.method
        else:
            method = ev.method
            want_state = SENT if method == "subscribe" else UNSUB_SENT
            # one ack may name several symbols (`result["_symbols"]`, set by the adapter, e.g. a futures ack listing
            # several product_ids); otherwise the ack's own symbol ("" = channel-wide)
            names = set(ev.result.get("_symbols") or ()) or {ev.symbol or ""}
            keys = [
                k
                for k, e in self.entries.items()
                if e.state == want_state and (ev.channel is None or k.channel == ev.channel) and k.symbol in names
            ]
            if not keys and method == "unsubscribe" and ev.success and ev.symbol and ev.req_id is None:
                self._dropped_by_exchange(ev)
            # Protocols without request ids (Futures) answer per (feed, product): close the
            # matching request's bookkeeping here so `_requests` cannot grow.
            for key in keys:
                e = self.entries.get(key)
                other = self._requests.get(e.req_id) if e is not None and e.req_id is not None else None
                if other is not None:
                    other.open.discard(key)
                    if not other.open:
                        del self._requests[e.req_id]  # type: ignore[union-attr,arg-type]
        for key in keys:
            if req is not None:
                req.open.discard(key)
            e = self.entries.get(key)
            if e is None:
                continue
            if method == "subscribe" and e.state == SENT:
                self._sub_ack(e, ev, now, res)
            elif method == "unsubscribe" and e.state == UNSUB_SENT:
                res.unsubscribed.append(key)
                if e.wanted:
                    e.state = PENDING
                else:
                    del self.entries[key]
        if req is not None and not req.open:
            self._requests.pop(ev.req_id, None)  # type: ignore[arg-type]
        return res

    def _dropped_by_exchange(self, ev: AckEvent) -> None:
        """An unsubscribe nobody asked for: Kraken ended a subscription by itself (Spot v1 sends
        `subscriptionStatus: unsubscribed` without reqid). Subscribe it again right away instead
        of waiting for the merge's staleness check."""
        param = ev.result.get("depth", ev.result.get("interval")) if ev.result else None
        for k, e in self.entries.items():
            if (
                e.state == ACTIVE
                and e.wanted
                and k.symbol == ev.symbol
                and (ev.channel is None or k.channel == ev.channel)
                and (param is None or k.param == param)
            ):
                e.state = PENDING

    def _sub_ack(self, e: Entry, ev: AckEvent, now: float, res: AckResult) -> None:
        if ev.success:
            e.rejections, e.last_error, e.needs_unsub = 0, None, False
            e.state = ACTIVE if e.wanted else UNSUB
            res.accepted.append(e.key)
            return
        error = ev.error or "rejected"
        self._reject(e, error, now)
        res.rejected.append((e.key, error))

    def _reject(self, e: Entry, error: str, now: float) -> None:
        self.rejections_total += 1
        if "msg rate" in error.lower():
            self.bucket.penalize(now)  # Kraken says we are too fast: pause this connection's requests
        if not e.wanted:
            del self.entries[e.key]
            return
        e.rejections += 1
        e.last_error = error
        e.needs_unsub = "already" in error.lower()
        delay = min(self.retry_delay * (2 ** min(e.rejections - 1, 32)), self.max_retry_delay)
        e.state, e.retry_at = RETRY, now + delay

    # -- timers and frames ----------------------------------------------------------------
    def _promote(self, now: float) -> list[tuple[SubKey, str]]:
        timeouts: list[tuple[SubKey, str]] = []
        for e in list(self.entries.values()):
            st = e.state
            if st == RETRY and e.retry_at <= now:
                e.state = UNSUB if e.needs_unsub else PENDING
            elif st == DEFERRED and e.resync_at <= now:
                self._start_resync(e, now)
            elif st == SENT and e.sent_at + self.ack_timeout <= now:
                self._reject(e, "no acknowledgement", now)
                timeouts.append((e.key, "no acknowledgement"))
            elif st == UNSUB_SENT and e.sent_at + self.ack_timeout <= now:
                if e.wanted:
                    e.state, e.needs_unsub = PENDING, False
                else:
                    del self.entries[e.key]
        if timeouts:
            live = {k for k, e in self.entries.items() if e.state in (SENT, UNSUB_SENT)}
            for rid, req in list(self._requests.items()):
                req.open &= live
                if not req.open:
                    del self._requests[rid]
        return timeouts

    def poll(self, now: float) -> list[bytes]:
        """Frames to send now (unsubscribes first), as many as the token bucket allows."""
        self.last_timeouts = self._promote(now)
        if not self.connected:
            return []
        frames: list[bytes] = []
        for method, state, next_state in (("unsubscribe", UNSUB, UNSUB_SENT), ("subscribe", PENDING, SENT)):
            groups: dict[tuple[str, int], list[Entry]] = {}
            for e in self.entries.values():
                if e.state == state:
                    groups.setdefault((e.key.channel, e.key.param), []).append(e)
            # books first: after a reconnect clients wait for a book snapshot, while the other
            # channels' snapshots (trades, ticker) can come a pacing step later
            for (channel, param), entries in sorted(groups.items(), key=lambda g: g[0][0] != "book"):
                channel_wide = not entries[0].key.symbol  # instrument, futures heartbeat
                step = 1 if channel_wide else self.batch_size
                for i in range(0, len(entries), step):
                    if not self.bucket.take(now):
                        return frames
                    batch = entries[i : i + step]
                    rid = self.next_req_id()
                    symbols = None if channel_wide else [e.key.symbol for e in batch]
                    params = self.params_for(channel, param)
                    if method == "unsubscribe":
                        params.pop("snapshot", None)
                    frames.append(self.encode_request(channel, symbols, rid, method=method, **params))
                    keys = [e.key for e in batch]
                    self._requests[rid] = _Request(method, channel, param, keys, set(keys))
                    for e in batch:
                        e.state, e.req_id, e.sent_at = next_state, rid, now
                    self.requests_sent += 1
        return frames

    def next_wakeup(self, now: float) -> float | None:
        """When `poll` has something to do next (None: only an ack or a resync can change that)."""
        times: list[float] = []
        sendable = False
        for e in self.entries.values():
            st = e.state
            if st in (PENDING, UNSUB):
                sendable = True
            elif st == RETRY:
                times.append(e.retry_at)
            elif st == DEFERRED:
                times.append(e.resync_at)
            elif st in (SENT, UNSUB_SENT):
                times.append(e.sent_at + self.ack_timeout)
        if sendable and self.connected:
            times.append(self.bucket.ready_at(now))
        return min(times) if times else None

    # -- queries --------------------------------------------------------------------------
    def settled(self) -> bool:
        """Nothing in flight: every wanted subscription is active or waiting for a retry."""
        return not any(e.state in IN_FLIGHT for e in self.entries.values())

    def states(self) -> dict[str, str]:
        return {k.label(): e.state for k, e in self.entries.items()}

    def rejected(self) -> dict[str, str]:
        return {k.label(): e.last_error for k, e in self.entries.items() if e.last_error}
