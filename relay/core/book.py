"""An exact L2 order book: wire lexemes kept per level, Kraken's CRC32 cached per side.

Each side is a `SortedDict` keyed best-first (asks by price, bids by negated price) whose values
are `(price_lexeme, qty_lexeme, checksum_token)`. The checksum token is built once when a level
changes; the concatenated top-10 token string of each side is cached and rebuilt only when a
change lands inside the top 10, so a typical deep-book update costs one CRC32 call.

Updates can record an undo log (the previous value of every touched level, including levels cut
by truncation), which lets the merge roll back a frame whose checksum fails, or reconstruct an
earlier published state for an upstream that diverges from it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import NamedTuple

from sortedcontainers import SortedDict

from relay.core.checksum import TOP_LEVELS, crc32_of_tokens
from relay.core.numbers import checksum_token, is_zero

_INF = float("inf")


class Level(NamedTuple):
    """One incoming level: sort key (price as float), and the exact price and qty text."""

    price: float
    price_text: bytes
    qty_text: bytes


# A stored level: (price_text, qty_text, checksum_token).
Stored = tuple[bytes, bytes, bytes]
# An undo entry: (is_bid, key, previous stored value or None when the level did not exist).
# It names the side rather than holding it, so a log can be replayed onto a copy of the book.
UndoEntry = tuple[bool, float, "Stored | None"]


class BookSide:
    """One side of a book, best level first."""

    __slots__ = ("levels", "is_bid", "_top", "_bound")

    def __init__(self, is_bid: bool) -> None:
        self.levels: SortedDict = SortedDict()
        self.is_bid = is_bid
        self._top: bytes | None = b""
        self._bound = _INF

    def key_of(self, price: float) -> float:
        return -price if self.is_bid else price

    def _touch(self, key: float) -> None:
        if key <= self._bound:
            self._top = None

    def set(self, key: float, price_text: bytes, qty_text: bytes, undo: list | None) -> None:
        levels = self.levels
        if undo is not None:
            undo.append((self.is_bid, key, levels.get(key)))
        if is_zero(qty_text):
            if key in levels:
                del levels[key]
                self._touch(key)
            return
        levels[key] = (price_text, qty_text, checksum_token(price_text) + checksum_token(qty_text))
        self._touch(key)

    def restore(self, key: float, old: Stored | None) -> None:
        """Put a level back to a previous value (undo)."""
        if old is None:
            if key in self.levels:
                del self.levels[key]
        else:
            self.levels[key] = old
        self._touch(key)

    def truncate(self, depth: int, undo: list | None) -> None:
        """Drop levels beyond `depth` (Kraken sends no delete for levels pushed out of range)."""
        levels = self.levels
        while len(levels) > depth:
            key, old = levels.popitem(-1)
            if undo is not None:
                undo.append((self.is_bid, key, old))
            self._touch(key)

    def top_tokens(self) -> bytes:
        top = self._top
        if top is None:
            levels = self.levels
            keys = levels.keys()[:TOP_LEVELS]
            top = b"".join([levels[k][2] for k in keys])
            self._top = top
            self._bound = keys[-1] if len(keys) == TOP_LEVELS else _INF
        return top

    def best(self, n: int | None = None) -> list[Stored]:
        """The best `n` stored levels (all when `n` is None), best first."""
        levels = self.levels
        keys = levels.keys() if n is None else levels.keys()[:n]
        return [levels[k] for k in keys]

    def load(self, items: Iterable[tuple[float, Stored]]) -> None:
        self.levels = SortedDict(items)
        self._top = None
        self._bound = _INF

    def copy(self) -> BookSide:
        other = BookSide(self.is_bid)
        other.levels = self.levels.copy()
        other._top = self._top
        other._bound = self._bound
        return other

    def __len__(self) -> int:
        return len(self.levels)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BookSide):
            return NotImplemented
        return self.levels == other.levels

    def __iter__(self) -> Iterator[Stored]:
        return iter(self.levels.values())


class Book:
    """L2 book for one symbol at one depth, with Kraken's truncation and checksum rules."""

    __slots__ = ("symbol", "depth", "bids", "asks", "timestamp", "checksum")

    def __init__(self, symbol: str, depth: int) -> None:
        self.symbol = symbol
        self.depth = depth
        self.bids = BookSide(is_bid=True)
        self.asks = BookSide(is_bid=False)
        self.timestamp: str = ""
        self.checksum: int = crc32_of_tokens(b"", b"")

    # -- mutation -------------------------------------------------------------------------
    def load_snapshot(self, bids: Iterable[Level], asks: Iterable[Level], timestamp: str) -> int:
        """Replace the book; returns the computed checksum."""
        self.bids = BookSide(is_bid=True)
        self.asks = BookSide(is_bid=False)
        self.apply(bids, asks, timestamp, None)
        return self.checksum

    def apply(
        self, bids: Iterable[Level], asks: Iterable[Level], timestamp: str, undo: list | None
    ) -> int:
        """Apply one update in array order, truncate, recompute the checksum and return it."""
        side = self.bids
        for price, ptext, qtext in bids:
            side.set(-price, ptext, qtext, undo)
        side.truncate(self.depth, undo)
        side = self.asks
        for price, ptext, qtext in asks:
            side.set(price, ptext, qtext, undo)
        side.truncate(self.depth, undo)
        if timestamp:
            self.timestamp = timestamp
        self.checksum = crc32_of_tokens(self.asks.top_tokens(), self.bids.top_tokens())
        return self.checksum

    def rollback(self, undo: list[UndoEntry], timestamp: str, checksum: int) -> None:
        """Revert the changes recorded in `undo` (newest first) and restore ts/checksum."""
        bids, asks = self.bids, self.asks
        for is_bid, key, old in reversed(undo):
            (bids if is_bid else asks).restore(key, old)
        self.timestamp = timestamp
        self.checksum = checksum

    def apply_text_levels(
        self, bids: Iterable[tuple[bytes, bytes]], asks: Iterable[tuple[bytes, bytes]], timestamp: str, undo: list | None
    ) -> int:
        """Apply levels given as (price_text, qty_text), e.g. a diff from `diff_to`."""
        return self.apply(
            [Level(float(p), p, q) for p, q in bids], [Level(float(p), p, q) for p, q in asks], timestamp, undo
        )

    # -- queries --------------------------------------------------------------------------
    def copy(self) -> Book:
        other = Book(self.symbol, self.depth)
        other.bids = self.bids.copy()
        other.asks = self.asks.copy()
        other.timestamp = self.timestamp
        other.checksum = self.checksum
        return other

    def same_levels(self, other: Book) -> bool:
        return self.bids == other.bids and self.asks == other.asks

    def diff_to(self, target: Book) -> tuple[list[tuple[bytes, bytes]], list[tuple[bytes, bytes]]]:
        """The smallest (bids, asks) update that turns this book into `target`.

        Levels that differ are set to the target's text; levels missing from the target are
        deleted with a zero quantity written at the target's quantity precision.
        """
        return (_side_diff(self.bids, target.bids), _side_diff(self.asks, target.asks))

    def __len__(self) -> int:
        return len(self.bids) + len(self.asks)


def zero_like(qty_text: bytes) -> bytes:
    """A zero quantity with the same number of decimals as `qty_text` (`0.00000000`)."""
    dot = qty_text.find(b".")
    if dot < 0:
        return b"0"
    return b"0." + b"0" * (len(qty_text) - dot - 1)


def _side_diff(src: BookSide, dst: BookSide) -> list[tuple[bytes, bytes]]:
    out: list[tuple[bytes, bytes]] = []
    a, b = src.levels, dst.levels
    changes: list[tuple[float, bytes, bytes]] = []
    for key, val in b.items():
        old = a.get(key)
        if old is None or old[1] != val[1] or old[0] != val[0]:
            changes.append((key, val[0], val[1]))
    for key, val in a.items():
        if key not in b:
            changes.append((key, val[0], zero_like(val[1])))
    changes.sort(key=lambda c: c[0])
    out = [(p, q) for _, p, q in changes]
    return out
