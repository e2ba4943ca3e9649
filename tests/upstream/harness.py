"""Shared pieces of the upstream integration tests: small configs, a verifying consumer, waits,
and a tiny HTTP CONNECT proxy."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from relay.config import RelayConfig, parse_config
from relay.core.book import Book
from relay.core.events import BookEvent, TradeEvent
from relay.core.outputs import MergeSettings, Publication
from relay.protocols.spot_v2.merge import V2Merge
from relay.protocols.spot_v2.wire import V2Parser

DEPTH = 10


def small_config(upstreams: list[dict[str, Any]], symbols: list[str], **sections: dict[str, Any]) -> RelayConfig:
    """Compressed time: everything that is seconds in production is tenths here."""
    data: dict[str, Any] = {
        "upstreams": upstreams,
        "channels": {
            "book": {"symbols": symbols, "depth": DEPTH},
            "trade": {"symbols": symbols},
            "instrument": False,
        },
        "reconnect": {"initial_delay": 0.05, "max_delay": 0.4, "stagger": 0.02, "handshake_timeout": 2.0},
        "liveness": {"frame_timeout": 0.8, "ping_interval": 0.25, "stale_after": 0.6},
        "subscribe": {"batch_size": 10, "requests_per_second": 50.0, "retry_delay": 0.2},
        "budget": {"attempts": 100, "window": 600.0},
    }
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value}
    return parse_config(data, env={})


def make_merge(cfg: RelayConfig) -> V2Merge:
    return V2Merge(
        MergeSettings(
            book_depth=cfg.channels.book.depth if cfg.channels.book else DEPTH,
            trade_gap_wait=0.2,
            stale_after=cfg.liveness.stale_after,
            history=cfg.merge.history,
            recent_trades=cfg.merge.recent_trades,
        )
    )


PLANNER = {"resync_min_interval": 0.2, "resync_max_interval": 1.0, "ack_timeout": 2.0}


class Consumer:
    """A client of the merged stream: applies every book frame to its own Book and checks the
    checksum; checks trades arrive once each, in trade_id order; records gaps between frames."""

    def __init__(self, symbols: list[str], clock: Callable[[], float]) -> None:
        self.parser = V2Parser()
        self.clock = clock
        self.books = {s: Book(s, DEPTH) for s in symbols}
        self.has_snapshot = {s: False for s in symbols}
        self.book_frames = {s: 0 for s in symbols}
        self.snapshots = {s: 0 for s in symbols}
        self.mismatches: list[tuple[str, int, int]] = []
        self.updates_before_snapshot = 0
        self.last_trade = {s: 0 for s in symbols}
        self.trade_ids: dict[str, list[int]] = {s: [] for s in symbols}
        self.trade_errors: list[str] = []
        self.book_times: dict[str, list[float]] = {s: [] for s in symbols}
        self.pubs = 0

    def __call__(self, pubs: list[Publication]) -> None:
        now = self.clock()
        for pub in pubs:
            self.pubs += 1
            if pub.channel == "book" and pub.key == DEPTH:
                self._book(pub, now)
            elif pub.channel == "trade":
                self._trade(pub)

    def longest_gap(self, symbol: str, since: float) -> float:
        """Longest time between two published book frames of `symbol` after `since`."""
        times = [t for t in self.book_times[symbol] if t >= since]
        return max((b - a for a, b in zip(times, times[1:])), default=0.0)

    def _book(self, pub: Publication, now: float) -> None:
        ev = self.parser.parse(pub.frame)
        assert isinstance(ev, BookEvent), ev
        book = self.books[ev.symbol]
        if ev.snapshot:
            crc = book.load_snapshot(ev.bids, ev.asks, ev.timestamp)
            self.has_snapshot[ev.symbol] = True
            self.snapshots[ev.symbol] += 1
        elif not self.has_snapshot[ev.symbol]:
            self.updates_before_snapshot += 1
            return
        else:
            crc = book.apply(ev.bids, ev.asks, ev.timestamp, None)
        self.book_frames[ev.symbol] += 1
        if crc != ev.checksum:
            self.mismatches.append((ev.symbol, crc, ev.checksum or -1))
        self.book_times[ev.symbol].append(now)

    def _trade(self, pub: Publication) -> None:
        ev = self.parser.parse(pub.frame)
        assert isinstance(ev, TradeEvent), ev
        for t in ev.trades:
            last = self.last_trade[ev.symbol]
            if last and t.trade_id <= last:
                if not ev.snapshot:
                    self.trade_errors.append(f"{ev.symbol}: duplicate/old {t.trade_id} after {last}")
                continue
            if last and t.trade_id != last + 1:
                self.trade_errors.append(f"{ev.symbol}: missing {last + 1}..{t.trade_id - 1}")
            self.last_trade[ev.symbol] = t.trade_id
            self.trade_ids[ev.symbol].append(t.trade_id)


async def until(pred: Callable[[], bool], timeout: float = 5.0, step: float = 0.02) -> bool:
    """Poll `pred` until true or `timeout` (bounded in time and count)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    for _ in range(int(timeout / step) + 2):
        if pred():
            return True
        if loop.time() >= end:
            break
        await asyncio.sleep(step)
    return pred()


class ConnectProxy:
    """A minimal HTTP CONNECT (or, with socks=True, SOCKS5 no-auth) proxy on 127.0.0.1:0 that
    counts the tunnels it opened and records the peer address of each client."""

    def __init__(self, socks: bool = False) -> None:
        self.socks = socks
        self.connects: list[str] = []
        self.peers: list[str] = []
        self.server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()

    @property
    def url(self) -> str:
        assert self.server is not None
        scheme = "socks5" if self.socks else "http"
        return f"{scheme}://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            self.peers.append(writer.get_extra_info("peername")[0])
            if self.socks:
                host, port = await asyncio.wait_for(self._socks_handshake(reader, writer), 5)
                target = f"{host}:{port}"
            else:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
                if method != "CONNECT":
                    writer.write(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
                    writer.close()
                    return
                host, port = target.rsplit(":", 1)
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
            self.connects.append(target)
            if self.socks:
                writer.write(b"\x05\x00\x00\x01" + bytes(4) + bytes(2))
            else:
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
            a = asyncio.ensure_future(_pipe(reader, up_writer))
            b = asyncio.ensure_future(_pipe(up_reader, writer))
            self._tasks |= {a, b}
            await asyncio.gather(a, b, return_exceptions=True)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
            writer.close()

    @staticmethod
    async def _socks_handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> tuple[str, int]:
        ver, n = await reader.readexactly(2)
        await reader.readexactly(n)
        writer.write(b"\x05\x00")  # no authentication
        ver, cmd, _, atyp = await reader.readexactly(4)
        if ver != 5 or cmd != 1:
            raise ValueError("only SOCKS5 CONNECT")
        if atyp == 1:
            host = ".".join(str(b) for b in await reader.readexactly(4))
        elif atyp == 3:
            (ln,) = await reader.readexactly(1)
            host = (await reader.readexactly(ln)).decode()
        else:
            raise ValueError("no IPv6 here")
        port = int.from_bytes(await reader.readexactly(2), "big")
        return host, port


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    try:
        while data := await src.read(65536):
            dst.write(data)
            await dst.drain()
    finally:
        dst.close()


class TapMerge(V2Merge):
    """The real merge, plus a record of when each line delivered book data per symbol (the
    healthy line's own longest gap is the yardstick for the merged stream's gaps)."""

    def __init__(self, settings: MergeSettings, symbols: list[str]) -> None:
        super().__init__(settings)
        self.tap_symbols = [(s, f'"symbol":"{s}"'.encode()) for s in symbols]
        self.arrivals: dict[tuple[int, str], list[float]] = {}

    def feed(self, up: int, raw: bytes, now: float) -> Any:
        if raw.startswith(b'{"channel":"book"'):
            for sym, needle in self.tap_symbols:
                if needle in raw:
                    self.arrivals.setdefault((up, sym), []).append(now)
                    break
        return super().feed(up, raw, now)

    def longest_gap(self, up: int, symbol: str, since: float) -> float:
        times = [t for t in self.arrivals.get((up, symbol), []) if t >= since]
        return max((b - a for a, b in zip(times, times[1:])), default=0.0)


def make_tap_merge(cfg: RelayConfig, symbols: list[str]) -> TapMerge:
    return TapMerge(
        MergeSettings(
            book_depth=cfg.channels.book.depth if cfg.channels.book else DEPTH,
            trade_gap_wait=0.2,
            stale_after=cfg.liveness.stale_after,
            history=cfg.merge.history,
            recent_trades=cfg.merge.recent_trades,
        ),
        symbols,
    )
