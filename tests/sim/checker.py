"""A strict v2 test client: keeps a book per symbol, verifies every checksum, tracks trade_ids."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections import Counter
from typing import Any

import orjson
import websockets

from relay.core.book import Book
from tests.kit.books import V2BookVerifier


class Checker:
    """Every v2 frame of a connection: books verified by `tests.kit.books.V2BookVerifier`,
    trade ids per symbol, counts per channel, and every non-data frame kept (parsed)."""

    def __init__(self, depth: int = 10) -> None:
        self.depth = depth
        self.verifier = V2BookVerifier(depth, require_snapshot=False)
        self.trade_ids: dict[str, list[int]] = {}
        self.channels: Counter[str] = Counter()
        self.messages: list[dict[str, Any]] = []

    @property
    def books(self) -> dict[str, Book]:
        return self.verifier.books

    @property
    def book_frames(self) -> int:
        return self.verifier.frames

    @property
    def bad(self) -> int:
        return self.verifier.bad

    def feed(self, raw: bytes) -> dict[str, Any]:
        msg = orjson.loads(raw)
        ch = msg.get("channel")
        self.channels[ch or msg.get("method")] += 1
        if ch == "book":
            self.verifier.feed(raw)
        elif ch == "trade":
            for t in msg["data"]:
                self.trade_ids.setdefault(t["symbol"], []).append(t["trade_id"])
        elif ch not in ("ticker", "ohlc", "instrument"):
            self.messages.append(msg)
        return msg


async def subscribe(ws, channel: str, symbols: list[str] | None = None, req_id: int = 1, **params: Any) -> None:
    p: dict[str, Any] = {"channel": channel}
    if symbols is not None:
        p["symbol"] = symbols
    p.update(params)
    await ws.send(orjson.dumps({"method": "subscribe", "params": p, "req_id": req_id}).decode())


async def collect(ws, checker: Checker, until, timeout: float) -> None:
    """Feed frames into `checker` until `until(checker)` is true or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while not until(checker):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timeout: {checker.book_frames} book frames, {dict(checker.channels)}")
        raw = await asyncio.wait_for(ws.recv(decode=False), left)
        checker.feed(raw)


async def recv_json(ws, timeout: float = 5.0) -> dict[str, Any]:
    return orjson.loads(await asyncio.wait_for(ws.recv(decode=False), timeout))


async def wait_for(ws, pred, timeout: float = 5.0) -> dict[str, Any]:
    """Next frame matching `pred` (others are skipped)."""
    deadline = time.monotonic() + timeout
    while True:
        msg = await recv_json(ws, max(0.01, deadline - time.monotonic()))
        if pred(msg):
            return msg


def connect(url: str, **kw: Any):
    return websockets.connect(url, compression=None, max_size=1 << 24, open_timeout=5, close_timeout=1, **kw)


def http_json(url: str, body: dict | None = None) -> tuple[int, dict]:
    """GET (no body) or POST `body` as JSON; (status, parsed JSON answer), errors included."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
