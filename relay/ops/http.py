"""Operator HTTP endpoint: /metrics, /healthz, /readyz, served by `aiohttp.web`.

aiohttp does the HTTP/1.1 work (parsing, keep-alive, HEAD, limits); this module is routing and
the three bodies. The server runs on the relay's own event loop (`AppRunner` + `TCPSite`), so
`/healthz` answers only if that loop is alive. Everything is bounded: request line and header
sizes (`max_request_bytes`), request bodies (`client_max_size`), time to send a request and time
a connection may sit idle (`request_timeout`), and time to hand a response to the client. There
are no connection slots: idle connections are timed out, never able to lock out a probe.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from http import HTTPStatus
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from relay.ops.loopmon import LoopLagMonitor

log = logging.getLogger(__name__)
# aiohttp logs every malformed request (a port scanner's) as an ERROR with a traceback; the
# client already got its 400, so that log would only be unbounded noise.
logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)

ReadyFn = Callable[[], "tuple[bool, Mapping[str, Any]]"]

INDEX = b"kraken-relay\n/metrics  Prometheus metrics\n/healthz  process and event loop alive\n/readyz   every symbol has fresh valid data\n"

TEXT = "text/plain; charset=utf-8"


class HttpServer:
    """`server = HttpServer(host, port, registry, ready, loop_monitor); await server.start()`.

    `ready()` returns `(ok, detail)`; `detail` (per-symbol states) becomes the /readyz JSON body.
    `/healthz` is 503 when `loop_monitor` reports a lag over `lag_threshold` seconds; its body
    also carries `health_detail()` (the NATS publisher's state), which never changes the status.
    Port 0 binds a free port; read it back from `server.port`.

    `request_timeout` bounds the time to send a request, the keep-alive idle time and the time
    to take a response; `max_request_bytes` bounds the request line, each header and the body.
    There are no connection slots to exhaust: aiohttp closes a connection that sends nothing,
    or stays idle between requests, after `request_timeout` (its keep-alive timeout).
    """

    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        ready: ReadyFn | None = None,
        loop_monitor: LoopLagMonitor | None = None,
        *,
        health_detail: Callable[[], dict[str, Any]] | None = None,
        lag_threshold: float | None = None,
        request_timeout: float = 5.0,
        max_request_bytes: int = 8192,
        metrics_cache_seconds: float = 0.5,
    ) -> None:
        self.host = host
        self._port = port
        self.registry = registry
        self.ready = ready
        self.loop_monitor = loop_monitor
        self.health_detail = health_detail  # best-effort parts (NATS): shown, never the status
        self.lag_threshold = lag_threshold
        self.request_timeout = request_timeout
        self.max_request_bytes = max_request_bytes
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self.metrics_cache_seconds = metrics_cache_seconds
        self._metrics_lock = asyncio.Lock()
        self._metrics_cache: tuple[float, str, bytes] = (float("-inf"), "", b"")
        self.requests = 0

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        app = web.Application(client_max_size=self.max_request_bytes)
        app.router.add_route("*", "/{path:.*}", self._handle)
        runner = web.AppRunner(
            app,
            handle_signals=False,  # the relay owns SIGTERM/SIGINT
            access_log=None,
            keepalive_timeout=self.request_timeout,
            max_line_size=self.max_request_bytes,
            max_field_size=self.max_request_bytes,
            lingering_time=self.request_timeout,
            shutdown_timeout=1.0,
        )
        await runner.setup()
        site = web.TCPSite(runner, self.host, self._port, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner, self._site = runner, site
        log.info("http listening on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        runner, self._runner, self._site = self._runner, None, None
        if runner is not None:
            await runner.cleanup()

    @property
    def port(self) -> int:
        """The bound port (useful after binding port 0)."""
        addresses = self._runner.addresses if self._runner is not None else []
        return int(addresses[0][1]) if addresses else self._port

    # -- request handling --------------------------------------------------------------------

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        self.requests += 1
        extra: dict[str, str] = {}
        if request.method not in ("GET", "HEAD"):
            status, ctype, body = HTTPStatus.METHOD_NOT_ALLOWED, TEXT, b"only GET and HEAD\n"
            extra["Allow"] = "GET, HEAD"
        elif request.path == "/metrics":
            status, (ctype, body) = HTTPStatus.OK, await self.metrics_body(request.headers.get("Accept", ""))
        else:
            status, ctype, body = self.route(request.path, request.headers)
        resp = web.Response(
            status=status.value,
            body=body,
            headers={"Content-Type": ctype, "Cache-Control": "no-store", "Server": "kraken-relay", **extra},
        )
        try:  # the write is bounded too: a client that never reads must not hold the handler
            async with asyncio.timeout(self.request_timeout):
                await resp.prepare(request)
                await resp.write_eof()
        except TimeoutError:
            log.info("http client did not read the response within %.1fs; closing", self.request_timeout)
            if request.transport is not None:
                request.transport.abort()
        return resp

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
        if self.health_detail is not None:
            try:
                body.update(self.health_detail())
            except Exception:  # a report, never a reason to fail the probe
                log.exception("health detail failed")
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
