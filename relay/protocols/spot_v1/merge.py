"""The Spot v1 merge: the protocol-neutral `Merge` with the v1 adapter, the v1 codec and v1 arbiters.

Books go through the shared `BookArbiter` unchanged (v1 lexemes are the quoted strings, the
checksum rules are the same). What differs:

* frames are normalized first (`relay.protocols.spot_v1.wire.normalize`: upstream channelID -> 0), so copies of
  one update from different lines are byte-identical and hit the pre-parse duplicate check;
* trades carry no id, so `V1TradeArbiter` deduplicates by full content within a bounded window
  (see its docstring for the limits this implies);
* ticker frames carry no time: deduplicated by content with multiplicity like trades (a value
  that comes back is published again); spread is newest-wins by its time;
* ohlc is deduplicated by content too (every change of the candle is published: two updates of
  one candle may carry the same `time`), and a record older than the last published one, by
  (endTime, time), is dropped (a lagging line must not take the candle back);
* each pair's book is held at the depth the endpoint asks for (`set_book_target`, the deepest a
  client needs): frames of another depth (the subscription being replaced on a line) are
  dropped, and the book is deepened in place when the first frame at the new depth arrives;
* streams the endpoint no longer subscribes upstream (`retire`) are forgotten and their late
  frames dropped, so a later subscription starts from fresh data;
* an upstream `subscriptionStatus: subscribed` is published as an `ACK` publication (channel
  name in `frame`), which tells the endpoint that an on-demand subscription is live on a line.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any

import orjson

from relay.core.book_arbiter import NONE, BookArbiter
from relay.core.events import AckEvent, BookEvent, ControlEvent, OhlcEvent, TickerEvent, UnknownEvent
from relay.core.merge import Merge
from relay.core.outputs import MergeSettings, Publication
from relay.protocols.spot_v1.wire import (
    LevelTimes,
    SpreadEvent,
    V1Codec,
    V1Parser,
    V1TradeEvent,
    frame_book_depth,
    normalize,
)

TRADE_WINDOW = 2000  # trades remembered per pair for content dedupe
TICKER_WINDOW = 64  # ticker / ohlc records remembered per stream
RETIRED_MAX = 4096  # streams remembered as unsubscribed (their late frames are dropped)
ACK = "subscribed"  # publication channel: an upstream subscription was acknowledged (frame: its channel)

# Latest modes
CONTENT = "content"  # no order: content with multiplicity (ticker)
NEWEST = "newest"  # newest-wins by order (spread)
CANDLE = "candle"  # content with multiplicity, never older than the last published (ohlc)


class ContentCounts:
    """Dedupe by full content for streams without ids, across lines, over a bounded window.

    Multiplicity is kept: the k-th copy of a content from one line is new only if fewer than k
    records with that content were published within the window. So two identical records that
    both lines deliver are both published, and a value that comes back (a ticker returning to an
    earlier state) is published again, while the other line's copies of each are dropped.

    Limits (inherent to v1, documented in the README): two genuinely identical records seen on
    only one line each are merged into one; a line more than `window` records behind the others
    (or a resubscribe snapshot older than the window) republishes those records.
    """

    __slots__ = ("window", "order", "published", "lines")

    def __init__(self, lines: int, window: int) -> None:
        self.window = window
        self.order: deque[bytes] = deque()
        self.published: dict[bytes, int] = {}
        self.lines: list[dict[bytes, int]] = [{} for _ in range(lines)]

    def add_line(self) -> None:
        self.lines.append({})

    def reset_line(self, up: int) -> None:
        self.lines[up] = {}

    def fresh(self, up: int, items: list[bytes]) -> list[bytes]:
        """Count `items` as delivered by line `up`; return those never published before (in order)."""
        counts = self.lines[up]
        pub = self.published
        out: list[bytes] = []
        for t in items:
            n = counts.get(t, 0) + 1
            counts[t] = n
            if n > pub.get(t, 0):
                pub[t] = n
                self.order.append(t)
                out.append(t)
        if out:
            self._evict()
        return out

    def _evict(self) -> None:
        order, pub = self.order, self.published
        while len(order) > self.window:
            t = order.popleft()
            n = pub[t] - 1
            if n:
                pub[t] = n
                for counts in self.lines:
                    if counts.get(t, 0) > n:
                        counts[t] = n
            else:
                del pub[t]
                for counts in self.lines:
                    counts.pop(t, None)


class V1TradeArbiter:
    """v1 trades for one pair: each trade once, whichever line brings it first.

    With no trade id, a trade is identified by its full content (price, volume, time with µs,
    side, type, misc), counted with multiplicity over the last `window` trades (`ContentCounts`,
    whose docstring states the limits this implies).
    """

    def __init__(self, merge: V1Merge, symbol: str, recent: int, window: int = TRADE_WINDOW) -> None:
        self.merge = merge
        self.symbol = symbol
        self.seen = ContentCounts(len(merge.lines), window)
        self.active: list[bool] = [False for _ in merge.lines]
        self.recent: deque[bytes] = deque(maxlen=max(recent, 1))
        self.gap_deadline: float | None = None  # v1 has no ids: no gap detection
        self.hold_since: float | None = None  # ... and no id jumps to hold
        self.published = 0
        self.gaps = 0
        self.missing = 0
        self.late = 0  # same counters as the v2 trade arbiter; v1 trades have no ids, so no gaps
        self.last_update = 0.0
        self.last_id: int | None = None

    def add_line(self) -> None:
        self.seen.add_line()
        self.active.append(False)

    def reset_line(self, up: int) -> None:
        self.seen.reset_line(up)
        self.active[up] = False

    def on_dup(self, up: int, token: int, now: float, raw: bytes | None = None) -> bool:
        return False  # never registered in the byte-level check: counts must see every copy

    def on_event(self, up: int, ev: V1TradeEvent, now: float) -> None:
        self.active[up] = True
        fresh = self.seen.fresh(up, ev.trades)
        if not fresh:
            self.merge.counters.duplicates += 1
            return
        merge = self.merge
        frame = ev.raw if len(fresh) == len(ev.trades) else merge.codec.trades(self.symbol, fresh)
        self.recent.extend(fresh)
        merge.outbox.append(Publication("trade", self.symbol, 0, frame, False))
        merge.upstream_stats[up].wins += 1
        self.published += len(fresh)
        self.last_update = now
        self.last_id = self.published

    def expire(self, now: float) -> None:
        return None

    def check_stale(self, now: float, window: float) -> None:
        return None

    def snapshot_frame(self, count: int = 50) -> bytes | None:
        if not self.recent or not count:
            return None
        return self.merge.codec.trades(self.symbol, list(self.recent)[-count:])

    def state(self) -> str:
        return "ok" if self.published and any(self.active) else "down"


class Latest:
    """One full-record stream (ticker, spread, or an ohlc interval) of one pair.

    `mode` CONTENT (ticker, which has no time): content with multiplicity (`ContentCounts`, last
    `TICKER_WINDOW` records), never via the byte-level fast path so every copy is counted.
    NEWEST (spread): newest-wins by `order`; copies take the fast path. CANDLE (ohlc): content
    with multiplicity like CONTENT, and a record whose `order` (endTime, time) is older than the
    newest published one is dropped.
    """

    def __init__(self, merge: V1Merge, channel: str, symbol: str, key: int = 0, mode: str = CONTENT) -> None:
        self.merge = merge
        self.channel = channel
        self.symbol = symbol
        self.key = key
        self.mode = mode
        self.order: Any = None
        self.element: bytes | None = None
        self.seen = ContentCounts(len(merge.lines), TICKER_WINDOW)
        self.published = 0
        self.last_update = 0.0

    def add_line(self) -> None:
        self.seen.add_line()

    def reset_line(self, up: int) -> None:
        self.seen.reset_line(up)

    def on_dup(self, up: int, token: int, now: float, raw: bytes | None = None) -> bool:
        return True

    def offer(self, up: int, order: Any, element: bytes, raw: bytes, now: float) -> None:
        merge = self.merge
        mode = self.mode
        if mode == NEWEST:
            if self.element is not None and order <= self.order:
                merge.counters.duplicates += 1
                return
            merge.remember(raw, self, 0)
        else:
            if mode == CANDLE and self.order is not None and order < self.order:
                merge.counters.duplicates += 1  # an older state of the candle (a lagging line)
                return
            if not self.seen.fresh(up, [element]):
                merge.counters.duplicates += 1
                return
        self.order, self.element = order, element
        merge.outbox.append(Publication(self.channel, self.symbol, self.key, raw, False))
        merge.upstream_stats[up].wins += 1
        self.published += 1
        self.last_update = now

    def snapshot_frame(self) -> bytes | None:
        if self.element is None:
            return None
        return self.merge.codec.element(self.channel, self.symbol, self.element)


def _candle_order(interval_begin: str) -> tuple[float, float]:
    """The parser's `endTime|time` as numbers (both epoch seconds with µs)."""
    end, _, t = interval_begin.partition("|")
    try:
        return float(end), float(t)
    except ValueError:
        return 0.0, 0.0


class V1Merge(Merge):
    """`Merge` for Spot v1 upstreams and v1 clients (same public surface)."""

    codec: V1Codec

    def __init__(self, settings: MergeSettings | None = None) -> None:
        times = LevelTimes()
        super().__init__(settings or MergeSettings(), V1Parser(times), V1Codec(times))
        self.spreads: dict[str, Latest] = {}
        self.book_targets: dict[str, int] = {}  # pair -> depth its upstream subscription has
        # (channel, pair, interval|0) no longer subscribed: late frames are dropped. Bounded (oldest
        # first out): late frames come within seconds of the unsubscribe.
        self.retired: dict[tuple[str, str, int], None] = {}
        self._line_depth: dict[tuple[str, int], int] = {}  # (pair, line) -> depth of its last book frame
        self._book_tail: dict[str, tuple[int, bytes]] = {}  # pair -> (depth, its frames' last bytes)

    def feed(self, up: int, raw: bytes, now: float) -> ControlEvent | None:
        if raw[:1] == b"[":
            raw = normalize(raw)
        hit = self.seen.get(raw)
        blocked = self._blocked[up]
        if hit is not None and not blocked:
            if hit[0].on_dup(up, hit[1], now, raw):
                self.upstream_stats[up].duplicates += 1
                return None
        ev = self.parser.parse(raw)
        t = type(ev)
        retired = self.retired
        if t is BookEvent:
            if blocked:
                self.counters.maintenance_dropped += 1
                return None
            if (self.book_targets or retired) and not self._book_depth_ok(up, ev.symbol, raw):
                return None
            arb = self.books.get(ev.symbol)
            if arb is None:
                if not self.solicited(up, "book", ev.symbol):
                    return None
                arb = self._book_arbiter(ev.symbol)
            arb.on_event(up, ev, now)
            return None
        if t is V1TradeEvent:
            if not blocked and not (retired and ("trade", ev.symbol, 0) in retired):
                tarb: Any = self.trades.get(ev.symbol)  # v1 arbiters in the base merge's tables
                if tarb is None:
                    if not self.solicited(up, "trade", ev.symbol):
                        return None
                    tarb = self.trades[ev.symbol] = V1TradeArbiter(self, ev.symbol, self.settings.recent_trades)  # type: ignore[assignment]
                tarb.on_event(up, ev, now)
            return None
        if t is TickerEvent:
            if not blocked and not (retired and ("ticker", ev.symbol, 0) in retired):
                if ev.symbol not in self.tickers and not self.solicited(up, "ticker", ev.symbol):
                    return None
                self._latest(self.tickers, ev.symbol, "ticker", 0, CONTENT).offer(up, None, ev.element, raw, now)
            return None
        if t is SpreadEvent:
            if not blocked and not (retired and ("spread", ev.symbol, 0) in retired):
                if ev.symbol not in self.spreads and not self.solicited(up, "spread", ev.symbol):
                    return None
                self._latest(self.spreads, ev.symbol, "spread", 0, NEWEST).offer(
                    up, (ev.time, ev.element), ev.element, raw, now
                )
            return None
        if t is OhlcEvent:
            if not blocked and not (retired and ("ohlc", ev.symbol, ev.interval) in retired):
                key = (ev.symbol, ev.interval)
                arb2: Any = self.ohlc.get(key)
                if arb2 is None:
                    if not self.solicited(up, "ohlc", ev.symbol, ev.interval):
                        return None
                    arb2 = self.ohlc[key] = Latest(self, "ohlc", ev.symbol, ev.interval, CANDLE)  # type: ignore[assignment]  # v1 arbiter
                arb2.offer(up, _candle_order(ev.interval_begin), ev.element, raw, now)
            return None
        if t is AckEvent:
            if ev.success and ev.method == "subscribe" and ev.channel and ev.symbol:
                param = ev.result.get("interval", 0) if ev.channel == "ohlc" else ev.result.get("depth", 0)
                if isinstance(param, int):
                    self.outbox.append(Publication(ACK, ev.symbol, param, ev.channel.encode(), False))
            return ev
        if t is UnknownEvent:
            self.bad_data(up, ev, now)
        return ev

    def set_subscribed(self, keys: Iterable[tuple[str, str, int]]) -> None:
        keys = list(keys)
        super().set_subscribed(keys)
        self.parser.times.allowed = {s for c, s, _ in keys if c == "book"}  # type: ignore[attr-defined]

    # -- book depth per pair ----------------------------------------------------------------
    def set_book_target(self, symbol: str, depth: int | None) -> None:
        """The depth `symbol`'s book is subscribed at upstream now (None: not subscribed). The
        book follows when that depth's first frame arrives (see the module docstring)."""
        if depth is None:
            self.book_targets.pop(symbol, None)
            return
        self.book_targets[symbol] = depth
        arb = self.books.get(symbol)
        if arb is not None and arb.depth != depth and not arb.ready:
            arb.set_depth(depth)  # nothing published yet: nothing to keep

    def _book_depth_ok(self, up: int, symbol: str, raw: bytes) -> bool:
        """Whether a book frame belongs to the subscription the book is held at."""
        target = self.book_targets.get(symbol)
        if target is None:
            if ("book", symbol, 0) in self.retired:
                self.counters.book_dropped += 1
                return False
            return True
        arb = self.books.get(symbol)
        if arb is None:  # a new book starts at its subscription's depth, with that one's frames
            depth = frame_book_depth(raw)
            if depth is None or depth == target:
                return True
            self.counters.book_dropped += 1
            return False
        tail = self._book_tail.get(symbol)
        if tail is None or tail[0] != arb.depth:
            tail = self._book_tail[symbol] = (arb.depth, b',"book-%d",%s]' % (arb.depth, orjson.dumps(symbol)))
        on = self._line_depth
        if raw.endswith(tail[1]) and target == arb.depth:  # the steady state: the held subscription
            if on.get((symbol, up)) != target:
                on[(symbol, up)] = target
            return True
        depth = frame_book_depth(raw)
        if depth is None:
            return True
        if depth == arb.depth:
            on[(symbol, up)] = depth
            return True
        if depth == target:  # the first frame (the snapshot) of the new subscription
            arb.set_depth(target)
            on[(symbol, up)] = depth
            return True
        # the subscription being replaced: its frames no longer count; a line still on it
        # holds a book of the old depth, which is not this book's any more
        if on.get((symbol, up)) != arb.depth and arb.lines[up].mode != NONE:
            arb.reset_line(up)
        self.counters.book_dropped += 1
        return False

    def _book_arbiter(self, symbol: str) -> BookArbiter:
        arb = super()._book_arbiter(symbol)
        depth = self.book_targets.get(symbol)
        if depth is not None and depth != arb.depth:
            arb.set_depth(depth)  # a new book: held at its subscription's depth from the start
        return arb

    def book_snapshot(self, symbol: str, depth: int) -> bytes | None:
        """None until the book holds every level to `depth` (a book being deepened)."""
        arb = self.books.get(symbol)
        if arb is None or not arb.ready or depth > arb.depth or not arb.complete_to(depth):
            return None
        return arb.snapshot_frame(depth)

    def book_ready(self, symbol: str, depth: int) -> bool:
        """A valid published book held at least `depth` deep, complete to it."""
        arb = self.books.get(symbol)
        return arb is not None and arb.ready and arb.depth >= depth and arb.complete_to(depth)

    # -- streams subscribed upstream or not --------------------------------------------------
    def retire(self, channel: str, symbol: str, key: int = 0) -> None:
        """`(channel, symbol, key)` is no longer subscribed upstream: forget it, drop late frames."""
        retired = self.retired
        retired.pop((channel, symbol, key), None)
        retired[(channel, symbol, key)] = None
        if len(retired) > RETIRED_MAX:
            del retired[next(iter(retired))]
        owner: Any
        if channel == "book":
            self.book_targets.pop(symbol, None)
            for k in [k for k in self._line_depth if k[0] == symbol]:
                del self._line_depth[k]
            self._book_tail.pop(symbol, None)
            owner = self.books.pop(symbol, None)
        elif channel == "trade":
            owner = self.trades.pop(symbol, None)
        elif channel == "ticker":
            owner = self.tickers.pop(symbol, None)
        elif channel == "spread":
            owner = self.spreads.pop(symbol, None)
        else:
            owner = self.ohlc.pop((symbol, key), None)
        if owner is not None:
            seen = self.seen
            for raw in [r for r, hit in seen.items() if hit[0] is owner]:
                del seen[raw]
        if all(symbol not in t for t in (self.books, self.trades, self.tickers, self.spreads)):
            self._relay_states.pop(symbol, None)

    def activate(self, channel: str, symbol: str, key: int = 0) -> None:
        """`(channel, symbol, key)` is subscribed upstream (again)."""
        self.retired.pop((channel, symbol, key), None)

    def has_stream(self, channel: str, symbol: str, key: int = 0) -> bool:
        """Whether a non-book stream has a record for a new subscriber."""
        table: Any = {"trade": self.trades, "ticker": self.tickers, "spread": self.spreads}.get(channel)
        if table is not None:
            return symbol in table
        return (symbol, key) in self.ohlc

    # Content counts are per line (tickers, ohlc): kept in step with the line registry.
    def _content_streams(self) -> list[Any]:
        return [*self.tickers.values(), *self.ohlc.values(), *self.spreads.values()]

    def add_upstream(self, name: str) -> int:
        up = super().add_upstream(name)
        for arb in self._content_streams():
            arb.add_line()
        return up

    def upstream_down(self, up: int, now: float) -> None:
        super().upstream_down(up, now)
        for arb in self._content_streams():
            arb.reset_line(up)

    def symbol_resubscribing(self, up: int, channel: str, symbol: str, now: float) -> None:
        super().symbol_resubscribing(up, channel, symbol, now)
        if channel == "ticker" and symbol in self.tickers:
            self.tickers[symbol].reset_line(up)  # type: ignore[attr-defined]
        elif channel == "ohlc":
            for (sym, _), arb in self.ohlc.items():
                if sym == symbol:
                    arb.reset_line(up)  # type: ignore[attr-defined]

    def _latest(self, table: dict, symbol: str, channel: str, key: int, mode: str) -> Latest:
        arb = table.get(symbol)
        if arb is None:
            arb = table[symbol] = Latest(self, channel, symbol, key, mode)
        return arb

    def ticker_snapshot(self, symbol: str, key: int = 0) -> bytes | None:
        kar: Any = self.tickers.get(symbol)
        return None if kar is None else kar.snapshot_frame()

    def spread_snapshot(self, symbol: str) -> bytes | None:
        arb = self.spreads.get(symbol)
        return None if arb is None else arb.snapshot_frame()

    def symbols(self) -> list[str]:
        return sorted(set(self.books) | set(self.trades) | set(self.tickers) | set(self.spreads))

    def instrument_snapshot(self) -> bytes | None:
        return None  # v1 has no instrument channel
