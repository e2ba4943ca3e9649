"""v1 test helpers: fixture loaders, a fake client session, and an independent verifying v1 client.

`V1Checker` is written from Kraken's v1 checksum guide, not from relay code: it keeps every book
as {price string: qty string}, applies frames exactly as a v1 client does, truncates to the
subscribed depth and compares CRC32 with `"c"` on every update.
"""

from __future__ import annotations

import json
import zlib
from decimal import Decimal
from pathlib import Path

import orjson

from tests.kit.paths import FIXTURES, need_fixture

CF_BOOK = FIXTURES / "cryptofeed" / "sample_data" / "KRAKEN.ws.50.0"
CF_TRADE = FIXTURES / "cryptofeed" / "sample_data" / "KRAKEN.ws.48.0"
CF_TICKER = FIXTURES / "cryptofeed" / "sample_data" / "KRAKEN.ws.49.0"
CF_REST = FIXTURES / "cryptofeed" / "sample_data" / "KRAKEN.0"
SDK_BOOK = FIXTURES / "python-kraken-sdk" / "tests" / "spot" / "fixture" / "orderbook-v1.json"


def cryptofeed_frames(path: Path = CF_BOOK) -> list[bytes]:
    """Received frames of a cryptofeed capture, verbatim (lines `<ts>: <json>`)."""
    need_fixture(path)
    out = []
    for line in path.read_bytes().splitlines():
        if b" <- " in line or b" <-> " in line or not line.strip():
            continue
        _, _, body = line.partition(b": ")
        out.append(body)
    return out


def sdk_frames() -> list[bytes]:
    """python-kraken-sdk's pretty-printed v1 capture, re-serialized compactly (all strings kept)."""
    need_fixture(SDK_BOOK)
    doc = json.loads(SDK_BOOK.read_text())
    return [orjson.dumps(m) for m in doc["init"] + doc["updates"]]


def cf_rest_pairs() -> dict:
    need_fixture(CF_REST)
    first = CF_REST.read_text().splitlines()[0]  # `<url> -> <ts>: <body>`; line 2 is cryptofeed's config
    return json.loads(first.split(": ", 1)[1])


def unframe(wire: bytes) -> bytes:
    """The payload of one unmasked server text frame (as built by relay.core.wsframe.text_frame)."""
    assert wire[0] == 0x81, wire[:2]
    n = wire[1] & 0x7F
    start = 2 if n < 126 else 4 if n == 126 else 10
    return wire[start:]


class FakeSession:
    """The `Session` interface (relay/protocols/interfaces.py), recording frames."""

    def __init__(self, source=None) -> None:
        self.connection_id = 0
        self.ep_state = None
        self.errors = 0
        self.last_out = 0.0
        self.subs: set = set()
        self.relay_filter = None
        self.relay_subscribed = False
        self.frames: list[bytes] = []
        self.books: dict = {}
        self.source = source

    def queue(self, frame: bytes) -> None:
        self.frames.append(frame)

    def count_error(self) -> None:
        self.errors += 1

    def idle(self, now: float) -> float:
        return now - self.last_out

    def deliver(self, wire: bytes) -> None:
        self.frames.append(unframe(wire))

    def deliver_book(self, key, wire: bytes, snapshot: bool) -> None:
        live = self.books.get(key)
        if live is None:
            return
        frame = unframe(wire)
        if not live:
            if not snapshot:
                snap = self.source.book_snapshot(key[1], key[2]) if self.source else None
                if snap is None:
                    return
                frame = snap
            self.books[key] = True
        self.queue(frame)

    def open_book(self, key, snapshot: bool) -> None:
        snap = self.source.book_snapshot(key[1], key[2]) if snapshot and self.source else None
        if snap is not None:
            self.queue(snap)
        self.books[key] = snap is not None or not snapshot

    def stop_book(self, key) -> None:
        self.books.pop(key, None)


def _token(s: str) -> str:
    return s.replace(".", "").lstrip("0")


class V1Checker:
    """An independent v1 client: books per channelID, checksum verified on every update."""

    def __init__(self) -> None:
        self.channels: dict[int, tuple[str, str]] = {}  # channelID -> (channelName, pair)
        self.books: dict[int, tuple[dict[str, str], dict[str, str]]] = {}  # id -> (asks, bids)
        self.depth: dict[int, int] = {}
        self.verified = 0
        self.bad: list[tuple[str, int, int]] = []
        self.snapshots = 0
        self.trades: list[list] = []
        self.other: list = []
        self.events: list[dict] = []

    def feed(self, raw: bytes) -> None:
        msg = json.loads(raw)
        if isinstance(msg, dict):
            self.events.append(msg)
            if msg.get("event") == "subscriptionStatus" and msg.get("status") == "subscribed":
                cid = msg["channelID"]
                self.channels[cid] = (msg["channelName"], msg["pair"])
            return
        cid, name, pair = msg[0], msg[-2], msg[-1]
        assert self.channels.get(cid) == (name, pair), f"channel {cid} {name} {pair} vs {self.channels.get(cid)}"
        if name.startswith("book-"):
            self._book(cid, int(name[5:]), pair, msg[1:-2])
        elif name == "trade":
            self.trades.extend(msg[1])
        else:
            self.other.append(msg)

    def _book(self, cid: int, depth: int, pair: str, parts: list[dict]) -> None:
        if "as" in parts[0] or "bs" in parts[0]:
            asks = {lv[0]: lv[1] for lv in parts[0].get("as", [])}
            bids = {lv[0]: lv[1] for lv in parts[0].get("bs", [])}
            self.books[cid] = (asks, bids)
            self.snapshots += 1
            return
        asks, bids = self.books[cid]
        crc = None
        for part in parts:
            for side, book in (("a", asks), ("b", bids)):
                for lv in part.get(side, []):
                    if Decimal(lv[1]) == 0:
                        book.pop(lv[0], None)
                    else:
                        book[lv[0]] = lv[1]
            if "c" in part:
                crc = int(part["c"])
        for book, rev in ((asks, False), (bids, True)):
            for p in sorted(book, key=Decimal, reverse=not rev)[: max(0, len(book) - depth)]:
                del book[p]
        top_a = sorted(asks, key=Decimal)[:10]
        top_b = sorted(bids, key=Decimal, reverse=True)[:10]
        s = "".join(_token(p) + _token(asks[p]) for p in top_a) + "".join(_token(p) + _token(bids[p]) for p in top_b)
        got = zlib.crc32(s.encode()) & 0xFFFFFFFF
        if crc is not None:
            if got == crc:
                self.verified += 1
            else:
                self.bad.append((pair, crc, got))

    def book(self, pair: str, depth: int) -> tuple[dict[str, str], dict[str, str]] | None:
        for cid, (name, p) in self.channels.items():
            if p == pair and name == f"book-{depth}" and cid in self.books:
                return self.books[cid]
        return None


class PlainClient:
    """A plain websocket client (no library): every frame recorded with its arrival time.

    `events(n)` waits for the next `n` control replies (objects other than heartbeats), data
    frames (arrays) are kept in `data`; every wait is bounded and polls the condition.
    """

    def __init__(self, ws) -> None:
        import asyncio

        self.ws = ws
        self.frames: list[tuple[float, bytes]] = []
        self.replies: list[tuple[float, dict]] = []
        self.data: list[tuple[float, list]] = []
        self.heartbeats = 0
        self._taken = 0
        self._task = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, url: str, **kwargs) -> PlainClient:
        from websockets.asyncio.client import connect

        ws = await connect(url, compression=None, max_size=None, open_timeout=5, **kwargs)
        return cls(ws)

    async def _read(self) -> None:
        import asyncio

        loop = asyncio.get_running_loop()
        async for msg in self.ws:
            raw = msg.encode() if isinstance(msg, str) else msg
            now = loop.time()
            self.frames.append((now, raw))
            obj = json.loads(raw)
            if isinstance(obj, list):
                self.data.append((now, obj))
            elif obj == {"event": "heartbeat"}:
                self.heartbeats += 1
            else:
                self.replies.append((now, obj))

    async def send(self, msg: dict | bytes | str) -> float:
        import asyncio

        text = msg.decode() if isinstance(msg, bytes) else msg if isinstance(msg, str) else json.dumps(msg)
        await self.ws.send(text)
        return asyncio.get_running_loop().time()

    async def until(self, cond, timeout: float) -> bool:
        """Poll `cond()` every 20 ms for at most `timeout` seconds."""
        import asyncio

        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while not cond():
            if loop.time() >= end or self._task.done():
                return bool(cond())
            await asyncio.sleep(0.02)
        return True

    async def events(self, n: int, timeout: float = 10.0) -> list[dict]:
        """The next `n` control replies (fails the test when they do not come in time)."""
        ok = await self.until(lambda: len(self.replies) >= self._taken + n, timeout)
        assert ok, f"expected {n} replies, got {self.replies[self._taken :]}"
        out = [m for _, m in self.replies[self._taken : self._taken + n]]
        self._taken += n
        return out

    def pending(self) -> list[dict]:
        return [m for _, m in self.replies[self._taken :]]

    async def close(self) -> None:
        import asyncio

        await self.ws.close()
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def wait_for(cond, timeout: float) -> bool:
    """Poll `cond()` every 20 ms for at most `timeout` seconds."""
    import asyncio

    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        if loop.time() >= end:
            return bool(cond())
        await asyncio.sleep(0.02)
    return True
