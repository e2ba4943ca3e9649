"""Kraken's book checksum (CRC32 over the top 10 levels), spot v1 and v2.

Asks ascending, then bids descending, at most 10 each; every level contributes its price token
then its quantity token (see `numbers.checksum_token`). The result is `zlib.crc32` as unsigned.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable

from relay.core.numbers import checksum_token

TOP_LEVELS = 10


def level_token(price: bytes, qty: bytes) -> bytes:
    """Checksum contribution of one level, cached by the book when the level changes."""
    return checksum_token(price) + checksum_token(qty)


def crc32_of_tokens(ask_tokens: bytes, bid_tokens: bytes) -> int:
    """CRC32 of the concatenated, already-built ask and bid token strings."""
    return zlib.crc32(bid_tokens, zlib.crc32(ask_tokens))


def book_checksum(asks: Iterable[tuple[bytes, bytes]], bids: Iterable[tuple[bytes, bytes]]) -> int:
    """Checksum of a book given best-first (price, qty) lexemes per side; only the top 10 count."""
    ask_part = b"".join(level_token(p, q) for p, q in list(asks)[:TOP_LEVELS])
    bid_part = b"".join(level_token(p, q) for p, q in list(bids)[:TOP_LEVELS])
    return crc32_of_tokens(ask_part, bid_part)


def level3_checksum(
    asks: Iterable[tuple[bytes, Iterable[bytes]]], bids: Iterable[tuple[bytes, Iterable[bytes]]]
) -> int:
    """Level3 variant: 10 price levels per side, each order's (limit_price, order_qty) in queue order."""

    def part(levels: Iterable[tuple[bytes, Iterable[bytes]]]) -> bytes:
        return b"".join(
            checksum_token(price) + checksum_token(q) for price, qtys in list(levels)[:TOP_LEVELS] for q in qtys
        )

    return crc32_of_tokens(part(asks), part(bids))
