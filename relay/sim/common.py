"""Pieces shared by the Spot and Futures simulators: line settings and servers, line selection,
JSON answers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, TypeVar

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

CLOSE_REASONS = {1001: "CloudFlare WebSocket proxy restarting", 1013: "Market data unavailable"}

T = TypeVar("T")


@dataclass
class LineConfig:
    """One redundant line: its own port, added latency and jitter (seconds)."""

    latency: float = 0.0
    jitter: float = 0.0
    port: int = 0
    name: str | None = None


async def serve_line(
    handler: Callable[[ServerConnection], Awaitable[None]],
    host: str,
    port: int,
    process_request: Callable[[ServerConnection, Request], Response | None],
) -> Server:
    """One simulated line's websocket server, with the settings every simulator uses: no
    compression and no server pings (as Kraken), 1 MiB messages, bounded queues."""
    return await serve(
        handler,
        host,
        port,
        process_request=process_request,
        compression=None,
        ping_interval=None,
        max_size=1 << 20,
        max_queue=64,
        close_timeout=2,
    )


def select_lines(lines: Sequence[T], line: int | str | None) -> list[T]:
    """The lines a fault targets: an index, or None / -1 / "all" for every line."""
    if line is None or line == "all" or line == -1:
        return list(lines)
    if not isinstance(line, int) or not 0 <= line < len(lines):
        raise ValueError(f"no line {line!r} (have {len(lines)})")
    return [lines[line]]


def json_response(body: Any, status: int = 200) -> Response:
    """A websockets `process_request` answer carrying `body` as JSON."""
    data = orjson.dumps(body)
    headers = Headers(
        [
            ("Content-Type", "application/json; charset=utf-8"),
            ("Content-Length", str(len(data))),
            ("Connection", "close"),
        ]
    )
    return Response(status, HTTPStatus(status).phrase, headers, data)
