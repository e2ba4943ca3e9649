"""Failure reasons shown to operators (stats, logs, metrics labels)."""

from __future__ import annotations

import errno
import socket

from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosedError, InvalidStatus
from websockets.frames import Close
from websockets.http11 import Response

from relay.upstream.transport import classify_error, close_reason


def _status(code: int) -> InvalidStatus:
    return InvalidStatus(Response(code, "x", Headers(), b""))


def test_classify_connect_failures() -> None:
    assert classify_error(_status(429)) == "429"
    assert classify_error(_status(503)) == "http 503"
    assert classify_error(TimeoutError("timed out during opening handshake")) == "timeout"
    assert classify_error(ConnectionRefusedError(errno.ECONNREFUSED, "refused")) == "refused"
    assert classify_error(OSError(errno.EADDRNOTAVAIL, "cannot assign")) == "source address unavailable"
    assert classify_error(socket.gaierror(socket.EAI_NONAME, "unknown")) == "dns"


def test_close_reasons_carry_code_and_text() -> None:
    closed = ConnectionClosedError(Close(1001, "CloudFlare WebSocket proxy restarting"), None)
    assert close_reason(closed) == "1001 CloudFlare WebSocket proxy restarting"
    assert close_reason(ConnectionClosedError(None, None)) == "1006"
    assert (
        classify_error(ConnectionClosedError(Close(1013, "Market data unavailable"), None))
        == "1013 Market data unavailable"
    )
