"""A tiny Kraken v2 stand-in for the upstream tests: one shared market, one server per line.

Each line is a websockets server on 127.0.0.1 (or another loopback address) with port 0. The
shared `Market` ticks every `interval` seconds: one book update and one trade per symbol, sent
byte-identically to every subscribed connection of every line (like Kraken's redundant sockets).
Per-line knobs: reject symbols, refuse handshakes with an HTTP status, stall, report a status,
corrupt one symbol's checksums, close connections with a code.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import orjson
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Response

from relay.core.book import Book, Level
from relay.protocols.spot_v2.wire import encode_book, encode_status, now_rfc3339

_PENDING: set[asyncio.Future[None]] = set()


class Market:
    def __init__(self, symbols: list[str], interval: float = 0.02, seed: int = 1) -> None:
        self.symbols = symbols
        self.interval = interval
        self.rng = random.Random(seed)
        self.books: dict[str, Book] = {}
        self.trade_ids: dict[str, int] = {s: 0 for s in symbols}
        self.lines: list[FakeLine] = []
        self._task: asyncio.Task | None = None
        for i, s in enumerate(symbols):
            b = Book(s, 1000)
            base = 100.0 * (i + 1)
            b.load_snapshot(
                [self._lvl(base - 0.1 * (k + 1), 1 + k) for k in range(12)],
                [self._lvl(base + 0.1 * k, 1 + k) for k in range(12)],
                now_rfc3339(),
            )
            self.books[s] = b

    @staticmethod
    def _lvl(price: float, qty: float) -> Level:
        p = f"{price:.1f}".encode()
        return Level(float(p), p, f"{qty:.8f}".encode())

    def snapshot_frame(self, symbol: str, depth: int) -> bytes:
        b = self.books[symbol]
        bids = [(p, q) for p, q, _ in b.bids.best(depth)]
        asks = [(p, q) for p, q, _ in b.asks.best(depth)]
        return encode_book(symbol, True, bids, asks, b.checksum, b.timestamp)

    def step(self) -> None:
        for s in self.symbols:
            b = self.books[s]
            side_is_bid = self.rng.random() < 0.5
            side = b.bids if side_is_bid else b.asks
            price_text = side.best(10)[self.rng.randrange(min(10, len(side)))][0]
            lvl = Level(float(price_text), price_text, f"{self.rng.uniform(0.1, 9):.8f}".encode())
            ts = now_rfc3339()
            crc = b.apply([lvl] if side_is_bid else [], [] if side_is_bid else [lvl], ts, None)
            pair = [(lvl.price_text, lvl.qty_text)]
            frame = encode_book(s, False, pair if side_is_bid else [], [] if side_is_bid else pair, crc, ts)
            self.trade_ids[s] += 1
            trade = orjson.dumps(
                {
                    "channel": "trade",
                    "type": "update",
                    "data": [
                        {
                            "symbol": s,
                            "side": "buy",
                            "price": 1.5,
                            "qty": 0.25,
                            "ord_type": "limit",
                            "trade_id": self.trade_ids[s],
                            "timestamp": ts,
                        }
                    ],
                }
            )
            for line in self.lines:
                line.broadcast(s, frame, trade, crc)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.step()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


class _Conn:
    def __init__(self, ws: ServerConnection) -> None:
        self.ws = ws
        self.book: dict[str, int] = {}  # symbol -> depth
        self.trade: set[str] = set()


class FakeLine:
    def __init__(self, market: Market, host: str = "127.0.0.1", heartbeat: float = 0.2) -> None:
        self.market = market
        self.host = host
        self.heartbeat = heartbeat
        self.requests: list[dict[str, Any]] = []  # every client message except pings
        self.pings = 0
        self.connection_log: list[tuple[float, str, str]] = []  # (time, peer ip, outcome)
        self.reject: dict[str, int] = {}  # symbol -> how many more subscribes to reject
        self.http_status: int | None = None  # refuse handshakes with this HTTP status
        self.status = "online"
        self.stall = False  # send nothing at all (not even heartbeats)
        self.status_on_connect = True
        self.corrupt: set[str] = set()  # symbols whose book checksums are wrong on this line
        self.silent: set[str] = set()  # symbols whose data stops on this line (heartbeats go on)
        self.conns: set[_Conn] = set()
        self.server: Any = None
        market.lines.append(self)

    @property
    def url(self) -> str:
        port = self.server.sockets[0].getsockname()[1]
        return f"ws://{self.host}:{port}/v2"

    async def start(self) -> None:
        self.server = await serve(self._handler, self.host, 0, process_request=self._process_request, compression=None)

    async def stop(self) -> None:
        self.server.close()
        await self.server.wait_closed()

    def _process_request(self, conn: ServerConnection, request: Any) -> Response | None:
        peer = conn.remote_address[0]
        if self.http_status is not None:
            self.connection_log.append((time.monotonic(), peer, f"http {self.http_status}"))
            return Response(self.http_status, "Refused", Headers([("Content-Length", "0")]), b"")
        self.connection_log.append((time.monotonic(), peer, "accepted"))
        return None

    def subscribed(self, kind: str, symbol: str | None = None) -> list[dict[str, Any]]:
        """Subscribe-type requests of this kind (method), optionally naming `symbol`."""
        return [
            r
            for r in self.requests
            if r.get("method") == kind and (symbol is None or symbol in r.get("params", {}).get("symbol", []))
        ]

    async def close_all(self, code: int = 1001, reason: str = "CloudFlare WebSocket proxy restarting") -> None:
        await asyncio.gather(*(c.ws.close(code, reason) for c in list(self.conns)), return_exceptions=True)

    def set_status(self, system: str) -> None:
        self.status = system
        frame = encode_status(system, "2.0.0", 1)
        for c in list(self.conns):
            self._send(c, frame)

    def _send(self, c: _Conn, frame: bytes) -> None:
        if self.stall:
            return
        task = asyncio.ensure_future(c.ws.send(frame, text=True))
        _PENDING.add(task)  # referenced until done (the loop keeps only weak references)
        task.add_done_callback(_PENDING.discard)

    def broadcast(self, symbol: str, book_frame: bytes, trade_frame: bytes, crc: int) -> None:
        if symbol in self.silent or self.status == "maintenance":
            return
        if symbol in self.corrupt:
            book_frame = book_frame.replace(f'"checksum":{crc}'.encode(), f'"checksum":{(crc + 1) % 2**32}'.encode())
        for c in list(self.conns):
            if symbol in c.book:
                self._send(c, book_frame)
            if symbol in c.trade:
                self._send(c, trade_frame)

    async def _heartbeats(self, c: _Conn) -> None:
        while True:
            await asyncio.sleep(self.heartbeat)
            if c.book or c.trade:
                self._send(c, b'{"channel":"heartbeat"}')

    async def _handler(self, ws: ServerConnection) -> None:
        c = _Conn(ws)
        self.conns.add(c)
        hb = asyncio.create_task(self._heartbeats(c))
        try:
            if self.status_on_connect:
                self._send(c, encode_status(self.status, "2.0.0", 1))
            async for msg in ws:
                req = orjson.loads(msg)
                if req.get("method") == "ping":
                    self.pings += 1
                    self._send(c, orjson.dumps({"method": "pong", "req_id": req.get("req_id")}))
                    continue
                self.requests.append(req)
                self._request(c, req)
        except Exception:
            pass
        finally:
            hb.cancel()
            self.conns.discard(c)

    def _request(self, c: _Conn, req: dict[str, Any]) -> None:
        method = req.get("method")
        params = req.get("params") or {}
        channel = params.get("channel")
        rid = req.get("req_id")
        t = now_rfc3339()
        if channel == "instrument":
            self._send(
                c,
                orjson.dumps(
                    {
                        "method": method,
                        "req_id": rid,
                        "success": True,
                        "result": {"channel": "instrument", "snapshot": True},
                        "time_in": t,
                        "time_out": t,
                    }
                ),
            )
            return
        for sym in params.get("symbol") or []:
            if method == "subscribe" and self.reject.get(sym, 0) > 0:
                self.reject[sym] -= 1
                self._send(
                    c,
                    orjson.dumps(
                        {
                            "method": method,
                            "req_id": rid,
                            "success": False,
                            "error": f"Currency pair not supported {sym}",
                            "symbol": sym,
                            "time_in": t,
                            "time_out": t,
                        }
                    ),
                )
                continue
            result: dict[str, Any] = {"channel": channel, "symbol": sym}
            if channel == "book":
                result["depth"] = params.get("depth", 10)
            self._send(
                c,
                orjson.dumps(
                    {"method": method, "req_id": rid, "success": True, "result": result, "time_in": t, "time_out": t}
                ),
            )
            if method == "subscribe":
                if channel == "book":
                    c.book[sym] = int(params.get("depth", 10))
                    self._send(c, self.market.snapshot_frame(sym, c.book[sym]))
                elif channel == "trade":
                    c.trade.add(sym)
            else:
                c.book.pop(sym, None) if channel == "book" else c.trade.discard(sym)
