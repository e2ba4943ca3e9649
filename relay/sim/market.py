"""The simulated market (Sans-I/O): one continuous Spot v2 market, every event encoded once.

`MarketEngine.advance(now)` produces the events due by `now` (book updates at `rate` per second
with periodic bursts, trades at `trade_rate`, plus the ticker/ohlc frames trades cause). Each
event carries its frames already encoded, keyed by what a subscriber chose: the depth for
`book` (only depths someone wants, see `want`), the interval for `ohlc`, `TICKER_TRADES` /
`TICKER_BBO` for `ticker`, 0 for `trade`. Every line sends these same bytes: the relay dedupes
by bytes, so nothing per line or per connection may re-encode them.

Per depth d the update holds exactly what Kraken sends a depth-d subscriber: changed levels
inside the new top d, deletes of levels that were inside the old top d, and the levels that
move into the top d from below when better levels go (no delete for levels pushed out: the
client truncates). The checksum is the full book's top 10, identical for every depth.

Prices are integer ticks and quantities integer units rendered with the pair's precision, so
wire text is exact by construction; the book itself is `relay.core.book.Book` (checksum cache).
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

import orjson

from relay.core.book import Book, Level
from relay.core.spot import BOOK_DEPTHS, OHLC_INTERVALS
from relay.protocols.spot_v2.wire import encode_book, encode_elements, now_rfc3339
from relay.sim.instruments import Instrument

TICKER_TRADES = 1
TICKER_BBO = 2
MAX_LEVELS = 1000
_INF = float("inf")


class MarketEvent(NamedTuple):
    """One market event: sequence number, channel, symbol, frames by subscription key."""

    seq: int
    channel: str
    symbol: str
    frames: dict[int, bytes]


@dataclass
class MarketSettings:
    """Knobs of the generated market (all rates per second, whole market)."""

    rate: float = 500.0  # book updates per second over all symbols (outside bursts)
    trade_rate: float | None = None  # trades per second over all symbols; default rate / 10
    levels: int = MAX_LEVELS  # levels per side (depth 1000 subscribers see them all)
    burst_every: float = 5.0  # seconds between bursts (0 disables)
    burst_len: float = 0.25  # seconds a burst lasts
    burst_factor: float = 4.0  # rate multiplier during a burst
    seed: int | None = None


def fmt(units: int, places: int) -> bytes:
    """Integer units rendered with exactly `places` decimals (`123456, 2 -> b"1234.56"`)."""
    if places == 0:
        return b"%d" % units
    s = b"%0*d" % (places + 1, units)
    return s[:-places] + b"." + s[-places:]


class _Candle:
    __slots__ = ("begin", "open", "high", "low", "close", "volume", "notional", "trades")

    def __init__(self, begin: int, price: int) -> None:
        self.begin = begin
        self.open = self.high = self.low = self.close = price
        self.volume = 0
        self.notional = 0
        self.trades = 0


class SymbolMarket:
    """Book, trades, ticker and candles of one symbol."""

    def __init__(self, inst: Instrument, rng: random.Random, levels: int) -> None:
        self.inst = inst
        self.symbol = inst.symbol
        self.sym_json = orjson.dumps(inst.symbol)
        self.pp = inst.price_precision
        self.qp = inst.qty_precision
        self.pscale = 10.0**self.pp
        self.zero_q = fmt(0, self.qp)
        self.rng = rng
        self.levels = max(10, min(levels, MAX_LEVELS))
        self.book = Book(inst.symbol, MAX_LEVELS)
        self.wanted: dict[int, int] = {}  # depth -> refcount
        self.ohlc_wanted: dict[int, int] = {}
        self.bbo_wanted = 0
        self.last_trade_id = 0
        self.trades: deque[bytes] = deque(maxlen=50)
        self.last_price = 0
        self.volume = 0
        self.notional = 0
        self.low = self.high = self.first_price = 0
        self.candles: dict[int, _Candle] = {}
        self.ticker_frames: dict[int, bytes] = {}
        self._init_book()

    # -- book generation ------------------------------------------------------------------
    def _qty(self) -> int:
        unit = 10**self.qp
        q = int(self.rng.expovariate(1.0) * unit * 2) + 1
        if self.rng.random() < 0.3 and self.qp >= 3:  # round lots: trailing zeros on the wire
            step = 10 ** (self.qp - 2)
            q = max(step, q // step * step)
        return q

    def _init_book(self) -> None:
        ticks = int(round(self.inst.start_price * self.pscale))
        ticks = max(ticks, self.levels * 8)
        rng = self.rng
        bids, asks = [], []
        b, a = ticks - 1, ticks + 1
        for _ in range(self.levels):
            bids.append(self._level(b, self._qty()))
            asks.append(self._level(a, self._qty()))
            b -= rng.randint(1, 3)
            a += rng.randint(1, 3)
        self.book.load_snapshot(bids, asks, now_rfc3339())
        self.last_price = self.first_price = self.low = self.high = ticks
        self.anchor = ticks  # the price the book reverts to (see `_random_changes`)

    def _level(self, ticks: int, units: int) -> Level:
        return Level(ticks / self.pscale, fmt(ticks, self.pp), fmt(units, self.qp) if units else self.zero_q)

    def _ticks(self, key: float) -> int:
        return int(round(abs(key) * self.pscale))

    def _random_changes(self) -> tuple[dict[int, int], dict[int, int]]:
        """A few level changes near the top: {ticks: units (0 deletes)} per side."""
        rng = self.rng
        bid_ch: dict[int, int] = {}
        ask_ch: dict[int, int] = {}
        n = 1 if rng.random() < 0.8 else rng.randint(2, 4)
        bids, asks = self.book.bids.levels, self.book.asks.levels
        if not bids or not asks:  # never expected (see the refill below); refill the tail
            n = 0
        else:  # best prices as this update's inserts move them (so two inserts never cross)
            best_b = self._ticks(bids.keys()[0])
            best_a = self._ticks(asks.keys()[0])
        for _ in range(n):
            is_bid = rng.random() < 0.5
            levels, ch = (bids, bid_ch) if is_bid else (asks, ask_ch)
            size = len(levels)
            idx = min(int(rng.expovariate(0.12)), size - 1)
            r = rng.random()
            if r < 0.5:
                ch[self._ticks(levels.keys()[idx])] = self._qty()
                continue
            if r < 0.75 and size > 20:
                ch[self._ticks(levels.keys()[idx])] = 0
                continue
            # insert a new price near the top, never crossing the other side
            off = rng.randint(-1, 40)
            # Liquidity refills a wide spread, and more so on the side that pulls the mid back
            # to where it started. Without this, trades and deletes widened the spread by ~1
            # tick per 10 updates: a cheap symbol's bids reached zero after ~30 s at 10k
            # updates/s and the market loop stopped.
            spread = best_a - best_b
            if spread > 2:
                back = (best_a + best_b < 2 * self.anchor) == is_bid
                if rng.random() < min(0.9, spread / (8.0 if back else 32.0)):
                    off = -rng.randint(1, min(spread - 1, max(3, spread // 3)))
            t = best_b - off if is_bid else best_a + off
            if is_bid and t >= best_a or not is_bid and t <= best_b or t <= 0:
                t = best_b - 1 - rng.randint(0, 5) if is_bid else best_a + 1 + rng.randint(0, 5)
            if t > 0:
                ch[t] = self._qty()
                if is_bid:
                    best_b = max(best_b, t)
                else:
                    best_a = min(best_a, t)
        # keep each side near its target size with tail adds/deletes (invisible at low depths)
        for levels, ch, sign in ((bids, bid_ch, -1), (asks, ask_ch, 1)):
            size = len(levels) + sum(1 for t, u in ch.items() if u and (sign * t) not in levels)
            if size > self.levels:
                ch[self._ticks(levels.keys()[-1])] = 0
            elif not levels:
                other = asks if sign < 0 else bids
                t = self._ticks(other.keys()[0]) + sign if other else self.anchor
                if t > 0:
                    ch[t] = self._qty()
            elif size < self.levels:
                worst = self._ticks(levels.keys()[-1])
                t = worst + sign * rng.randint(1, 3)
                if t > 0:
                    ch[t] = self._qty()
        return bid_ch, ask_ch

    # -- applying a change and encoding the depth views -------------------------------------
    def apply(self, bid_ch: dict[int, int], ask_ch: dict[int, int], ts: str) -> dict[int, bytes]:
        """Apply level changes to the book; return the update frame for every wanted depth."""
        book = self.book
        depths = [d for d, n in self.wanted.items() if n > 0]
        sides = ((book.bids, bid_ch, -1.0), (book.asks, ask_ch, 1.0))
        pre = []
        for side, ch, sign in sides:
            keys = side.levels.keys()
            n = len(keys)
            bounds = {d: (keys[d - 1] if n >= d else _INF) for d in depths}
            existed = {t: (sign * t / self.pscale) in side.levels for t in ch}
            pre.append((bounds, existed))
        bids = [self._level(t, u) for t, u in bid_ch.items()]
        asks = [self._level(t, u) for t, u in ask_ch.items()]
        book.apply(bids, asks, ts, None)
        checksum = book.checksum
        frames: dict[int, bytes] = {}
        for d in depths:
            out = []
            for (side, ch, sign), (bounds, existed) in zip(sides, pre):
                levels = side.levels
                keys = levels.keys()
                old_k = bounds[d]
                new_k = keys[d - 1] if len(keys) >= d else _INF
                dels: list[tuple[bytes, bytes]] = []
                sets: list[tuple[float, bytes, bytes]] = []
                touched = set()
                for t, u in ch.items():
                    key = sign * t / self.pscale
                    touched.add(key)
                    if u == 0 or key not in levels:
                        if existed[t] and key <= old_k:
                            dels.append((fmt(t, self.pp), self.zero_q))
                    elif key <= new_k:
                        v = levels[key]
                        sets.append((key, v[0], v[1]))
                if old_k != _INF:
                    for key in levels.irange(old_k, new_k, inclusive=(False, True)):
                        if key not in touched:
                            v = levels[key]
                            sets.append((key, v[0], v[1]))
                sets.sort()
                out.append(dels + [(p, q) for _, p, q in sets])
            if out[0] or out[1]:
                frames[d] = encode_book(self.symbol, False, out[0], out[1], checksum, ts)
        return frames

    def snapshot(self, depth: int) -> bytes:
        book = self.book
        return encode_book(
            self.symbol,
            True,
            book.bids.best(depth),
            book.asks.best(depth),
            book.checksum,
            book.timestamp,
        )

    # -- trades, ticker, ohlc --------------------------------------------------------------
    def trade(self, ts: str, now_wall: float) -> tuple[dict[int, bytes], bytes, dict[int, bytes], dict[int, bytes]]:
        """One taker trade at the best opposite level: (book frames, trade frame, ticker, ohlc)."""
        rng = self.rng
        buy = rng.random() < 0.5
        if not (self.book.asks if buy else self.book.bids).levels:
            buy = not buy  # an empty side has nothing to take (never expected, see the reversion)
        side = self.book.asks if buy else self.book.bids
        key = side.levels.keys()[0]
        ptext, qtext, _ = side.levels[key]
        avail = int(qtext.replace(b".", b""))
        units = avail if rng.random() < 0.3 else max(1, min(avail, self._qty() // 3))
        ticks = self._ticks(key)
        left = avail - units
        ch = {ticks: left}
        book_frames = self.apply({} if buy else ch, ch if buy else {}, ts)
        self.last_trade_id += 1
        element = b"".join(
            (
                b'{"symbol":',
                self.sym_json,
                b',"side":"',
                b"buy" if buy else b"sell",
                b'","price":',
                ptext,
                b',"qty":',
                fmt(units, self.qp),
                b',"ord_type":"',
                b"market" if rng.random() < 0.6 else b"limit",
                b'","trade_id":',
                b"%d" % self.last_trade_id,
                b',"timestamp":"',
                ts.encode(),
                b'"}',
            )
        )
        self.trades.append(element)
        trade_frame = encode_elements("trade", False, [element])
        self.last_price = ticks
        self.volume += units
        self.notional += units * ticks
        self.low = min(self.low, ticks)
        self.high = max(self.high, ticks)
        ticker = {TICKER_TRADES: self._ticker_frame(False, ts)}
        ohlc = {}
        for interval, n in self.ohlc_wanted.items():
            if n > 0:
                self._candle_trade(interval, ticks, units, now_wall)
                ohlc[interval] = self.ohlc_frame(interval, False, now_wall)
        for interval in OHLC_INTERVALS:
            if interval not in ohlc:
                self._candle_trade(interval, ticks, units, now_wall)
        return book_frames, trade_frame, ticker, ohlc

    def trade_snapshot(self, count: int = 50) -> bytes:
        return encode_elements("trade", True, list(self.trades)[-count:])

    def _ticker_element(self, ts: str) -> bytes:
        bids, asks = self.book.bids.best(1), self.book.asks.best(1)
        bid = bids[0] if bids else (b"0", b"0")
        ask = asks[0] if asks else (b"0", b"0")
        pp, qp = self.pp, self.qp
        vwap = self.notional // self.volume if self.volume else self.last_price
        change = self.last_price - self.first_price
        pct = round(100.0 * change / self.first_price, 2) if self.first_price else 0.0
        return b"".join(
            (
                b'{"symbol":',
                self.sym_json,
                b',"bid":',
                bid[0],
                b',"bid_qty":',
                bid[1],
                b',"ask":',
                ask[0],
                b',"ask_qty":',
                ask[1],
                b',"last":',
                fmt(self.last_price, pp),
                b',"volume":',
                fmt(self.volume, qp),
                b',"vwap":',
                fmt(vwap, pp),
                b',"low":',
                fmt(self.low, pp),
                b',"high":',
                fmt(self.high, pp),
                b',"change":',
                (b"-" if change < 0 else b"") + fmt(abs(change), pp),
                b',"change_pct":',
                orjson.dumps(pct),
                b',"timestamp":"',
                ts.encode(),
                b'"}',
            )
        )

    def _ticker_frame(self, snapshot: bool, ts: str) -> bytes:
        return encode_elements("ticker", snapshot, [self._ticker_element(ts)])

    def ticker_snapshot(self) -> bytes:
        return self._ticker_frame(True, self.book.timestamp or now_rfc3339())

    def bbo(self) -> tuple:
        return (self.book.bids.best(1), self.book.asks.best(1))

    def _candle_trade(self, interval: int, ticks: int, units: int, now_wall: float) -> None:
        span = interval * 60
        begin = int(now_wall // span * span)
        c = self.candles.get(interval)
        if c is None or c.begin != begin:
            c = self.candles[interval] = _Candle(begin, ticks)
        c.high = max(c.high, ticks)
        c.low = min(c.low, ticks)
        c.close = ticks
        c.volume += units
        c.notional += units * ticks
        c.trades += 1

    def ohlc_frame(self, interval: int, snapshot: bool, now_wall: float) -> bytes:
        span = interval * 60
        c = self.candles.get(interval)
        if c is None:
            begin = int(now_wall // span * span)
            c = self.candles[interval] = _Candle(begin, self.last_price)
        pp = self.pp
        vwap = c.notional // c.volume if c.volume else c.close
        element = b"".join(
            (
                b'{"symbol":',
                self.sym_json,
                b',"open":',
                fmt(c.open, pp),
                b',"high":',
                fmt(c.high, pp),
                b',"low":',
                fmt(c.low, pp),
                b',"close":',
                fmt(c.close, pp),
                b',"vwap":',
                fmt(vwap, pp),
                b',"trades":',
                b"%d" % c.trades,
                b',"volume":',
                fmt(c.volume, self.qp),
                b',"interval_begin":"',
                now_rfc3339(c.begin).encode(),
                b'","interval":',
                b"%d" % interval,
                b',"timestamp":"',
                now_rfc3339(c.begin + span).encode(),
                b'"}',
            )
        )
        return encode_elements("ohlc", snapshot, [element], b',"timestamp":"' + now_rfc3339(now_wall).encode() + b'"')


class MarketEngine:
    """All simulated symbols; produces `MarketEvent`s on a schedule (no I/O, no sleeping)."""

    def __init__(self, instruments: Iterable[Instrument], settings: MarketSettings) -> None:
        self.settings = settings
        self.rng = random.Random(settings.seed)
        self.symbols: dict[str, SymbolMarket] = {
            inst.symbol: SymbolMarket(inst, self.rng, settings.levels) for inst in instruments
        }
        self._names = list(self.symbols)
        self.seq = 0
        self.book_updates = 0
        self.trades = 0
        self.trading = True  # False in a market-wide cancel_only / maintenance
        self.frozen = False  # True in a market-wide maintenance: nothing changes
        self._start: float | None = None
        self._last: float = 0.0
        self._book_debt = 0.0
        self._trade_debt = 0.0

    # -- subscriptions (which depth views / intervals to encode) ----------------------------
    def want(self, channel: str, symbol: str, key: int, delta: int = 1) -> None:
        sm = self.symbols.get(symbol)
        if sm is None:
            return
        if channel == "book":
            sm.wanted[key] = sm.wanted.get(key, 0) + delta
        elif channel == "ohlc":
            sm.ohlc_wanted[key] = sm.ohlc_wanted.get(key, 0) + delta
        elif channel == "ticker" and key == TICKER_BBO:
            sm.bbo_wanted += delta

    def snapshot(self, channel: str, symbol: str, key: int, now_wall: float) -> bytes | None:
        sm = self.symbols.get(symbol)
        if sm is None:
            return None
        if channel == "book":
            return sm.snapshot(key)
        if channel == "trade":
            return sm.trade_snapshot()
        if channel == "ticker":
            return sm.ticker_snapshot()
        if channel == "ohlc":
            return sm.ohlc_frame(key, True, now_wall)
        return None

    def trade_id(self, symbol: str) -> int:
        return self.symbols[symbol].last_trade_id

    def book(self, symbol: str) -> Book:
        return self.symbols[symbol].book.copy()

    # -- schedule ---------------------------------------------------------------------------
    def _rate_factor(self, t: float) -> float:
        s = self.settings
        if s.burst_every <= 0 or s.burst_len <= 0:
            return 1.0
        return s.burst_factor if (t % s.burst_every) >= s.burst_every - s.burst_len else 1.0

    def scheduled(self, dt: float) -> float:
        """Book updates scheduled in the first `dt` seconds (for benchmarks)."""
        s = self.settings
        if s.burst_every <= 0 or s.burst_len <= 0:
            return s.rate * dt
        full, rest = divmod(dt, s.burst_every)
        per_cycle = s.rate * (s.burst_every - s.burst_len) + s.rate * s.burst_factor * s.burst_len
        normal = min(rest, s.burst_every - s.burst_len)
        burst = max(0.0, rest - (s.burst_every - s.burst_len))
        return full * per_cycle + s.rate * normal + s.rate * s.burst_factor * burst

    def advance(self, now: float, wall: float) -> list[MarketEvent]:
        """Events due between the previous call and `now` (monotonic seconds)."""
        if self._start is None:
            self._start = self._last = now
            return []
        dt = now - self._last
        if dt <= 0:
            return []
        self._last = now
        s = self.settings
        factor = self._rate_factor(now - self._start)
        self._book_debt += s.rate * factor * dt
        trade_rate = s.rate / 10 if s.trade_rate is None else s.trade_rate
        self._trade_debt += trade_rate * dt
        n_book = int(self._book_debt)
        n_trade = int(self._trade_debt)
        self._book_debt -= n_book
        self._trade_debt -= n_trade
        if self.frozen or not self._names:
            return []
        if not self.trading:
            n_trade = 0
        ts = now_rfc3339(wall)
        events: list[MarketEvent] = []
        rng = self.rng
        names = self._names
        total = n_book + n_trade
        for i in range(total):
            sm = self.symbols[names[rng.randrange(len(names))]]
            if i < n_trade:
                self._trade(sm, ts, wall, events)
            else:
                bbo = sm.bbo() if sm.bbo_wanted > 0 else None
                frames = sm.apply(*sm._random_changes(), ts)
                self.book_updates += 1
                self.seq += 1
                events.append(MarketEvent(self.seq, "book", sm.symbol, frames))
                if bbo is not None and sm.bbo() != bbo:
                    self.seq += 1
                    events.append(MarketEvent(self.seq, "ticker", sm.symbol, {TICKER_BBO: sm._ticker_frame(False, ts)}))
        return events

    def _trade(self, sm: SymbolMarket, ts: str, wall: float, events: list[MarketEvent]) -> None:
        book_frames, trade_frame, ticker, ohlc = sm.trade(ts, wall)
        self.trades += 1
        self.book_updates += 1
        for channel, frames in (("book", book_frames), ("trade", {0: trade_frame}), ("ticker", ticker), ("ohlc", ohlc)):
            self.seq += 1
            if channel == "ticker" and sm.bbo_wanted > 0:
                frames = {**frames, TICKER_BBO: frames[TICKER_TRADES]}
            events.append(MarketEvent(self.seq, channel, sm.symbol, frames))


def valid_depth(depth: object) -> bool:
    return depth in BOOK_DEPTHS
