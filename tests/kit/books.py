"""The v2 book a Kraken client keeps: one verifier shared by the websocket test clients.

`V2BookVerifier` rebuilds a book per symbol from the book frames it is given (a snapshot replaces
the book, an update is applied and truncated to the depth) and compares the CRC32 of the rebuilt
book with the frame's `checksum`, counting matches and mismatches.
"""

from __future__ import annotations

from relay.core.book import Book
from relay.core.events import BookEvent
from relay.protocols.spot_v2.wire import V2Parser


class V2BookVerifier:
    """Per-symbol books at `depth`; `require_snapshot`: an update before any snapshot of its symbol
    fails an assertion (otherwise it is applied to an empty book, as a lax client would)."""

    def __init__(self, depth: int = 10, *, require_snapshot: bool = True) -> None:
        self.depth = depth
        self.require_snapshot = require_snapshot
        self.parser = V2Parser()
        self.books: dict[str, Book] = {}
        self.ok = 0
        self.bad = 0

    @property
    def frames(self) -> int:
        return self.ok + self.bad

    def feed(self, raw: bytes, depth: int | None = None) -> BookEvent:
        """Parse one book frame and verify it; `depth` overrides the verifier's for a new book."""
        ev = self.parser.parse(raw)
        assert isinstance(ev, BookEvent), ev
        self.verify(ev, depth)
        return ev

    def verify(self, ev: BookEvent, depth: int | None = None) -> bool:
        book = self.books.get(ev.symbol)
        if ev.snapshot or book is None:
            if self.require_snapshot:
                assert ev.snapshot, "book update before any snapshot"
            book = self.books[ev.symbol] = Book(ev.symbol, self.depth if depth is None else depth)
        if ev.snapshot:
            crc = book.load_snapshot(ev.bids, ev.asks, ev.timestamp)
        else:
            crc = book.apply(ev.bids, ev.asks, ev.timestamp, None)
        good = crc == ev.checksum
        if good:
            self.ok += 1
        else:
            self.bad += 1
        return good
