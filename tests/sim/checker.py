"""A strict v2 test client: keeps a book per (symbol, depth), verifies every checksum, tracks trade_ids."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson
import websockets

from relay.core.book import Book
from relay.core.events import BookEvent
from relay.protocols.spot_v2.wire import V2Parser


@dataclass
class Checker:
    depth: int = 10
    books: dict[str, Book] = field(default_factory=dict)
    parser: V2Parser = field(default_factory=V2Parser)
    book_frames: int = 0
    bad: int = 0
    trade_ids: dict[str, list[int]] = field(default_factory=dict)
    channels: Counter = field(default_factory=Counter)
    messages: list[dict[str, Any]] = field(default_factory=list)  # every non-data frame, parsed

    def feed(self, raw: bytes) -> dict[str, Any]:
        msg = orjson.loads(raw)
        ch = msg.get("channel")
        self.channels[ch or msg.get("method")] += 1
        if ch == "book":
            ev = self.parser.parse(raw)
            assert isinstance(ev, BookEvent)
            book = self.books.get(ev.symbol)
            if ev.snapshot or book is None:
                book = self.books[ev.symbol] = Book(ev.symbol, self.depth)
                got = book.load_snapshot(ev.bids, ev.asks, ev.timestamp)
            else:
                got = book.apply(ev.bids, ev.asks, ev.timestamp, None)
            self.book_frames += 1
            if got != ev.checksum:
                self.bad += 1
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
