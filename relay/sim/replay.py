"""Replay a real v2 book capture instead of the generated market (same interface as `MarketEngine`).

The capture (one v2 frame per line, first a snapshot) is sent byte for byte: the updates are the
exact frames Kraken sent, so a client verifying checksums checks Kraken's own numbers. A client
that subscribes before the replay starts receives the capture's snapshot frame itself; a later
joiner gets a snapshot rebuilt from the replayed book (same checksum rules). The capture is a
depth-10 feed, so every subscribed depth receives the same frames. At the end the replay loops
(a fresh copy of the first snapshot is sent, replacing the book) unless `loop` is false.
"""

from __future__ import annotations

from pathlib import Path

from relay.core.book import Book
from relay.core.events import BookEvent
from relay.core.spot import BOOK_DEPTHS
from relay.protocols.spot_v2.wire import V2Parser, encode_book
from relay.sim.instruments import Instrument
from relay.sim.market import MarketEvent


class _ReplaySymbol:
    def __init__(self, inst: Instrument) -> None:
        self.inst = inst
        self.symbol = inst.symbol
        self.last_trade_id = 0


class ReplaySource:
    """Plays the frames of a capture at `rate` frames per second."""

    def __init__(
        self,
        path: str | Path,
        instruments: dict[str, Instrument],
        rate: float,
        loop: bool = True,
        wait_for_subscriber: bool = True,
    ) -> None:
        lines = [ln.strip() for ln in Path(path).read_bytes().splitlines() if ln.strip()]
        parser = V2Parser()
        self.events: list[BookEvent] = []
        for raw in lines:
            ev = parser.parse(raw)
            if isinstance(ev, BookEvent):
                self.events.append(ev)
        if not self.events or not self.events[0].snapshot:
            raise ValueError(f"{path}: no book snapshot at the start of the capture")
        self.frames = [ev.raw for ev in self.events]
        sym = self.events[0].symbol
        base, _, quote = sym.partition("/")
        inst = instruments.get(sym) or Instrument(sym, base, quote, 8, 8)
        self.symbols = {sym: _ReplaySymbol(inst)}
        self.symbol = sym
        self.rate = rate
        self.loop = loop
        self.wait = wait_for_subscriber
        self.seq = 0
        self.pos = 1  # next frame to emit (0 is the snapshot)
        self.book_updates = 0
        self.trades = 0
        self.trading = True
        self.frozen = False
        self.wanted = 0
        self._book = Book(sym, max(BOOK_DEPTHS))
        self._load(0)
        self._last: float | None = None
        self._debt = 0.0

    def _load(self, i: int) -> None:
        ev = self.events[i]
        self._book.load_snapshot(ev.bids, ev.asks, ev.timestamp)
        self.at_start = True

    def want(self, channel: str, symbol: str, key: int, delta: int = 1) -> None:
        if channel == "book" and symbol == self.symbol:
            self.wanted += delta

    def snapshot(self, channel: str, symbol: str, key: int, now_wall: float) -> bytes | None:
        if channel != "book" or symbol != self.symbol:
            return None
        if self.at_start:
            return self.frames[0]
        b = self._book
        return encode_book(symbol, True, b.bids.best(key), b.asks.best(key), b.checksum, b.timestamp)

    def trade_id(self, symbol: str) -> int:
        return 0

    def book(self, symbol: str) -> Book:
        return self._book.copy()

    def scheduled(self, dt: float) -> float:
        return self.rate * dt

    def advance(self, now: float, wall: float) -> list[MarketEvent]:
        if self._last is None or (self.wait and self.wanted <= 0 and self.at_start):
            self._last = now
            return []
        self._debt += self.rate * (now - self._last)
        self._last = now
        n = int(self._debt)
        self._debt -= n
        if self.frozen:
            return []
        out: list[MarketEvent] = []
        for _ in range(n):
            if self.pos >= len(self.frames):
                if not self.loop:
                    break
                self.pos = 0
            ev = self.events[self.pos]
            frame = self.frames[self.pos]
            if ev.snapshot:
                self._book.load_snapshot(ev.bids, ev.asks, ev.timestamp)
            else:
                self._book.apply(ev.bids, ev.asks, ev.timestamp, None)
            self.at_start = False
            self.pos += 1
            self.seq += 1
            self.book_updates += 1
            out.append(MarketEvent(self.seq, "book", self.symbol, {d: frame for d in BOOK_DEPTHS}))
        return out

    @property
    def finished(self) -> bool:
        return not self.loop and self.pos >= len(self.frames)
