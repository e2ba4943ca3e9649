"""One downstream client: websockets' Sans-I/O `ServerProtocol` driven by an `asyncio.Protocol`.

Why Sans-I/O instead of `websockets.serve`: fan-out throughput. Frames queued for a client during
one event-loop iteration are framed with `send_text` (bytes in, no decode/encode) and written with
a single write per dirty client per loop pass, or earlier when a long upstream read holds output
back (`LocalServer.mark_dirty` / `flush_due`; design-notes §4 measured 3.5x the throughput of
per-frame sends). Compression is never negotiated.

Slow clients (documented policy):
  * Each client has an output budget of `server.client_buffer_bytes` (its queue + the transport's
    write buffer). The transport's buffer is kept small (`LocalServer.transport_high`): once it is
    full the backlog waits in the queue, where book frames can still be dropped and from which a
    close frame can jump ahead (the transport's bytes cannot be taken back).
  * Over budget, book updates for that client are dropped and the (symbol, depth) is marked for a
    reset; as soon as the buffer drains below half the budget it receives a fresh
    `merge.book_snapshot` for it and live updates resume (book updates are absolute level values,
    so snapshot + later updates is always a valid book). Other frames keep queueing.
  * A client is closed with code 1008 and reason "client too slow" when its buffer exceeds twice
    the budget, or when it stays over budget for `slow_client_timeout` seconds: its queue is
    discarded, so the close frame follows at most the small transport buffer, then the socket is
    closed after `close_timeout`. Reading from a congested client is paused, so a flood of
    requests cannot grow its buffer either.
  * Under global pressure (`server.total_buffer_bytes`) the listener lowers the budget of the
    largest buffers (`squeeze`), which then follow the same rules.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import math
import os
import random
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from websockets.frames import Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol

from relay.config import ServerConfig
from relay.core.rate import TokenBucket
from relay.core.wsframe import SharedFrames, text_frame
from relay.protocols.interfaces import Endpoint
from relay.server.peers import TokenFailures, peer_key

log = logging.getLogger("relay.server")
_wslog = logging.getLogger("relay.server.websocket")
_wslog.setLevel(logging.WARNING)  # websockets logs every open/close at INFO: too chatty per client

SLOW_CLOSE_CODE = 1008
SLOW_CLOSE_REASON = "client too slow"
SNAPSHOT_BURST = 256 * 1024  # snapshot bytes a client may be sent at once (see `_snapshot_room`)
SLOW_LOG_EVERY = 1.0  # s between "closing slow client" log lines
RESYNC_POLL = 0.005  # s between checks of a draining buffer while snapshots wait for room


class ConnectionHost(Protocol):
    """What a connection needs from the listener that accepted it (`listener.LocalServer`):
    its config and limits, the endpoints by path, the shared output machinery, and counters."""

    config: ServerConfig
    loop: asyncio.AbstractEventLoop
    endpoints: dict[str, Endpoint]
    hard_message_bytes: int
    handshake_timeout: float
    close_timeout: float
    shared_frames: SharedFrames
    transport_high: int
    held_bytes: int
    token_failures: TokenFailures
    requests_total: int
    error_replies: int
    rate_limited: int
    slow_closes: int
    slow_logged: int
    slow_logged_at: float
    book_resets: int
    snapshots_paced: int
    frames_out: int
    bytes_out: int

    @property
    def open_count(self) -> int: ...
    def handshake_started(self, conn: ClientConnection) -> float | None: ...
    def handshake_done(self, conn: ClientConnection) -> None: ...
    def peer_full(self, conn: ClientConnection) -> bool: ...
    def held_changed(self) -> None: ...
    def client_opened(self, conn: ClientConnection) -> None: ...
    def client_detached(self, conn: ClientConnection) -> None: ...
    def connection_gone(self, conn: ClientConnection) -> None: ...
    def refused(self, reason: str) -> None: ...
    def mark_dirty(self, conn: ClientConnection) -> None: ...


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


class ClientConnection(asyncio.Protocol):
    """Handshake, request handling, coalesced writes and the slow-client policy for one socket."""

    def __init__(self, server: ConnectionHost) -> None:
        self.server = server
        self.loop = server.loop
        cfg = server.config
        self.limit = cfg.client_buffer_bytes  # lowered by `squeeze` under global pressure
        self.hard_limit = 2 * cfg.client_buffer_bytes
        self.chunk = server.transport_high
        self.max_message = cfg.max_message_bytes
        self.proto = ServerProtocol(max_size=server.hard_message_bytes, logger=_wslog)
        self.transport: Any = None  # asyncio.Transport, or uvloop's (not an asyncio subclass)
        self.peer: str | None = None
        self.peer_key = ""
        self.is_open = False
        self.endpoint: Endpoint | None = None  # the protocol endpoint of the path asked for
        self.source: Any = None  # the merge serving this client's book snapshots (the endpoint's)
        self.ep_state: Any = None  # per-client state owned by the endpoint
        self.closing = False
        self.closed = False
        # the endpoint's subscription state for this client
        self.subs: set[tuple[str, str, int]] = set()
        self.relay_filter: set[str] | None = None
        self.relay_subscribed = False
        # ("book", symbol, depth) -> live (False: needs a snapshot first). Keyed by the hub's
        # subscription key so the per-client hot path allocates nothing.
        self.books: dict[tuple[str, str, int], bool] = {}
        self._resync = False
        self._resync_timer: asyncio.TimerHandle | None = None
        # output
        self._out: list[bytes] = []
        self._out_bytes = 0
        self._scheduled = False
        self._paused = False  # the transport's (small) buffer is full: output waits in `_out`
        self._reading_paused = False
        self.held = 0  # what of `_out` is counted in the listener's `held_bytes`
        self._fd = -1  # plain TCP socket written through directly when idle (see `_write`)
        self.congested_since: float | None = None
        self.last_out = self.loop.time()
        # input
        self._frag: list[bytes] | None = None
        self._frag_text = True
        self._frag_size = 0
        self._snap_rate = float(cfg.client_snapshot_bytes_per_second)
        self._snap_tokens = float(SNAPSHOT_BURST)
        self._snap_at = self.loop.time()
        rate = cfg.max_requests_per_second
        self._requests = TokenBucket(rate, max(1.0, rate))  # burst of one second's worth
        self.connection_id = random.getrandbits(63)
        self._timer: asyncio.TimerHandle | None = None
        # counters
        self.frames_out = 0
        self.bytes_out = 0
        self.book_resets = 0
        self.dropped = 0

    # -- asyncio.Protocol -----------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:  # asyncio.BaseTransport
        # uvloop transports are not asyncio.Transport subclasses; only the interface matters
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) and peer else None
        self.peer_key = peer_key(self.peer)
        transport.set_write_buffer_limits(high=self.chunk, low=self.chunk // 4)
        sock = transport.get_extra_info("socket")
        if sock is not None and transport.get_extra_info("sslcontext") is None:
            self._fd = sock.fileno()
        timeout = self.server.handshake_started(self)
        if timeout is None:
            transport.abort()
            return
        self._timer = self.loop.call_later(timeout, self._handshake_timeout)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        proto = self.proto
        proto.receive_data(data)
        for event in proto.events_received():
            if isinstance(event, Request):
                self._on_handshake(event)
            elif not self.closing:
                self._on_frame(event)
        self._write_protocol()
        if proto.state is State.CLOSING or proto.state is State.CLOSED:
            self._detach()

    def eof_received(self) -> bool | None:
        self.proto.receive_eof()
        self._write_protocol()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._resync_timer is not None:
            self._resync_timer.cancel()
            self._resync_timer = None
        self._drop_queue()
        self._detach()
        self.server.connection_gone(self)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        """The transport drained: write the waiting backlog in the next pass."""
        self._paused = False
        if self.closing:
            return
        if self._out:
            if not self._scheduled:
                self._scheduled = True
                self.server.mark_dirty(self)
            return
        self._drained()

    def _drained(self) -> None:
        """Output fits the budget again: resume reading, send the snapshots waiting for room."""
        if self._out_bytes > self.limit:
            return
        self.congested_since = None
        if self._reading_paused and not self.closing and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()
        if self._resync:
            self._resync_books()

    # -- handshake ------------------------------------------------------------------------
    def _on_handshake(self, request: Request) -> None:
        proto, server, cfg = self.proto, self.server, self.server.config
        parts = urlsplit(request.path)
        endpoint = server.endpoints.get(parts.path)
        if endpoint is not None:
            self.endpoint = endpoint
            self.source = endpoint.source
        need_token = cfg.token and not (cfg.token_exempt_loopback and is_loopback(self.peer))
        if endpoint is None:
            response = proto.reject(404, "Not Found\n")
            reason = "path"
        elif need_token and (wait := server.token_failures.locked(self.peer_key, self.loop.time())):
            server.token_failures.refused_locked(self.peer_key, self.peer, self.loop.time())
            response = proto.reject(429, "Too Many Requests: too many failed token attempts\n")
            response.headers["Retry-After"] = str(math.ceil(wait))
            reason = "token_locked"
        elif need_token and (why := token_failure(cfg.token or "", request, parts.query)):
            server.token_failures.failed(self.peer_key, self.peer, why, self.loop.time())
            response = proto.reject(401, "Unauthorized: bearer token required\n")
            reason = "token"
        elif server.open_count >= cfg.max_clients:
            response = proto.reject(503, "Service Unavailable: too many clients\n")
            reason = "max_clients"
        elif server.peer_full(self):
            response = proto.reject(429, "Too Many Requests: too many connections from this address\n")
            reason = "max_connections_per_peer"
        else:
            response = proto.accept(request)  # no extensions offered: compression stays off
            reason = "handshake" if response.status_code != 101 else ""
        proto.send_response(response)
        server.handshake_done(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if response.status_code == 101:
            self.is_open = True
            server.client_opened(self)
        else:
            server.refused(reason)

    def _handshake_timeout(self) -> None:
        self._timer = None
        if not self.is_open and self.transport is not None:
            self.server.refused("handshake_timeout")
            self.server.handshake_done(self)
            self.transport.abort()

    def evict(self) -> None:
        """Dropped from a full handshake table to admit another address's handshake."""
        self.closed = True  # ignore what may still arrive before the abort takes effect
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.transport is not None:
            self.transport.abort()

    # -- incoming frames ------------------------------------------------------------------
    def _on_frame(self, frame) -> None:  # websockets.frames.Frame
        op = frame.opcode
        if op is Opcode.TEXT or op is Opcode.BINARY:
            if frame.fin:
                self._on_message(frame.data, op is Opcode.TEXT)
            else:
                self._frag, self._frag_text, self._frag_size = [frame.data], op is Opcode.TEXT, len(frame.data)
        elif op is Opcode.CONT and self._frag is not None:
            self._frag_size += len(frame.data)
            if self._frag_size <= self.max_message:
                self._frag.append(frame.data)  # beyond the limit only the size is kept
            if frame.fin:
                data = b"".join(self._frag) if self._frag_size <= self.max_message else b""
                size, self._frag = self._frag_size, None
                self._on_message(data, self._frag_text, size)

    def _on_message(self, data: bytes, text: bool, size: int | None = None) -> None:
        now = self.loop.time()
        server = self.server
        server.requests_total += 1
        endpoint = self.endpoint
        assert endpoint is not None  # messages arrive only after a handshake on an endpoint's path
        if (size if size is not None else len(data)) > self.max_message:
            server.error_replies += 1
            endpoint.reject(self, "too_big", None)
            return
        if not text:
            server.error_replies += 1
            endpoint.reject(self, "binary", data)
            return
        try:
            data.decode()
        except UnicodeDecodeError:  # RFC 6455 8.1: a text message must be valid UTF-8
            self.server.refused("invalid_utf8")
            self.close(1007, "invalid UTF-8")
            return
        if not self._requests.take(now):  # `max_requests_per_second`
            server.rate_limited += 1
            endpoint.reject(self, "rate", data)
            return
        try:
            endpoint.message(self, data, now)
        except Exception:  # a bug must cost this request, not the connection
            log.exception("request handling failed (%s)", endpoint.path)
            server.error_replies += 1

    def count_error(self) -> None:
        """The endpoint answered a request with an error (`rejected.bad_request` in metrics)."""
        self.server.error_replies += 1

    # -- output ---------------------------------------------------------------------------
    def queue(self, frame: bytes) -> None:
        """Queue one text message for this client only (replies, snapshots). Never dropped."""
        self.deliver(text_frame(frame))

    def deliver(self, wire: bytes) -> None:
        """Queue one websocket frame already built by `text_frame` (shared by every subscriber of
        a publication: server frames are unmasked, so their bytes are the same for all clients)."""
        if self.closing:
            return
        self._out.append(wire)
        self._out_bytes += len(wire)
        if not self._scheduled:
            self._scheduled = True
            self.server.mark_dirty(self)
        if self._out_bytes > self.limit:
            self._over_budget()

    def deliver_book(self, key: tuple[str, str, int], wire: bytes, snapshot: bool) -> None:
        """Book frames are droppable: over budget they are replaced later by one snapshot."""
        live = self.books.get(key)
        if live is None or self.closing:
            return
        congested = self._out_bytes > self.limit
        if live:
            if not congested:
                self.deliver(wire)
                return
            self.books[key] = False
            self._resync = True
            self.book_resets += 1
            self.server.book_resets += 1
            self.dropped += 1
            self._over_budget()
            return
        # waiting for a base: a snapshot publication serves, otherwise ask the merge
        if congested:
            self.dropped += 1
            return
        if not snapshot:
            if not self._snapshot_room():
                self.dropped += 1
                self._want_resync()
                return
            snap = self.source.book_snapshot(key[1], key[2])
            if snap is None:
                self.dropped += 1
                return
            wire = self.server.shared_frames.frame(key, snap)  # it already contains this update
            self._snap_tokens -= len(wire)
        self.books[key] = True
        self.deliver(wire)

    def open_book(self, key: tuple[str, str, int], snapshot: bool) -> None:
        """Start a book subscription. With `snapshot`, updates flow only once the client has its
        base: sent now if the output buffer has room (half the budget) and the client's snapshot
        pacing allows, else paced out as it drains, so joining many deep books never holds them
        all in memory or trips the slow-client close, and churning deep subscriptions cannot
        take the event loop from other clients. Without, updates flow right away (Kraken's
        `snapshot: false`)."""
        if not snapshot:
            self.books[key] = True
            return
        self.books[key] = False
        if self._resync or self.buffered() > self.limit // 2 or not self._snapshot_room():
            self._want_resync()
            return
        snap = self.source.book_snapshot(key[1], key[2])
        if snap is not None:  # None: the book is (re)building; its snapshot publication serves
            self.books[key] = True
            wire = self.server.shared_frames.frame(key, snap)
            self._snap_tokens -= len(wire)
            self.deliver(wire)

    def stop_book(self, key: tuple[str, str, int]) -> None:
        self.books.pop(key, None)

    def _snapshot_room(self) -> bool:
        """Snapshot pacing: `server.client_snapshot_bytes_per_second` per client, in bursts of at
        most `SNAPSHOT_BURST` bytes (a few deep books, ~2 ms of encoding) per loop pass."""
        now = self.loop.time()
        tokens = self._snap_tokens + (now - self._snap_at) * self._snap_rate
        self._snap_tokens = tokens if tokens < SNAPSHOT_BURST else SNAPSHOT_BURST
        self._snap_at = now
        if tokens > 0:
            return True
        self.server.snapshots_paced += 1
        return False

    def _want_resync(self) -> None:
        """Books wait for a snapshot: send them as the buffer drains (`flush` and
        `resume_writing` check) and as the snapshot pacing allows (a timer), polling briefly
        for a drain nothing signals."""
        self._resync = True
        if self._resync_timer is None and not self.closing:
            wait = -self._snap_tokens / self._snap_rate
            if wait > RESYNC_POLL or not self._paused:
                self._resync_timer = self.loop.call_later(max(wait, RESYNC_POLL), self._resync_poll)

    def _resync_poll(self) -> None:
        self._resync_timer = None
        if self._resync and not self.closing:
            self._resync_books()

    def _resync_books(self) -> None:
        """Snapshots for the books waiting for one, while the output buffer stays under half the
        budget (counting what the transport still holds)."""
        self._resync = False
        source = self.source
        shared = self.server.shared_frames
        room = self.limit // 2
        for key, live in list(self.books.items()):
            if live:
                continue
            if self.buffered() > room or not self._snapshot_room():
                self._want_resync()
                return
            snap = source.book_snapshot(key[1], key[2])
            if snap is not None:
                self.books[key] = True
                wire = shared.frame(key, snap)
                self._snap_tokens -= len(wire)
                self.deliver(wire)

    def _over_budget(self) -> None:
        if self.congested_since is None:
            self.congested_since = self.loop.time()
        transport = self.transport
        buffered = self._out_bytes + (transport.get_write_buffer_size() if transport is not None else 0)
        if buffered > self.hard_limit:
            self.close_slow()
        elif not self._reading_paused and transport is not None:
            self._reading_paused = True
            transport.pause_reading()

    def squeeze(self, limit: int | None) -> None:
        """Lower this client's budget to `limit` (global pressure), or restore it (None)."""
        cfg_limit = self.server.config.client_buffer_bytes
        self.limit = cfg_limit if limit is None else min(limit, cfg_limit)
        self.hard_limit = 2 * self.limit
        if self._out_bytes > self.limit:
            self._over_budget()

    def flush(self) -> None:
        """Write the queued output (called by the listener's `flush_clients`)."""
        self._scheduled = False
        out = self._out
        if not out or self.closing or self.transport is None or self.transport.is_closing():
            self._drop_queue()
            return
        if self.proto.state is not State.OPEN:
            self._drop_queue()
            return
        if self._paused:  # the transport is full: the backlog waits here (resume_writing)
            self._hold()
            return
        size = self._out_bytes
        if size > self.chunk:
            self._write_backlog()
        else:
            n = len(out)
            self.frames_out += n
            self.bytes_out += size
            server = self.server
            server.frames_out += n
            server.bytes_out += size
            self._write(b"".join(out))
            out.clear()
            self._out_bytes = 0
        self.last_out = self.loop.time()
        if self._out or self.held:
            self._hold()
        if not self._paused:  # all written (`_drained`, inline: this runs per client per pass)
            self.congested_since = None
            if self._reading_paused and not self.closing:
                self._reading_paused = False
                self.transport.resume_reading()
            if self._resync:
                self._resync_books()

    def _write_backlog(self) -> None:
        """Write the queue in pieces of about `chunk` bytes while the transport takes them, so
        its buffer never holds much more than its high-water mark. Big frames (snapshots, shared
        by every client) are handed over alone, without a per-client joined copy."""
        out = self._out
        chunk = self.chunk
        n = len(out)
        i = written = 0
        while i < n and not self._paused:
            j, size = i + 1, len(out[i])
            while j < n and size + len(out[j]) <= chunk:
                size += len(out[j])
                j += 1
            self._write(out[i] if j == i + 1 else b"".join(out[i:j]))
            written += size
            i = j
        del out[:i]
        self._out_bytes -= written
        self.frames_out += i
        self.bytes_out += written
        server = self.server
        server.frames_out += i
        server.bytes_out += written

    def _hold(self) -> None:
        """Count the waiting backlog in the listener's global total (once per flush)."""
        server = self.server
        server.held_bytes += self._out_bytes - self.held
        self.held = self._out_bytes
        if self.held:
            server.held_changed()

    def _drop_queue(self) -> None:
        self._out.clear()
        self._out_bytes = 0
        if self.held:
            self.server.held_bytes -= self.held
            self.held = 0

    def _write(self, data: bytes) -> None:
        """Write now. uvloop defers `transport.write` to the end of the loop iteration, so output
        flushed while a long upstream read is still being processed (the listener's `flush_due`)
        would wait for the whole read; with nothing buffered in the transport the bytes go to
        the socket directly (what asyncio's own transports do), the rest through the transport."""
        transport = self.transport
        fd = self._fd
        if fd >= 0 and not transport.get_write_buffer_size():
            try:
                n = os.write(fd, data)
            except OSError:  # would block, or broken: the transport buffers or reports it
                n = 0
            if n == len(data):
                return
            data = data[n:]
        transport.write(data)

    def _write_protocol(self) -> None:
        """Write what the protocol produced itself (handshake response, pong, close) right away."""
        transport = self.transport
        if transport is None:
            return
        chunks = self.proto.data_to_send()
        if not chunks:
            return
        eof = False
        body = []
        for chunk in chunks:
            if chunk:
                body.append(chunk)
            else:
                eof = True
        if body and not transport.is_closing():
            transport.write(b"".join(body))
            if not self._reading_paused and transport.get_write_buffer_size() > self.limit:
                self._reading_paused = True  # pongs to a flood of pings from a client not reading
                transport.pause_reading()
        if eof:
            self._detach()
            if not transport.is_closing():
                transport.close()  # flushes, then closes
            self._arm_abort()

    # -- closing --------------------------------------------------------------------------
    def close(self, code: int = 1001, reason: str = "relay shutting down") -> None:
        """Start the closing handshake; the socket is aborted if the peer does not answer."""
        if self.closing or self.closed:
            return
        self._detach()
        self._drop_queue()  # the close frame goes right behind what the transport holds
        if self.proto.state is State.OPEN:
            self.proto.send_close(code, reason)
            self._write_protocol()
            if self._reading_paused and self.transport is not None:
                self._reading_paused = False
                self.transport.resume_reading()  # to read the peer's close frame
        elif self.transport is not None:
            self.transport.close()
        self._arm_abort()

    def close_slow(self) -> None:
        if self.closing:
            return
        server = self.server
        server.slow_closes += 1
        now = self.loop.time()
        if now - server.slow_logged_at >= SLOW_LOG_EVERY:  # one line a second, however many
            since = server.slow_closes - server.slow_logged - 1
            more = f" ({since} more since the last line)" if since else ""
            log.warning("closing slow client %s: %s%s", self.peer, SLOW_CLOSE_REASON, more)
            server.slow_logged_at, server.slow_logged = now, server.slow_closes
        self.close(SLOW_CLOSE_CODE, SLOW_CLOSE_REASON)

    def _detach(self) -> None:
        """Stop receiving publications (idempotent)."""
        if not self.closing:
            self.closing = True
            self.server.client_detached(self)

    def _arm_abort(self) -> None:
        if self._timer is None and not self.closed:
            self._timer = self.loop.call_later(self.server.close_timeout, self._abort)

    def _abort(self) -> None:
        self._timer = None
        if not self.closed and self.transport is not None:
            self.transport.abort()

    # -- periodic -------------------------------------------------------------------------
    def tick(self, now: float, slow_timeout: float) -> None:
        """Close a client that stayed congested for `slow_timeout` seconds."""
        if self.closing:
            return
        if self.congested_since is not None and now - self.congested_since > slow_timeout:
            if self.buffered() > self.limit:
                self.close_slow()
                return
            self.congested_since = None

    def idle(self, now: float) -> float:
        """Seconds since this client was last sent anything; 0 while output is queued or closing
        (endpoints send heartbeats to clients idle for longer than their interval)."""
        if self._out or self.closing:
            return 0.0
        return now - self.last_out

    def buffered(self) -> int:
        transport = self.transport
        return self._out_bytes + (transport.get_write_buffer_size() if transport is not None else 0)


def token_failure(token: str, request: Request, query: str) -> str | None:
    """Why the handshake's token is refused (None: accepted). One guess per attempt: every
    bearer header and `?token=` value given must be the same one."""
    given = [a[7:].strip() for a in request.headers.get_all("Authorization") if a[:7].lower() == "bearer "]
    given += parse_qs(query, keep_blank_values=True).get("token", [])
    if not given:
        return "missing"
    if len(set(given)) > 1:
        return "several different tokens"
    return None if hmac.compare_digest(given[0].encode(), token.encode()) else "wrong"
