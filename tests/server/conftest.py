"""Server test harness: a real V2Merge fed by captured frames, a LocalServer on 127.0.0.1:0, and
small websocket clients that keep a checksum-verified book (tests.kit.books.V2BookVerifier)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import orjson
import pytest
import websockets
from websockets.asyncio.client import connect

from relay.config import ChannelsConfig, ServerConfig
from relay.core.book import Book
from relay.core.outputs import MergeSettings
from relay.protocols.spot_v2.endpoint import V2Endpoint
from relay.protocols.spot_v2.merge import V2Merge
from relay.server.listener import LocalServer
from tests.kit.books import V2BookVerifier


class Relay:
    """V2Merge + server, fed synchronously the way the app does it (feed, then publish take())."""

    def __init__(self, server: LocalServer, endpoint: V2Endpoint, merge: V2Merge) -> None:
        self.server, self.endpoint, self.merge = server, endpoint, merge
        self.publish = server.publisher(endpoint)
        self.ups = [merge.add_upstream("primary"), merge.add_upstream("secondary")]
        for up in self.ups:
            merge.upstream_up(up, time.monotonic())
            merge.line_status(up, "online", time.monotonic())
        self.flush()

    def feed(self, raw: bytes, up: int = 0) -> None:
        self.merge.feed(up, raw, time.monotonic())
        self.flush()

    def flush(self) -> None:
        self.publish(self.merge.take())

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.server.port}/v2"


def channels(**kw) -> ChannelsConfig:
    data = {
        "book": {"symbols": ["BTC/USD"], "depth": 100},
        "trade": {"symbols": ["BTC/USD"]},
        "ticker": {"symbols": ["BTC/USD"]},
        "ohlc": {"symbols": ["BTC/USD"], "intervals": [1, 5]},
    }
    data.update(kw)
    return ChannelsConfig.model_validate(data)


def build_relay(cfg: ServerConfig, merge: V2Merge, chans: ChannelsConfig, **kw) -> Relay:
    """A v2 endpoint for `merge` on a LocalServer bound to 127.0.0.1:0 (not started). `kw`: the
    endpoint's `resubscribe`, the rest the server's."""
    ep_kw = {k: kw.pop(k) for k in ("resubscribe",) if k in kw}
    endpoint = V2Endpoint(
        merge,
        chans,
        path=cfg.path,
        max_subscriptions_per_client=cfg.max_subscriptions_per_client,
        dynamic=cfg.dynamic_subscriptions,
        heartbeat_interval=cfg.heartbeat_interval,
        **ep_kw,
    )
    server = LocalServer(cfg, [endpoint], host="127.0.0.1", port=0, **kw)
    return Relay(server, endpoint, merge)


@pytest.fixture
async def make_relay() -> AsyncIterator:
    made: list[LocalServer] = []

    async def _make(server_kw: dict | None = None, chans: ChannelsConfig | None = None, **kw) -> Relay:
        cfg = ServerConfig.model_validate(server_kw or {})
        relay = build_relay(cfg, V2Merge(MergeSettings(book_depth=100)), chans or channels(), **kw)
        await relay.server.start()
        made.append(relay.server)
        return relay

    yield _make
    for s in made:
        await s.stop()


class Client:
    """A test client: JSON messages in order, and per-(symbol, depth) books verified by checksum."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.verifier = V2BookVerifier(require_snapshot=True)
        self.log: list[dict] = []

    @property
    def books(self) -> dict[str, Book]:
        return self.verifier.books

    @property
    def checksums_ok(self) -> int:
        return self.verifier.ok

    @property
    def checksum_bad(self) -> int:
        return self.verifier.bad

    @classmethod
    async def open(cls, url: str, **kw) -> Client:
        ws = await connect(url, compression=None, max_size=None, open_timeout=10, **kw)
        return cls(ws)

    async def send(self, msg: dict) -> None:
        await self.ws.send(orjson.dumps(msg).decode())

    async def recv(self, timeout: float = 5.0) -> dict:
        raw = await asyncio.wait_for(self.ws.recv(decode=False), timeout)
        msg = orjson.loads(raw)
        self.log.append(msg)
        if msg.get("channel") == "book":
            self._book(raw, depth=self.depth)
        return msg

    depth = 10

    def _book(self, raw: bytes, depth: int) -> None:
        self.verifier.feed(raw, depth)

    async def until(self, pred, timeout: float = 5.0, limit: int = 100000) -> dict:
        deadline = asyncio.get_running_loop().time() + timeout
        for _ in range(limit):
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            msg = await self.recv(left)
            if pred(msg):
                return msg
        raise AssertionError(f"condition not met; last messages: {self.log[-5:]}")

    async def barrier(self, timeout: float = 5.0) -> None:
        """Ping round trip: everything published before it has been received after it."""
        self._ping = getattr(self, "_ping", 1000) + 1
        rid = self._ping
        await self.send({"method": "ping", "req_id": rid})
        await self.until(lambda m: m.get("method") == "pong" and m.get("req_id") == rid, timeout)

    async def close(self) -> None:
        await self.ws.close()


@pytest.fixture
async def clients() -> AsyncIterator:
    opened: list[Client] = []

    async def _open(url: str, **kw) -> Client:
        c = await Client.open(url, **kw)
        opened.append(c)
        return c

    yield _open
    for c in opened:
        try:
            await asyncio.wait_for(c.ws.close(), 2)
        except (TimeoutError, websockets.WebSocketException, OSError):
            pass
