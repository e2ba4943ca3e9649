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


class SharedFrames:
    """Websocket frames of late-joiner snapshots, built once and shared by every client sent them.

    The merge returns the same bytes object for a snapshot while its book is unchanged, so the
    frame is keyed by (symbol, depth) and reused while the payload is that same object: 100 clients
    joining a depth-1000 book share one ~70 KB frame instead of holding 100 copies. Bounded: one
    entry per key that has been asked for (the subscribable books).
    """

    MIN_SIZE = 4096  # smaller frames are cheaper to build than to look up and keep

    def __init__(self) -> None:
        self._frames: dict[object, tuple[bytes, bytes]] = {}

    def frame(self, key: object, payload: bytes) -> bytes:
        if len(payload) < self.MIN_SIZE:
            return text_frame(payload)
        hit = self._frames.get(key)
        if hit is not None and hit[0] is payload:
            return hit[1]
        wire = text_frame(payload)
        self._frames[key] = (payload, wire)
        return wire

    def __len__(self) -> int:
        return len(self._frames)
