"""Websocket framing shared by every client of a publication."""

from __future__ import annotations


def text_frame(payload: bytes) -> bytes:
    """An unfragmented, unmasked websocket text frame (RFC 6455 5.2), as a server sends it.

    Equivalent to websockets' `send_text` + `data_to_send` with no extension (compression is
    never negotiated here), but built once per publication instead of once per client.
    """
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return b"\x81\x7e" + n.to_bytes(2, "big") + payload
    return b"\x81\x7f" + n.to_bytes(8, "big") + payload
