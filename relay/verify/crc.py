"""Kraken's spot book checksum, recomputed from the wire text (independent of `relay.core`)."""

from __future__ import annotations

import zlib
from decimal import Decimal


def token(text: str) -> str:
    """A number's checksum text: `.` removed, leading zeros stripped."""
    return text.replace(".", "").lstrip("0")


def book_crc(asks: dict[str, str], bids: dict[str, str]) -> int:
    """CRC32 of the 10 lowest asks (ascending) then the 10 highest bids (descending)."""
    top_a = sorted(asks, key=Decimal)[:10]
    top_b = sorted(bids, key=Decimal, reverse=True)[:10]
    s = "".join(token(p) + token(asks[p]) for p in top_a) + "".join(token(p) + token(bids[p]) for p in top_b)
    return zlib.crc32(s.encode()) & 0xFFFFFFFF


def truncate(asks: dict[str, str], bids: dict[str, str], depth: int) -> None:
    """Drop the levels beyond `depth` (Kraken sends no delete for them)."""
    for side, worst_first in ((asks, True), (bids, False)):
        extra = len(side) - depth
        if extra > 0:
            for price in sorted(side, key=Decimal, reverse=worst_first)[:extra]:
                del side[price]


def is_zero(text: str) -> bool:
    return Decimal(text) == 0
