"""Shallower views of a deeper book: what Kraken would send to a subscriber at depth d.

The relay holds each book at one depth (say 100) and serves clients at any Kraken depth up to
it. A depth-10 subscriber must receive the level that moves into its top 10 when a better level
is deleted, and nothing for changes below its depth, exactly as Kraken would send. A view keeps
the d best levels it last published per side and, after each change of the full book that
touches its range, emits the smallest update that turns the client's copy into the new top d.
Levels pushed out of range by an insert need no message (the client truncates); levels deleted
from the book get an explicit zero. The checksum is the full book's (top 10 is shared, d >= 10).
"""

from __future__ import annotations

from relay.core.book import Book, BookSide, Stored, zero_like


class DepthView:
    """The last published top-d of one book, per side."""

    __slots__ = ("depth", "bids", "asks")

    def __init__(self, book: Book, depth: int) -> None:
        self.depth = depth
        self.bids: dict[float, Stored] = {}
        self.asks: dict[float, Stored] = {}
        self.reset(book)

    def reset(self, book: Book) -> None:
        self.bids = _top(book.bids, self.depth)
        self.asks = _top(book.asks, self.depth)

    def update(self, book: Book, touched_bids: list[float], touched_asks: list[float]):
        """Return (bid changes, ask changes) as (price_text, qty_text) lists; both empty if none."""
        return (
            self._side(book.bids, self.bids, touched_bids, True),
            self._side(book.asks, self.asks, touched_asks, False),
        )

    def _side(self, side: BookSide, view: dict[float, Stored], touched: list[float], is_bid: bool):
        if not touched:
            return []
        if len(view) >= self.depth:
            worst = max(view)  # keys are best-first ascending, so the max key is the worst level
            if min(touched) > worst:
                return []
        new = _top(side, self.depth)
        out: list[tuple[bytes, bytes]] = []
        # Deletes first, then sets: clients that truncate after every level (python-kraken-sdk)
        # would otherwise cut the level entering at the bottom before the delete makes room.
        levels = side.levels
        for key, old in view.items():
            if key not in new and key not in levels:
                out.append((old[0], zero_like(old[1])))
        for key, val in new.items():
            was = view.get(key)
            if was is None or was[1] != val[1]:
                out.append((val[0], val[1]))
        if is_bid:
            self.bids = new
        else:
            self.asks = new
        return out


def _top(side: BookSide, depth: int) -> dict[float, Stored]:
    levels = side.levels
    return {k: levels[k] for k in levels.keys()[:depth]}
