"""Depth views must be consumable by clients that truncate after every level (python-kraken-sdk)."""

from __future__ import annotations

from relay.core.book import Book, Level
from relay.core.views import DepthView


def lv(price: str, qty: str = "1.00000000") -> Level:
    return Level(float(price), price.encode(), qty.encode())


def test_delete_comes_before_the_level_entering_at_the_bottom():
    book = Book("X/Y", 100)
    book.load_snapshot([lv(f"{100 - i}.0") for i in range(12)], [lv(f"{200 + i}.0") for i in range(12)], "t")
    view = DepthView(book, 10)
    undo: list = []
    book.apply([lv("100.0", "0.00000000")], [], "t2", undo)
    bids, asks = view.update(book, [k for is_bid, k, _ in undo if is_bid], [])
    assert bids == [(b"100.0", b"0.00000000"), (b"90.0", b"1.00000000")]
    # a client that truncates to 10 after each level ends with the right top 10
    client: dict[bytes, bytes] = {f"{100 - i}.0".encode(): b"1" for i in range(10)}
    for price, qty in bids:
        if float(qty) == 0:
            client.pop(price, None)
        else:
            client[price] = qty
        client = dict(sorted(client.items(), key=lambda kv: -float(kv[0]))[:10])
    assert set(client) == {f"{90 + i}.0".encode() for i in range(10)}
