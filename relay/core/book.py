"""An exact L2 order book: wire lexemes kept per level, Kraken's CRC32 cached per side.

Each side is a `SortedLevels` (a dict plus its sorted key list) keyed best-first (asks by price, bids by negated price) whose values
are `(price_lexeme, qty_lexeme, checksum_token)`. The checksum token is built once when a level
changes; the concatenated top-10 token string of each side is cached and rebuilt only when a
change lands inside the top 10, so a typical deep-book update costs one CRC32 call.

Updates can record an undo log (the previous value of every touched level, including levels cut
by truncation), which lets the merge roll back a frame whose checksum fails, or reconstruct an
earlier published state for an upstream that diverges from it.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections.abc import Iterable, Iterator
from heapq import nsmallest
from typing import NamedTuple
from zlib import crc32 as _crc32

from relay.core.checksum import TOP_LEVELS, crc32_of_tokens

_INF = float("inf")
BULK_LOAD_FACTOR = 2  # a snapshot side longer than this many times the depth is bulk-loaded


class Level(NamedTuple):
    """One incoming level: sort key (price as float), and the exact price and qty text."""

    price: float
    price_text: bytes
    qty_text: bytes


LevelTuple = tuple[float, bytes, bytes]  # a Level, or the plain tuple the fast parsers build


# A stored level: (price_text, qty_text, checksum_token).
Stored = tuple[bytes, bytes, bytes]
# An undo entry: (is_bid, key, previous stored value or None when the level did not exist).
# It names the side rather than holding it, so a log can be replayed onto a copy of the book.
UndoEntry = tuple[bool, float, "Stored | None"]


class SortedLevels(dict):
    """Levels by key, with the keys also kept sorted (best first) in a list.

    A dict subclass so lookups stay at C speed; `keys()` returns the sorted list (indexable and
    sliceable, like `sortedcontainers.SortedDict.keys()`), and `irange` mirrors SortedDict's.
    At book depths (10 to 1000 levels) a `bisect`-maintained list beats SortedDict's Python-level
    bookkeeping severalfold (bench/core_bench.py). Only `BookSide` mutates it.
    """

    __slots__ = ("_keys",)

    def __init__(self, items: Iterable[tuple[float, Stored]] = ()) -> None:
        super().__init__(items)
        self._keys: list[float] = sorted(dict.keys(self))

    def keys(self) -> list[float]:  # type: ignore[override]
        return self._keys

    def irange(self, minimum: float | None = None, maximum: float | None = None, inclusive=(True, True)) -> list[float]:
        keys = self._keys
        lo = 0 if minimum is None else (bisect_left if inclusive[0] else bisect_right)(keys, minimum)
        hi = len(keys) if maximum is None else (bisect_right if inclusive[1] else bisect_left)(keys, maximum)
        return keys[lo:hi]

    def copy(self) -> SortedLevels:
        other = SortedLevels.__new__(SortedLevels)
        dict.update(other, self)
        other._keys = self._keys.copy()
        return other


class BookSide:
    """One side of a book, best level first."""

    __slots__ = ("levels", "is_bid", "_top", "_bound")

    def __init__(self, is_bid: bool) -> None:
        self.levels = SortedLevels()
        self.is_bid = is_bid
        self._top: bytes | None = b""
        self._bound = _INF  # key of the 10th level: changes beyond it leave the checksum part alone

    def apply(self, items: Iterable[LevelTuple], depth: int, undo: list | None) -> None:
        """Upsert/delete levels in array order, then truncate to `depth` (the hot path)."""
        levels = self.levels
        keys = levels._keys
        neg = self.is_bid
        bound = self._bound
        dirty = False
        for price, ptext, qtext in items:
            key = -price if neg else price
            old = levels.get(key)
            if undo is not None:
                undo.append((neg, key, old))
            if qtext.strip(b"0."):
                levels[key] = (
                    ptext,
                    qtext,
                    ptext.replace(b".", b"").lstrip(b"0") + qtext.replace(b".", b"").lstrip(b"0"),
                )
                if old is None:
                    insort(keys, key)
            elif old is not None:
                del levels[key]
                del keys[bisect_left(keys, key)]
            else:
                continue
            if key <= bound:
                dirty = True
        while len(keys) > depth:
            key = keys.pop()
            old = dict.pop(levels, key)
            if undo is not None:
                undo.append((neg, key, old))
        if dirty:
            self._top = None

    def set(self, key: float, price_text: bytes, qty_text: bytes, undo: list | None) -> None:
        self.apply([(-key if self.is_bid else key, price_text, qty_text)], 1 << 30, undo)

    def restore(self, key: float, old: Stored | None) -> None:
        """Put a level back to a previous value (undo)."""
        levels = self.levels
        present = key in levels
        if old is None:
            if present:
                del levels[key]
                del levels._keys[bisect_left(levels._keys, key)]
        else:
            levels[key] = old
            if not present:
                insort(levels._keys, key)
        if key <= self._bound:
            self._top = None

    def truncate(self, depth: int, undo: list | None) -> None:
        """Drop levels beyond `depth` (Kraken sends no delete for levels pushed out of range)."""
        self.apply((), depth, undo)

    def top_tokens(self) -> bytes:
        top = self._top
        if top is None:
            levels = self.levels
            keys = levels._keys[:TOP_LEVELS]
            top = b"".join([levels[k][2] for k in keys])
            self._top = top
            self._bound = keys[-1] if len(keys) == TOP_LEVELS else _INF
        return top

    def best(self, n: int | None = None) -> list[Stored]:
        """The best `n` stored levels (all when `n` is None), best first."""
        levels = self.levels
        keys = levels._keys if n is None else levels._keys[:n]
        return [levels[k] for k in keys]

    def load_levels(self, items: Iterable[LevelTuple], depth: int) -> None:
        """Replace the side with `items` applied in array order and truncated to `depth`, in
        O(n log depth): the same result as `apply` on an empty side, without one sorted insert
        per level (a hostile 300 000-level snapshot in reverse order would cost O(n^2))."""
        neg = self.is_bid
        latest: dict[float, tuple[bytes, bytes]] = {}
        for price, ptext, qtext in items:
            latest[-price if neg else price] = (ptext, qtext)
        keep = nsmallest(depth, [k for k, (_, q) in latest.items() if q.strip(b"0.")])
        self.load(
            (k, (p, q, p.replace(b".", b"").lstrip(b"0") + q.replace(b".", b"").lstrip(b"0")))
            for k in keep
            for p, q in (latest[k],)
        )

    def load(self, items: Iterable[tuple[float, Stored]]) -> None:
        self.levels = SortedLevels(items)
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
        return dict.__eq__(self.levels, other.levels)

    def __iter__(self) -> Iterator[Stored]:
        return iter(self.best())


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
    def load_snapshot(self, bids: Iterable[LevelTuple], asks: Iterable[LevelTuple], timestamp: str) -> int:
        """Replace the book; returns the computed checksum. Large snapshots (more levels than a
        few times the depth) are sorted once, not inserted level by level."""
        self.bids = BookSide(is_bid=True)
        self.asks = BookSide(is_bid=False)
        big = BULK_LOAD_FACTOR * self.depth
        if isinstance(bids, list) and len(bids) > big:
            self.bids.load_levels(bids, self.depth)
            bids = []
        if isinstance(asks, list) and len(asks) > big:
            self.asks.load_levels(asks, self.depth)
            asks = []
        self.apply(bids, asks, timestamp, None)
        return self.checksum

    def apply(self, bids: Iterable[LevelTuple], asks: Iterable[LevelTuple], timestamp: str, undo: list | None) -> int:
        """Apply one update in array order, truncate, recompute the checksum and return it."""
        b, a = self.bids, self.asks
        if bids:  # an untouched side needs neither apply nor truncation
            b.apply(bids, self.depth, undo)
        if asks:
            a.apply(asks, self.depth, undo)
        if timestamp:
            self.timestamp = timestamp
        at = a._top if a._top is not None else a.top_tokens()
        bt = b._top if b._top is not None else b.top_tokens()
        self.checksum = crc = _crc32(bt, _crc32(at))
        return crc

    def rollback(self, undo: list[UndoEntry], timestamp: str, checksum: int) -> None:
        """Revert the changes recorded in `undo` (newest first) and restore ts/checksum."""
        bids, asks = self.bids, self.asks
        for is_bid, key, old in reversed(undo):
            (bids if is_bid else asks).restore(key, old)
        self.timestamp = timestamp
        self.checksum = checksum

    def apply_text_levels(
        self,
        bids: Iterable[tuple[bytes, bytes]],
        asks: Iterable[tuple[bytes, bytes]],
        timestamp: str,
        undo: list | None,
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
    """Deletes first, then sets, each best-first. Some clients (python-kraken-sdk) truncate to
    depth after every level rather than after the frame: a new bottom level listed before the
    delete that makes room for it would be cut and the checksum would fail."""
    a, b = src.levels, dst.levels
    deletes = [(key, val[0], zero_like(val[1])) for key, val in a.items() if key not in b]
    sets = []
    for key, val in b.items():
        old = a.get(key)
        if old is None or old[1] != val[1] or old[0] != val[0]:
            sets.append((key, val[0], val[1]))
    deletes.sort()
    sets.sort()
    return [(p, q) for _, p, q in deletes] + [(p, q) for _, p, q in sets]
