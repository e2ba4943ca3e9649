"""A verifying client for merge tests: applies published frames like a Kraken client would."""

from __future__ import annotations

from relay.core.book import Book
from relay.core.events import BookEvent, TradeEvent
from relay.core.outputs import Publication
from relay.protocols.spot_v2.merge import V2Merge
from relay.protocols.spot_v2.wire import V2Parser


class VerifyingClient:
    """Holds the book at one depth from the publications it is given; counts checksum failures."""

    def __init__(self, symbol: str = "BTC/USD", depth: int = 10) -> None:
        self.symbol, self.depth = symbol, depth
        self.book = Book(symbol, depth)
        self.parser = V2Parser()
        self.has_snapshot = False
        self.book_frames = 0
        self.mismatches = 0
        self.timestamps: list[str] = []
        self.trade_ids: list[int] = []

    def receive(self, pubs: list[Publication]) -> None:
        for pub in pubs:
            if pub.channel == "book" and pub.symbol == self.symbol and pub.key == self.depth:
                self.on_book(pub.frame)
            elif pub.channel == "trade" and pub.symbol == self.symbol:
                ev = self.parser.parse(pub.frame)
                assert isinstance(ev, TradeEvent)
                self.trade_ids.extend(t.trade_id for t in ev.trades)

    def on_book(self, frame: bytes) -> None:
        ev = self.parser.parse(frame)
        assert isinstance(ev, BookEvent)
        if ev.snapshot:
            crc = self.book.load_snapshot(ev.bids, ev.asks, ev.timestamp)
            self.has_snapshot = True
        else:
            assert self.has_snapshot, "update before any snapshot"
            crc = self.book.apply(ev.bids, ev.asks, ev.timestamp, None)
        self.book_frames += 1
        self.mismatches += crc != ev.checksum
        self.timestamps.append(ev.timestamp)


def new_merge(n: int = 2, **settings) -> tuple[V2Merge, list[int]]:
    from relay.core.outputs import MergeSettings

    m = V2Merge(MergeSettings(**{"book_depth": 10, **settings}))
    ups = [m.add_upstream(f"line{i}") for i in range(n)]
    for up in ups:
        m.line_status(up, "online", 0.0)
    m.take()
    return m, ups
