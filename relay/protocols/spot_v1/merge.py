"""The Spot v1 merge: the protocol-neutral `Merge` with the v1 adapter, the v1 codec and v1 arbiters.

Books go through the shared `BookArbiter` unchanged (v1 lexemes are the quoted strings, the
checksum rules are the same). What differs:

* frames are normalized first (`relay.protocols.spot_v1.wire.normalize`: upstream channelID -> 0), so copies of
  one update from different lines are byte-identical and hit the pre-parse duplicate check;
* trades carry no id, so `V1TradeArbiter` deduplicates by full content within a bounded window
  (see its docstring for the limits this implies);
* ticker frames carry no time: deduplicated by content with multiplicity like trades (a value
  that comes back is published again); spread is newest-wins by its time, ohlc by (endTime, time).
"""

from __future__ import annotations

from collections import deque
from typing import Any

from relay.core.events import BookEvent, ControlEvent, OhlcEvent, TickerEvent
from relay.core.merge import Merge
from relay.core.outputs import MergeSettings, Publication
from relay.protocols.spot_v1.wire import LevelTimes, SpreadEvent, V1Codec, V1Parser, V1TradeEvent, normalize

TRADE_WINDOW = 2000  # trades remembered per pair for content dedupe
TICKER_WINDOW = 64  # ticker records remembered per pair


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

    `order` None (ticker, which has no time): content with multiplicity (`ContentCounts`, last
    `TICKER_WINDOW` records), never via the byte-level fast path so every copy is counted;
    otherwise newest-wins by `order`, and copies take the fast path.
    """

    def __init__(self, merge: V1Merge, channel: str, symbol: str, key: int = 0) -> None:
        self.merge = merge
        self.channel = channel
        self.symbol = symbol
        self.key = key
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
        if order is None:
            if not self.seen.fresh(up, [element]):
                merge.counters.duplicates += 1
                return
        elif self.element is not None and order <= self.order:
            merge.counters.duplicates += 1
            return
        else:
            merge.remember(raw, self, 0)
        self.order, self.element = order, element
        merge.outbox.append(Publication(self.channel, self.symbol, self.key, raw, False))
        merge.upstream_stats[up].wins += 1
        self.published += 1
        self.last_update = now

    def snapshot_frame(self) -> bytes | None:
        if self.element is None:
            return None
        return self.merge.codec.element(self.channel, self.symbol, self.element)


class V1Merge(Merge):
    """`Merge` for Spot v1 upstreams and v1 clients (same public surface)."""

    codec: V1Codec

    def __init__(self, settings: MergeSettings | None = None) -> None:
        times = LevelTimes()
        super().__init__(settings or MergeSettings(), V1Parser(times), V1Codec(times))
        self.spreads: dict[str, Latest] = {}

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
        if t is BookEvent:
            if blocked:
                self.counters.maintenance_dropped += 1
                return None
            arb = self.books.get(ev.symbol) or self._book_arbiter(ev.symbol)
            arb.on_event(up, ev, now)
            return None
        if t is V1TradeEvent:
            if not blocked:
                tarb: Any = self.trades.get(ev.symbol)  # v1 arbiters in the base merge's tables
                if tarb is None:
                    tarb = self.trades[ev.symbol] = V1TradeArbiter(self, ev.symbol, self.settings.recent_trades)  # type: ignore[assignment]
                tarb.on_event(up, ev, now)
            return None
        if t is TickerEvent:
            if not blocked:
                self._latest(self.tickers, ev.symbol, "ticker", 0).offer(up, None, ev.element, raw, now)
            return None
        if t is SpreadEvent:
            if not blocked:
                self._latest(self.spreads, ev.symbol, "spread", 0).offer(
                    up, (ev.time, ev.element), ev.element, raw, now
                )
            return None
        if t is OhlcEvent:
            if not blocked:
                key = (ev.symbol, ev.interval)
                arb2: Any = self.ohlc.get(key)
                if arb2 is None:
                    arb2 = self.ohlc[key] = Latest(self, "ohlc", ev.symbol, ev.interval)  # type: ignore[assignment]  # v1 arbiter
                arb2.offer(up, ev.interval_begin, ev.element, raw, now)
            return None
        if t.__name__ == "UnknownEvent":
            self.upstream_stats[up].unknown += 1
        return ev

    # Ticker content counts are per line, like trades: kept in step with the line registry.
    def add_upstream(self, name: str) -> int:
        up = super().add_upstream(name)
        for arb in self.tickers.values():
            arb.add_line()  # type: ignore[attr-defined]
        return up

    def upstream_down(self, up: int, now: float) -> None:
        super().upstream_down(up, now)
        for arb in self.tickers.values():
            arb.reset_line(up)  # type: ignore[attr-defined]

    def symbol_resubscribing(self, up: int, channel: str, symbol: str, now: float) -> None:
        super().symbol_resubscribing(up, channel, symbol, now)
        if channel == "ticker" and symbol in self.tickers:
            self.tickers[symbol].reset_line(up)  # type: ignore[attr-defined]

    def _latest(self, table: dict, symbol: str, channel: str, key: int) -> Latest:
        arb = table.get(symbol)
        if arb is None:
            arb = table[symbol] = Latest(self, channel, symbol, key)
        return arb

    def spread_snapshot(self, symbol: str) -> bytes | None:
        arb = self.spreads.get(symbol)
        return None if arb is None else arb.snapshot_frame()

    def symbols(self) -> list[str]:
        return sorted(set(self.books) | set(self.trades) | set(self.tickers) | set(self.spreads))

    def instrument_snapshot(self) -> bytes | None:
        return None  # v1 has no instrument channel
