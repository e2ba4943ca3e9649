"""`LocalServer`: the local Kraken-v2-compatible endpoint (`ws://127.0.0.1:8765/v2` by default).

Thin asyncio layer around the hub (subscriptions, dispatch) and the per-client protocol
(`client.ClientConnection`). The app feeds it merge publications with `publish(merge.take())`
right after every `merge.feed()/tick()`, so the merge's state always matches what has been
published when a late joiner's snapshot is taken.

Shutdown (`stop()`) closes every client with 1001 ("going away"), as Kraken's proxy does on restart.

Other protocols (Futures `/ws/v1`, Spot v1 `/`) share this listener: `add_endpoint(endpoint)`
routes websocket handshakes on `endpoint.path` to it (see `Endpoint`); limits, token, slow-client
policy and coalesced writes stay here and in `client.ClientConnection` for every path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from relay import __version__
from relay.ops.config import ChannelsConfig, ServerConfig, split_host_port
from relay.server.client import ClientConnection
from relay.server.demand import DemandHandler
from relay.server.hub import Hub, Source
from relay.server.wire import SharedFrames

log = logging.getLogger("relay.server")

class Endpoint(Protocol):
    """A non-v2 protocol served on its own path (duck-typed; see relay/server/futures.py).

    `source` is that protocol's merge (`book_snapshot(symbol, key)` serves slow-client book
    resets through `ClientConnection.deliver_book`). The connection calls `opened` after the
    handshake (queue a greeting), `message` per text message (after size and rate checks),
    `reject` when such a check fails (`reason`: too_big | binary | rate), `closed` once.
    Per client: `conn.queue(text)` for replies; for publications build the websocket frame once
    (`relay.server.wire.text_frame`) and hand it to `conn.deliver(wire)` or, for droppable book
    frames, `conn.deliver_book(key, wire, snapshot)` after `conn.open_book(key, snapshot)`.
    Optional: `reload(cfg) -> cfg` on SIGHUP (may veto changes by returning an adjusted config).
    """

    path: str
    source: Any

    def opened(self, conn: Any, now: float) -> None: ...
    def message(self, conn: Any, data: bytes, now: float) -> None: ...
    def reject(self, conn: Any, reason: str, data: bytes | None) -> None: ...
    def closed(self, conn: Any, now: float) -> None: ...
    def tick(self, now: float) -> None: ...
    def publish(self, pubs: Iterable[Any]) -> None: ...
    def stats(self) -> dict[str, Any]: ...


HANDSHAKE_BACKLOG = 64  # extra sockets allowed mid-handshake (beyond 2 x max_clients) before aborting


class LocalServer:
    def __init__(
        self,
        config: ServerConfig,
        merge: Source,
        channels: ChannelsConfig,
        *,
        demand: DemandHandler | None = None,
        version: str = __version__,
        host: str | None = None,
        port: int | None = None,
        slow_client_timeout: float = 10.0,
        close_timeout: float = 2.0,
        handshake_timeout: float = 10.0,
        demand_timeout: float = 15.0,
        hard_message_bytes: int | None = None,
    ) -> None:
        """`host`/`port` override `config.listen` (tests bind port 0)."""
        self.config = config
        self.source = merge
        self.version = version
        cfg_host, cfg_port = split_host_port(config.listen)
        self.host = cfg_host if host is None else host
        self._port = cfg_port if port is None else port
        self.slow_client_timeout = slow_client_timeout
        self.close_timeout = close_timeout
        self.handshake_timeout = handshake_timeout
        # Frames above max_message_bytes get an error reply; above this hard cap the websocket
        # layer closes the connection with 1009 without buffering the rest.
        self.hard_message_bytes = hard_message_bytes or max(16 * config.max_message_bytes, 1024 * 1024 + 4096)
        self.shared_frames = SharedFrames()  # late-joiner snapshot frames, one copy for all clients
        self.hub = Hub(
            merge,
            channels,
            max_subscriptions_per_client=config.max_subscriptions_per_client,
            dynamic=config.dynamic_subscriptions,
            demand=demand,
            demand_timeout=demand_timeout,
        )
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self._dirty: list[ClientConnection] = []  # clients with output queued, written by `flush_clients`
        self._dirty_since = 0.0
        self._write_cost = 0.0  # seconds per client write, smoothed (sets the early-flush wait)
        self.early_flushes = 0
        self._server: asyncio.Server | None = None
        self._ticker: asyncio.Task | None = None
        self.endpoints: dict[str, Endpoint] = {}  # path -> endpoint of another protocol
        self.connections: set[ClientConnection] = set()  # every socket, handshaking or open
        self.open_clients: set[ClientConnection] = set()
        # counters
        self.accepted = 0
        self.refusals: Counter[str] = Counter()
        self.slow_closes = 0
        self.book_resets = 0
        self.requests_total = 0
        self.error_replies = 0
        self.rate_limited = 0
        self.frames_out = 0
        self.bytes_out = 0

    def add_endpoint(self, endpoint: Endpoint) -> None:
        """Serve another protocol on `endpoint.path` (before or after `start`)."""
        if endpoint.path == self.config.path or endpoint.path in self.endpoints:
            raise ValueError(f"path {endpoint.path!r} is already served")
        self.endpoints[endpoint.path] = endpoint

    def url_for(self, path: str) -> str:
        return self.url[: -len(self.config.path)] + path

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        ctx = None
        if self.config.tls is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(self.config.tls.cert, self.config.tls.key)
        self._server = await self.loop.create_server(
            lambda: ClientConnection(self),
            self.host,
            self._port,
            ssl=ctx,
            backlog=1024,
            reuse_address=True,
        )
        self._ticker = asyncio.create_task(self._tick_loop(), name="relay-server-tick")
        log.info("listening on %s", self.url)

    @property
    def port(self) -> int:
        if self._server is not None and self._server.sockets:
            return self._server.sockets[0].getsockname()[1]
        return self._port

    @property
    def url(self) -> str:
        scheme = "wss" if self.config.tls is not None else "ws"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}{self.config.path}"

    async def stop(self, close_code: int = 1001, reason: str = "relay shutting down") -> None:
        """Stop listening, close every client with `close_code`, wait (bounded) for them to go."""
        if self._server is not None:
            self._server.close()
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        for conn in list(self.connections):
            if conn.is_open:
                conn.close(close_code, reason)
            elif conn.transport is not None:
                conn.transport.abort()
        deadline = self.loop.time() + self.close_timeout + 1.0
        while self.connections and self.loop.time() < deadline:
            await asyncio.sleep(0.02)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            self._server = None

    # -- feed -----------------------------------------------------------------------------
    def publish(self, pubs: Iterable[Any]) -> None:
        """Fan merge publications out to subscribers (call after every merge.take())."""
        self.hub.publish(pubs, self.loop.time() if self.loop is not None else 0.0)
        if self._dirty:
            self.flush_due()

    def publisher(self, publish: Callable[[Iterable[Any]], None]) -> Callable[[Iterable[Any]], None]:
        """Another protocol's endpoint `publish`, followed by the same early-flush check."""

        def run(pubs: Iterable[Any]) -> None:
            publish(pubs)
            if self._dirty:
                self.flush_due()

        return run

    # -- client output ----------------------------------------------------------------------
    # Output queued for clients is written once per loop pass (`flush_clients`, scheduled when
    # the first client becomes dirty), which coalesces a burst into one write per client. But
    # one upstream read can carry dozens of frames (~30 at 10k frames/s, ~17 us each): the first
    # would wait the whole read. So output that has waited `FLUSH_AFTER` plus twice what writing
    # it costs (measured) is written from `publish` right away: one client gets its frames every
    # ~0.1 ms of a long read, while hundreds of clients (costly writes) keep one write per pass.
    FLUSH_AFTER = 100e-6

    def mark_dirty(self, conn: ClientConnection) -> None:
        dirty = self._dirty
        if not dirty:
            self._dirty_since = time.perf_counter()
            self.loop.call_soon(self.flush_clients)
        dirty.append(conn)

    def flush_due(self) -> None:
        """Write queued client output now if it has waited long enough (see above)."""
        dirty = self._dirty
        waited = time.perf_counter() - self._dirty_since
        if waited > self.FLUSH_AFTER + 2.0 * self._write_cost * len(dirty):
            self.early_flushes += 1
            self.flush_clients()

    def flush_clients(self) -> None:
        dirty = self._dirty
        if not dirty:
            return
        self._dirty = []
        t = time.perf_counter()
        for conn in dirty:
            conn.flush()
        self._write_cost += 0.2 * ((time.perf_counter() - t) / len(dirty) - self._write_cost)

    def demand_ready(self, channel: str, symbol: str) -> None:
        """Upstream subscribed a dynamically demanded pair (optional; first data counts too)."""
        self.hub.demand_ready(channel, symbol, self.loop.time())

    def demand_failed(self, channel: str, symbol: str, error: str) -> None:
        """Upstream refused a dynamically demanded pair: waiting clients get `error`."""
        self.hub.demand_failed(channel, symbol, error, self.loop.time())

    # -- callbacks from ClientConnection --------------------------------------------------
    @property
    def open_count(self) -> int:
        return len(self.open_clients)

    def handshake_started(self, conn: ClientConnection) -> bool:
        pending = len(self.connections) - len(self.open_clients)
        if pending >= 2 * self.config.max_clients + HANDSHAKE_BACKLOG:
            self.refusals["handshake_backlog"] += 1
            return False
        self.connections.add(conn)
        return True

    def client_opened(self, conn: ClientConnection) -> None:
        self.accepted += 1
        self.open_clients.add(conn)
        if conn.endpoint is None:
            self.hub.add_client(conn)
        else:
            conn.endpoint.opened(conn, self.loop.time())

    def client_detached(self, conn: ClientConnection) -> None:
        if conn in self.open_clients:
            self.open_clients.discard(conn)
            if conn.endpoint is None:
                self.hub.remove_client(conn, self.loop.time())
            else:
                conn.endpoint.closed(conn, self.loop.time())

    def connection_gone(self, conn: ClientConnection) -> None:
        self.connections.discard(conn)

    def refused(self, reason: str) -> None:
        self.refusals[reason] += 1

    # -- timers ---------------------------------------------------------------------------
    async def _tick_loop(self) -> None:
        interval = min(0.25, self.config.heartbeat_interval / 4)
        heartbeat_after = self.config.heartbeat_interval * 0.95
        while True:
            await asyncio.sleep(interval)
            try:
                self.tick(self.loop.time(), heartbeat_after)
            except Exception:  # a bug here must not stop heartbeats for everyone
                log.exception("server tick failed")

    def tick(self, now: float, heartbeat_after: float | None = None) -> None:
        hb = self.config.heartbeat_interval * 0.95 if heartbeat_after is None else heartbeat_after
        for conn in list(self.open_clients):
            conn.tick(now, hb, self.slow_client_timeout)
        self.hub.tick(now)
        for ep in self.endpoints.values():
            ep.tick(now)

    # -- observability --------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        clients = self.open_clients
        return {
            "clients": len(clients),
            "connections": len(self.connections),
            "accepted": self.accepted,
            "refused": dict(self.refusals),
            "subscriptions": self.hub.subscription_count(),
            "published": self.hub.published,
            "dispatch_errors": self.hub.dispatch_errors,
            "delivered": self.hub.delivered,
            "frames_out": self.frames_out,
            "bytes_out": self.bytes_out,
            "early_flushes": self.early_flushes,
            "buffered_bytes": sum(c.buffered() for c in clients),
            "max_client_buffered_bytes": max((c.buffered() for c in clients), default=0),
            "book_resets": self.book_resets,
            "slow_closes": self.slow_closes,
            "requests": self.requests_total,
            "error_replies": self.error_replies,
            "rate_limited": self.rate_limited,
            "dynamic_symbols": sorted(self.hub.demand.symbols()),
            "pending_subscriptions": len(self.hub.pending),
            "endpoints": {path: ep.stats() for path, ep in self.endpoints.items()},
        }
