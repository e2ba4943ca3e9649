"""The simulator's HTTP control endpoint, served by `aiohttp.web`.

`GET /state` -> JSON state; `GET /faults` -> fault kinds; `POST /fault {"line":0,"kind":"stall",
"duration":3, ...params}`; `POST /clear {"line":0,"kind":"stall"}` (kind optional). Every answer
is JSON; anything else is a 404 `{"error": "no route METHOD PATH"}`.

aiohttp does the HTTP/1.1 work (parsing, keep-alive, limits); this module is routing and bodies.
The server runs on the simulator's own event loop (`AppRunner` + `TCPSite`). Requests are bounded:
request line and each header 8 KiB (aiohttp's defaults), the body 64 KiB (`client_max_size`), and
10 s to send the request head, to send the body and to sit idle between requests.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any, Protocol

import orjson
from aiohttp import web

from relay.sim.faults import FAULT_KINDS

# aiohttp logs every malformed request as an ERROR with a traceback; the client already got its
# 400, so that log would only be noise (as for the relay's operator endpoint).
logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)

MAX_REQUEST = 64 * 1024  # largest request body accepted
REQUEST_TIMEOUT = 10.0  # seconds to send the request head, the body, or to idle between requests


class Controllable(Protocol):
    """What the endpoint drives: the Spot `Simulator` and the `FuturesSimulator` both are."""

    def state(self) -> dict[str, Any]: ...

    def inject(self, line: int | str | None, kind: str, duration: float | None = None, **params: Any) -> None: ...

    def clear(self, line: int | str | None, kind: str | None = None) -> None: ...


class ControlServer:
    """The control endpoint of one simulator; `kinds`: its fault kinds (answered by `GET /faults`).

    `port = await server.start(host, port)`; port 0 binds a free port (also `server.port`).
    """

    def __init__(self, sim: Controllable, kinds: Mapping[str, str] = FAULT_KINDS) -> None:
        self.sim = sim
        self.kinds = dict(kinds)
        self._runner: web.AppRunner | None = None
        self._port = 0

    async def start(self, host: str, port: int) -> int:
        app = web.Application(client_max_size=MAX_REQUEST)  # read() refuses longer bodies
        app.router.add_route("*", "/{path:.*}", self._handle)
        runner = web.AppRunner(
            app,
            handle_signals=False,  # the simulator's owner handles SIGTERM/SIGINT
            access_log=None,
            keepalive_timeout=REQUEST_TIMEOUT,
            lingering_time=REQUEST_TIMEOUT,
            shutdown_timeout=1.0,
        )
        await runner.setup()
        site = web.TCPSite(runner, host, port, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = int(runner.addresses[0][1]) if runner.addresses else port
        return self._port

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            try:
                await runner.cleanup()
            except Exception:
                pass

    @property
    def port(self) -> int:
        """The bound port (useful after binding port 0)."""
        return self._port

    async def _handle(self, request: web.Request) -> web.Response:
        status, body = await self._route(request)
        return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")

    async def _route(self, request: web.Request) -> tuple[int, Any]:
        method, path = request.method, request.rel_url.raw_path
        if method == "GET" and path == "/state":
            return 200, self.sim.state()
        if method == "GET" and path == "/faults":
            return 200, self.kinds
        if method != "POST" or path not in ("/fault", "/clear"):
            return 404, {"error": f"no route {method} {path}"}
        if (request.content_length or 0) > MAX_REQUEST:
            return 400, {"error": "body too large"}
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return 400, {"error": "body too large"}
        except (TimeoutError, ValueError):
            return 400, {"error": "bad request"}
        try:
            req = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            return 400, {"error": "body is not JSON"}
        if not isinstance(req, dict):
            return 400, {"error": "body must be an object"}
        line = req.pop("line", 0)
        kind = req.pop("kind", None)
        try:
            if path == "/fault":
                if not isinstance(kind, str):
                    return 400, {"error": "kind is required"}
                duration = req.pop("duration", None)
                self.sim.inject(line, kind, None if duration is None else float(duration), **req)
            else:
                self.sim.clear(line, kind)
        except (ValueError, TypeError) as exc:
            return 400, {"error": str(exc)}
        return 200, {"ok": True, "state": self.sim.state()}
