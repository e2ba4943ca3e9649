"""Canonical Kraken-like book and trade streams for merge tests.

A deep underlying book changes at random; the stream a depth-D subscriber would receive is
derived through `DepthView`, so levels move into range when better ones are deleted, exactly as
Kraken sends them. Every frame carries the checksum of the depth-D book after it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from relay.core.book import Book, Level
from relay.core.numbers import format_fixed
from relay.core.views import DepthView
from relay.protocols.spot_v2.wire import encode_book, encode_elements

SYMBOL = "BTC/USD"


def ts(i: int) -> str:
    return f"2026-01-01T00:{i // 60_000_000 % 60:02d}:{i // 1_000_000 % 60:02d}.{i % 1_000_000:06d}Z"


def level(price: float, qty: float, pp: int = 1, qp: int = 8) -> Level:
    p = format_fixed(price, pp)
    return Level(float(p), p, format_fixed(qty, qp))


@dataclass
class BookStream:
    depth: int
    snapshot: bytes
    updates: list[bytes]
    books: list[Book]  # the depth-D book after the snapshot (index 0) and after each update


def book_stream(n_updates: int, depth: int = 10, seed: int = 0, deep: int = 40) -> BookStream:
    rng = random.Random(seed)
    under = Book(SYMBOL, 1000)
    mid = 30000.0
    bids = [level(mid - 0.1 * (i + 1) - rng.randrange(3) * 0.1 * i, rng.uniform(0.001, 3)) for i in range(deep)]
    asks = [level(mid + 0.1 * (i + 1) + rng.randrange(3) * 0.1 * i, rng.uniform(0.001, 3)) for i in range(deep)]
    t = 1_000_000
    under.load_snapshot(bids, asks, ts(t))
    view = DepthView(under, depth)
    shown = Book(SYMBOL, depth)
    shown.load_snapshot(
        [Level(-k, v[0], v[1]) for k, v in view.bids.items()],
        [Level(k, v[0], v[1]) for k, v in view.asks.items()],
        ts(t),
    )
    snapshot = encode_book(SYMBOL, True, shown.bids.best(), shown.asks.best(), shown.checksum, shown.timestamp)
    updates: list[bytes] = []
    books = [shown.copy()]
    while len(updates) < n_updates:
        t += rng.randrange(1, 50_000)
        changes_b, changes_a = [], []
        for _ in range(rng.randrange(1, 4)):
            is_bid = rng.random() < 0.5
            side = under.bids if is_bid else under.asks
            keys = list(side.levels.keys()[: depth + 5])
            r = rng.random()
            if r < 0.35 and keys:  # delete a level near the top
                k = rng.choice(keys)
                lv = Level(abs(k), side.levels[k][0], b"0.00000000")
            elif r < 0.7 and keys:  # change a quantity
                k = rng.choice(keys)
                lv = level(abs(k), rng.uniform(0.001, 3))
            else:  # insert a new level near the top
                best = abs(keys[0]) if keys else mid
                off = rng.randrange(-3, depth) * 0.1
                price = best - off if is_bid else best + off
                lv = level(price, rng.uniform(0.001, 3))
            (changes_b if is_bid else changes_a).append(lv)
        under.apply(changes_b, changes_a, ts(t), None)
        fb, fa = view.update(under, [-lv.price for lv in changes_b], [lv.price for lv in changes_a])
        if not fb and not fa:
            continue
        shown.apply_text_levels(fb, fa, ts(t), None)
        updates.append(encode_book(SYMBOL, False, fb, fa, shown.checksum, shown.timestamp))
        books.append(shown.copy())
    return BookStream(depth, snapshot, updates, books)


def trade_frames(n_trades: int, seed: int = 0, start: int = 1000) -> list[tuple[list[int], bytes]]:
    """Trade frames batching 1-3 sequential trade_ids each: [(ids, frame), ...]."""
    rng = random.Random(seed)
    out = []
    tid = start
    while tid < start + n_trades:
        k = min(rng.randrange(1, 4), start + n_trades - tid)
        elems = []
        ids = []
        for _ in range(k):
            elems.append(
                b'{"symbol":"BTC/USD","side":"buy","price":30000.10,"qty":0.00100000,"ord_type":"market","trade_id":%d,"timestamp":"%s"}'
                % (tid, ts(tid).encode())
            )
            ids.append(tid)
            tid += 1
        out.append((ids, encode_elements("trade", False, elems)))
    return out
