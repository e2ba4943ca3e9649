"""Per-symbol trade sequencing across upstreams: each trade_id once, in order, gaps reported.

Kraken's v2 `trade_id` is sequential per book, so the merge is classic A/B arbitration: publish
the next id from whichever line brings it first, drop copies, and when a line jumps ahead hold
the newer trades for a short, bounded wait so another line can fill the hole. When the wait runs
out the hole is reported as a gap with its exact range and publishing resumes.

A frame whose trades are exactly the next ids is forwarded byte for byte; otherwise only the new
trades are re-framed, splicing each trade's original JSON object so numbers keep their text.
"""

from __future__ import annotations

from collections import deque

from relay.core.events import Trade, TradeEvent
from relay.core.outputs import ArbiterHost, Publication

MAX_PENDING = 10_000  # bound on trades held behind a gap


class TradeLine:
    __slots__ = ("active", "last_seen", "behind_since")

    def __init__(self) -> None:
        self.active = False
        self.last_seen = -1
        self.behind_since: float | None = None


class TradeArbiter:
    def __init__(self, merge: ArbiterHost, symbol: str, recent: int) -> None:
        self.merge = merge
        self.symbol = symbol
        self.last_id: int | None = None
        self.pending: dict[int, Trade] = {}
        self.gap_deadline: float | None = None
        self.recent: deque[bytes] = deque(maxlen=max(recent, 1))
        self.lines: list[TradeLine] = [TradeLine() for _ in merge.lines]
        self.published = 0
        self.gaps = 0
        self.missing = 0
        self.late = 0  # trades that arrived after their gap had been reported (not published)
        self.reported_missing: set[int] = set()
        self.last_update = 0.0

    def add_line(self) -> None:
        self.lines.append(TradeLine())

    def reset_line(self, up: int) -> None:
        tl = self.lines[up]
        tl.active, tl.behind_since = False, None

    def on_dup(self, up: int, max_id: int, now: float, raw: bytes | None = None) -> bool:
        tl = self.lines[up]
        tl.active = True
        if max_id > tl.last_seen:
            tl.last_seen = max_id
            if self.last_id is not None and max_id >= self.last_id:
                tl.behind_since = None
        return True

    def on_event(self, up: int, ev: TradeEvent, now: float) -> None:
        trades = ev.trades
        tl = self.lines[up]
        tl.active = True
        top = max(t.trade_id for t in trades)
        if top > tl.last_seen:
            tl.last_seen = top
        last = self.last_id
        if last is None:
            if ev.snapshot:  # history from before we started: seed late-joiner snapshots only
                for t in sorted(trades, key=lambda t: t.trade_id):
                    self.recent.append(t.element)
                self.last_id = top
                return
            last = self.last_id = min(t.trade_id for t in trades) - 1
        pending = self.pending
        first = trades[0].trade_id
        if (
            not ev.snapshot
            and not pending
            and first == last + 1
            and trades[-1].trade_id == last + len(trades)
            and (len(trades) < 3 or all(trades[i].trade_id == first + i for i in range(len(trades))))
        ):
            self._publish_raw(ev.raw, trades, up, now)
        else:
            fresh = False
            for t in trades:
                tid = t.trade_id
                if tid > last and tid not in pending and len(pending) < MAX_PENDING:
                    pending[tid] = t
                    fresh = True
                elif tid in self.reported_missing:
                    # Arrived after its gap was reported: too late to publish in trade_id order.
                    self.reported_missing.discard(tid)
                    self.late += 1
            if not fresh:
                self.merge.counters.duplicates += 1
                return
            self._drain(up, now)
        self._update_lines(up, now)

    def _publish_raw(self, raw: bytes, trades: list[Trade], up: int, now: float) -> None:
        merge = self.merge
        self.last_id = trades[-1].trade_id
        self.recent.extend(t.element for t in trades)
        merge.remember(raw, self, self.last_id)
        merge.outbox.append(Publication("trade", self.symbol, 0, raw, False))
        merge.upstream_stats[up].wins += 1
        self.published += len(trades)
        self.last_update = now

    def _drain(self, up: int | None, now: float) -> None:
        pending = self.pending
        last = self.last_id
        assert last is not None
        out: list[bytes] = []
        while last + 1 in pending:
            last += 1
            out.append(pending.pop(last).element)
        if out:
            self.last_id = last
            self.recent.extend(out)
            merge = self.merge
            merge.outbox.append(Publication("trade", self.symbol, 0, merge.codec.elements("trade", False, out), False))
            if up is not None:
                merge.upstream_stats[up].wins += 1
            self.published += len(out)
            self.last_update = now
        if not pending:
            self.gap_deadline = None
        elif self.gap_deadline is None or out:  # a new hole: start its wait
            self.gap_deadline = now + self.merge.settings.trade_gap_wait

    def _update_lines(self, up: int, now: float) -> None:
        last = self.last_id
        for tl in self.lines:
            if not tl.active:
                continue
            if tl.last_seen >= last:  # type: ignore[operator]
                tl.behind_since = None
            elif tl.behind_since is None:
                tl.behind_since = now

    def expire(self, now: float) -> None:
        """The gap wait ran out: report the hole and publish what follows it."""
        if not self.pending or self.gap_deadline is None or now < self.gap_deadline:
            return
        first = min(self.pending)
        last = self.last_id if self.last_id is not None else first - 1
        missing = first - last - 1
        if missing > 0:
            self.gaps += 1
            self.missing += missing
            if missing <= MAX_PENDING:  # remember the hole's ids (bounded) to count late arrivals
                self.reported_missing.update(range(last + 1, first))
                while len(self.reported_missing) > MAX_PENDING:
                    self.reported_missing.discard(min(self.reported_missing))
            self.merge.report_gap(self.symbol, last + 1, first - 1)
        self.last_id = first - 1
        self.gap_deadline = None
        self._drain(None, now)

    def check_stale(self, now: float, window: float) -> None:
        for up, tl in enumerate(self.lines):
            if tl.active and tl.behind_since is not None and now - tl.behind_since > window:
                tl.active, tl.behind_since = False, None
                self.merge.request_resync(up, "trade", self.symbol, "stale")

    def snapshot_frame(self, count: int = 50) -> bytes | None:
        if not self.recent:
            return None
        items = list(self.recent)[-count:] if count else []
        return self.merge.codec.elements("trade", True, items)

    def state(self) -> str:
        if self.last_id is None:
            return "down"
        if not any(tl.active for tl in self.lines):
            return "down"
        return "ok"
