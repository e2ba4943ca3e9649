"""`LocalServer`: the one local listener (`127.0.0.1:8765` by default), serving each protocol's
endpoint on its own path (Spot v2 `/v2`, Spot v1 `/`, Futures `/ws/v1`).

Thin asyncio layer: handshakes, limits, token, slow-client policy and coalesced writes live here
and in `client.ClientConnection`, identical for every path; what a message means is the
endpoint's (`relay.protocols.interfaces.Endpoint`, Sans-I/O). The daemon feeds each endpoint
its merge's publications through `publisher(endpoint)` right after every `merge.feed()/tick()`,
so the merge's state always matches what has been published when a late joiner's snapshot is
taken.

Shutdown (`stop()`) closes every client with 1001 ("going away"), as Kraken's proxy does on restart.

No lockouts: a full handshake table evicts the oldest handshake of the address holding the most
(`peers.Handshakes`), open connections are capped per address, failed token attempts are
limited per address (`peers.TokenFailures`), and the output held for all clients has a global
budget (`server.total_buffer_bytes`, see `enforce_budget`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections import Counter
from collections.abc import Callable, Iterable
from operator import itemgetter
from typing import Any

from relay.config import ServerConfig, split_host_port
from relay.core.outputs import Publication
from relay.core.wsframe import SharedFrames
from relay.protocols.interfaces import Endpoint
from relay.server.client import ClientConnection
from relay.server.peers import Handshakes, TokenFailures

log = logging.getLogger("relay.server")

Publish = Callable[[Iterable[Publication]], None]

HANDSHAKE_BACKLOG = 64  # extra sockets allowed mid-handshake (beyond 2 x max_clients) before aborting
PRESSURE_HANDSHAKE_TIMEOUT = 2.0  # s, for handshakes beyond an address's share while the table is half full
TRANSPORT_HIGH = 64 * 1024  # most a client's transport buffer holds; the backlog waits in its queue
MIN_TRANSPORT_HIGH = 4096
MIN_SQUEEZE = 4096  # lowest per-client budget under global pressure


class LocalServer:
    """Routes each websocket handshake to the endpoint serving its path."""

    def __init__(
        self,
        config: ServerConfig,
        endpoints: Iterable[Endpoint] = (),
        *,
        host: str | None = None,
        port: int | None = None,
        slow_client_timeout: float = 10.0,
        close_timeout: float = 2.0,
        handshake_timeout: float = 10.0,
        hard_message_bytes: int | None = None,
    ) -> None:
        """`host`/`port` override `config.listen` (tests bind port 0)."""
        self.config = config
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
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self._dirty: list[ClientConnection] = []  # clients with output queued, written by `flush_clients`
        self._dirty_since = 0.0
        self._write_cost = 0.0  # seconds per client write, smoothed (sets the early-flush wait)
        self.early_flushes = 0
        self._server: asyncio.Server | None = None
        self._ticker: asyncio.Task | None = None
        self.endpoints: dict[str, Endpoint] = {}  # path -> the protocol endpoint served there
        self.connections: set[ClientConnection] = set()  # every socket, handshaking or open
        self.open_clients: set[ClientConnection] = set()
        self.handshakes = Handshakes(2 * config.max_clients + HANDSHAKE_BACKLOG, config.pending_handshakes_per_peer)
        self.open_by_peer: Counter[str] = Counter()
        self.max_per_peer = config.max_connections_per_peer or config.max_clients
        self.token_failures = TokenFailures(config.token_max_failures, config.token_failure_window)
        # Global output budget. A transport's own buffer cannot be discarded (a close frame must
        # queue behind it), so it is kept small: all of them together hold at most 1/8 of the
        # budget; the rest of a backlog waits in the client's queue, where it can be dropped.
        self.total_budget = config.total_buffer_bytes
        self.transport_high = max(
            MIN_TRANSPORT_HIGH,
            min(TRANSPORT_HIGH, config.client_buffer_bytes // 4, self.total_budget // (8 * config.max_clients)),
        )
        self.held_bytes = 0  # queued output of clients whose transport is full (updated per flush)
        self._held_alarm = self.total_budget // 2
        self._budget_check: asyncio.Handle | None = None
        self.squeezed: set[ClientConnection] = set()
        self.budget_closes = 0
        # counters
        self.accepted = 0
        self.refusals: Counter[str] = Counter()
        self.slow_closes = 0
        self.slow_logged = 0  # slow_closes at the last log line
        self.slow_logged_at = -1e9
        self.book_resets = 0
        self.snapshots_paced = 0
        self.requests_total = 0
        self.error_replies = 0
        self.rate_limited = 0
        self.frames_out = 0
        self.bytes_out = 0
        for endpoint in endpoints:
            self.add_endpoint(endpoint)

    def add_endpoint(self, endpoint: Endpoint) -> Publish:
        """Serve a protocol on `endpoint.path` (before or after `start`); returns its publisher."""
        if endpoint.path in self.endpoints:
            raise ValueError(f"path {endpoint.path!r} is already served")
        self.endpoints[endpoint.path] = endpoint
        return self.publisher(endpoint)

    def endpoint(self, name: str) -> Endpoint:
        """The endpoint of protocol `name` (`v2`, `v1`, `futures`)."""
        for ep in self.endpoints.values():
            if ep.name == name:
                return ep
        raise KeyError(name)

    def url_for(self, path: str) -> str:
        scheme = "wss" if self.config.tls is not None else "ws"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}{path}"

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
        """The URL of the first endpoint served (the base URL when there is none)."""
        return self.url_for(next(iter(self.endpoints), ""))

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
    def publisher(self, endpoint: Endpoint) -> Publish:
        """`endpoint.publish` (fan merge publications out to its subscribers; call after every
        `merge.take()`), followed by the early-flush check."""
        publish = endpoint.publish

        def run(pubs: Iterable[Publication]) -> None:
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

    # -- callbacks from ClientConnection --------------------------------------------------
    @property
    def open_count(self) -> int:
        return len(self.open_clients)

    def handshake_started(self, conn: ClientConnection) -> float | None:
        """Admit a new socket: the seconds it has to complete its handshake, or None (refused)."""
        table = self.handshakes
        admitted, victim = table.admit(conn.peer_key, conn)
        if victim is not None:
            self.refusals["handshake_evicted"] += 1
            victim.evict()
        if not admitted:
            self.refusals["handshake_backlog"] += 1
            return None
        self.connections.add(conn)
        if table.under_pressure and table.held(conn.peer_key) > table.per_peer:
            return min(self.handshake_timeout, PRESSURE_HANDSHAKE_TIMEOUT)
        return self.handshake_timeout

    def handshake_done(self, conn: ClientConnection) -> None:
        self.handshakes.remove(conn.peer_key, conn)

    def peer_full(self, conn: ClientConnection) -> bool:
        return self.open_by_peer[conn.peer_key] >= self.max_per_peer

    def client_opened(self, conn: ClientConnection) -> None:
        self.accepted += 1
        self.open_clients.add(conn)
        self.open_by_peer[conn.peer_key] += 1
        if conn.endpoint is not None:
            conn.endpoint.opened(conn, self.loop.time())

    def client_detached(self, conn: ClientConnection) -> None:
        if conn in self.open_clients:
            self.open_clients.discard(conn)
            self.squeezed.discard(conn)
            key = conn.peer_key
            left = self.open_by_peer[key] - 1
            if left > 0:
                self.open_by_peer[key] = left
            else:
                del self.open_by_peer[key]
            if conn.endpoint is not None:
                conn.endpoint.closed(conn, self.loop.time())

    def connection_gone(self, conn: ClientConnection) -> None:
        self.connections.discard(conn)
        self.handshakes.remove(conn.peer_key, conn)

    def held_changed(self) -> None:
        """A client's held backlog grew past the alarm: check the global budget this pass."""
        if self.held_bytes > self._held_alarm and self._budget_check is None:
            self._budget_check = self.loop.call_soon(self._budget_alarm)

    def _budget_alarm(self) -> None:
        self._budget_check = None
        self.enforce_budget()

    def refused(self, reason: str) -> None:
        self.refusals[reason] += 1

    # -- timers ---------------------------------------------------------------------------
    async def _tick_loop(self) -> None:
        interval = min(0.25, self.config.heartbeat_interval / 4)
        while True:
            await asyncio.sleep(interval)
            try:
                self.tick(self.loop.time())
            except Exception:  # a bug here must not stop heartbeats for everyone
                log.exception("server tick failed")

    def tick(self, now: float) -> None:
        """Slow-client deadlines, the global output budget, then each endpoint's timers
        (heartbeats, pending requests)."""
        for conn in list(self.open_clients):
            conn.tick(now, self.slow_client_timeout)
        self.enforce_budget()
        self.token_failures.prune(now)
        for ep in self.endpoints.values():
            ep.tick(now)

    def enforce_budget(self) -> int:
        """Keep the output held for all clients within `total_buffer_bytes`; returns that total.

        Over half the budget, the largest buffers get a lower per-client budget (a water level:
        together they would hold half the budget), so they are treated as slow ones are: book
        frames dropped and replaced by a snapshot once drained, closed with 1008 at twice that
        budget or after `slow_client_timeout`. Over the whole budget, the largest are closed
        with 1008 until three quarters are left. Under half, a drained client gets its budget
        back; under a quarter, every client does.
        Queued frames are shared between clients but counted as if each held its own copy.
        """
        budget = self.total_budget
        sizes = [(c.buffered(), c) for c in self.open_clients]
        total = sum(b for b, _ in sizes)
        self.held_bytes = sum(c.held for _, c in sizes)
        self._held_alarm = max(budget // 2, self.held_bytes + budget // 16)
        if total <= budget // 2:
            if self.squeezed:  # restored once drained (all of them below a quarter of the budget)
                calm = total <= budget // 4
                for conn in [c for c in self.squeezed if calm or not c.buffered()]:
                    conn.squeeze(None)
                    self.squeezed.discard(conn)
            return total
        sizes.sort(key=itemgetter(0), reverse=True)
        level = max(MIN_SQUEEZE, water_level([b for b, _ in sizes], budget // 2))
        for b, conn in sizes:
            if b <= level:
                break
            if conn.limit > level:
                self.squeezed.add(conn)  # before: squeezing may close it, which removes it again
                conn.squeeze(level)
        for b, conn in sizes:
            if total <= budget * 3 // 4:
                break
            if not conn.closing:  # (squeezing may have closed it already)
                self.budget_closes += 1
                conn.close_slow()
            total -= b
        return total

    # -- observability --------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        clients = self.open_clients
        endpoints = {path: ep.stats() for path, ep in self.endpoints.items()}
        return {
            "clients": len(clients),
            "connections": len(self.connections),
            "accepted": self.accepted,
            "refused": dict(self.refusals),
            "subscriptions": sum(int(e.get("subscriptions", 0)) for e in endpoints.values()),
            "frames_out": self.frames_out,
            "bytes_out": self.bytes_out,
            "early_flushes": self.early_flushes,
            "buffered_bytes": sum(c.buffered() for c in clients),
            "max_client_buffered_bytes": max((c.buffered() for c in clients), default=0),
            "squeezed_clients": len(self.squeezed),
            "budget_closes": self.budget_closes,
            "book_resets": self.book_resets,
            "snapshots_paced": self.snapshots_paced,
            "slow_closes": self.slow_closes,
            "requests": self.requests_total,
            "error_replies": self.error_replies,
            "rate_limited": self.rate_limited,
            "endpoints": endpoints,
        }


def water_level(sizes: list[int], target: int) -> int:
    """The cap C at which sum(min(s, C) for s in sizes) == target (`sizes` largest first, their
    sum above `target`)."""
    rest = sum(sizes)
    for k, size in enumerate(sizes):
        rest -= size
        level = (target - rest) // (k + 1)
        following = sizes[k + 1] if k + 1 < len(sizes) else 0
        if level >= following:
            return max(level, 0)
    return 0
