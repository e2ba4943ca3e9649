"""Operator HTTP endpoint: /metrics, /healthz, /readyz on a tiny asyncio HTTP/1.1 server.

Hand-written on purpose: three GET routes do not justify a web framework in the daemon, and
running it on the relay's own event loop means `/healthz` answers only if that loop is alive.
Everything is bounded: request head size, time to send it, concurrent connections. Every
response closes the connection (Prometheus and probes cope; no keep-alive state to bound).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from http import HTTPStatus
from typing import Any

import orjson
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from relay.ops.loopmon import LoopLagMonitor

log = logging.getLogger(__name__)

ReadyFn = Callable[[], "tuple[bool, Mapping[str, Any]]"]

INDEX = b"kraken-relay\n/metrics  Prometheus metrics\n/healthz  process and event loop alive\n/readyz   every symbol has fresh valid data\n"


class HttpServer:
    """`server = HttpServer(host, port, registry, ready, loop_monitor); await server.start()`.

    `ready()` returns `(ok, detail)`; `detail` (per-symbol states) becomes the /readyz JSON body.
    `/healthz` is 503 when `loop_monitor` reports a lag over `lag_threshold` seconds.
    Port 0 binds a free port; read it back from `server.port`.
    """

    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        ready: ReadyFn | None = None,
        loop_monitor: LoopLagMonitor | None = None,
        *,
        lag_threshold: float | None = None,
        max_connections: int = 64,
        request_timeout: float = 5.0,
        max_request_bytes: int = 8192,
        metrics_cache_seconds: float = 0.5,
    ) -> None:
        self.host = host
        self._port = port
        self.registry = registry
        self.ready = ready
        self.loop_monitor = loop_monitor
        self.lag_threshold = lag_threshold
        self.max_connections = max_connections
        self.request_timeout = request_timeout
        self.max_request_bytes = max_request_bytes
        self._server: asyncio.Server | None = None
        self._active: set[asyncio.Task[None]] = set()
        self.metrics_cache_seconds = metrics_cache_seconds
        self._metrics_lock = asyncio.Lock()
        self._metrics_cache: tuple[float, str, bytes] = (float("-inf"), "", b"")
        self.requests = 0
        self.refused = 0

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._on_connection, self.host, self._port, limit=self.max_request_bytes, reuse_address=True
        )
        log.info("http listening on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for task in list(self._active):
            task.cancel()
        if self._active:
            await asyncio.gather(*self._active, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 1.0)
        self._server = None

    @property
    def port(self) -> int:
        """The bound port (useful after binding port 0)."""
        if self._server is None or not self._server.sockets:
            return self._port
        return int(self._server.sockets[0].getsockname()[1])

    # -- connection handling -----------------------------------------------------------------
    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if len(self._active) >= self.max_connections or task is None:
            self.refused += 1
            writer.close()
            return
        self._active.add(task)
        try:
            await self._serve_one(reader, writer)
        except (ConnectionError, asyncio.CancelledError):
            pass
        except Exception:  # one bad request must not take the endpoint down
            log.exception("http handler failed")
        finally:
            self._active.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(self.request_timeout):
                head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.LimitOverrunError, ValueError):
            await self._send(writer, HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, b"request head too large\n")
            return
        except (asyncio.IncompleteReadError, TimeoutError):
            return
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            await self._send(writer, HTTPStatus.BAD_REQUEST, b"bad request line\n")
            return
        method, target, _ = parts
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        self.requests += 1
        if method not in ("GET", "HEAD"):
            await self._send(
                writer, HTTPStatus.METHOD_NOT_ALLOWED, b"only GET and HEAD\n", extra=(("Allow", "GET, HEAD"),)
            )
            return
        path = target.split("?", 1)[0]
        if path == "/metrics":
            status, ctype, body = HTTPStatus.OK, *await self.metrics_body(headers.get("accept", ""))
        else:
            status, ctype, body = self.route(path, headers)
        await self._send(writer, status, body, ctype, head_only=method == "HEAD")

    async def metrics_body(self, accept: str) -> tuple[str, bytes]:
        """(content type, exposition) with the event loop blocked as little as possible.

        Collecting reads live relay state, so it runs on the loop (a consistent snapshot, ~3 ms
        for 100 symbols); turning ~3,500 samples into text costs ~11 ms more and runs in a
        worker thread. One encoding at a time; scrapes arriving within `metrics_cache_seconds`
        of the last one (an HA Prometheus pair) share its result.
        """
        encoder, ctype = choose_encoder(accept)
        now = time.monotonic()
        async with self._metrics_lock:
            cached_at, cached_type, cached_body = self._metrics_cache
            if cached_type == ctype and now - cached_at < self.metrics_cache_seconds:
                return ctype, cached_body
            families = _Collected(list(self.registry.collect()))
            body = await asyncio.to_thread(encoder, families)
            self._metrics_cache = (time.monotonic(), ctype, body)  # one slot: the Accept header is client-chosen
            return ctype, body

    def route(self, path: str, headers: Mapping[str, str]) -> tuple[HTTPStatus, str, bytes]:
        """Pure routing: (status, content type, body) for a GET of `path`."""
        if path == "/metrics":  # synchronous variant (tests, tools); the server uses metrics_body()
            encoder, ctype = choose_encoder(headers.get("accept", ""))
            return HTTPStatus.OK, ctype, encoder(self.registry)
        if path == "/healthz":
            return self._healthz()
        if path == "/readyz":
            return self._readyz()
        if path == "/":
            return HTTPStatus.OK, "text/plain; charset=utf-8", INDEX
        return HTTPStatus.NOT_FOUND, "text/plain; charset=utf-8", b"not found\n"

    def _healthz(self) -> tuple[HTTPStatus, str, bytes]:
        body: dict[str, Any] = {"status": "ok"}
        ok = True
        mon = self.loop_monitor
        if mon is not None:
            threshold = mon.threshold if self.lag_threshold is None else self.lag_threshold
            lag = mon.lag()
            ok = mon.running and lag <= threshold
            body.update(event_loop_lag_seconds=round(lag, 6), threshold_seconds=threshold, monitor_running=mon.running)
            if not ok:
                body["status"] = "event loop lagging" if mon.running else "loop monitor not running"
        return (HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE), "application/json", orjson.dumps(body)

    def _readyz(self) -> tuple[HTTPStatus, str, bytes]:
        if self.ready is None:
            return HTTPStatus.SERVICE_UNAVAILABLE, "application/json", b'{"ready":false,"reason":"not wired"}'
        try:
            ok, detail = self.ready()
            body = orjson.dumps({"ready": bool(ok), "symbols": detail}, default=str)
        except Exception as exc:
            log.exception("readiness check failed")
            ok, body = False, orjson.dumps({"ready": False, "reason": f"readiness check failed: {exc}"})
        return (HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE), "application/json", body

    @staticmethod
    async def _send(
        writer: asyncio.StreamWriter,
        status: HTTPStatus,
        body: bytes,
        ctype: str = "text/plain; charset=utf-8",
        *,
        head_only: bool = False,
        extra: tuple[tuple[str, str], ...] = (),
    ) -> None:
        head = [
            f"HTTP/1.1 {status.value} {status.phrase}",
            f"Content-Type: {ctype}",
            f"Content-Length: {len(body)}",
            "Cache-Control: no-store",
            "Connection: close",
        ]
        head += [f"{k}: {v}" for k, v in extra]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        if not head_only:
            writer.write(body)
        await writer.drain()


class _Collected:
    """Already-collected metric families, shaped like a registry for the exposition encoders."""

    def __init__(self, families: list[Any]) -> None:
        self._families = families

    def collect(self) -> Iterator[Any]:
        return iter(self._families)


def readiness(symbols: list[str], symbol_state: Callable[[str], Mapping[str, Any]]) -> tuple[bool, dict[str, Any]]:
    """Ready when every configured symbol has fresh valid data from at least one upstream.

    `symbol_state` is `merge.symbol_state`; a symbol counts as ready when any of its upstreams
    is "valid" (the published feed may still say "resyncing" for a moment after a line recovers).
    """
    detail: dict[str, Any] = {}
    ok = True
    for sym in symbols:
        try:
            st = dict(symbol_state(sym))
        except Exception as exc:  # an unknown symbol is simply not ready
            st = {"book": "down", "error": str(exc)}
        lines = st.get("upstreams") or {}
        sym_ok = any(v == "valid" for v in lines.values())
        st["ready"] = sym_ok
        detail[sym] = st
        ok = ok and sym_ok
    return ok and bool(symbols), detail
