"""The merge: several upstream frame streams in, one published stream out (Sans-I/O).

`Merge.feed(up, raw, now)` is the hot path. A frame byte-identical to one already published is
recognised before any parsing (`seen`: frame bytes -> the arbiter and position it belongs to)
and costs one dict lookup; everything else is parsed by the protocol adapter and routed to the
per-symbol arbiter of its channel. Arbiters append `Publication`s to `outbox` and ask for
per-(upstream, symbol) resubscriptions through `requests`; the I/O layers drain both.

The merge never sleeps and never touches a socket: time comes in as `now`, timers run in
`tick(now)`, and `next_deadline()` says when the next one is due.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from relay.core.book_arbiter import BookArbiter
from relay.core.events import (
    BookEvent,
    ControlEvent,
    InstrumentEvent,
    OhlcEvent,
    TickerEvent,
    TradeEvent,
)
from relay.core.latest import InstrumentArbiter, OhlcArbiter, TickerArbiter
from relay.core.trade_arbiter import TradeArbiter
from relay.core.v2 import V2Codec, V2Parser

# Engine modes, best first: the relay reports the best mode any connected line reports.
STATUS_RANK = {"online": 0, "post_only": 1, "limit_only": 2, "cancel_only": 3, "maintenance": 4}
BLOCKING_STATUS = ("maintenance",)


class Publication(NamedTuple):
    """One frame to send to the subscribers of (channel, symbol, key), encoded once."""

    channel: str
    symbol: str
    key: int  # book: depth of the view; ohlc: interval; otherwise 0
    frame: bytes
    snapshot: bool


class ResyncRequest(NamedTuple):
    """Resubscribe `symbol` on `channel` on upstream `upstream` (checksum, stale or gap)."""

    upstream: int
    channel: str
    symbol: str
    reason: str


@dataclass(frozen=True, slots=True)
class MergeSettings:
    book_depth: int = 100
    trade_gap_wait: float = 0.5
    stale_after: float = 10.0
    history: int = 512
    recent_trades: int = 50


@dataclass(slots=True)
class UpstreamStats:
    """Merge outcomes per upstream, read by the metrics collector at scrape time (frames and
    bytes received are counted once, by the connection)."""

    name: str
    duplicates: int = 0
    wins: int = 0
    checksum_mismatches: int = 0
    resyncs: dict[str, int] = field(default_factory=dict)
    unknown: int = 0


@dataclass(slots=True)
class MergeCounters:
    duplicates: int = 0
    book_dropped: int = 0
    maintenance_dropped: int = 0
    gaps_reported: int = 0


@dataclass(slots=True)
class Line:
    name: str
    connected: bool = False
    status: str = ""


class MergeBase:
    """What every protocol's merge shares: publications out, resync requests back to the
    upstreams, reported gaps, and the registry of published bytes for the pre-parse duplicate
    check. Subclasses call `_init_outputs()` and keep their own per-symbol arbiters."""

    Publication = Publication  # arbiters build publications through the merge (one import)
    SEEN_RING = 4096  # non-book frames remembered for the duplicate check

    def _init_outputs(self) -> None:
        self.upstream_stats: list[UpstreamStats] = []
        self.outbox: list[Publication] = []
        self.requests: list[ResyncRequest] = []
        self.gaps: list[tuple[str, int, int]] = []  # recent (symbol, first missing, last missing)
        self.seen: dict[bytes, tuple[Any, int]] = {}
        self._ring: deque[bytes] = deque()
        self._system = "maintenance"

    def remember(self, raw: bytes, owner: Any, token: int) -> None:
        """Register published bytes of a non-book channel for the pre-parse duplicate check."""
        ring = self._ring
        ring.append(raw)
        self.seen[raw] = (owner, token)
        if len(ring) > self.SEEN_RING:
            self.seen.pop(ring.popleft(), None)

    def request_resync(self, up: int, channel: str, symbol: str, reason: str) -> None:
        self.requests.append(ResyncRequest(up, channel, symbol, reason))
        resyncs = self.upstream_stats[up].resyncs
        resyncs[reason] = resyncs.get(reason, 0) + 1

    def report_gap(self, symbol: str, first: int, last: int) -> None:
        self.counters.gaps_reported += 1  # type: ignore[attr-defined]
        self.gaps.append((symbol, first, last))
        del self.gaps[:-100]

    def upstream_up(self, up: int, now: float) -> None:
        """A connection is established (its data starts with fresh snapshots)."""
        self.lines[up].connected = True  # type: ignore[attr-defined]

    def take(self) -> list[Publication]:
        out = self.outbox
        if out:
            self.outbox = []
        return out

    def take_requests(self) -> list[ResyncRequest]:
        out = self.requests
        if out:
            self.requests = []
        return out

    def system_status(self) -> str:
        return self._system


class Merge(MergeBase):

    def __init__(self, settings: MergeSettings | None = None, parser: Any = None, codec: Any = None) -> None:
        self.settings = settings or MergeSettings()
        self.parser = parser or V2Parser()  # upstream protocol adapter: frame bytes -> events
        self.codec = codec or V2Codec()  # client protocol: how synthesized frames are written
        self._init_outputs()
        self.lines: list[Line] = []
        self.counters = MergeCounters()
        self.books: dict[str, BookArbiter] = {}
        self.trades: dict[str, TradeArbiter] = {}
        self.tickers: dict[str, TickerArbiter] = {}
        self.ohlc: dict[tuple[str, int], OhlcArbiter] = {}
        self.instrument = InstrumentArbiter(self)
        self._blocked: list[bool] = []
        self._relay_states: dict[str, dict[str, Any]] = {}

    # -- upstream registry ------------------------------------------------------------------
    def add_upstream(self, name: str) -> int:
        self.lines.append(Line(name))
        self.upstream_stats.append(UpstreamStats(name))
        self._blocked.append(False)
        for arb in (*self.books.values(), *self.trades.values()):
            arb.add_line()
        return len(self.lines) - 1

    def upstream_down(self, up: int, now: float) -> None:
        """The connection is gone: everything it held is forgotten."""
        line = self.lines[up]
        line.connected = False
        line.status = ""
        self._blocked[up] = False
        for arb in (*self.books.values(), *self.trades.values()):
            arb.reset_line(up)
        self._update_system()
        self._publish_relay_states()

    def line_status(self, up: int, system: str, now: float) -> None:
        """Engine status on one line. A line in maintenance feeds nothing; on its return every
        book it held is resynced (its state may have missed changes while it was frozen)."""
        line = self.lines[up]
        line.connected = True
        was_blocked = self._blocked[up]
        line.status = system
        blocked = system in BLOCKING_STATUS
        self._blocked[up] = blocked
        if blocked and not was_blocked:
            for arb in self.books.values():
                arb.reset_line(up)
        elif was_blocked and not blocked:
            for sym in self.books:
                self.request_resync(up, "book", sym, "maintenance")
        self._update_system()
        self._publish_relay_states()

    def symbol_resubscribing(self, up: int, channel: str, symbol: str, now: float) -> None:
        if channel == "book":
            arb = self.books.get(symbol)
        elif channel == "trade":
            arb = self.trades.get(symbol)
        else:
            return
        if arb is not None:
            arb.reset_line(up)

    # -- the hot path -------------------------------------------------------------------------
    def feed(self, up: int, raw: bytes, now: float) -> ControlEvent | None:
        hit = self.seen.get(raw)
        if hit is not None and not self._blocked[up]:
            if hit[0].on_dup(up, hit[1], now, raw):
                self.upstream_stats[up].duplicates += 1
                return None
        ev = self.parser.parse(raw)
        t = type(ev)
        if t is BookEvent:
            if self._blocked[up]:
                self.counters.maintenance_dropped += 1
                return None
            arb = self.books.get(ev.symbol)  # type: ignore[union-attr]
            if arb is None:
                arb = self._book_arbiter(ev.symbol)  # type: ignore[union-attr]
            arb.on_event(up, ev, now)  # type: ignore[arg-type]
            return None
        if t is TradeEvent:
            if not self._blocked[up]:
                tarb = self.trades.get(ev.symbol)  # type: ignore[union-attr]
                if tarb is None:
                    tarb = self.trades[ev.symbol] = TradeArbiter(self, ev.symbol, self.settings.recent_trades)  # type: ignore[union-attr]
                tarb.on_event(up, ev, now)  # type: ignore[arg-type]
            return None
        if t is TickerEvent:
            if not self._blocked[up]:
                kar = self.tickers.get(ev.symbol)  # type: ignore[union-attr]
                if kar is None:
                    kar = self.tickers[ev.symbol] = TickerArbiter(self, ev.symbol)  # type: ignore[union-attr]
                kar.on_event(up, ev, now)  # type: ignore[arg-type]
            return None
        if t is OhlcEvent:
            if not self._blocked[up]:
                key = (ev.symbol, ev.interval)  # type: ignore[union-attr]
                oar = self.ohlc.get(key)
                if oar is None:
                    oar = self.ohlc[key] = OhlcArbiter(self, *key)
                oar.on_event(up, ev, now)  # type: ignore[arg-type]
            return None
        if t is InstrumentEvent:
            self.instrument.on_event(up, ev, now)  # type: ignore[arg-type]
            return None
        if t.__name__ == "UnknownEvent":
            self.upstream_stats[up].unknown += 1
        return ev  # type: ignore[return-value]

    def _book_arbiter(self, symbol: str) -> BookArbiter:
        arb = BookArbiter(self, symbol, self.settings.book_depth, self.settings.history)
        self.books[symbol] = arb
        return arb

    # -- requests and timers ------------------------------------------------------------------
    def tick(self, now: float) -> None:
        """Run due timers: trade gap waits, staleness cross-checks, relay-state updates."""
        window = self.settings.stale_after
        for tarb in self.trades.values():
            if tarb.gap_deadline is not None and now >= tarb.gap_deadline:
                tarb.expire(now)
            tarb.check_stale(now, window)
        for arb in self.books.values():
            arb.check_stale(now, window)
        self._publish_relay_states()

    def next_deadline(self) -> float | None:
        deadlines = [t.gap_deadline for t in self.trades.values() if t.gap_deadline is not None]
        return min(deadlines) if deadlines else None

    # -- views and snapshots for the local server -----------------------------------------------
    def want_book_depth(self, symbol: str, depth: int) -> None:
        arb = self.books.get(symbol) or self._book_arbiter(symbol)
        arb.want_depth(depth)

    def release_book_depth(self, symbol: str, depth: int) -> None:
        arb = self.books.get(symbol)
        if arb is not None:
            arb.release_depth(depth)

    def book_snapshot(self, symbol: str, depth: int) -> bytes | None:
        arb = self.books.get(symbol)
        if arb is None or not arb.ready:
            return None
        return arb.snapshot_frame(min(depth, arb.depth))

    def trade_snapshot(self, symbol: str, count: int = 50) -> bytes | None:
        tarb = self.trades.get(symbol)
        return None if tarb is None else tarb.snapshot_frame(count)

    def ticker_snapshot(self, symbol: str) -> bytes | None:
        kar = self.tickers.get(symbol)
        return None if kar is None else kar.snapshot_frame()

    def ohlc_snapshot(self, symbol: str, interval: int) -> bytes | None:
        oar = self.ohlc.get((symbol, interval))
        return None if oar is None else oar.snapshot_frame()

    def instrument_snapshot(self) -> bytes | None:
        return self.instrument.snapshot_frame()

    # -- state for clients, metrics and readiness ------------------------------------------------
    def _update_system(self) -> None:
        statuses = [ln.status for ln in self.lines if ln.connected and ln.status in STATUS_RANK]
        best = min(statuses, key=STATUS_RANK.__getitem__) if statuses else "maintenance"
        if best != self._system:
            self._system = best
            self.outbox.append(Publication("status", "", 0, self.codec.status(best), False))

    def symbol_state(self, symbol: str) -> dict[str, Any]:
        """Per symbol: the book feed state and each upstream's state for it."""
        arb = self.books.get(symbol)
        tarb = self.trades.get(symbol)
        ups: dict[str, str] = {}
        for i, line in enumerate(self.lines):
            if not line.connected:
                ups[line.name] = "down"
            elif self._blocked[i]:
                ups[line.name] = "maintenance"
            elif arb is not None:
                lb = arb.lines[i]
                ups[line.name] = "stale" if lb.stale else arb.line_state(i)
            else:
                ups[line.name] = "valid"
        state: dict[str, Any] = {"symbol": symbol, "upstreams": ups}
        if arb is not None:
            state["book"] = arb.state()
            if state["book"] == "down" and any(v == "stale" for v in ups.values()):
                state["book"] = "stale"
        if tarb is not None:
            state["trade"] = tarb.state()
        return state

    def symbols(self) -> list[str]:
        return sorted(set(self.books) | set(self.trades) | set(self.tickers))

    def _publish_relay_states(self) -> None:
        """Emit a `relay` channel update for every symbol whose state changed."""
        for sym in self.symbols():
            st = self.symbol_state(sym)
            if self._relay_states.get(sym) != st:
                self._relay_states[sym] = st
                frame = self.codec.elements("relay", False, [_json(st)])
                self.outbox.append(Publication("relay", sym, 0, frame, False))

    def relay_snapshot(self, symbol: str | None = None) -> bytes:
        syms = [symbol] if symbol else self.symbols()
        return self.codec.elements("relay", True, [_json(self.symbol_state(s)) for s in syms])


def _json(obj: Any) -> bytes:
    import orjson

    return orjson.dumps(obj)
