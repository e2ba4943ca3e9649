"""The Futures merge: several futures upstream lines in, one futures feed out (Sans-I/O).

A `relay.protocols.interfaces.ProtocolMerge` like the spot merges (feed/take/take_requests/tick/
line_status/upstream_up/upstream_down/symbol_resubscribing/add_upstream, snapshots,
symbol_state, system_status), so the upstream pool, the app, metrics and readiness treat it the
same way.

Books advance by `seq` (futures books have no checksum). What Kraken does not document is
whether two connections see the same `seq` for the same event. The design works when they do and
degrades safely when they do not:

* The published book has one seq space, started by the first line's snapshot (that line is
  *aligned*). Another line becomes aligned only after proof: a delta it delivers carries the
  same (side, price, qty) as the published delta with the same seq (or its snapshot equals the
  published book at the same seq). Until then it keeps its own book from its own snapshot.
* Aligned lines are true A/B arbitration: the next seq is published from whichever line brings
  it first, copies (seq already published) are dropped, and a seq missing on one line is filled by
  another (deltas beyond it wait, bounded, up to `trade_gap_wait` seconds).
* A line's own seq must be contiguous: a gap on an unverified line invalidates its book and
  resyncs that line (that product only). A copy whose content differs from what was published at
  that seq proves the seq spaces differ: the line is marked divergent and resynced.
* A gap no aligned line can fill: the product is re-based from the most advanced line that holds
  its own book (a fresh `book_snapshot` is published with that line's seq), else every line is
  resubscribed for that product alone and the next snapshot re-bases it.
* When the last aligned line is lost, a line holding its own book takes over the same way. So if
  seq spaces differ per connection, a failover costs clients one `book_snapshot`, never a
  wrong book.

Trades are deduplicated by `uid` (bounded window per product); trades a reconnecting line's
`trade_snapshot` brings that were never published are published then. Tickers: identical frames
(recent window) are copies, an older `time` is dropped.

On-demand products: the endpoint tells the merge the desired subscriptions (`expect`), so its
`ProductValidator` can attribute Kraken's product-less `Invalid product id` errors; a product found
invalid comes out as a `Publication` on the `REFUSED` channel (for the endpoint, never for
clients). `drop(feed, product)` forgets a released subscription's state (and ignores its frames
still in flight) until it is expected again.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

import orjson

from relay.core.events import AckEvent, UnknownEvent
from relay.core.outputs import MergeBase, MergeSettings, Publication, UpstreamStats
from relay.protocols.futures.validate import ProductValidator
from relay.protocols.futures.wire import (
    BUY,
    ERR_PRODUCT,
    TRADE_SNAPSHOT,
    FBookDelta,
    FBookSnapshot,
    FLevel,
    FTickerEvent,
    FTradeEvent,
    FuturesParser,
    encode_book_snapshot,
    encode_event,
    encode_trade_snapshot,
)

MAX_PENDING = 4096  # deltas held beyond a gap per product
RING = 2048  # published (seq -> content) kept per product for copy verification
UID_WINDOW = 4096  # trade uids remembered per product
REFUSED = "_refused"  # publication channel: Kraken refused this product (for the endpoint only)
REFUSED_FRAME = encode_event("error", message=ERR_PRODUCT)
DROP_IGNORE = 60.0  # s a released subscription's late frames are ignored (they come within a round trip)


@dataclass(slots=True)
class FLine:
    name: str
    connected: bool = False
    status: str = ""
    version: str = ""  # what the line's `info` event reports (Kraken's `version`)
    fresh: bool = False  # connected, its first `info` (and so its planner's requests) still to come


@dataclass(slots=True)
class FCounters:
    duplicates: int = 0
    gaps_filled: int = 0
    gaps_reported: int = 0
    rebases: int = 0
    divergent: int = 0
    line_gaps: int = 0
    dropped_unsynced: int = 0


class LineProduct:
    """One line's view of one product."""

    __slots__ = ("seq", "aligned", "book", "ahead", "last_data", "behind_mark", "behind_since", "stale", "broken_since")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.seq: int | None = None  # last seq seen on this line (None: no snapshot yet)
        self.aligned: bool | None = None  # shares the published seq space (None: not proven yet)
        self.book: tuple[dict[float, FLevel], dict[float, FLevel]] | None = None  # own book
        self.ahead: dict[int, FBookDelta] = {}  # unverified deltas beyond published (adopted once proven)
        self.last_data = 0.0
        self.behind_mark: int | None = None
        self.behind_since = 0.0
        self.stale = False
        self.broken_since: float | None = None  # unproven line whose own book missed a delta


def _key(d: FBookDelta) -> tuple[int, bytes, bytes]:
    return (d.side, d.level.price_text, d.level.qty_text)


def _apply(book: tuple[dict[float, FLevel], dict[float, FLevel]], d: FBookDelta) -> None:
    side = book[0] if d.side == BUY else book[1]
    if d.level.qty == 0:
        side.pop(d.level.price, None)
    else:
        side[d.level.price] = d.level


def _book_of(ev: FBookSnapshot) -> tuple[dict[float, FLevel], dict[float, FLevel]]:
    return ({lv.price: lv for lv in ev.bids if lv.qty != 0}, {lv.price: lv for lv in ev.asks if lv.qty != 0})


def _same(a: dict[float, FLevel], b: dict[float, FLevel]) -> bool:
    return a.keys() == b.keys() and all(a[p].qty == b[p].qty for p in a)


class ProductBook:
    """The published book of one product and every line's position in it."""

    def __init__(self, merge: FuturesMerge, product: str, nlines: int) -> None:
        self.merge = merge
        self.product = product
        self.book: tuple[dict[float, FLevel], dict[float, FLevel]] = ({}, {})
        self.seq: int | None = None
        self.timestamp = 0
        self.ready = False
        self.resyncing = False
        self.lines = [LineProduct() for _ in range(nlines)]
        self.pending: dict[int, FBookDelta] = {}
        self.gap_deadline: float | None = None
        self.ring: OrderedDict[int, tuple[int, bytes, bytes]] = OrderedDict()
        self.published = 0
        self.last_update: float | None = None
        self._snap: bytes | None = None

    # -- lines --------------------------------------------------------------------------------
    def add_line(self) -> None:
        self.lines.append(LineProduct())

    def reset_line(self, up: int, now: float) -> None:
        self.lines[up].reset()
        if self.ready and not self._has_aligned():
            self._failover(now)

    def _has_aligned(self, exclude: int = -1) -> bool:
        conn = self.merge.lines
        return any(
            lb.aligned and lb.seq is not None and conn[i].connected for i, lb in enumerate(self.lines) if i != exclude
        )

    # -- snapshots ----------------------------------------------------------------------------
    def on_snapshot(self, up: int, ev: FBookSnapshot, now: float) -> None:
        lb = self.lines[up]
        lb.reset()
        lb.seq, lb.last_data = ev.seq, now
        if not self.ready or self.resyncing:
            self._rebase(_book_of(ev), ev.seq, ev.timestamp, now, raw=ev.raw)
            lb.aligned = True
            return
        book = _book_of(ev)
        if ev.seq == self.seq and _same(book[0], self.book[0]) and _same(book[1], self.book[1]):
            lb.aligned = True  # same book at the same seq: same seq space
            return
        lb.book = book
        if not self._has_aligned(exclude=up):
            self._rebase(book, ev.seq, ev.timestamp, now)
            lb.aligned, lb.book = True, None

    # -- deltas -------------------------------------------------------------------------------
    def on_delta(self, up: int, ev: FBookDelta, now: float) -> None:
        lb = self.lines[up]
        s = ev.seq
        if lb.seq is None:
            self.merge.counters.dropped_unsynced += 1
            return
        if s <= lb.seq:
            return  # replayed on the same line
        merge = self.merge
        if s != lb.seq + 1:
            merge.counters.line_gaps += 1
            if lb.aligned is False:  # its own book misses a change: resync this line only
                lb.reset()
                merge.request_resync(up, "book", self.product, "gap")
                return
            if lb.book is not None:  # unproven line: its book is broken, its copies may still prove it
                lb.book = None
                lb.broken_since = now
        lb.seq = s
        lb.last_data = now
        if lb.book is not None:
            _apply(lb.book, ev)
        if not self.ready:
            return
        key = _key(ev)
        if not lb.aligned:
            self._verify(up, lb, s, key, now)
            if not lb.aligned:
                if lb.aligned is None and s > self.seq:  # type: ignore[operator]
                    lb.ahead[s] = ev
                    if len(lb.ahead) > RING:
                        lb.ahead.pop(next(iter(lb.ahead)))
                if lb.book is not None and not self._has_aligned(exclude=up):
                    self._rebase(lb.book, s, ev.timestamp, now)
                    lb.aligned, lb.book, lb.ahead = True, None, {}
                return
        elif lb.book is not None and s <= self.seq:  # type: ignore[operator]
            lb.book = None  # caught up with the published book: no need for its own copy
        pub = self.seq
        if s <= pub:  # type: ignore[operator]
            merge.counters.duplicates += 1
            merge.upstream_stats[up].duplicates += 1
            seen = self.ring.get(s)
            if seen is not None and seen != key:
                self._diverged(up, lb)
            elif self.pending and pub + 1 in self.pending:  # type: ignore[operator]
                self._drain(now)  # a line just proven brought what was missing
            return
        if s == pub + 1:  # type: ignore[operator]
            merge.upstream_stats[up].wins += 1
            self._publish(ev, now)
            if self.pending:
                self._drain(now)
            return
        # beyond a gap in the published stream: hold it, another line may fill the gap
        if s not in self.pending:
            self.pending[s] = ev
        if len(self.pending) > MAX_PENDING:
            self._resolve_gap(now)
            return
        if self.gap_deadline is None:
            self.gap_deadline = now + merge.settings.trade_gap_wait
        if not self._can_fill():
            self._resolve_gap(now)

    def on_dup(self, up: int, seq: int, now: float) -> bool:
        """A frame byte-identical to a published delta (pre-parse fast path)."""
        lb = self.lines[up]
        if not lb.aligned or lb.seq is None or seq != lb.seq + 1 or lb.book is not None:
            return False  # let the full path handle it
        lb.seq = seq
        lb.last_data = now
        return True

    def _verify(self, up: int, lb: LineProduct, s: int, key: tuple[int, bytes, bytes], now: float) -> None:
        seen = self.ring.get(s)
        if seen is None:
            return
        if seen == key:
            lb.aligned = True
            self._adopt(lb, now)
            if s >= self.seq:  # type: ignore[operator]
                lb.book = None
        elif lb.aligned is None:
            lb.aligned = False
            self.merge.counters.divergent += 1

    def _adopt(self, lb: LineProduct, now: float) -> None:
        """A line just proven to share the seq space: the deltas it brought beyond the published
        seq become candidates (they may fill a gap another line left)."""
        pub = self.seq
        for s, d in lb.ahead.items():
            if s > pub:  # type: ignore[operator]
                self.pending.setdefault(s, d)
        lb.ahead = {}
        if self.pending and self.gap_deadline is None:
            self.gap_deadline = now + self.merge.settings.trade_gap_wait

    def _diverged(self, up: int, lb: LineProduct) -> None:
        self.merge.counters.divergent += 1
        lb.reset()
        lb.aligned = False
        self.merge.request_resync(up, "book", self.product, "gap")

    def _can_fill(self) -> bool:
        """Could a connected line still deliver the next published seq? (An unverified line that is
        behind gets verified by its copies before it reaches the gap; a line still waiting for its
        snapshot may start before it.) Bounded by the gap wait either way."""
        want = self.seq + 1  # type: ignore[operator]
        conn = self.merge.lines
        return any(
            lb.aligned is not False and (lb.seq is None or lb.seq < want) and conn[i].connected
            for i, lb in enumerate(self.lines)
        )

    def _publish(self, ev: FBookDelta, now: float) -> None:
        _apply(self.book, ev)
        self.seq = ev.seq
        self.timestamp = ev.timestamp
        self._snap = None
        ring = self.ring
        key = _key(ev)
        ring[ev.seq] = key
        if len(ring) > RING:
            ring.popitem(last=False)
        self.published += 1
        self.last_update = now
        self.merge.outbox.append(Publication("book", self.product, 0, ev.raw, False))
        self.merge.remember(ev.raw, self, ev.seq)
        for lb in self.lines:
            if lb.ahead:
                d = lb.ahead.pop(ev.seq, None)
                if d is not None:
                    if _key(d) == key:
                        lb.aligned = True
                        self._adopt(lb, now)  # its deltas beyond this one may fill a gap
                    else:
                        lb.aligned = False
                        lb.ahead = {}
                        self.merge.counters.divergent += 1

    def _drain(self, now: float) -> None:
        pending = self.pending
        nxt = self.seq + 1  # type: ignore[operator]
        while nxt in pending:
            self._publish(pending.pop(nxt), now)
            self.merge.counters.gaps_filled += 1
            nxt += 1
        for s in [s for s in pending if s < nxt]:
            del pending[s]
        self.gap_deadline = None if not pending else self.gap_deadline

    def _resolve_gap(self, now: float) -> None:
        """No aligned line can fill the gap: re-base from a line's own book, else resync all."""
        self.gap_deadline = None
        first_missing = self.seq + 1  # type: ignore[operator]
        last_missing = min(self.pending, default=first_missing) - 1
        best: tuple[int, int] | None = None
        for i, lb in enumerate(self.lines):
            if lb.book is not None and lb.seq is not None and self.merge.lines[i].connected:
                if lb.seq > self.seq and (best is None or lb.seq > best[1]):  # type: ignore[operator]
                    best = (i, lb.seq)
        self.merge.report_gap(self.product, first_missing, last_missing)
        if best is not None:
            lb = self.lines[best[0]]
            self._rebase(lb.book, lb.seq, self.timestamp, now)  # type: ignore[arg-type]
            lb.aligned, lb.book, lb.ahead = True, None, {}
            return
        self.pending.clear()
        self._resync_all(now)

    def _resync_all(self, now: float) -> None:
        self.resyncing = True
        for i, lb in enumerate(self.lines):
            if self.merge.lines[i].connected:
                lb.reset()
                self.merge.request_resync(i, "book", self.product, "gap")

    def _failover(self, now: float) -> None:
        """The last aligned line is gone: a line with its own book takes over (one snapshot)."""
        best = None
        for i, lb in enumerate(self.lines):
            if lb.book is not None and lb.seq is not None and self.merge.lines[i].connected:
                if best is None or lb.seq > self.lines[best].seq:  # type: ignore[operator]
                    best = i
        if best is not None:
            lb = self.lines[best]
            self._rebase(lb.book, lb.seq, self.timestamp, now)  # type: ignore[arg-type]
            lb.aligned, lb.book, lb.ahead = True, None, {}

    def _rebase(
        self,
        book: tuple[dict[float, FLevel], dict[float, FLevel]],
        seq: int,
        timestamp: int,
        now: float,
        raw: bytes | None = None,
    ) -> None:
        """Publish a new base: a `book_snapshot` (the upstream's bytes when it is one)."""
        self.book = (dict(book[0]), dict(book[1]))
        self.seq = seq
        self.timestamp = timestamp
        self.ready = True
        self.resyncing = False
        self._snap = None
        for s in [s for s in self.pending if s <= seq]:
            del self.pending[s]
        self.merge.counters.rebases += 1
        frame = raw if raw is not None else self.snapshot_frame()
        self.published += 1
        self.last_update = now
        self.merge.outbox.append(Publication("book", self.product, 0, frame, True))
        if self.pending:
            self._drain(now)

    # -- views --------------------------------------------------------------------------------
    def snapshot_frame(self, depth: int = 0) -> bytes:
        if self._snap is None or depth:
            bids = sorted(self.book[0].values(), key=lambda lv: -lv.price)
            asks = sorted(self.book[1].values(), key=lambda lv: lv.price)
            if depth:
                return encode_book_snapshot(self.product, self.seq or 0, self.timestamp, bids[:depth], asks[:depth])
            self._snap = encode_book_snapshot(self.product, self.seq or 0, self.timestamp, bids, asks)
        return self._snap

    def check(self, now: float, window: float) -> None:
        """Timers: gap wait expiry; a line stuck behind the published seq for `window` is stale."""
        if self.gap_deadline is not None and now >= self.gap_deadline:
            self._resolve_gap(now)
        if not self.ready or self.seq is None:
            return
        for i, lb in enumerate(self.lines):
            if lb.seq is None or not self.merge.lines[i].connected:
                continue
            if not lb.aligned:
                # never proven and its own book broken: useless as a backup (per-connection seq
                # numbering); refresh it with a resubscription once `window` has passed
                if lb.broken_since is not None and now - lb.broken_since >= window and not lb.stale:
                    lb.stale = True
                    self.merge.request_resync(i, "book", self.product, "gap")
                continue
            if lb.seq >= self.seq:
                lb.behind_mark = None
                lb.stale = False
            elif lb.behind_mark is None:
                lb.behind_mark, lb.behind_since = self.seq, now
            elif lb.seq < lb.behind_mark and now - lb.behind_since >= window and not lb.stale:
                lb.stale = True
                self.merge.request_resync(i, "book", self.product, "stale")

    def line_state(self, i: int) -> str:
        lb = self.lines[i]
        if lb.stale:
            return "stale"
        if lb.seq is None:
            return "resyncing"
        if lb.aligned or lb.book is not None:
            return "valid"
        return "resyncing"

    def state(self) -> str:
        if not self.ready:
            return "down"
        if self.resyncing:
            return "resyncing"
        if any(self.line_state(i) == "valid" and self.merge.lines[i].connected for i in range(len(self.lines))):
            return "ok"
        return "stale"


class ProductTrades:
    """Trades of one product, deduplicated by uid."""

    def __init__(self, merge: FuturesMerge, product: str, keep: int) -> None:
        self.merge = merge
        self.product = product
        self.keep = max(1, keep)
        self.uids: OrderedDict[str, int] = OrderedDict()  # uid -> time (ms)
        self.recent: deque[bytes] = deque(maxlen=self.keep)  # newest last
        self.published = 0
        self.last_update: float | None = None
        self.gaps = 0
        self.missing = 0
        self.late = 0  # same counters as the spot trade arbiters; trades deduped by uid are never late
        self.started = False

    def _seen(self, uid: str, t: int) -> None:
        self.uids[uid] = t
        if len(self.uids) > UID_WINDOW:
            self.uids.popitem(last=False)

    def on_event(self, up: int, ev: FTradeEvent, now: float) -> None:
        merge = self.merge
        if ev.snapshot:
            if not self.started:
                self.started = True
                for tr in reversed(ev.trades):
                    self._seen(tr.uid, tr.time)
                    self.recent.append(tr.element)
                self.published += 1
                self.last_update = now
                merge.outbox.append(Publication("trade", self.product, 0, ev.raw, True))
                return
            oldest = min(self.uids.values(), default=0)
            fresh = [tr for tr in ev.trades if tr.uid not in self.uids and tr.time >= oldest]
            for tr in sorted(fresh, key=lambda t: (t.time, t.seq)):
                self._one(up, tr.uid, tr.time, tr.element, now)
                self.missing += 1  # published late: every line had missed it
            merge.upstream_stats[up].duplicates += len(ev.trades) - len(fresh)
            return
        for tr in ev.trades:
            if tr.uid in self.uids:
                merge.counters.duplicates += 1
                merge.upstream_stats[up].duplicates += 1
                continue
            self.started = True
            self._one(up, tr.uid, tr.time, tr.element, now)

    def _one(self, up: int, uid: str, t: int, element: bytes, now: float) -> None:
        self._seen(uid, t)
        self.recent.append(element)
        self.published += 1
        self.last_update = now
        self.merge.upstream_stats[up].wins += 1
        self.merge.outbox.append(Publication("trade", self.product, 0, element, False))

    def snapshot_frame(self, count: int) -> bytes | None:
        if not self.started:
            return None
        items = list(self.recent)[-count:] if count > 0 else []
        return encode_trade_snapshot(self.product, items[::-1])

    def state(self) -> str:
        return "ok" if self.started else "down"


class ProductTicker:
    """`ticker` or `ticker_lite` of one product: newest wins, copies dropped."""

    def __init__(self, merge: FuturesMerge, feed: str, product: str) -> None:
        self.merge = merge
        self.feed = feed
        self.product = product
        self.recent: deque[bytes] = deque(maxlen=8)
        self.time: int | None = None
        self.element: bytes | None = None
        self.published = 0
        self.last_update: float | None = None

    def on_event(self, up: int, ev: FTickerEvent, now: float) -> None:
        merge = self.merge
        if ev.raw in self.recent or (ev.time is not None and self.time is not None and ev.time < self.time):
            merge.counters.duplicates += 1
            merge.upstream_stats[up].duplicates += 1
            return
        self.recent.append(ev.raw)
        if ev.time is not None:
            self.time = ev.time
        self.element = ev.raw
        self.published += 1
        self.last_update = now
        merge.upstream_stats[up].wins += 1
        merge.outbox.append(Publication(self.feed, self.product, 0, ev.raw, False))


class FuturesMerge(MergeBase):
    def __init__(self, settings: MergeSettings | None = None, parser: Any = None) -> None:
        self.settings = settings or MergeSettings()
        self.parser = parser or FuturesParser()
        self._init_outputs()
        self.lines: list[FLine] = []
        self.counters = FCounters()
        self.books: dict[str, ProductBook] = {}
        self.trades: dict[str, ProductTrades] = {}
        self.tickers: dict[str, ProductTicker] = {}  # feed "ticker" (metrics read this one)
        self.tickers_lite: dict[str, ProductTicker] = {}
        self._relay_states: dict[str, dict[str, Any]] = {}
        self.validator = ProductValidator()
        self.dropped: dict[tuple[str, str], float] = {}  # released (feed, product) -> when: frames ignored
        self._gated = False  # True once `expect` has listed the subscriptions: others hold no state

    # -- upstream registry ---------------------------------------------------------------------
    def add_upstream(self, name: str) -> int:
        self.lines.append(FLine(name))
        self.upstream_stats.append(UpstreamStats(name))
        self.validator.add_line()
        for pb in self.books.values():
            pb.add_line()
        return len(self.lines) - 1

    def upstream_up(self, up: int, now: float) -> None:
        line = self.lines[up]
        line.connected = True
        line.fresh = True

    def upstream_down(self, up: int, now: float) -> None:
        line = self.lines[up]
        line.connected = False
        line.fresh = False
        line.status = ""
        self.validator.line_down(up)
        for pb in self.books.values():
            pb.reset_line(up, now)
        self._update_system()
        self._publish_relay_states()

    def line_status(self, up: int, system: str, now: float, version: str = "") -> None:
        line = self.lines[up]
        line.connected = True
        if version:
            line.version = version
        line.status = system
        if line.fresh:  # the planner sends the whole desired set after this first `info`
            line.fresh = False
            self.validator.line_up(up)
        self._update_system()
        self._publish_relay_states()

    # -- on-demand subscriptions ---------------------------------------------------------------
    def expect(self, keys: list[tuple[str, str]], now: float) -> None:
        """The desired upstream subscriptions, (feed, product), whenever they change."""
        self.validator.expect(keys, now)
        self._gated = True
        if self.dropped:
            for key in keys:
                self.dropped.pop(key, None)

    def drop(self, feed: str, product: str, now: float = 0.0) -> None:
        """A released on-demand subscription: forget its state; frames still in flight for it are
        ignored until it is expected again (a new subscription starts from a fresh snapshot)."""
        self.dropped[(feed, product)] = now
        if feed == "book":
            self.books.pop(product, None)
        elif feed == "trade":
            self.trades.pop(product, None)
        elif feed == "ticker":
            self.tickers.pop(product, None)
        elif feed == "ticker_lite":
            self.tickers_lite.pop(product, None)
        if product not in self.symbols():
            self._relay_states.pop(product, None)

    def _answers(self, up: int, ev: Any) -> None:
        """Kraken's answers to subscribe requests feed the product validator."""
        if type(ev) is AckEvent:
            if ev.method == "subscribe":
                names = ev.result.get("_symbols") or [ev.symbol or ""]
                self.validator.on_ack(up, ev.channel, names, ev.success)
        elif ev.reason.startswith("error: "):
            self.validator.on_error(up, ev.reason[7:])
        for product in self.validator.take():
            self.outbox.append(Publication(REFUSED, product, 0, REFUSED_FRAME, False))

    def symbol_resubscribing(self, up: int, channel: str, symbol: str, now: float) -> None:
        if channel == "book":
            pb = self.books.get(symbol)
            if pb is not None:
                pb.reset_line(up, now)

    # -- hot path ------------------------------------------------------------------------------
    def feed(self, up: int, raw: bytes, now: float) -> Any:
        hit = self.seen.get(raw)
        if hit is not None and hit[0].on_dup(up, hit[1], now):
            self.counters.duplicates += 1
            self.upstream_stats[up].duplicates += 1
            return None
        ev = self.parser.parse(raw)
        t = type(ev)
        if t is FBookDelta:
            pb = self.books.get(ev.product)
            if pb is None:
                if (self.dropped and ("book", ev.product) in self.dropped) or not self._solicited(
                    up, "book", ev.product
                ):
                    return None
                pb = self._book(ev.product)
            pb.on_delta(up, ev, now)
            return None
        if t is FBookSnapshot:
            pb = self.books.get(ev.product)
            if pb is None:
                if (self.dropped and ("book", ev.product) in self.dropped) or not self._solicited(
                    up, "book", ev.product
                ):
                    return None
                pb = self._book(ev.product)
            pb.on_snapshot(up, ev, now)
            self._publish_relay_states()
            return None
        if self.dropped and t in (FTradeEvent, FTickerEvent):
            if ("trade" if t is FTradeEvent else ev.feed, ev.product) in self.dropped:
                return None
        if t is FTradeEvent:
            tr = self.trades.get(ev.product)
            if tr is None:
                if not self._solicited(up, "trade", ev.product):
                    return None
                keep = max(self.settings.recent_trades, TRADE_SNAPSHOT)  # a full Kraken trade_snapshot
                tr = self.trades[ev.product] = ProductTrades(self, ev.product, keep)
            tr.on_event(up, ev, now)
            return None
        if t is FTickerEvent:
            table = self.tickers if ev.feed == "ticker" else self.tickers_lite
            tk = table.get(ev.product)
            if tk is None:
                if not self._solicited(up, ev.feed, ev.product):
                    return None
                tk = table[ev.product] = ProductTicker(self, ev.feed, ev.product)
            tk.on_event(up, ev, now)
            return None
        if t is UnknownEvent:
            self.upstream_stats[up].unknown += 1
            self._answers(up, ev)
        elif t is AckEvent:
            self._answers(up, ev)
        return ev  # control events (info -> StatusEvent, acks, heartbeats) go to the connection

    def _solicited(self, up: int, feed: str, product: str) -> bool:
        """Only subscribed (feed, product)s hold state (once the endpoint has said what it
        subscribes); data for anything else is counted and dropped."""
        if not self._gated or (feed, product) in self.validator.expected:
            return True
        self.upstream_stats[up].unsolicited += 1
        return False

    def _book(self, product: str) -> ProductBook:
        pb = self.books[product] = ProductBook(self, product, len(self.lines))
        return pb

    # -- requests and timers -------------------------------------------------------------------
    def tick(self, now: float) -> None:
        window = self.settings.stale_after
        for pb in self.books.values():
            pb.check(now, window)
        self.validator.tick(now)
        if self.dropped:
            for key in [k for k, t in self.dropped.items() if now - t >= DROP_IGNORE]:
                del self.dropped[key]
        self._publish_relay_states()

    def want_book_depth(self, symbol: str, depth: int) -> None:  # futures books are full depth
        pass

    def release_book_depth(self, symbol: str, depth: int) -> None:
        pass

    def book_snapshot(self, symbol: str, depth: int = 0) -> bytes | None:
        pb = self.books.get(symbol)
        if pb is None or not pb.ready:
            return None
        return pb.snapshot_frame(depth)

    def trade_snapshot(self, symbol: str, count: int = TRADE_SNAPSHOT) -> bytes | None:
        tr = self.trades.get(symbol)
        return None if tr is None else tr.snapshot_frame(count)

    def ticker_snapshot(self, symbol: str, feed: str = "ticker") -> bytes | None:
        tk = (self.tickers if feed == "ticker" else self.tickers_lite).get(symbol)
        return None if tk is None else tk.element

    def ohlc_snapshot(self, symbol: str, interval: int) -> bytes | None:
        return None

    def instrument_snapshot(self) -> bytes | None:
        return None

    # -- state ---------------------------------------------------------------------------------
    def _update_system(self) -> None:
        self._system = "online" if any(ln.connected and ln.status == "online" for ln in self.lines) else "maintenance"

    def symbol_state(self, symbol: str) -> dict[str, Any]:
        pb = self.books.get(symbol)
        tr = self.trades.get(symbol)
        ups: dict[str, str] = {}
        for i, line in enumerate(self.lines):
            if not line.connected:
                ups[line.name] = "down"
            elif pb is not None:
                ups[line.name] = pb.line_state(i)
            else:
                ups[line.name] = "valid" if symbol in self.tickers or symbol in self.tickers_lite or tr else "resyncing"
        state: dict[str, Any] = {"symbol": symbol, "upstreams": ups}
        if pb is not None:
            state["book"] = pb.state()
            state["seq"] = pb.seq
        if tr is not None:
            state["trade"] = tr.state()
        return state

    def symbols(self) -> list[str]:
        return sorted(set(self.books) | set(self.trades) | set(self.tickers) | set(self.tickers_lite))

    def _publish_relay_states(self) -> None:
        for sym in self.symbols():
            st = self.symbol_state(sym)
            st.pop("seq", None)  # changes with every delta: not a state change
            if self._relay_states.get(sym) != st:
                self._relay_states[sym] = st
                frame = orjson.dumps({"feed": "relay", "product_id": sym, **st})
                self.outbox.append(Publication("relay", sym, 0, frame, False))
