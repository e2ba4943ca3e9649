"""A v2 client that records what a user of the relay notices: every book state it verified and
every trade, in order. Two runs of the same incident (live, then replayed from its capture) are
compared by these sequences."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable
from typing import Any

import orjson
import websockets

from tests.kit.books import V2BookVerifier


class FeedRecorder:
    """Subscribes `book` (depth 10) and `trade` for `symbols`; `states[symbol]` is the list of
    checksums of the books it held after each book frame (consecutive repeats collapsed), `trades`
    the (symbol, trade id) pairs in arrival order; `bad` counts checksum mismatches."""

    def __init__(self, url: str, symbols: Iterable[str], depth: int = 10) -> None:
        self.url = url
        self.symbols = list(symbols)
        self.depth = depth
        self.verifier = V2BookVerifier(depth)
        self.states: dict[str, list[int]] = {s: [] for s in self.symbols}
        self.trades: list[tuple[str, int]] = []
        self.arrivals: list[float] = []  # monotonic receive time of every book and trade frame
        self.disconnects = 0
        self._task: asyncio.Task[None] | None = None
        self._ws: Any = None

    @property
    def bad(self) -> int:
        return self.verifier.bad

    async def __aenter__(self) -> FeedRecorder:
        self._ws = await websockets.connect(self.url, max_size=None, open_timeout=10)
        for channel, extra in (("book", {"depth": self.depth}), ("trade", {"snapshot": False})):
            req = {"method": "subscribe", "params": {"channel": channel, "symbol": self.symbols, **extra}}
            await self._ws.send(orjson.dumps(req).decode())
        self._task = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        with contextlib.suppress(Exception):
            await self._ws.close()

    async def _read(self) -> None:
        try:
            async for raw in self._ws:
                data = raw if isinstance(raw, bytes) else raw.encode()
                if data.startswith((b'{"channel":"book"', b'{"channel":"trade"')):
                    self.arrivals.append(time.monotonic())
                if data.startswith(b'{"channel":"book"'):
                    ev = self.verifier.feed(data)
                    seq = self.states.setdefault(ev.symbol, [])
                    if not seq or seq[-1] != ev.checksum:
                        seq.append(ev.checksum)
                elif data.startswith(b'{"channel":"trade"'):
                    msg = orjson.loads(data)
                    self.trades.extend((t["symbol"], int(t["trade_id"])) for t in msg["data"])
        except websockets.ConnectionClosed:
            self.disconnects += 1


def overlap(a: list[Any], b: list[Any]) -> tuple[int, int, int]:
    """Align `b` on `a` at `b`'s first element found in `a`: (start in a, start in b, length of
    the common run from there). The run ends at the first difference or at either end."""
    pos = {v: i for i, v in reversed(list(enumerate(a)))}
    for j, v in enumerate(b):
        i = pos.get(v)
        if i is None:
            continue
        n = 0
        while i + n < len(a) and j + n < len(b) and a[i + n] == b[j + n]:
            n += 1
        return i, j, n
    return 0, 0, 0
