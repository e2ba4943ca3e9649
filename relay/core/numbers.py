"""Exact decimal text for prices and quantities.

Kraken v2 puts numbers on the wire with the pair's precision (`0.10000000`); the book checksum is
computed over that exact text. A float round-trip turns it into `0.1` and breaks the checksum, so
the relay carries the original *lexemes* (the bytes as received) end to end and only uses floats
as sort keys. When the lexeme is not available (a re-serialized capture, a synthesized value), it
is rebuilt from the instrument's `price_precision` / `qty_precision` with `format_fixed`.
"""

from __future__ import annotations

from decimal import Decimal


def checksum_token(lexeme: bytes) -> bytes:
    """The checksum text of one number: the lexeme with `.` removed and leading zeros stripped."""
    return lexeme.replace(b".", b"").lstrip(b"0")


def format_fixed(value: float | Decimal | str | int, places: int) -> bytes:
    """Render `value` with exactly `places` decimals, never in exponent form (`1E-8`)."""
    if isinstance(value, float):
        return b"%.*f" % (places, value)
    return format(Decimal(value), f".{places}f").encode()
