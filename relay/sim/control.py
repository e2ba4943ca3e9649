"""A tiny HTTP control endpoint for the simulator (asyncio streams, no framework).

`GET /state` -> JSON state; `GET /faults` -> fault kinds; `POST /fault {"line":0,"kind":"stall",
"duration":3, ...params}`; `POST /clear {"line":0,"kind":"stall"}` (kind optional). Requests are
bounded (64 KiB headers+body, 10 s to arrive); one request per connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, Protocol

import orjson

from relay.sim.faults import FAULT_KINDS

MAX_REQUEST = 64 * 1024


class Controllable(Protocol):
    """What the endpoint drives: the Spot `Simulator` and the `FuturesSimulator` both are."""

    def state(self) -> dict[str, Any]: ...

    def inject(self, line: int | str | None, kind: str, duration: float | None = None, **params: Any) -> None: ...

    def clear(self, line: int | str | None, kind: str | None = None) -> None: ...


class ControlServer:
    """The control endpoint of one simulator; `kinds`: its fault kinds (answered by `GET /faults`)."""

    def __init__(self, sim: Controllable, kinds: Mapping[str, str] = FAULT_KINDS) -> None:
        self.sim = sim
        self.kinds = dict(kinds)
        self.server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        self.server = await asyncio.start_server(self._client, host, port, limit=MAX_REQUEST)
        return self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            try:
                await asyncio.wait_for(self.server.wait_closed(), 2)
            except (TimeoutError, Exception):
                pass

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, body = await asyncio.wait_for(self._request(reader), 10)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            status, body = 400, {"error": "bad request"}
        data = orjson.dumps(body)
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found"}.get(status, "OK")
        writer.write(
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
            + data
        )
        try:
            await writer.drain()
            writer.close()
        except Exception:
            pass

    async def _request(self, reader: asyncio.StreamReader) -> tuple[int, Any]:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        length = 0
        for ln in lines[1:]:
            k, _, v = ln.partition(":")
            if k.strip().lower() == "content-length":
                length = int(v.strip())
        if length > MAX_REQUEST:
            return 400, {"error": "body too large"}
        raw = await reader.readexactly(length) if length else b""
        path = path.split("?", 1)[0]
        if method == "GET" and path == "/state":
            return 200, self.sim.state()
        if method == "GET" and path == "/faults":
            return 200, self.kinds
        if method == "POST" and path in ("/fault", "/clear"):
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
        return 404, {"error": f"no route {method} {path}"}
