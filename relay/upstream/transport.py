"""Open one websocket to Kraken: source address, proxy, bounded buffers; classify failures.

Uses `websockets.asyncio.client.connect`, whose own proxy support covers both HTTP CONNECT and
SOCKS (through python-socks) and forwards `local_addr` to the proxy connection, so a configured
source address also applies when a proxy is used. The environment's proxy variables are *not*
consulted (`proxy=None` unless configured): the config file is the single source of truth.

* `compression=None`: permessage-deflate costs ~1/3 of receive throughput (design notes).
* `max_size` 16 MiB: depth-1000 snapshots are large; `max_queue` bounds buffered frames so a slow
  consumer pauses reading instead of growing memory.
* `ping_interval=None` for Spot: liveness is our own JSON ping + frame deadline (websockets'
  keepalive would raise its own 1011 on top of it). Futures has no JSON ping: its connections
  pass `ping_interval` (RFC 6455 pings, as Kraken's reference client does every 30 s).
"""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidMessage,
    InvalidStatus,
    InvalidURI,
    ProxyError,
)

from relay import __version__
from relay.config import UpstreamConfig
from relay.upstream.sink import SinkClientConnection

MAX_SIZE = 16 * 1024 * 1024
MAX_QUEUE = 64
USER_AGENT = f"kraken-relay/{__version__}"


async def open_connection(
    up: UpstreamConfig,
    *,
    handshake_timeout: float,
    max_size: int = MAX_SIZE,
    max_queue: int = MAX_QUEUE,
    close_timeout: float = 2.0,
    ping_interval: float | None = None,
) -> ClientConnection:
    """Connect and complete the websocket handshake within `handshake_timeout` seconds."""
    kwargs: dict = {}
    if up.source_address:
        kwargs["local_addr"] = (up.source_address, 0)
    return await connect(
        up.url,
        compression=None,
        proxy=up.proxy,
        open_timeout=handshake_timeout,
        ping_interval=ping_interval,
        ping_timeout=None if ping_interval is None else min(20.0, ping_interval),
        close_timeout=close_timeout,
        max_size=max_size,
        max_queue=max_queue,
        user_agent_header=USER_AGENT,
        create_connection=SinkClientConnection,  # data frames can go straight to the merge
        **kwargs,
    )


def classify_error(exc: BaseException) -> str:
    """A short, stable reason for a failed attempt, for stats and logs."""
    if isinstance(exc, InvalidStatus):
        code = exc.response.status_code
        return "429" if code == 429 else f"http {code}"
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return "timeout"
    if isinstance(exc, ProxyError):
        return "proxy"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, ssl.SSLError):
        return "tls"
    if isinstance(exc, InvalidURI):
        return "bad url"
    if isinstance(exc, InvalidMessage):
        return "handshake reset"  # closed before a valid HTTP response (refused while accepting)
    if isinstance(exc, InvalidHandshake):
        return "handshake"
    if isinstance(exc, OSError):
        if exc.errno == errno.EADDRNOTAVAIL:
            return "source address unavailable"
        if exc.errno in (errno.ECONNRESET, errno.EPIPE):
            return "reset"
        if exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
            return "unreachable"
        if isinstance(exc, socket.gaierror):
            return "dns"
        return f"os error {exc.errno}"
    if isinstance(exc, ConnectionClosed):
        return close_reason(exc)
    if type(exc).__module__.startswith("nats."):  # a NATS line's connect
        text = str(exc).lower()
        if "authorization" in text or "authentication" in text:
            return "nats auth"
        if type(exc).__name__ == "NoServersError":
            return "nats unreachable"
        return f"nats {type(exc).__name__}"
    return type(exc).__name__


def close_fields(exc: ConnectionClosed) -> tuple[int | None, str, str | None]:
    """(code, text, by) of a closed connection for the flight recorder: `by` is `server` when
    Kraken's close frame came first, `relay` when ours did, None for an abnormal end (1006)."""
    rcvd, sent = exc.rcvd, exc.sent
    if rcvd is None and sent is None:
        return None, "", None
    if rcvd is not None and (sent is None or exc.rcvd_then_sent):
        return int(rcvd.code), rcvd.reason, "server"
    assert sent is not None
    return int(sent.code), sent.reason, "relay"


def close_reason(exc: ConnectionClosed) -> str:
    """`1001 CloudFlare WebSocket proxy restarting`, `1006`, ... from a closed connection (a NATS
    line's own reason: `nats connection lost`)."""
    line_reason = getattr(exc, "line_reason", None)
    if line_reason:
        return str(line_reason)
    frame = exc.rcvd or exc.sent
    if frame is None:
        return "1006"
    return f"{frame.code} {frame.reason}".strip()
