"""A hostile Spot v2 upstream line (issue 15): a proxy in front of a simulator line that, on
command, injects what a buggy or compromised Kraken line could send.

`HostileLine` is a websockets server on 127.0.0.1 (port 0). For every connection it accepts (the
relay's), it opens its own connection to `upstream_url` (a line of `relay.sim.Simulator`) during
the handshake (an upstream that refuses makes the handshake fail with HTTP 502) and proxies
frames both ways: the relay's requests go to the simulator, its replies and data come back byte
for byte, always as text frames. Closing is mirrored: an upstream close code is passed on, an
upstream abort (1006) aborts the relay's socket. While proxying it follows each connection's
subscriptions (from the relay's requests), books (one per symbol, at the subscribed depth, checked
against every frame's checksum: `HostileConn.tracker_mismatches`), last trade per symbol, last
ticker, status and instrument precisions, so what it injects fits the real stream.

    line = HostileLine(sim.urls[1])           # or: async with HostileLine(url) as line:
    await line.start()
    line.url                                   # ws://127.0.0.1:PORT/v2, give it to the relay
    await line.wait_book("BTC/USD")            # a relay connection with a BTC/USD book
    await line.inject("future_timestamp", symbol="BTC/USD")   # an asyncio.Task: await it or not
    line.injected["future_timestamp"]          # deliveries (one per connection per inject)
    line.cut_short["future_timestamp"]         # deliveries ended by that connection closing
    line.frames_injected["future_timestamp"]   # frames sent for the case
    await line.stop()

`inject(case, conn=None, timeout=5.0, **params)` runs the case on every live connection that
qualifies (has a book, or a trade, of `symbol`; any connection for `unsolicited` and
`status_flapping`), or on `conn` only, waiting up to `timeout` seconds for one to qualify. Unknown
cases or parameters raise at once (ValueError / TypeError). The cases (defaults shown):

* `future_timestamp(symbol, shift=0.5, timestamp=FUTURE_TS, updates=3, interval=0.05, mute=None)`:
  a book snapshot at the subscribed depth, a valid book with a correct checksum, around the real
  mid shifted by `shift` (+50 %), stamped `9999-12-31T23:59:59.999999Z`; then `updates` updates of
  that fake book (correct checksums, same timestamp) `interval` s apart. The real book frames of
  `symbol` are held back (dropped) on that connection for `mute` seconds (None: until the fake
  updates are sent); then the real stream is forwarded again (its checksums no longer match the
  fake book, as they would not from such a line).
* `trade_jump(symbol, jump=9999, mode="insert")`: a trade for `symbol` with trade_id = last seen
  on this line + `jump`, valid otherwise (a copy of the last real trade, timestamp now). `insert`:
  sent at once; `rewrite`: the next real trade frame of `symbol` gets that id instead of its own.
  The ids are recorded in `line.fake_trade_ids[symbol]`. For the healthy line's hiccup, see
  `stall_line` / `hiccup` / `trade_jump_during_hiccup`.
* `huge_snapshot(symbol, levels_per_side=150_000, reverse=True)`: a snapshot whose best levels are
  the line's real book (so a relay that truncates it ends with the real book and the real stream
  goes on verifying), padded with levels beyond the real worst ones, every side worst first
  (`reverse`: worst case for insertion), checksum over the top 10 after sorting. The default is
  the issue's 300 000 levels (150 000 a side), ~10.5 MB; 300 000 a side is ~21 MB, over the relay's
  16 MiB upstream `max_size` (the relay would close the line with 1009 rather than parse it).
  Bids stop one tick above zero when the price has fewer ticks than asked for.
* `unsolicited(count=20_000, prefix="X", quote="USD", updates=1, trades=True, batch=500)`: for
  symbols `X00001/USD`..., one book snapshot (10 levels, correct checksum), `updates` updates and a
  trade each, sent as fast as the socket takes them, `batch` frames per write.
* `bad_numbers(symbol, variants=BAD_VARIANTS, trades=True)`: per variant, one book update of the
  real book (checksum computed as a naive relay that accepted the level would) and one trade
  (next trade ids): `inf` (`"price":1e400`), `nan` (`"price":NaN`, invalid JSON), `negative`
  (`"qty":-1.0…` on the best bid; the trade also has a negative price), `precision` (a price with
  4 more decimals than the instrument's, between the best bid and the next tick).
* `invalid_utf8(symbol, where=("timestamp", "symbol"), trades=True, byte=b"\\xff")`: book updates
  in Kraken's compact layout byte for byte (one unchanged level, so the checksum is right), with
  `byte` inside the timestamp or the symbol string; plus a trade whose timestamp holds it.
* `non_string_symbol(symbol, values=(123, None, [symbol]), channels=("book", "trade", "ticker"))`:
  per value and channel, a frame of the real stream's shape whose `symbol` is that JSON value.
* `status_flapping(count=200, interval=0.0, first="maintenance")`: status frames alternating
  `first` / `online` (an even count ends online), with the connection_id and version the
  upstream reported on that connection; `interval` s apart (0: one burst).

Trade frames of a case need the relay to have subscribed `trade` for the symbol (they are skipped
otherwise; while the relay is resubscribing it, the case waits up to 5 s for it). `trade_jump`
and the `trades=True` options wait for a real trade seen on the line. Frames are written with
backpressure: awaiting a big injection (`huge_snapshot`, `unsolicited`) while nothing reads the
other end waits for the reader (the relay always reads; a test client must read concurrently).

What a test can check afterwards: `line.injected_case(raw)` names the case whose injection sent
exactly these bytes (a client that received them got them through the relay verbatim);
`hostile_marker(raw)` recognises the cases visible in the bytes themselves (invalid UTF-8, the
9999 timestamp, 1e400 / NaN / negative numbers, non-string and `X00001/…` symbols);
`line.fake_trade_ids[symbol]` the trade ids this line made up (`trade_jump`: no real trade has
them, a client must never see them); `line.forged_trade_ids[symbol]` the real next ids that the
forged trades of `bad_numbers` / `invalid_utf8` / `non_string_symbol` carry (a client does see
those ids, from the real trade: check the bytes with `injected_case`); `line.errors` (exceptions of the
proxy itself: should stay empty); per connection (`line.live`, `HostileConn`): `subscribed`,
`books`, `last_trade`, `status`, `forwarded`, `dropped`, `tracker_mismatches` (should stay 0).

Also here: `book_frame` / `snapshot_frame` (a v2 book frame from (price_text, qty_text) lists
with a correct checksum), `book_crc`, `fmt_ticks`, `status_frame`, `huge_snapshot_frame`,
`RawClient` (a Sans-I/O websocket client that shows every data frame as a `RawFrame`: opcode,
undecoded bytes, FIN; and `close_code`), `stall_line` / `hiccup` / `trade_jump_during_hiccup`
(the healthy simulator line's hiccup: the simulator's `stall` fault).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import inspect
import json
import random
import re
import time
from collections import Counter, defaultdict, deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from http import HTTPStatus
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.uri import parse_uri

from relay.core.checksum import book_checksum
from relay.protocols.spot_v2.wire import encode_elements, encode_status

FUTURE_TS = "9999-12-31T23:59:59.999999Z"
CASES = (
    "future_timestamp",
    "trade_jump",
    "huge_snapshot",
    "unsolicited",
    "bad_numbers",
    "invalid_utf8",
    "non_string_symbol",
    "status_flapping",
)
BAD_VARIANTS = ("inf", "nan", "negative", "precision")
MAX_DIGESTS = 1_000_000  # injected frames remembered for `injected_case`
DEFAULT_PRECISION = (1, 8)  # BTC/USD's, used when neither the instrument list nor a book says

# Kraken's compact book layout (all of Kraken's book frames, and the simulator's).
BOOK_FRAME_RE = re.compile(
    rb'\{"channel":"book","type":"(snapshot|update)","data":\[\{"symbol":"([^"\\]+)",'
    rb'"bids":\[([^\]]*)\],"asks":\[([^\]]*)\],"checksum":(\d+),"timestamp":"([^"\\]*)"\}\]\}'
)
_LEVEL_RE = re.compile(rb'\{"price":([^,{}]+),"qty":([^,{}]+)\}')
_FLAT_OBJECT_RE = re.compile(rb"\{[^{}]*\}")
_SYMBOL_RE = re.compile(rb'"symbol":"[^"]*"')
_TRADE_ID_RE = re.compile(rb'"trade_id":\d+')
_TIMESTAMP_RE = re.compile(rb'"timestamp":"[^"]*"')


# -- numbers, checksums, frames --------------------------------------------------------------


def _b(text: str | bytes) -> bytes:
    return text.encode() if isinstance(text, str) else text


def _key(price: bytes) -> float:
    """Sort key of a price text; NaN (or anything float() refuses) sorts as +inf."""
    try:
        f = float(price)
    except ValueError:
        return float("inf")
    return float("inf") if f != f else f


def fmt_ticks(ticks: int, places: int) -> bytes:
    """An integer number of 10**-places units as fixed-point text: fmt_ticks(600001, 1) == b"60000.1"."""
    if places <= 0:
        return b"%d" % ticks
    sign = b"-" if ticks < 0 else b""
    digits = b"%0*d" % (places + 1, abs(ticks))
    return sign + digits[:-places] + b"." + digits[-places:]


def to_ticks(text: bytes | str, places: int) -> int:
    return int((Decimal(_b(text).decode()) * (10**places)).to_integral_value())


def decimals(text: bytes) -> int:
    dot = text.find(b".")
    return 0 if dot < 0 else len(text) - dot - 1


def now_ts() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def book_crc(bids: Iterable[tuple[str | bytes, str | bytes]], asks: Iterable[tuple[str | bytes, str | bytes]]) -> int:
    """Kraken's v2 checksum of a book given as (price_text, qty_text) levels in any order: the 10
    best asks ascending, then the 10 best bids descending (`relay.core.checksum.book_checksum`)."""
    b = [(_b(p), _b(q)) for p, q in bids]
    a = [(_b(p), _b(q)) for p, q in asks]
    top_b = heapq.nlargest(10, b, key=lambda lv: _key(lv[0]))
    top_a = heapq.nsmallest(10, a, key=lambda lv: _key(lv[0]))
    return book_checksum(top_a, top_b)


def _levels_json(levels: Iterable[tuple[bytes, bytes]]) -> bytes:
    return b",".join([b'{"price":' + p + b',"qty":' + q + b"}" for p, q in levels])


def book_frame(
    symbol: str | bytes | Any,
    snapshot: bool,
    bids: Sequence[tuple[str | bytes, str | bytes]],
    asks: Sequence[tuple[str | bytes, str | bytes]],
    checksum: int,
    timestamp: str | bytes,
) -> bytes:
    """A book frame in Kraken's compact layout, levels written in the given order, numbers and
    `timestamp` spliced in verbatim (bytes may hold anything). `symbol`: a str is JSON-quoted,
    bytes are put between quotes verbatim, anything else is written as its JSON value."""
    if isinstance(symbol, bytes):
        sym = b'"' + symbol + b'"'
    else:
        sym = orjson.dumps(symbol)
    return b"".join(
        (
            b'{"channel":"book","type":"',
            b"snapshot" if snapshot else b"update",
            b'","data":[{"symbol":',
            sym,
            b',"bids":[',
            _levels_json((_b(p), _b(q)) for p, q in bids),
            b'],"asks":[',
            _levels_json((_b(p), _b(q)) for p, q in asks),
            b'],"checksum":',
            b"%d" % checksum,
            b',"timestamp":"',
            _b(timestamp),
            b'"}]}',
        )
    )


def snapshot_frame(
    symbol: str,
    bids: Sequence[tuple[str | bytes, str | bytes]],
    asks: Sequence[tuple[str | bytes, str | bytes]],
    timestamp: str | None = None,
) -> bytes:
    """A v2 book snapshot of these levels (any order, written as given) with a correct checksum
    (top 10 of each side after sorting; truncation to any depth >= 10 does not change it)."""
    return book_frame(symbol, True, bids, asks, book_crc(bids, asks), timestamp or now_ts())


def elements_frame(channel: str, elements: Iterable[bytes], snapshot: bool = False) -> bytes:
    return encode_elements(channel, snapshot, elements)


status_frame = encode_status  # Kraken's v2 status frame, as the relay writes it


def _with_symbol(element: bytes, value: Any) -> bytes:
    return _SYMBOL_RE.sub(lambda _m: b'"symbol":' + orjson.dumps(value), element, count=1)


def _with_trade_id(element: bytes, trade_id: int) -> bytes:
    return _TRADE_ID_RE.sub(lambda _m: b'"trade_id":%d' % trade_id, element, count=1)


def _with_field(element: bytes, name: str, value: bytes) -> bytes:
    """Replace the (number) value of `name` in a flat JSON object with `value` verbatim."""
    pat = re.compile(b'"' + name.encode() + rb'":(-?[0-9.eE+]+)')
    return pat.sub(lambda _m: b'"' + name.encode() + b'":' + value, element, count=1)


def _with_timestamp(element: bytes, ts: bytes) -> bytes:
    return _TIMESTAMP_RE.sub(lambda _m: b'"timestamp":"' + ts + b'"', element, count=1)


# -- what a client received -----------------------------------------------------------------

_MARKERS: list[tuple[str, re.Pattern[bytes]]] = [
    ("future_timestamp", re.compile(rb"9999-12-31T")),
    ("bad_numbers", re.compile(rb'1e400|\bNaN\b|"qty":-|"price":-')),
    ("non_string_symbol", re.compile(rb'"symbol":[^"\s]')),
    ("unsolicited", re.compile(rb'"symbol":"X\d{5}/')),
]


def hostile_marker(raw: bytes | str) -> str | None:
    """The case a frame recognisably comes from (invalid UTF-8, the future timestamp, 1e400 / NaN /
    negative numbers, a non-string symbol, an unsolicited `X00001/…` symbol), else None. Not
    recognisable from the bytes alone: `trade_jump` ids (see `HostileLine.fake_trade_ids`), the
    `precision` variant, and `huge_snapshot` (valid data) or `status_flapping` (valid frames)."""
    data = _b(raw)
    try:
        data.decode()
    except UnicodeDecodeError:
        return "invalid_utf8"
    for case, pat in _MARKERS:
        if pat.search(data):
            return case
    return None


# -- a book as the line tracks it -----------------------------------------------------------


class TrackedBook:
    """An L2 book from wire text: (price_text, qty_text) by sort key per side, truncated to `depth`
    after every frame, Kraken's rules. Independent of the relay's `Book`."""

    __slots__ = ("depth", "bids", "asks", "timestamp", "checksum")

    def __init__(self, depth: int) -> None:
        self.depth = depth
        self.bids: dict[float, tuple[bytes, bytes]] = {}  # key: -price (best first when sorted)
        self.asks: dict[float, tuple[bytes, bytes]] = {}
        self.timestamp = b""
        self.checksum: int | None = None  # the last frame's

    def copy(self) -> TrackedBook:
        other = TrackedBook(self.depth)
        other.bids, other.asks = dict(self.bids), dict(self.asks)
        other.timestamp, other.checksum = self.timestamp, self.checksum
        return other

    def apply(self, bids: Iterable[tuple[bytes, bytes]], asks: Iterable[tuple[bytes, bytes]], snapshot: bool) -> None:
        if snapshot:
            self.bids, self.asks = {}, {}
        for side, levels, sign in ((self.bids, bids, -1.0), (self.asks, asks, 1.0)):
            for p, q in levels:
                key = sign * _key(p)
                try:
                    zero = float(q) == 0
                except ValueError:
                    zero = False
                if zero:
                    side.pop(key, None)
                else:
                    side[key] = (p, q)
            if len(side) > self.depth:
                for key in sorted(side)[self.depth :]:
                    del side[key]

    def best(self, is_bid: bool, n: int | None = None) -> list[tuple[bytes, bytes]]:
        side = self.bids if is_bid else self.asks
        keys = sorted(side) if n is None else heapq.nsmallest(n, side)
        return [side[k] for k in keys]

    def crc(self) -> int:
        return book_checksum(self.best(False, 10), self.best(True, 10))


def _parse_book(
    raw: bytes,
) -> tuple[str, bool, list[tuple[bytes, bytes]], list[tuple[bytes, bytes]], int, bytes] | None:
    """(symbol, snapshot, bids, asks, checksum, timestamp) of a book frame, else None."""
    m = BOOK_FRAME_RE.fullmatch(raw)
    if m is not None:
        kind, sym, bids, asks, crc, ts = m.groups()
        return sym.decode(), kind == b"snapshot", _LEVEL_RE.findall(bids), _LEVEL_RE.findall(asks), int(crc), ts
    try:  # another layout: numbers as their wire text
        msg = json.loads(raw, parse_float=str, parse_int=str)
        item = msg["data"][0]
        return (
            str(item["symbol"]),
            msg.get("type") == "snapshot",
            [(str(lv["price"]).encode(), str(lv["qty"]).encode()) for lv in item.get("bids") or ()],
            [(str(lv["price"]).encode(), str(lv["qty"]).encode()) for lv in item.get("asks") or ()],
            int(item.get("checksum") or 0),
            str(item.get("timestamp") or "").encode(),
        )
    except (ValueError, KeyError, IndexError, TypeError):
        return None


# -- one proxied connection -----------------------------------------------------------------


class HostileConn:
    """One relay connection and its own upstream connection, with what the line learnt of it."""

    def __init__(self, line: HostileLine, client: ServerConnection, upstream: ClientConnection) -> None:
        self.line, self.client, self.upstream = line, client, upstream
        self.depth: dict[str, int] = {}  # book symbol -> subscribed depth
        self.subscribed: set[tuple[str, str]] = set()  # (channel, symbol) from the relay's requests
        self.ever_subscribed: set[tuple[str, str]] = set()
        self.books: dict[str, TrackedBook] = {}
        self.last_trade: dict[str, tuple[int, bytes]] = {}  # symbol -> (trade_id, element)
        self.last_ticker: dict[str, bytes] = {}  # symbol -> element
        self.status: dict[str, Any] = {}  # the upstream's last status record
        self.rewrite_trade: dict[str, tuple[int, asyncio.Future[int]]] = {}  # symbol -> (jump, done)
        self.mute_book: dict[str, float] = {}  # symbol -> monotonic time until real book frames are dropped
        self.forwarded = 0  # upstream frames passed on
        self.dropped = 0  # upstream frames held back (mute)
        self.requests = 0  # relay frames passed on
        self.tracker_mismatches = 0  # frames whose checksum differs from the tracked book's (should stay 0)
        self.changed = asyncio.Event()

    @property
    def open(self) -> bool:
        return self.client.close_code is None and self.upstream.close_code is None

    # -- sending to the relay ---------------------------------------------------------------
    async def send(self, frames: Iterable[bytes], batch: int = 256) -> int:
        """Send frames to the relay as text frames (no UTF-8 check), `batch` per socket write."""
        n = 0
        chunk: list[bytes] = []
        for frame in frames:
            chunk.append(frame)
            if len(chunk) >= batch:
                await self._write(chunk)
                n += len(chunk)
                chunk = []
                # A drain below the high-water mark returns without yielding: without this, a
                # 60 000-frame injection holds the test's loop (and the simulator in it) for ~1 s.
                await asyncio.sleep(0)
        if chunk:
            await self._write(chunk)
            n += len(chunk)
        return n

    async def _write(self, frames: list[bytes]) -> None:
        ws = self.client
        if len(frames) == 1 or not hasattr(ws, "send_context"):
            for f in frames:
                await ws.send(f, text=True)
            return
        # What `send(bytes, text=True)` does, for a batch: one write and one drain.
        async with ws.send_context():
            for f in frames:
                ws.protocol.send_text(f)

    # -- proxying ---------------------------------------------------------------------------
    async def pump_requests(self) -> None:
        async for raw in self.client:
            data = raw if isinstance(raw, bytes) else raw.encode()
            self._learn_request(data)
            self.requests += 1
            await self.upstream.send(data, text=True)

    async def pump_data(self) -> None:
        while True:
            raw = await self.upstream.recv(decode=False)
            out = self._inspect(raw)
            if out is None:
                self.dropped += 1
                continue
            self.forwarded += 1
            await self.client.send(out, text=True)

    def _learn_request(self, raw: bytes) -> None:
        try:
            msg = orjson.loads(raw)
            params = msg.get("params") or {}
            method, channel = msg.get("method"), params.get("channel")
            symbols = params.get("symbol") or []
        except (orjson.JSONDecodeError, AttributeError):
            return
        if method not in ("subscribe", "unsubscribe") or not isinstance(channel, str) or not isinstance(symbols, list):
            return
        self.changed.set()
        for sym in symbols:
            if not isinstance(sym, str):
                continue
            if method == "subscribe":
                self.subscribed.add((channel, sym))
                self.ever_subscribed.add((channel, sym))
                if channel == "book":
                    self.depth[sym] = int(params.get("depth") or 10)
            else:
                self.subscribed.discard((channel, sym))
                if channel == "book":
                    self.depth.pop(sym, None)
                    self.books.pop(sym, None)

    def _inspect(self, raw: bytes) -> bytes | None:
        """Learn from one upstream frame; the frame to forward (None: drop it)."""
        head = raw[:24]
        if head.startswith(b'{"channel":"book"'):
            parsed = _parse_book(raw)
            if parsed is None:
                return raw
            sym, snapshot, bids, asks, crc, ts = parsed
            book = self.books.get(sym)
            if book is None or snapshot:
                book = self.books[sym] = TrackedBook(self.depth.get(sym, 10))
            book.apply(bids, asks, snapshot)
            book.timestamp, book.checksum = ts, crc
            if book.crc() != crc:
                self.tracker_mismatches += 1
            self.changed.set()
            until = self.mute_book.get(sym)
            if until is not None:
                if time.monotonic() < until and not snapshot:  # a snapshot (a resubscribe's) ends it
                    return None
                del self.mute_book[sym]
            return raw
        if head.startswith(b'{"channel":"trade"'):
            return self._trade(raw)
        if head.startswith(b'{"channel":"ticker"'):
            element = _FLAT_OBJECT_RE.search(raw, raw.find(b'"data"'))
            name = re.search(rb'"symbol":"([^"]+)"', raw)
            if element is not None and name is not None:
                self.last_ticker[name.group(1).decode()] = element.group(0)
            return raw
        if head.startswith(b'{"channel":"status"'):
            with contextlib.suppress(orjson.JSONDecodeError, KeyError, IndexError, TypeError):
                self.status = dict(orjson.loads(raw)["data"][0])
            return raw
        if head.startswith(b'{"channel":"instrument"'):
            with contextlib.suppress(orjson.JSONDecodeError, AttributeError, TypeError):
                for pair in orjson.loads(raw).get("data", {}).get("pairs") or ():
                    pp, qp = pair.get("price_precision"), pair.get("qty_precision")
                    if isinstance(pair.get("symbol"), str) and isinstance(pp, int) and isinstance(qp, int):
                        self.line.precisions[pair["symbol"]] = (pp, qp)
        return raw

    def _trade(self, raw: bytes) -> bytes:
        try:
            data = orjson.loads(raw)["data"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return raw
        elements = _FLAT_OBJECT_RE.findall(raw, raw.find(b'"data"'))
        if not isinstance(data, list) or len(elements) != len(data):
            return raw
        out = None
        for i, (t, element) in enumerate(zip(data, elements)):
            sym, tid = t.get("symbol"), t.get("trade_id")
            if not isinstance(sym, str) or not isinstance(tid, int):
                continue
            pending = self.rewrite_trade.pop(sym, None)
            last = self.last_trade.get(sym, (tid - 1, element))[0]
            if pending is not None:
                jump, done = pending
                new_id = last + jump
                new = _with_trade_id(element, new_id)
                out = (out or raw).replace(element, new, 1)
                elements[i] = new
                self.line.fake_trade_ids[sym].add(new_id)
                self.line.frames_injected["trade_jump"] += 1
                if not done.done():
                    done.set_result(new_id)
            self.last_trade[sym] = (max(tid, last), element)
        self.changed.set()
        return raw if out is None else out

    # -- what the cases need ----------------------------------------------------------------
    def precision(self, symbol: str) -> tuple[int, int]:
        known = self.line.precisions.get(symbol)
        if known is not None:
            return known
        book = self.books.get(symbol)
        if book is not None:
            levels = book.best(True, 1) or book.best(False, 1)
            if levels:
                return decimals(levels[0][0]), decimals(levels[0][1])
        return DEFAULT_PRECISION

    def has_book(self, symbol: str) -> bool:
        book = self.books.get(symbol)
        return book is not None and bool(book.bids) and bool(book.asks)

    def wants_trades(self, symbol: str) -> bool:
        return ("trade", symbol) in self.subscribed

    async def wait(self, pred: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            left = deadline - time.monotonic()
            if left <= 0 or not self.open:
                raise TimeoutError(f"hostile line: timed out waiting for {what}")
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(left, 0.1))

    def next_trade_id(self, symbol: str) -> int:
        return self.last_trade[symbol][0] + 1


# -- the line -------------------------------------------------------------------------------


class HostileLine:
    """A proxy in front of one upstream line that injects hostile frames on command (see the
    module docstring for the cases)."""

    def __init__(self, upstream_url: str, *, host: str = "127.0.0.1", port: int = 0, seed: int = 15) -> None:
        self.upstream_url = upstream_url
        self.host, self.port = host, port
        self.rng = random.Random(seed)
        self.server: Server | None = None
        self.connections: list[HostileConn] = []
        self.accepted = 0  # relay connections proxied so far
        self.refused = 0  # handshakes answered 502 (upstream unavailable)
        self.injected: Counter[str] = Counter()
        self.frames_injected: Counter[str] = Counter()
        self.bytes_injected: Counter[str] = Counter()
        self.cut_short: Counter[str] = Counter()  # injections ended by the connection closing
        # ids no real trade has (trade_jump): a client must never see them
        self.fake_trade_ids: defaultdict[str, set[int]] = defaultdict(set)
        # real (next) ids carried by forged trade frames (bad_numbers, invalid_utf8,
        # non_string_symbol): a client sees them, but from the healthy line's real trade
        self.forged_trade_ids: defaultdict[str, set[int]] = defaultdict(set)
        self.precisions: dict[str, tuple[int, int]] = {}  # from the instrument channel
        self.errors: list[BaseException] = []  # unexpected exceptions of the proxy tasks
        self._digests: dict[bytes, str] = {}  # blake2b of every injected frame -> its case
        self._upstreams: dict[ServerConnection, ClientConnection] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._changed = asyncio.Event()

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self) -> HostileLine:
        self.server = await serve(
            self._handle,
            self.host,
            self.port,
            process_request=self._process_request,
            compression=None,
            max_size=None,
            ping_interval=None,
            close_timeout=1,
        )
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.server.wait_closed(), 5)
        for up in list(self._upstreams.values()):
            up.transport.abort()
        self._upstreams.clear()

    async def __aenter__(self) -> HostileLine:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}/v2"

    @property
    def live(self) -> list[HostileConn]:
        return [c for c in self.connections if c.open]

    async def _process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        try:
            up = await connect(
                self.upstream_url, compression=None, max_size=None, open_timeout=5, ping_interval=None, close_timeout=1
            )
        except Exception as exc:  # refused, 429, timeout: the relay's handshake fails too
            self.refused += 1
            return ws.respond(HTTPStatus.BAD_GATEWAY, f"upstream unavailable: {exc}\n")
        self._upstreams[ws] = up
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        up = self._upstreams.get(ws)
        if up is None:
            return
        conn = HostileConn(self, ws, up)
        self.connections.append(conn)
        self.accepted += 1
        self._changed.set()
        tasks = [asyncio.ensure_future(conn.pump_requests()), asyncio.ensure_future(conn.pump_data())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            for result in await asyncio.gather(*tasks, return_exceptions=True):
                if isinstance(result, Exception) and not isinstance(result, ConnectionClosed):
                    self.errors.append(result)  # a bug in the proxy: tests can assert none
            await self._mirror_close(ws, up)
            self._upstreams.pop(ws, None)
            self.connections.remove(conn)
            conn.changed.set()

    @staticmethod
    async def _mirror_close(ws: ServerConnection, up: ClientConnection) -> None:
        if up.close_code is not None and ws.close_code is None:  # the upstream ended: pass it on
            rcvd = up.protocol.close_rcvd
            if rcvd is None:  # aborted (1006): abort the relay's socket too
                ws.transport.abort()
            else:
                with contextlib.suppress(Exception):
                    await ws.close(rcvd.code, rcvd.reason)
        else:  # the relay ended (or the line stops): close upstream, abort if it does not answer at once
            try:
                await asyncio.wait_for(up.close(), 0.3)
            except Exception:
                up.transport.abort()

    # -- waiting ----------------------------------------------------------------------------
    async def wait_for(self, pred: Callable[[HostileConn], bool], timeout: float = 5.0, what: str = "") -> HostileConn:
        """The first live connection for which `pred` holds (waits up to `timeout`)."""
        deadline = time.monotonic() + timeout
        while True:
            for c in self.live:
                if pred(c):
                    return c
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"hostile line: timed out waiting for {what or 'a connection'}")
            self._changed.clear()
            for c in self.live:
                c.changed.clear()
            waits = [asyncio.ensure_future(e.wait()) for e in [self._changed, *(c.changed for c in self.live)]]
            await asyncio.wait(waits, timeout=min(left, 0.1), return_when=asyncio.FIRST_COMPLETED)
            for w in waits:
                w.cancel()

    async def wait_connected(self, timeout: float = 5.0) -> HostileConn:
        return await self.wait_for(lambda c: True, timeout, "a relay connection")

    async def wait_book(self, symbol: str, timeout: float = 5.0) -> HostileConn:
        return await self.wait_for(lambda c: c.has_book(symbol), timeout, f"a {symbol} book")

    async def wait_trade(self, symbol: str, timeout: float = 5.0) -> HostileConn:
        return await self.wait_for(lambda c: symbol in c.last_trade, timeout, f"a {symbol} trade")

    async def send(self, frames: Sequence[bytes], conn: HostileConn | None = None, case: str = "raw") -> None:
        """Send arbitrary frames (text frames, bytes verbatim) to one or every live connection."""
        for c in [conn] if conn is not None else self.live:
            await self._deliver(c, case, frames)

    # -- injection --------------------------------------------------------------------------
    def inject(
        self, case: str, *, conn: HostileConn | None = None, timeout: float = 5.0, **params: Any
    ) -> asyncio.Task[int]:
        """Start `case` (see the module docstring) on every qualifying live connection, or `conn`;
        the task's result is the number of connections it was delivered to in full (one whose
        connection closed meanwhile, e.g. the relay dropping the line, counts in `cut_short`)."""
        if case not in CASES:
            raise ValueError(f"unknown case {case!r} (one of {', '.join(CASES)})")
        method = getattr(self, f"_case_{case}")
        inspect.signature(method).bind(None, **params)  # a wrong parameter fails here, not in the task
        symbol = params.get("symbol", "BTC/USD")

        def ready(c: HostileConn) -> bool:
            if case in ("unsolicited", "status_flapping"):
                return True
            if case == "trade_jump":
                return symbol in c.last_trade
            return c.has_book(symbol)

        async def run() -> int:
            if conn is not None:
                await conn.wait(lambda: ready(conn), timeout, f"{case} preconditions")
                targets = [conn]
            else:
                await self.wait_for(ready, timeout, f"a connection ready for {case}")
                targets = [c for c in self.live if ready(c)]
            done = await asyncio.gather(*(one(c) for c in targets))
            self.injected[case] += sum(done)
            return sum(done)

        async def one(c: HostileConn) -> bool:
            try:
                await method(c, **params)
            except ConnectionClosed:  # the relay (or the upstream) ended that connection meanwhile
                self.cut_short[case] += 1
                return False
            return True

        task = asyncio.ensure_future(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def injected_case(self, raw: bytes | str) -> str | None:
        """The case whose injection sent exactly these bytes (to any connection), else None: a
        client that receives them got them from this line, passed on verbatim by the relay."""
        return self._digests.get(_digest(_b(raw)))

    async def _deliver(self, conn: HostileConn, case: str, frames: Iterable[bytes], batch: int = 256) -> None:
        def counted() -> Iterable[bytes]:
            for f in frames:
                self.frames_injected[case] += 1
                self.bytes_injected[case] += len(f)
                if len(self._digests) < MAX_DIGESTS:
                    self._digests[_digest(f)] = case
                yield f

        await conn.send(counted(), batch)

    async def _trade_ready(self, conn: HostileConn, symbol: str, trades: bool, timeout: float = 5.0) -> bool:
        """Whether to add trade frames: the relay subscribes (or subscribed, and is resubscribing)
        `trade` for `symbol`, and a real trade was seen (waits up to `timeout` for both)."""
        if not trades or ("trade", symbol) not in conn.ever_subscribed:
            return False
        try:
            await conn.wait(
                lambda: conn.wants_trades(symbol) and symbol in conn.last_trade, timeout, f"{symbol} trades"
            )
        except TimeoutError:
            return False
        return True

    def _trade_element(self, conn: HostileConn, symbol: str, trade_id: int) -> bytes:
        element = conn.last_trade[symbol][1]
        return _with_timestamp(_with_trade_id(element, trade_id), now_ts().encode())

    # future_timestamp ------------------------------------------------------------------------
    async def _case_future_timestamp(
        self,
        conn: HostileConn,
        symbol: str = "BTC/USD",
        shift: float = 0.5,
        timestamp: str = FUTURE_TS,
        updates: int = 3,
        interval: float = 0.05,
        mute: float | None = None,
    ) -> None:
        pp, qp = conn.precision(symbol)
        real = conn.books[symbol]
        bid, ask = real.best(True, 1)[0][0], real.best(False, 1)[0][0]
        mid = (to_ticks(bid, pp) + to_ticks(ask, pp)) // 2
        mid = int(mid * (1 + shift))
        depth = conn.depth.get(symbol, 10)
        rng = self.rng

        def qty() -> bytes:
            return fmt_ticks(rng.randint(1, 5 * 10**qp), qp)

        fake = TrackedBook(depth)
        bids = [(fmt_ticks(mid - 1 - i, pp), qty()) for i in range(depth)]
        asks = [(fmt_ticks(mid + 1 + i, pp), qty()) for i in range(depth)]
        fake.apply(bids, asks, True)
        ts = timestamp.encode()
        hold = updates * interval + 0.05 if mute is None else mute
        if hold > 0:
            conn.mute_book[symbol] = time.monotonic() + hold
        await self._deliver(conn, "future_timestamp", [book_frame(symbol, True, bids, asks, fake.crc(), ts)])
        for _ in range(updates):
            await asyncio.sleep(interval)
            is_bid = rng.random() < 0.5
            level = (fmt_ticks((mid - 1 - rng.randrange(5)) if is_bid else (mid + 1 + rng.randrange(5)), pp), qty())
            ub, ua = ([level], []) if is_bid else ([], [level])
            fake.apply(ub, ua, False)
            await self._deliver(conn, "future_timestamp", [book_frame(symbol, False, ub, ua, fake.crc(), ts)])

    # trade_jump ------------------------------------------------------------------------------
    async def _case_trade_jump(
        self, conn: HostileConn, symbol: str = "BTC/USD", jump: int = 9999, mode: str = "insert"
    ) -> None:
        if mode == "rewrite":
            done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            conn.rewrite_trade[symbol] = (jump, done)
            await asyncio.wait_for(done, 30.0)
            return
        if mode != "insert":
            raise ValueError(f"trade_jump mode {mode!r}: insert or rewrite")
        trade_id = conn.last_trade[symbol][0] + jump
        self.fake_trade_ids[symbol].add(trade_id)
        await self._deliver(
            conn, "trade_jump", [elements_frame("trade", [self._trade_element(conn, symbol, trade_id)])]
        )

    # huge_snapshot ---------------------------------------------------------------------------
    async def _case_huge_snapshot(
        self, conn: HostileConn, symbol: str = "BTC/USD", levels_per_side: int = 150_000, reverse: bool = True
    ) -> None:
        frame = huge_snapshot_frame(conn.books[symbol], conn.precision(symbol), symbol, levels_per_side, reverse)
        await self._deliver(conn, "huge_snapshot", [frame])

    # unsolicited -----------------------------------------------------------------------------
    async def _case_unsolicited(
        self,
        conn: HostileConn,
        count: int = 20_000,
        prefix: str = "X",
        quote: str = "USD",
        updates: int = 1,
        trades: bool = True,
        batch: int = 500,
    ) -> None:
        # Every symbol gets the same ladder (100.00 +- ticks), so the checksums are computed once.
        bids = [(fmt_ticks(10_000 - 1 - i, 2), fmt_ticks(10**8 * (i + 1), 8)) for i in range(10)]
        asks = [(fmt_ticks(10_000 + 1 + i, 2), fmt_ticks(10**8 * (i + 1), 8)) for i in range(10)]
        book = TrackedBook(10)
        book.apply(bids, asks, True)
        snap_crc = book.crc()
        steps = []
        for k in range(updates):
            level = (bids[0][0], fmt_ticks(10**8 * (k + 2) + 12_345, 8))
            book.apply([level], [], False)
            steps.append(([level], book.crc()))

        def frames() -> Iterable[bytes]:
            for i in range(1, count + 1):
                sym = f"{prefix}{i:05d}/{quote}"
                ts = now_ts()
                yield book_frame(sym, True, bids, asks, snap_crc, ts)
                for levels, crc in steps:
                    yield book_frame(sym, False, levels, [], crc, ts)
                if trades:
                    element = (
                        b'{"symbol":%s,"side":"buy","price":%s,"qty":0.50000000,"ord_type":"market",'
                        b'"trade_id":1,"timestamp":"%s"}' % (orjson.dumps(sym), asks[0][0], ts.encode())
                    )
                    yield elements_frame("trade", [element])

        await self._deliver(conn, "unsolicited", frames(), batch)

    # bad_numbers -----------------------------------------------------------------------------
    async def _case_bad_numbers(
        self,
        conn: HostileConn,
        symbol: str = "BTC/USD",
        variants: Sequence[str] = BAD_VARIANTS,
        trades: bool = True,
    ) -> None:
        unknown = set(variants) - set(BAD_VARIANTS)
        if unknown:
            raise ValueError(f"bad_numbers variants {sorted(unknown)} (known: {', '.join(BAD_VARIANTS)})")
        pp, qp = conn.precision(symbol)
        with_trades = await self._trade_ready(conn, symbol, trades)
        real = conn.books[symbol]
        best_p, best_q = real.best(True, 1)[0]
        frames = []
        next_id = conn.next_trade_id(symbol) if with_trades else 0
        for k, variant in enumerate(variants):
            if variant == "inf":
                level, trade_field = (b"1e400", best_q), ("price", b"1e400")
            elif variant == "nan":
                level, trade_field = (b"NaN", best_q), ("price", b"NaN")
            elif variant == "negative":
                level, trade_field = (best_p, b"-" + fmt_ticks(10**qp, qp)), ("qty", b"-" + fmt_ticks(10**qp, qp))
            else:  # precision: between the best bid and the next tick up, 4 decimals too many
                price = fmt_ticks(to_ticks(best_p, pp) * 10**4 + 5_001, pp + 4)
                level, trade_field = (price, best_q), ("price", price)
            naive = real.copy()  # the book a relay that took the level at face value would have
            naive.apply([level], [], False)
            frames.append(book_frame(symbol, False, [level], [], naive.crc(), now_ts()))
            if with_trades:
                element = self._trade_element(conn, symbol, next_id + k)
                element = _with_field(element, trade_field[0], trade_field[1])
                if variant == "negative":
                    element = _with_field(element, "price", b"-" + best_p)
                self.forged_trade_ids[symbol].add(next_id + k)
                frames.append(elements_frame("trade", [element]))
        await self._deliver(conn, "bad_numbers", frames)

    # invalid_utf8 ----------------------------------------------------------------------------
    async def _case_invalid_utf8(
        self,
        conn: HostileConn,
        symbol: str = "BTC/USD",
        where: Sequence[str] = ("timestamp", "symbol"),
        trades: bool = True,
        byte: bytes = b"\xff",
    ) -> None:
        with_trades = await self._trade_ready(conn, symbol, trades)
        real = conn.books[symbol]
        level = real.best(True, 1)[0]  # re-sent unchanged: the checksum stays the real one
        crc = real.crc()
        ts = now_ts().encode()
        bad_ts = ts[:-1] + byte + b"Z"
        frames = []
        for w in where:
            if w == "timestamp":
                frames.append(book_frame(symbol.encode(), False, [level], [], crc, bad_ts))
            elif w == "symbol":
                frames.append(book_frame(symbol.encode() + byte, False, [level], [], crc, ts))
            else:
                raise ValueError(f"invalid_utf8 where {w!r}: timestamp or symbol")
        if with_trades:
            trade_id = conn.next_trade_id(symbol)
            self.forged_trade_ids[symbol].add(trade_id)
            element = _with_timestamp(self._trade_element(conn, symbol, trade_id), bad_ts)
            frames.append(elements_frame("trade", [element]))
        await self._deliver(conn, "invalid_utf8", frames)

    # non_string_symbol -----------------------------------------------------------------------
    async def _case_non_string_symbol(
        self,
        conn: HostileConn,
        symbol: str = "BTC/USD",
        values: Sequence[Any] | None = None,
        channels: Sequence[str] = ("book", "trade", "ticker"),
    ) -> None:
        values = (123, None, [symbol]) if values is None else values
        with_trades = await self._trade_ready(conn, symbol, "trade" in channels)
        real = conn.books[symbol]
        level = real.best(True, 1)[0]
        frames = []
        for value in values:
            for ch in channels:
                if ch == "book":
                    frames.append(book_frame(value, False, [level], [], real.crc(), now_ts()))
                elif ch == "trade" and with_trades:
                    trade_id = conn.next_trade_id(symbol)
                    self.forged_trade_ids[symbol].add(trade_id)
                    element = _with_symbol(self._trade_element(conn, symbol, trade_id), value)
                    frames.append(elements_frame("trade", [element]))
                elif ch == "ticker":
                    element = conn.last_ticker.get(symbol) or _ticker_element(symbol, real, now_ts())
                    frames.append(elements_frame("ticker", [_with_symbol(element, value)]))
        await self._deliver(conn, "non_string_symbol", frames)

    # status_flapping -------------------------------------------------------------------------
    async def _case_status_flapping(
        self, conn: HostileConn, count: int = 200, interval: float = 0.0, first: str = "maintenance"
    ) -> None:
        cid = conn.status.get("connection_id")
        cid = cid if isinstance(cid, int) else 0
        version = str(conn.status.get("version") or "2.0.10")
        frames = [status_frame(first if i % 2 == 0 else "online", version, cid) for i in range(count)]
        if interval <= 0:
            await self._deliver(conn, "status_flapping", frames)
            return
        for f in frames:
            await self._deliver(conn, "status_flapping", [f])
            await asyncio.sleep(interval)


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


def _ticker_element(symbol: str, book: TrackedBook, ts: str) -> bytes:
    (bid, bid_qty), (ask, ask_qty) = book.best(True, 1)[0], book.best(False, 1)[0]
    return (
        b'{"symbol":%s,"bid":%s,"bid_qty":%s,"ask":%s,"ask_qty":%s,"last":%s,"volume":1.00000000,'
        b'"vwap":%s,"low":%s,"high":%s,"change":0,"change_pct":0.0,"timestamp":"%s"}'
        % (orjson.dumps(symbol), bid, bid_qty, ask, ask_qty, bid, bid, bid, ask, ts.encode())
    )


def huge_snapshot_frame(
    book: TrackedBook, precision: tuple[int, int], symbol: str, levels_per_side: int, reverse: bool = True
) -> bytes:
    """A snapshot of `levels_per_side` levels a side: `book`'s levels best, then levels beyond its
    worst ones (bids down to one tick, asks up), each side written worst first when `reverse`;
    the checksum (top 10 after sorting) is `book`'s, the timestamp `book`'s last."""
    pp, qp = precision
    bids, asks = book.best(True), book.best(False)
    low = to_ticks(bids[-1][0], pp)
    high = to_ticks(asks[-1][0], pp)
    qty = fmt_ticks(10**qp // 2, qp)
    extra_b = max(0, min(levels_per_side - len(bids), low - 1))
    extra_a = max(0, levels_per_side - len(asks))
    all_bids = bids + [(fmt_ticks(low - 1 - i, pp), qty) for i in range(extra_b)]
    all_asks = asks + [(fmt_ticks(high + 1 + i, pp), qty) for i in range(extra_a)]
    crc = book_checksum(asks[:10], bids[:10])
    if reverse:
        all_bids.reverse()
        all_asks.reverse()
    return book_frame(symbol, True, all_bids, all_asks, crc, book.timestamp or now_ts().encode())


# -- the healthy line's hiccup --------------------------------------------------------------


def stall_line(sim: Any, line: int, seconds: float = 1.5) -> None:
    """Stall simulator line `line` (`relay.sim.Simulator`): nothing sent, not even heartbeats, for
    `seconds`; the backlog is delivered when it ends (the simulator's `stall` fault)."""
    sim.inject(line, "stall", seconds)


async def hiccup(sim: Any, line: int, seconds: float = 1.5) -> None:
    """`stall_line`, then wait until the stall is over."""
    stall_line(sim, line, seconds)
    await asyncio.sleep(seconds)


async def trade_jump_during_hiccup(
    hostile: HostileLine,
    sim: Any,
    healthy_line: int,
    symbol: str = "BTC/USD",
    *,
    jump: int = 9999,
    seconds: float = 1.5,
    lead: float = 0.1,
) -> int:
    """The issue's trade blackout: stall the healthy simulator line for `seconds`, `lead` s later
    inject a `trade_jump` on the hostile line, return when the stall is over. Returns the fake id
    (the highest in `hostile.fake_trade_ids[symbol]`)."""
    stall_line(sim, healthy_line, seconds)
    await asyncio.sleep(lead)
    await hostile.inject("trade_jump", symbol=symbol, jump=jump)
    await asyncio.sleep(max(0.0, seconds - lead))
    return max(hostile.fake_trade_ids[symbol])


# -- a client that shows the frames as they are ---------------------------------------------


class RawFrame(NamedTuple):
    """One data frame as received: `opcode` (websockets' `Opcode`: TEXT, BINARY or CONT), its
    payload bytes, and the FIN bit."""

    opcode: Opcode
    data: bytes
    fin: bool


class RawClient:
    """A websocket client on websockets' Sans-I/O `ClientProtocol`: every data frame with its
    opcode and its bytes exactly as received (no UTF-8 decoding, no size limit), so a test can
    see an invalid text frame as the peer sent it. Answers pings; no compression."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.proto = ClientProtocol(parse_uri(url), max_size=None)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self._frames: deque[RawFrame] = deque()

    async def __aenter__(self) -> RawClient:
        parts = urlsplit(self.url)
        self.reader, self.writer = await asyncio.open_connection(parts.hostname, parts.port)
        self.proto.send_request(self.proto.connect())
        self._flush()
        while self.proto.handshake_exc is None and self.proto.state is State.CONNECTING:
            await self._read()
        if self.proto.handshake_exc is not None:
            raise self.proto.handshake_exc
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()

    def _flush(self) -> None:
        assert self.writer is not None
        for data in self.proto.data_to_send():
            if data:
                self.writer.write(data)

    async def _read(self) -> None:
        assert self.reader is not None
        data = await self.reader.read(1 << 20)
        if not data:
            self.proto.receive_eof()
        else:
            self.proto.receive_data(data)
        for ev in self.proto.events_received():
            if isinstance(ev, Frame) and ev.opcode in (Opcode.TEXT, Opcode.BINARY, Opcode.CONT):
                self._frames.append(RawFrame(ev.opcode, bytes(ev.data), ev.fin))
        self._flush()
        if not data:
            raise ConnectionError("connection closed")

    @property
    def close_code(self) -> int | None:
        """The close code received (1006 when the connection was lost without a close frame)."""
        return self.proto.close_code

    async def send(self, message: bytes | str | dict[str, Any]) -> None:
        data = orjson.dumps(message) if isinstance(message, dict) else _b(message)
        self.proto.send_text(data)
        self._flush()

    async def frame(self, timeout: float = 5.0) -> RawFrame:
        """The next data frame (opcode, data, fin)."""
        async with asyncio.timeout(timeout):
            while not self._frames:
                await self._read()
        return self._frames.popleft()

    async def frames(self, seconds: float) -> AsyncIterator[RawFrame]:
        """Every data frame that arrives within `seconds`."""
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                yield await self.frame(left)
            except TimeoutError:
                return

    async def until(self, pred: Callable[[RawFrame], bool], timeout: float = 5.0) -> list[RawFrame]:
        """Frames up to and including the first for which `pred` holds (TimeoutError otherwise)."""
        out: list[RawFrame] = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("RawClient.until: condition not met")
            f = await self.frame(left)
            out.append(f)
            if pred(f):
                return out
