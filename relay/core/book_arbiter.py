"""Per-symbol book arbitration across upstreams: first valid arrival wins, never regress.

Every upstream's copy of the book is kept logically, but lines that agree share state: an
upstream whose book equals a state the relay already published is just a *position* in the
published history (FOLLOW). When its next frame is byte-identical to the frame that took the
published book from that position to the next, the upstream advances with one dict lookup and
no parsing (the duplicate fast path in `Merge.feed`). Only when an upstream's stream differs
(another coalescing of updates, a corrupted frame) does it get a book of its own (OWN), forked
from the published state at its position by replaying the undo log backwards.

The published book advances when:
- the upstream at the head (its state equals the published state) sends a valid update: the
  frame's bytes are forwarded unchanged;
- an upstream with its own book reaches a newer exchange timestamp: a synthesized diff with the
  correct checksum is published.
A frame whose checksum fails marks only that (upstream, symbol) invalid and asks for a resync;
the published book is rolled back and other upstreams and symbols are untouched.
"""

from __future__ import annotations

from collections import deque
from typing import NamedTuple

from relay.core.book import Book, Level
from relay.core.events import BookEvent
from relay.core.outputs import ArbiterHost, Publication
from relay.core.views import DepthView

# Per-(upstream, symbol) modes.
NONE, FOLLOW, OWN, INVALID = 0, 1, 2, 3
MODE_NAMES = {NONE: "down", FOLLOW: "valid", OWN: "valid", INVALID: "resyncing"}


class LineBook:
    """One upstream's view of one symbol's book."""

    __slots__ = ("mode", "pos", "book", "behind_since", "stale", "snap_depth")

    def __init__(self) -> None:
        self.snap_depth = 0  # the held depth when this line's current snapshot arrived
        self.mode = NONE
        self.pos = 0  # FOLLOW: index of the published state equal to this line's state
        self.book: Book | None = None  # OWN: this line's own book
        self.behind_since: float | None = None  # OWN: when the published book moved past it
        self.stale = False


class HistoryEntry(NamedTuple):
    """The published frame that produced state `seq`, with what it takes to undo it."""

    raw: bytes | None
    undo: list
    prev_ts: str
    prev_crc: int
    recv_time: float


_new_tuple = tuple.__new__  # builds NamedTuples without their Python-level __new__ (hot path)


class BookArbiter:
    """Merges one symbol's book streams from every upstream into one published book."""

    def __init__(self, merge: ArbiterHost, symbol: str, depth: int, history: int) -> None:
        self.merge = merge
        self.symbol = symbol
        self.depth = depth
        self.history_len = history
        self.pub = Book(symbol, depth)
        self.full_depth = depth  # the published book is complete to this depth (see set_depth)
        self.target_depth = depth
        self.ready = False  # a published state exists
        self.orphaned = True  # no upstream currently holds a valid state
        self.seq = 0
        self.hist: deque[HistoryEntry] = deque()
        self.lines: list[LineBook] = [LineBook() for _ in merge.lines]
        self.views: dict[int, DepthView] = {}
        self.view_refs: dict[int, int] = {}
        self.published = 0
        self.mismatches = 0
        self.last_update = 0.0
        # depth -> ((seq, timestamp, checksum), frame): late joiners of an unchanged book share
        # one encoding (100 clients joining 50 depth-1000 books encode 50 frames, not 5 000).
        self._snapshots: dict[int, tuple[tuple[int, str, int], bytes]] = {}

    # -- upstream registry ------------------------------------------------------------------
    def add_line(self) -> None:
        self.lines.append(LineBook())

    def reset_line(self, up: int) -> None:
        lb = self.lines[up]
        lb.mode, lb.book, lb.behind_since, lb.stale = NONE, None, None, False
        self._check_orphaned()

    # -- the duplicate fast path ----------------------------------------------------------------
    def on_dup(self, up: int, token: int, now: float, raw: bytes | None = None) -> bool:
        """A frame byte-identical to published frame `token` (the latest with these bytes). True
        when it is this line's copy of its next published frame: the line just moves on.

        Anything else is parsed as an event: a line never sends one frame twice, so the same bytes
        from a line that already passed `token` are a new event (a level placed, cancelled and
        placed again within one timestamp repeats a frame exactly)."""
        lb = self.lines[up]
        if lb.mode != FOLLOW:
            return False
        pos = lb.pos
        if pos == token - 1:
            lb.pos = token
            return True
        if raw is not None and pos < token - 1:  # behind: is its next frame an older copy?
            hist = self.hist
            i = pos - (self.seq - len(hist))
            if i >= 0 and hist[i].raw == raw:
                lb.pos = pos + 1
                return True
        return False

    # -- events ---------------------------------------------------------------------------------
    def on_event(self, up: int, ev: BookEvent, now: float) -> None:
        lb = self.lines[up]
        merge = self.merge
        ts = ev.timestamp
        if ts > merge.ts_ceiling[up]:
            # Ahead of the clock or of every other line: believed by nobody, published to nobody
            # (one such snapshot with a valid checksum froze clients' book at a fake price).
            if lb.mode != INVALID:
                self._invalidate(up, lb, "timestamp")
            merge.suspect(up, "timestamp", now)
            return
        if ts > merge.line_clock[up]:
            merge.line_clock[up] = ts
            merge.line_clock_at[up] = now
        if ev.snapshot:
            self._snapshot(up, lb, ev, now)
            return
        mode = lb.mode
        if mode == FOLLOW:
            if lb.pos == self.seq:
                self._lead(up, lb, ev, now)
                return
            book = self._fork(lb.pos)
            if book is None:
                self._invalidate(up, lb, "gap")
                return
            lb.mode, lb.book, lb.snap_depth = OWN, book, 0
        elif mode != OWN:
            self.merge.counters.book_dropped += 1  # no snapshot yet on this line, or resyncing
            return
        book = lb.book
        assert book is not None
        crc = book.apply(ev.bids, ev.asks, ev.timestamp, None)
        if ev.checksum is not None and crc != ev.checksum:
            self._invalidate(up, lb, "checksum")
            return
        self._consider_own(up, lb, now)

    def _lead(self, up: int, lb: LineBook, ev: BookEvent, now: float) -> None:
        """The line at the head sends the next frame: apply to the published book, forward bytes."""
        pub = self.pub
        prev_ts, prev_crc = pub.timestamp, pub.checksum
        undo: list = []
        crc = pub.apply(ev.bids, ev.asks, ev.timestamp, undo)
        if ev.checksum is not None and crc != ev.checksum:
            pub.rollback(undo, prev_ts, prev_crc)
            self._invalidate(up, lb, "checksum")
            return
        self._push(ev.raw, undo, prev_ts, prev_crc, now, up)
        lb.pos = self.seq

    def _snapshot(self, up: int, lb: LineBook, ev: BookEvent, now: float) -> None:
        if self.target_depth > self.depth:
            self._deepen(up)
        book = Book(self.symbol, self.depth)
        crc = book.load_snapshot(ev.bids, ev.asks, ev.timestamp)
        if ev.checksum is not None and crc != ev.checksum:
            self._invalidate(up, lb, "checksum")
            return
        lb.snap_depth = self.depth
        if not self.ready or (self.orphaned and book.timestamp >= self.pub.timestamp):
            self._publish_snapshot(book, ev.raw, now, up)
            lb.mode, lb.pos, lb.book, lb.behind_since, lb.stale = FOLLOW, self.seq, None, None, False
            return
        # Older than what clients hold (a slow line): keep it aside until it overtakes.
        lb.mode, lb.book, lb.behind_since, lb.stale = OWN, book, None, False
        self._consider_own(up, lb, now)

    def _consider_own(self, up: int, lb: LineBook, now: float) -> None:
        """A line with its own book: rejoin the published state, overtake it, or wait."""
        self._rejoin(up, lb, now)
        if lb.mode == FOLLOW and lb.snap_depth >= self.depth:
            self.full_depth = self.depth  # a snapshot taken at the held depth is merged now

    def _rejoin(self, up: int, lb: LineBook, now: float) -> None:
        book = lb.book
        assert book is not None
        pub = self.pub
        if book.timestamp > pub.timestamp and self.orphaned:
            # Every line was lost meanwhile: clients get a fresh snapshot, not a diff.
            self._publish_snapshot(book, None, now, up)
            lb.mode, lb.pos, lb.book, lb.behind_since = FOLLOW, self.seq, None, None
        elif book.timestamp > pub.timestamp:
            bids, asks = pub.diff_to(book)
            if bids or asks:
                prev_ts, prev_crc = pub.timestamp, pub.checksum
                undo: list = []
                pub.apply_text_levels(bids, asks, book.timestamp, undo)
                frame = self.merge.codec.book(self.symbol, False, bids, asks, pub.checksum, pub.timestamp)
                self._push(None, undo, prev_ts, prev_crc, now, up, frame)
            else:
                pub.timestamp = book.timestamp
            lb.mode, lb.pos, lb.book, lb.behind_since = FOLLOW, self.seq, None, None
        elif book.timestamp == pub.timestamp and book.checksum == pub.checksum and book.same_levels(pub):
            lb.mode, lb.pos, lb.book, lb.behind_since = FOLLOW, self.seq, None, None
        elif lb.behind_since is None and book.timestamp < pub.timestamp:
            lb.behind_since = now

    # -- publishing -------------------------------------------------------------------------
    def _push(
        self,
        raw: bytes | None,
        undo: list,
        prev_ts: str,
        prev_crc: int,
        now: float,
        up: int,
        frame: bytes | None = None,
    ) -> None:
        """Record a new published state and emit its frame (and the depth views' frames)."""
        merge = self.merge
        hist = self.hist
        if len(hist) >= self.history_len:
            old = hist.popleft()
            if old.raw is not None:
                merge.seen.pop(old.raw, None)
        self.seq += 1
        hist.append(_new_tuple(HistoryEntry, (raw, undo, prev_ts, prev_crc, now)))
        if raw is not None:
            merge.seen[raw] = (self, self.seq)
            frame = raw
        merge.outbox.append(_new_tuple(Publication, ("book", self.symbol, self.depth, frame, False)))
        if self.views:
            self._update_views(undo)
        self.published += 1
        self.last_update = now
        merge.upstream_stats[up].wins += 1
        # Lines with their own book fall behind the moment the published book moves past them.
        for lb in self.lines:
            if lb.mode == OWN and lb.behind_since is None:
                lb.behind_since = now

    def _update_views(self, undo: list) -> None:
        tb = [k for is_bid, k, _ in undo if is_bid]
        ta = [k for is_bid, k, _ in undo if not is_bid]
        pub = self.pub
        out = self.merge.outbox
        for depth, view in self.views.items():
            bids, asks = view.update(pub, tb, ta)
            if bids or asks:
                frame = self.merge.codec.book(self.symbol, False, bids, asks, pub.checksum, pub.timestamp)
                out.append(Publication("book", self.symbol, depth, frame, False))

    def _publish_snapshot(self, book: Book, raw: bytes | None, now: float, up: int) -> None:
        """Replace the published book wholesale (first data, or recovery after every line was lost)."""
        merge = self.merge
        for entry in self.hist:
            if entry.raw is not None:
                merge.seen.pop(entry.raw, None)
        self.hist.clear()
        self.pub = book.copy()
        self.full_depth = self.depth
        self.seq += 1
        self.ready = True
        self.orphaned = False
        out = merge.outbox
        frame = raw if raw is not None else self.snapshot_frame(self.depth)
        out.append(Publication("book", self.symbol, self.depth, frame, True))
        for depth, view in self.views.items():
            view.reset(self.pub)
            out.append(Publication("book", self.symbol, depth, self.snapshot_frame(depth), True))
        self.published += 1
        self.last_update = now
        merge.upstream_stats[up].wins += 1

    def snapshot_frame(self, depth: int) -> bytes:
        """The published book as a snapshot frame at `depth`, encoded once per published state
        (the same bytes object is returned until the book changes, so callers may key on it)."""
        pub = self.pub
        state = (self.seq, pub.timestamp, pub.checksum)
        hit = self._snapshots.get(depth)
        if hit is not None and hit[0] == state:
            return hit[1]
        frame = self.merge.codec.book(
            self.symbol, True, pub.bids.best(depth), pub.asks.best(depth), pub.checksum, pub.timestamp
        )
        self._snapshots[depth] = (state, frame)
        return frame

    # -- forks, invalidation, staleness --------------------------------------------------------
    def _fork(self, pos: int) -> Book | None:
        """The published state at `pos`, rebuilt from the head by undoing newer frames."""
        back = self.seq - pos
        if back > len(self.hist):
            return None
        book = self.pub.copy()
        for i in range(len(self.hist) - 1, len(self.hist) - 1 - back, -1):
            entry = self.hist[i]
            book.rollback(entry.undo, entry.prev_ts, entry.prev_crc)
        return book

    def _invalidate(self, up: int, lb: LineBook, reason: str) -> None:
        lb.mode, lb.book, lb.behind_since = INVALID, None, None
        if reason == "checksum":
            self.mismatches += 1
            self.merge.upstream_stats[up].checksum_mismatches += 1
        self.merge.request_resync(up, "book", self.symbol, reason)
        self._check_orphaned()

    def reject(self, up: int, reason: str) -> None:
        """Line `up` sent a frame for this book that failed validation: resync it (its copy may
        now lack an update), unless it is resyncing already."""
        lb = self.lines[up]
        if lb.mode != INVALID:
            self._invalidate(up, lb, reason)

    def _check_orphaned(self) -> None:
        if not any(lb.mode in (FOLLOW, OWN) for lb in self.lines):
            self.orphaned = True

    def check_stale(self, now: float, window: float) -> None:
        """Flag lines that hold a valid book but have not followed the published book for `window`."""
        hist = self.hist
        base = self.seq - len(hist)  # state index before the oldest history entry
        for up, lb in enumerate(self.lines):
            if lb.mode == FOLLOW:
                if lb.pos >= self.seq:
                    continue
                idx = lb.pos - base  # history entry that produced state pos+1
                since = hist[idx].recv_time if 0 <= idx < len(hist) else now - window - 1
            elif lb.mode == OWN and lb.behind_since is not None:
                since = lb.behind_since
            else:
                continue
            if now - since > window:
                lb.stale = True
                self._invalidate(up, lb, "stale")

    def line_state(self, up: int) -> str:
        lb = self.lines[up]
        return MODE_NAMES[lb.mode]

    def state(self) -> str:
        if not self.ready:
            return "down"
        if self.orphaned:
            return "resyncing" if any(lb.mode == INVALID for lb in self.lines) else "down"
        return "ok"

    # -- depth views ----------------------------------------------------------------------------
    # `view_refs` counts subscribers per depth (any depth); `views` exist for those below the
    # held depth (the held depth itself is the main stream).
    def want_depth(self, depth: int) -> None:
        self.view_refs[depth] = self.view_refs.get(depth, 0) + 1
        if depth < self.depth and depth not in self.views:
            self.views[depth] = DepthView(self.pub, depth)

    def release_depth(self, depth: int) -> None:
        n = self.view_refs.get(depth, 0)
        if n <= 1:
            self.view_refs.pop(depth, None)
            self.views.pop(depth, None)
        else:
            self.view_refs[depth] = n - 1

    def set_depth(self, depth: int) -> None:
        """Hold the book at another depth (its upstream subscriptions change with it).

        Deeper, once the book is published: nothing changes until a line's first snapshot after
        this call (its subscription at the new depth) arrives; the book switches depth then
        (`_deepen`), so current subscribers see no break and lines still at the old depth never
        feed the deeper book. Shallower: at once; the book is truncated, views at or beyond the
        new depth end (a deeper stream truncated is still exact).
        """
        self.target_depth = depth
        if depth == self.depth or (depth > self.depth and self.ready):
            return
        self._resize(depth)

    def _resize(self, depth: int) -> None:
        old = self.depth
        self.depth = depth
        self.pub.depth = depth
        for lb in self.lines:
            if lb.book is not None:
                lb.book.depth = depth
        if depth < old:
            self.pub.bids.truncate(depth, None)
            self.pub.asks.truncate(depth, None)
            self.full_depth = min(self.full_depth, depth)
        for d in [d for d in self.views if d >= depth]:
            del self.views[d]
        for d in self.view_refs:
            if d < depth and d not in self.views:
                self.views[d] = DepthView(self.pub, d)
        self._snapshots.clear()

    def _deepen(self, up: int) -> None:
        """Line `up` sent the first snapshot since `set_depth` asked for a deeper book: hold the
        book at that depth now. The other lines are still at the old depth (resubscribing):
        their updates are dropped until their own new snapshot. The published book stays as it
        is (valid to the old depth) until line `up` overtakes it with a diff."""
        self._resize(self.target_depth)
        for i, lb in enumerate(self.lines):
            if i != up and lb.mode != INVALID:
                lb.mode, lb.book, lb.behind_since, lb.stale = NONE, None, None, False
        self.orphaned = False  # the published book is still a valid state to diff from

    def complete_to(self, depth: int) -> bool:
        """Whether the published book is valid and holds every level down to `depth`."""
        return self.ready and depth <= self.full_depth


__all__ = ["BookArbiter", "LineBook", "Level", "NONE", "FOLLOW", "OWN", "INVALID"]
