"""Per-symbol trade sequencing across upstreams: each trade_id once, in order, gaps reported.

Kraken's v2 `trade_id` is sequential per book, so the merge is classic A/B arbitration: publish
the next id from whichever line brings it first, drop copies, and when a line jumps ahead hold
the newer trades for a short, bounded wait so another line can fill the hole. When the wait runs
out the hole is reported as a gap with its exact range and publishing resumes.

A frame whose trades are exactly the next ids is forwarded byte for byte; otherwise only the new
trades are re-framed, splicing each trade's original JSON object so numbers keep their text.

No line is believed on its own word when the others contradict it: a trade id further ahead than
the recent trade rate explains (`allowance`) is held, not published. Another line bringing the
same id confirms it (the jump is real: both lines missed trades); another live line that keeps
trading below it contradicts it: the held trades are dropped, counted, and the claiming line is
resynced and reported as a suspect (`Merge.suspect`). With no other live line, a held jump is
believed after `HOLD_MIN` seconds (a gap is reported as usual).

A trade whose id was reported missing (a gap) and that a line delivers later is published late,
on its own, rather than lost (`late`); the ranges reported missing are kept, bounded.
"""

from __future__ import annotations

from collections import deque

from relay.core.events import Trade, TradeEvent
from relay.core.outputs import ArbiterHost, Publication

MAX_PENDING = 10_000  # bound on trades held behind a gap (and on implausible trades held)
MAX_GAP_RANGES = 64  # reported-missing id ranges kept for late arrivals (oldest dropped first)
JUMP_FLOOR = 200  # a jump of this many ids is always plausible
JUMP_RATE_FACTOR = 10.0  # ... and of this many times the recent rate times the time since
RATE_WINDOW = 5.0  # seconds over which the trade rate is measured
HOLD_MIN = 1.0  # seconds an implausible jump is held before another line's verdict counts


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
        self.late = 0  # trades that arrived after their gap had been reported: published late
        self.missing_ranges: list[list[int]] = []  # [first, last] ids reported missing, oldest first
        self.last_update = 0.0
        # implausible jumps: trade id -> (trade, the line that claimed it)
        self.held: dict[int, tuple[Trade, int]] = {}
        self.hold_since: float | None = None
        self._hold_last = 0  # last_id when the hold began
        self.suspect_dropped = 0
        self._rate = 0.0  # trades per second over the last full window
        self._win_start = 0.0
        self._win_count = 0

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
                self._win_start = now
                return
            last = self.last_id = min(t.trade_id for t in trades) - 1
            self._win_start = now
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
            late: list[Trade] = []
            held = self.held
            ceiling = last + JUMP_FLOOR  # the full allowance is worked out only when needed
            for t in trades:
                tid = t.trade_id
                if tid > last:
                    if tid in pending:
                        continue
                    claim = held.get(tid)
                    if claim is not None:
                        if claim[1] != up:  # a second line brings it: the jump is real
                            self._release_held()
                            fresh = True
                        continue
                    if tid > ceiling and tid > (ceiling := last + self.allowance(now)):
                        if len(held) < MAX_PENDING:
                            if not held:
                                self.hold_since, self._hold_last = now, last
                            held[tid] = (t, up)
                            fresh = True
                    elif len(pending) < MAX_PENDING:
                        pending[tid] = t
                        fresh = True
                elif self.missing_ranges and self._take_missing(tid):
                    late.append(t)
            if late:
                self._publish_late(late, up, now)
            elif not fresh:
                self.merge.counters.duplicates += 1
                return
            if pending:
                self._drain(up, now)
        self._update_lines(up, now)

    def allowance(self, now: float) -> int:
        """How far past the last published id a trade id may plausibly be: the floor, plus what
        the recent rate explains over the time since the last publication."""
        elapsed = now - self.last_update if self.last_update else 0.0
        span = now - self._win_start
        rate = max(self._rate, self._win_count / span if span > 1.0 else 0.0)
        return JUMP_FLOOR + int(JUMP_RATE_FACTOR * rate * (elapsed + 1.0))

    def _count_rate(self, n: int, now: float) -> None:
        span = now - self._win_start
        if span >= RATE_WINDOW:
            self._rate = self._win_count / span
            self._win_start, self._win_count = now, 0
        self._win_count += n

    def _release_held(self) -> None:
        """The held jump is confirmed: its trades wait like any others behind a gap."""
        for tid, (t, _) in self.held.items():
            if len(self.pending) < MAX_PENDING:
                self.pending[tid] = t
        self.held.clear()
        self.hold_since = None

    def check_held(self, now: float) -> None:
        """Timer: decide on a held jump. Another live line that went on trading below it
        contradicts it (dropped, the claimer resynced and suspected); with no other live line
        it is believed after `HOLD_MIN`; nobody's verdict within `stale_after`: dropped."""
        if self.hold_since is None:
            return
        age = now - self.hold_since
        if age < HOLD_MIN:
            return
        claimers = {up for _, up in self.held.values()}
        others = [i for i, tl in enumerate(self.lines) if tl.active and i not in claimers]
        if not others:
            self._release_held()
            self._drain(None, now)
            return
        contradicted = any(self.lines[i].last_seen > self._hold_last for i in others)
        if contradicted or age >= self.merge.settings.stale_after:
            self.suspect_dropped += len(self.held)
            self.held.clear()
            self.hold_since = None
            for up in sorted(claimers):
                self.merge.suspect(up, "trade_id", now)
                self.lines[up].active = False
                self.lines[up].last_seen = self.last_id if self.last_id is not None else -1
                self.merge.request_resync(up, "trade", self.symbol, "trade_id")

    def _take_missing(self, tid: int) -> bool:
        """Whether `tid` was reported missing and not delivered since (then it no longer is)."""
        ranges = self.missing_ranges
        for i, rng in enumerate(ranges):
            lo, hi = rng
            if lo <= tid <= hi:
                if lo == hi:
                    del ranges[i]
                elif tid == lo:
                    rng[0] = lo + 1
                elif tid == hi:
                    rng[1] = hi - 1
                else:
                    rng[1] = tid - 1
                    ranges.insert(i + 1, [tid + 1, hi])
                    if len(ranges) > MAX_GAP_RANGES:
                        del ranges[0]
                return True
        return False

    def _publish_late(self, late: list[Trade], up: int, now: float) -> None:
        late.sort(key=lambda t: t.trade_id)
        merge = self.merge
        merge.outbox.append(
            Publication("trade", self.symbol, 0, merge.codec.elements("trade", False, [t.element for t in late]), False)
        )
        merge.upstream_stats[up].wins += 1
        self.late += len(late)
        self.published += len(late)
        self.last_update = now

    def _publish_raw(self, raw: bytes, trades: list[Trade], up: int, now: float) -> None:
        merge = self.merge
        self.last_id = trades[-1].trade_id
        self.recent.extend(t.element for t in trades)
        merge.remember(raw, self, self.last_id)
        merge.outbox.append(Publication("trade", self.symbol, 0, raw, False))
        merge.upstream_stats[up].wins += 1
        self.published += len(trades)
        self.last_update = now
        self._count_rate(len(trades), now)

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
            self._count_rate(len(out), now)
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
            self.missing_ranges.append([last + 1, first - 1])  # a late arrival is still published
            if len(self.missing_ranges) > MAX_GAP_RANGES:
                del self.missing_ranges[0]
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
