"""`Merge`: several upstream frame streams in, one published stream out (Sans-I/O).

`Merge.feed(up, raw, now)` is the hot path. A frame byte-identical to one already published is
recognised before any parsing (`seen`: frame bytes -> the arbiter and position it belongs to)
and costs one dict lookup; everything else is parsed by the protocol's parser and routed to the
per-symbol arbiter of its channel. Synthesized frames are written by the protocol's codec, so
the same merge serves Spot v2 (`relay.protocols.spot_v2.merge`) and Spot v1. Arbiters append `Publication`s to `outbox` and
ask for per-(upstream, symbol) resubscriptions through `requests`; the I/O layers drain both.

The merge never sleeps and never touches a socket: time comes in as `now`, timers run in
`tick(now)`, which the upstream pool calls every 0.1 s.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import orjson

from relay.core.book_arbiter import BookArbiter
from relay.core.events import (
    BookEvent,
    ControlEvent,
    InstrumentEvent,
    OhlcEvent,
    TickerEvent,
    TradeEvent,
    UnknownEvent,
)
from relay.core.latest import InstrumentArbiter, OhlcArbiter, TickerArbiter
from relay.core.outputs import (
    BLOCKING_STATUS,
    STATUS_RANK,
    Codec,
    Line,
    MergeBase,
    MergeCounters,
    MergeSettings,
    Parser,
    Publication,
    UpstreamStats,
)
from relay.core.trade_arbiter import TradeArbiter


class Merge(MergeBase):
    """Book, trade, ticker, ohlc and instrument arbiters behind one protocol's parser and codec."""

    def __init__(self, settings: MergeSettings, parser: Parser, codec: Codec) -> None:
        self.settings = settings
        self.parser = parser  # upstream protocol adapter: frame bytes -> events
        self.codec = codec  # client protocol: how synthesized frames are written
        self._init_outputs()
        self.lines: list[Line] = []
        self.counters = MergeCounters()
        self.books: dict[str, BookArbiter] = {}
        self.trades: dict[str, TradeArbiter] = {}
        self.tickers: dict[str, TickerArbiter] = {}
        self.ohlc: dict[tuple[str, int], OhlcArbiter] = {}
        self.instrument = InstrumentArbiter(self)
        self._blocked: list[bool] = []  # maintenance, or quarantined: the line's data is ignored
        self._relay_states: dict[str, dict[str, Any]] = {}
        # (channel, symbol, interval|0) subscribed upstream; None: every stream is (tests, tools).
        # Data for anything else is dropped before it creates any state.
        self.subscribed: set[tuple[str, str, int]] | None = None
        self.wall_clock: Callable[[], float] = time.time
        self.ts_ceiling: list[str] = []
        self.line_clock: list[str] = []
        self.line_clock_at: list[float] = []
        self._suspects: list[deque[float]] = []
        self._quarantined_until: list[float] = []

    # -- upstream registry ------------------------------------------------------------------
    def add_upstream(self, name: str) -> int:
        self.lines.append(Line(name))
        self.upstream_stats.append(UpstreamStats(name))
        self._blocked.append(False)
        self.ts_ceiling.append("")
        self.line_clock.append("")
        self.line_clock_at.append(0.0)
        self._suspects.append(deque())
        self._quarantined_until.append(0.0)
        self._update_ceilings(None)
        for arb in self.books.values():
            arb.add_line()
        for tarb in self.trades.values():
            tarb.add_line()
        return len(self.lines) - 1

    def upstream_down(self, up: int, now: float) -> None:
        """The connection is gone: everything it held is forgotten."""
        line = self.lines[up]
        line.connected = False
        line.status = ""
        self._blocked[up] = self._quarantined_until[up] > 0.0
        self.line_clock[up] = ""
        for arb in self.books.values():
            arb.reset_line(up)
        for tarb in self.trades.values():
            tarb.reset_line(up)
        self._update_system()
        self._publish_relay_states()

    def line_status(self, up: int, system: str, now: float, version: str = "") -> None:
        """Engine status on one line. A line in maintenance feeds nothing; on its return every
        book it held is resynced (its state may have missed changes while it was frozen)."""
        line = self.lines[up]
        line.connected = True
        if version:
            line.version = version
        was_blocked = self._blocked[up]
        line.status = system
        blocked = system in BLOCKING_STATUS or self._quarantined_until[up] > 0.0
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
        arb: BookArbiter | TradeArbiter | None
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
            arb = self.books.get(ev.symbol)
            if arb is None:
                if not self.solicited(up, "book", ev.symbol):
                    return None
                arb = self._book_arbiter(ev.symbol)
            arb.on_event(up, ev, now)
            return None
        if t is TradeEvent:
            if not self._blocked[up]:
                tarb = self.trades.get(ev.symbol)
                if tarb is None:
                    if not self.solicited(up, "trade", ev.symbol):
                        return None
                    tarb = self.trades[ev.symbol] = TradeArbiter(self, ev.symbol, self.settings.recent_trades)
                tarb.on_event(up, ev, now)
            return None
        if t is TickerEvent:
            if not self._blocked[up]:
                kar = self.tickers.get(ev.symbol)
                if kar is None:
                    if not self.solicited(up, "ticker", ev.symbol):
                        return None
                    kar = self.tickers[ev.symbol] = TickerArbiter(self, ev.symbol)
                kar.on_event(up, ev, now)
            return None
        if t is OhlcEvent:
            if not self._blocked[up]:
                key = (ev.symbol, ev.interval)
                oar = self.ohlc.get(key)
                if oar is None:
                    if not self.solicited(up, "ohlc", ev.symbol, ev.interval):
                        return None
                    oar = self.ohlc[key] = OhlcArbiter(self, *key)
                oar.on_event(up, ev, now)
            return None
        if t is InstrumentEvent:
            self.instrument.on_event(up, ev, now)
            return None
        if t is UnknownEvent:
            self.bad_data(up, ev, now)
        return ev

    # -- untrusted lines -----------------------------------------------------------------------
    def set_subscribed(self, keys: Iterable[tuple[str, str, int]]) -> None:
        """The streams subscribed upstream (the pool's desired set): only these hold state."""
        self.subscribed = {(c, s, p if c == "ohlc" else 0) for c, s, p in keys if s}

    def solicited(self, up: int, channel: str, symbol: str, key: int = 0) -> bool:
        """Whether data for this stream may create state; counts it when not."""
        sub = self.subscribed
        if sub is None or (channel, symbol, key) in sub:
            return True
        self.upstream_stats[up].unsolicited += 1
        return False

    def bad_data(self, up: int, ev: UnknownEvent, now: float) -> None:
        """A frame that failed validation: counted; when it was for a subscribed stream, that
        stream is resynced on that line alone (its copy may now lack an update)."""
        self.upstream_stats[up].unknown += 1
        if not ev.symbol or not ev.channel:
            return
        if ev.channel == "book":
            arb = self.books.get(ev.symbol)
            if arb is not None:
                arb.reject(up, "invalid")
        elif ev.channel in ("trade", "ticker") and (ev.symbol in self.trades or ev.symbol in self.tickers):
            self.request_resync(up, ev.channel, ev.symbol, "invalid")

    def suspect(self, up: int, kind: str, now: float) -> None:
        """Line `up` claimed something the clock or the other lines contradict (the claim was
        not published). A line that keeps doing so while another line is live is quarantined:
        its data is ignored for `quarantine_for` seconds, then every book it holds is resynced."""
        stats = self.upstream_stats[up]
        stats.suspect[kind] = stats.suspect.get(kind, 0) + 1
        times = self._suspects[up]
        times.append(now)
        window = self.settings.suspect_window
        while times and now - times[0] > window:
            times.popleft()
        if len(times) < self.settings.quarantine_after or self._quarantined_until[up] > 0.0:
            return
        others = [i for i, ln in enumerate(self.lines) if i != up and ln.connected and not self._blocked[i]]
        if not others:
            return  # the only live line: its claims are still checked one by one
        times.clear()
        self._quarantined_until[up] = now + self.settings.quarantine_for
        stats.quarantines += 1
        stats.quarantined = True
        self._blocked[up] = True
        for arb in self.books.values():
            arb.reset_line(up)
        for tarb in self.trades.values():
            tarb.reset_line(up)
        self._publish_relay_states()

    def _end_quarantines(self, now: float) -> None:
        for up, until in enumerate(self._quarantined_until):
            if until and now >= until:
                self._quarantined_until[up] = 0.0
                self.upstream_stats[up].quarantined = False
                line = self.lines[up]
                self._blocked[up] = line.status in BLOCKING_STATUS
                if not self._blocked[up]:
                    for sym in self.books:
                        self.request_resync(up, "book", sym, "quarantine")
                    for sym in self.trades:
                        self.request_resync(up, "trade", sym, "quarantine")

    def _update_ceilings(self, now: float | None) -> None:
        """Per line, the newest book timestamp believed: the wall clock plus `max_clock_skew`,
        and no more than `max_line_lead` ahead of the other live lines' exchange clocks (each
        line's newest timestamp, aged by the time since it arrived). Strings in the protocol's
        own timestamp format, so the per-frame check is one string comparison."""
        settings = self.settings
        wall = self.wall_clock()
        codec = self.codec
        clock_bound = wall + settings.max_clock_skew
        estimates: list[float | None] = []
        for i, ts in enumerate(self.line_clock):
            value = codec.timestamp_value(ts) if ts and now is not None and self.lines[i].connected else None
            estimates.append(None if value is None else value + (now - self.line_clock_at[i]))  # type: ignore[operator]
        for up in range(len(self.lines)):
            others = [e for i, e in enumerate(estimates) if i != up and e is not None and not self._blocked[i]]
            bound = min(clock_bound, max(others) + settings.max_line_lead) if others else clock_bound
            self.ts_ceiling[up] = codec.timestamp_text(bound)

    def _book_arbiter(self, symbol: str) -> BookArbiter:
        arb = BookArbiter(self, symbol, self.settings.book_depth, self.settings.history)
        self.books[symbol] = arb
        return arb

    # -- requests and timers ------------------------------------------------------------------
    def tick(self, now: float) -> None:
        """Run due timers: trade gap waits, staleness cross-checks, relay-state updates."""
        window = self.settings.stale_after
        self._update_ceilings(now)
        if any(self._quarantined_until):
            self._end_quarantines(now)
        for tarb in self.trades.values():
            if tarb.gap_deadline is not None and now >= tarb.gap_deadline:
                tarb.expire(now)
            if tarb.hold_since is not None:
                tarb.check_held(now)
            tarb.check_stale(now, window)
        for arb in self.books.values():
            arb.check_stale(now, window)
        self._publish_relay_states()

    def want_book_depth(self, symbol: str, depth: int) -> None:
        arb = self.books.get(symbol) or self._book_arbiter(symbol)
        arb.want_depth(depth)

    def set_book_depth(self, symbol: str, depth: int) -> None:
        """Hold `symbol`'s book at `depth` (its upstream subscription depth; see
        `BookArbiter.set_depth`). New books start at `settings.book_depth`."""
        arb = self.books.get(symbol)
        if arb is None:
            arb = self.books[symbol] = BookArbiter(self, symbol, depth, self.settings.history)
        arb.set_depth(depth)

    def book_depth(self, symbol: str) -> int:
        arb = self.books.get(symbol)
        return self.settings.book_depth if arb is None else arb.depth

    def book_complete(self, symbol: str, depth: int) -> bool:
        """A valid published book holding every level down to `depth` (on-demand readiness)."""
        arb = self.books.get(symbol)
        return arb is not None and arb.complete_to(depth)

    def drop_stream(self, channel: str, symbol: str, key: int = 0) -> None:
        """Forget one stream's state (it is no longer subscribed upstream), so that nothing is
        held for what nobody subscribed and a later subscription starts from fresh data."""
        owner: Any
        if channel == "book":
            owner = self.books.pop(symbol, None)
        elif channel == "trade":
            owner = self.trades.pop(symbol, None)
        elif channel == "ticker":
            owner = self.tickers.pop(symbol, None)
        elif channel == "ohlc":
            owner = self.ohlc.pop((symbol, key), None)
        else:
            return
        if owner is not None:
            self.forget_owner(owner)
        if symbol not in self.books and symbol not in self.trades and symbol not in self.tickers:
            self._relay_states.pop(symbol, None)

    def has_data(self, channel: str, symbol: str, key: int = 0) -> bool:
        """Whether a stream has data to serve a new subscriber (on-demand readiness)."""
        if channel == "book":
            return self.book_complete(symbol, key)
        if channel == "trade":
            return symbol in self.trades
        if channel == "ticker":
            return self.ticker_snapshot(symbol, key) is not None
        if channel == "ohlc":
            return (symbol, key) in self.ohlc and self.ohlc[(symbol, key)].element is not None
        return False

    def knows_symbol(self, symbol: str) -> bool | None:
        """Whether the followed instrument list has `symbol` (None: no list yet)."""
        pairs = self.instrument.pairs
        if not pairs:
            return None
        return symbol in pairs

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

    def ticker_snapshot(self, symbol: str, key: int = 0) -> bytes | None:
        """The latest record of the `trades` (key 0) or `bbo` (key 1) stream."""
        kar = self.tickers.get(symbol)
        return None if kar is None else kar.snapshot_frame_for(key)

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
            elif self._quarantined_until[i]:
                ups[line.name] = "quarantined"
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


def _json(obj: Any) -> bytes:
    return orjson.dumps(obj)
