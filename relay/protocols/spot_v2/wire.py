"""Kraken Spot websocket v2: parse every public frame into events, and build the frames we send.

Parsing uses orjson for the structure and a regex over the raw bytes for the price/qty lexemes,
so numbers keep their wire text (`0.10000000`) without a Decimal parse. When the lexemes cannot
be matched one-to-one with the parsed levels (a re-serialized capture, unexpected spacing), the
text is rebuilt from the symbol's precision (`instrument` channel) when known.

Kraken's rejection frames come in several shapes (`symbol` at the top level, `result` missing or
partial); `_ack` normalizes all of them into one `AckEvent` per symbol.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from relay.core.book import Level, LevelTuple
from relay.core.events import (
    AckEvent,
    BookEvent,
    Event,
    HeartbeatEvent,
    InstrumentEvent,
    OhlcEvent,
    PongEvent,
    StatusEvent,
    TickerEvent,
    Trade,
    TradeEvent,
    UnknownEvent,
)
from relay.core.numbers import format_fixed

_LEVEL_RE = re.compile(rb'"price"\s*:\s*([-+0-9.eE]+)\s*,\s*"qty"\s*:\s*([-+0-9.eE]+)')
_FLAT_OBJECT_RE = re.compile(rb"\{[^{}]*\}")
# Kraken's own compact layout of a book frame. Frames in exactly this shape (all of Kraken's)
# skip the JSON parser, so the pattern admits only what Kraken sends: plain non-negative
# decimals of bounded length (finite by construction: no sign, exponent, NaN or 400 digits),
# an ASCII symbol and timestamp (so the frame is valid UTF-8 without decoding it). Anything
# else (spacing, key order, new keys, other bytes) takes the general path, which validates.
_NUM = rb"[0-9]{1,24}(?:\.[0-9]{1,24})?"
_LEVEL = rb'\{"price":' + _NUM + rb',"qty":' + _NUM + rb"\}"
_LEVELS = rb"((?:" + _LEVEL + rb"(?:," + _LEVEL + rb")*)?)"
_BOOK_FRAME_RE = re.compile(
    rb'\{"channel":"book","type":"(snapshot|update)","data":\[\{"symbol":"([A-Za-z0-9/._:-]{1,64})",'
    rb'"bids":\[' + _LEVELS + rb'\],"asks":\[' + _LEVELS + rb'\],"checksum":([0-9]{1,10}),'
    rb'"timestamp":"([0-9TZ:.+-]{0,40})"\}\]\}'
)
_FAST_LEVEL_RE = re.compile(rb'"price":([0-9.]+),"qty":([0-9.]+)')
# Kraken's deepest book is 1000 levels a side (~50 bytes each): a book frame far larger is not
# Kraken's, and is dropped before any parsing (a 10 MB, 300 000-level snapshot would otherwise
# hold the event loop for seconds).
MAX_BOOK_LEVELS = 1000
MAX_BOOK_FRAME_BYTES = 2 * MAX_BOOK_LEVELS * 120 + 4096
_loads = orjson.loads


class Precisions:
    """Per-symbol (price_precision, qty_precision), learned from the `instrument` channel."""

    def __init__(self) -> None:
        self.by_symbol: dict[str, tuple[int, int]] = {}
        self._level_res: dict[tuple[int, int], re.Pattern[bytes]] = {}
        self._by_symbol_re: dict[str, re.Pattern[bytes]] = {}

    def learn(self, pairs: Iterable[dict[str, Any]]) -> None:
        for pair in pairs:
            sym = pair.get("symbol")
            pp, qp = pair.get("price_precision"), pair.get("qty_precision")
            if isinstance(sym, str) and isinstance(pp, int) and isinstance(qp, int) and 0 <= pp < 30 and 0 <= qp < 30:
                self.by_symbol[sym] = (pp, qp)
                self._by_symbol_re.pop(sym, None)

    def level_re(self, symbol: str) -> re.Pattern[bytes]:
        """The book-level pattern for `symbol`: numbers with at most its instrument's decimals
        (Kraken never sends more), so one `findall` extracts and checks them. Generic (any
        decimals) until the instrument channel has told the precision."""
        pat = self._by_symbol_re.get(symbol)
        if pat is None:
            prec = self.by_symbol.get(symbol)
            if prec is None:
                return _FAST_LEVEL_RE
            pat = self._level_res.get(prec)
            if pat is None:
                pp, qp = prec
                pat = self._level_res[prec] = re.compile(
                    rb'"price":([0-9]+(?:\.[0-9]{0,%d})?),"qty":([0-9]+(?:\.[0-9]{0,%d})?)\}' % (pp, qp)
                )
            self._by_symbol_re[symbol] = pat
        return pat

    def get(self, symbol: str) -> tuple[int, int] | None:
        return self.by_symbol.get(symbol)


class V2Parser:
    """Turns raw v2 frames into events. Stateless apart from the precision table and counters."""

    def __init__(self, precisions: Precisions | None = None, force_precision: bool = False) -> None:
        self.precisions = precisions or Precisions()
        # Rebuild every number from the precision table (for captures that lost their lexemes).
        self.force_precision = force_precision
        self.unknown = 0
        self.lexeme_fallbacks = 0

    def parse(self, raw: bytes) -> Event:
        if raw.startswith(b'{"channel":"book"'):
            if len(raw) > MAX_BOOK_FRAME_BYTES:
                return self._unknown("book frame too large", raw)
            m = None if self.force_precision else _BOOK_FRAME_RE.fullmatch(raw)
            if m is not None:
                kind, sym, bids, asks, crc, ts = m.groups()
                symbol = sym.decode()
                level_re = self.precisions.level_re(symbol)
                blex, alex = level_re.findall(bids), level_re.findall(asks)
                if level_re is not _FAST_LEVEL_RE and (len(blex) != bids.count(b"{") or len(alex) != asks.count(b"{")):
                    return self._unknown("book number beyond the instrument's precision", raw, "book", symbol)
                if len(blex) > MAX_BOOK_LEVELS or len(alex) > MAX_BOOK_LEVELS:
                    return self._unknown("book deeper than Kraken's deepest", raw, "book", symbol)
                return BookEvent(
                    symbol,
                    kind == b"snapshot",
                    [(float(p), p, q) for p, q in blex],
                    [(float(p), p, q) for p, q in alex],
                    int(crc),
                    ts.decode(),
                    raw,
                )
        try:
            msg = _loads(raw)
        except orjson.JSONDecodeError:
            return self._unknown("invalid json", raw)
        if not isinstance(msg, dict):
            return self._unknown("not an object", raw)
        channel = msg.get("channel")
        if channel is not None:
            if channel == "book":
                return self._book(msg, raw)
            if channel == "trade":
                return self._trade(msg, raw)
            if channel == "heartbeat":
                return HeartbeatEvent()
            if channel == "ticker":
                return self._ticker(msg, raw)
            if channel == "status":
                return self._status(msg, raw)
            if channel == "ohlc":
                return self._ohlc(msg, raw)
            if channel == "instrument":
                data = msg.get("data")
                if not isinstance(data, dict):
                    return self._unknown("instrument without data", raw)
                self.precisions.learn(data.get("pairs") or ())
                return InstrumentEvent(msg.get("type") == "snapshot", data, raw)
            return self._unknown(f"channel {channel!r}", raw)
        method = msg.get("method")
        if method == "pong":
            return PongEvent(msg.get("req_id"))
        if method in ("subscribe", "unsubscribe"):
            return _ack(msg)
        return self._unknown(f"method {method!r}", raw)

    # -- channels -------------------------------------------------------------------------
    def _book(self, msg: dict, raw: bytes) -> Event:
        try:
            item = msg["data"][0]
            symbol = item["symbol"]
            jbids = item.get("bids") or ()
            jasks = item.get("asks") or ()
        except (KeyError, IndexError, TypeError):
            return self._unknown("book without data", raw)
        if not isinstance(symbol, str) or not isinstance(jbids, list | tuple) or not isinstance(jasks, list | tuple):
            return self._unknown("book fields of the wrong type", raw)
        n_bids, n_asks = len(jbids), len(jasks)
        if n_bids > MAX_BOOK_LEVELS or n_asks > MAX_BOOK_LEVELS:
            return self._unknown("book deeper than Kraken's deepest", raw, "book", symbol)
        lexemes = None if self.force_precision else _LEVEL_RE.findall(raw)
        if lexemes is not None and len(lexemes) == n_bids + n_asks:
            bids_first = n_asks == 0 or n_bids == 0 or raw.find(b'"bids"') < raw.find(b'"asks"')
            if bids_first:
                blex, alex = lexemes[:n_bids], lexemes[n_bids:]
            else:
                alex, blex = lexemes[:n_asks], lexemes[n_asks:]
            try:
                bids = [(float(p), p, q) for p, q in blex]
                asks = [(float(p), p, q) for p, q in alex]
            except ValueError:
                return self._unknown("book level is not a number", raw, "book", symbol)
        else:
            self.lexeme_fallbacks += 1
            prec = self.precisions.get(symbol)
            try:
                bids = _levels_from_json(jbids, prec)
                asks = _levels_from_json(jasks, prec)
            except (KeyError, TypeError, ValueError):
                return self._unknown("malformed book level", raw, "book", symbol)
        if not all(_plausible(lv) for lv in bids) or not all(_plausible(lv) for lv in asks):
            return self._unknown("book number not finite and non-negative", raw, "book", symbol)
        timestamp = item.get("timestamp") or ""
        if not isinstance(timestamp, str):
            return self._unknown("book timestamp not a string", raw, "book", symbol)
        checksum = item.get("checksum")
        return BookEvent(
            symbol,
            msg.get("type") == "snapshot",
            bids,
            asks,
            checksum if isinstance(checksum, int) else None,
            timestamp,
            raw,
        )

    def _trade(self, msg: dict, raw: bytes) -> Event:
        data = msg.get("data")
        if not isinstance(data, list) or not data:
            return self._unknown("trade without data", raw)
        elements = _FLAT_OBJECT_RE.findall(raw, raw.find(b'"data"'))
        if len(elements) != len(data):
            return self._unknown("trade elements not flat", raw)
        try:
            trades = [Trade(int(t["trade_id"]), e) for t, e in zip(data, elements)]
            symbol = data[0]["symbol"]
        except (KeyError, TypeError, ValueError):
            return self._unknown("trade without trade_id", raw)
        if type(symbol) is not str:
            return self._unknown("trade symbol not a string", raw)
        try:
            for t in data:
                if t["symbol"] != symbol or not (0 <= t["price"] < _INF and 0 <= t["qty"] < _INF):
                    return self._unknown("trade fields implausible", raw, "trade", symbol)
        except (KeyError, TypeError):
            return self._unknown("trade fields implausible", raw, "trade", symbol)
        return TradeEvent(symbol, msg.get("type") == "snapshot", trades, raw)

    def _ticker(self, msg: dict, raw: bytes) -> Event:
        data = msg.get("data")
        elements = _FLAT_OBJECT_RE.findall(raw, raw.find(b'"data"'))
        if not isinstance(data, list) or len(data) != 1 or len(elements) != 1:
            return self._unknown("ticker shape", raw)
        item = data[0]
        symbol = item.get("symbol") if isinstance(item, dict) else None
        if not isinstance(symbol, str):
            return self._unknown("ticker symbol not a string", raw)
        return TickerEvent(
            symbol,
            msg.get("type") == "snapshot",
            str(item.get("timestamp") or ""),
            elements[0],
            raw,
            (item.get("last"), item.get("volume")),
        )

    def _ohlc(self, msg: dict, raw: bytes) -> Event:
        data = msg.get("data")
        elements = _FLAT_OBJECT_RE.findall(raw, raw.find(b'"data"'))
        if not isinstance(data, list) or not data or len(elements) != len(data):
            return self._unknown("ohlc shape", raw)
        # One frame normally holds one candle; the newest candle represents the frame.
        item, element = data[-1], elements[-1]
        if not isinstance(item, dict) or not isinstance(item.get("symbol"), str):
            return self._unknown("ohlc symbol not a string", raw)
        try:
            return OhlcEvent(
                item["symbol"],
                msg.get("type") == "snapshot",
                int(item.get("interval") or 0),
                str(item.get("interval_begin") or ""),
                int(item.get("trades") or 0),
                element,
                raw,
            )
        except (KeyError, TypeError, ValueError):
            return self._unknown("ohlc fields", raw)

    def _status(self, msg: dict, raw: bytes) -> Event:
        data = msg.get("data")
        if not isinstance(data, list) or not data or not isinstance(data[0], dict):
            return self._unknown("status without data", raw)
        item = data[0]
        cid = item.get("connection_id")
        return StatusEvent(
            str(item.get("system", "")),
            str(item.get("api_version", "")),
            str(item.get("version", "")),
            cid if isinstance(cid, int) else None,
        )

    def _unknown(self, reason: str, raw: bytes, channel: str = "", symbol: str = "") -> UnknownEvent:
        self.unknown += 1
        return UnknownEvent(reason, raw, channel, symbol)


def _plausible(level: LevelTuple) -> bool:
    """Finite and non-negative (`-0.0` included: its text would break the checksum)."""
    price, ptext, qtext = level
    return 0.0 <= price < _INF and 0.0 <= float(qtext) < _INF and ptext[:1] != b"-" and qtext[:1] != b"-"


_INF = float("inf")


def _levels_from_json(items: Sequence[dict], prec: tuple[int, int] | None) -> list[LevelTuple]:
    out: list[LevelTuple] = []
    for lvl in items:
        price, qty = lvl["price"], lvl["qty"]
        if prec is not None:
            ptext, qtext = format_fixed(price, prec[0]), format_fixed(qty, prec[1])
        else:
            ptext, qtext = repr(float(price)).encode(), repr(float(qty)).encode()
        out.append(Level(float(price), ptext, qtext))
    return out


def _ack(msg: dict) -> AckEvent:
    result = msg.get("result")
    result = result if isinstance(result, dict) else {}
    symbol = result.get("symbol", msg.get("symbol"))
    channel = result.get("channel", msg.get("channel"))
    error = msg.get("error")
    if isinstance(symbol, list):  # seen on some rejections: the whole requested list
        symbol = symbol[0] if len(symbol) == 1 else None
    return AckEvent(
        method=str(msg.get("method")),
        success=bool(msg.get("success")),
        channel=channel if isinstance(channel, str) else None,
        symbol=symbol if isinstance(symbol, str) else None,
        req_id=msg.get("req_id") if isinstance(msg.get("req_id"), int) else None,
        error=str(error) if error is not None else None,
        result=result,
    )


# ---------------------------------------------------------------------------------------------
# Encoding: frames the relay sends (to clients) or requests it sends (to Kraken).
# Level and element bytes are spliced in verbatim so wire precision is never lost.
# ---------------------------------------------------------------------------------------------


def _levels_json(levels: Iterable[tuple[bytes, ...]]) -> bytes:
    return b",".join([b'{"price":' + lv[0] + b',"qty":' + lv[1] + b"}" for lv in levels])


def encode_book(
    symbol: str,
    snapshot: bool,
    bids: Iterable[tuple[bytes, ...]],
    asks: Iterable[tuple[bytes, ...]],
    checksum: int,
    timestamp: str,
) -> bytes:
    """A book frame in Kraken's key order: channel, type, data[symbol, bids, asks, checksum, ts]."""
    return b"".join(
        (
            b'{"channel":"book","type":"',
            b"snapshot" if snapshot else b"update",
            b'","data":[{"symbol":',
            orjson.dumps(symbol),
            b',"bids":[',
            _levels_json(bids),
            b'],"asks":[',
            _levels_json(asks),
            b'],"checksum":',
            str(checksum).encode(),
            b',"timestamp":',
            orjson.dumps(timestamp),
            b"}]}",
        )
    )


def encode_elements(channel: str, snapshot: bool, elements: Iterable[bytes], extra: bytes = b"") -> bytes:
    """A trade/ticker/ohlc frame from element objects kept verbatim."""
    return b"".join(
        (
            b'{"channel":"',
            channel.encode(),
            b'","type":"',
            b"snapshot" if snapshot else b"update",
            b'","data":[',
            b",".join(elements),
            b"]",
            extra,
            b"}",
        )
    )


def encode_instrument(snapshot: bool, data: dict[str, Any]) -> bytes:
    return orjson.dumps({"channel": "instrument", "type": "snapshot" if snapshot else "update", "data": data})


HEARTBEAT = b'{"channel":"heartbeat"}'


def now_rfc3339(ts: float | None = None) -> str:
    """Kraken's timestamp format: RFC 3339, microseconds, `Z`."""
    dt = datetime.now(UTC) if ts is None else datetime.fromtimestamp(ts, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def encode_status(system: str, version: str, connection_id: int, api_version: str = "v2") -> bytes:
    return orjson.dumps(
        {
            "channel": "status",
            "type": "update",
            "data": [
                {
                    "api_version": api_version,
                    "connection_id": connection_id,
                    "system": system,
                    "version": version,
                }
            ],
        }
    )


def encode_ack(
    method: str,
    result: dict[str, Any],
    req_id: int | None,
    time_in: str,
    time_out: str,
    warnings: list[str] | None = None,
) -> bytes:
    msg: dict[str, Any] = {"method": method, "result": dict(result), "success": True}
    if warnings:
        msg["result"]["warnings"] = warnings
    msg["time_in"] = time_in
    msg["time_out"] = time_out
    if req_id is not None:
        msg["req_id"] = req_id
    return orjson.dumps(msg)


def encode_error(
    method: str | None,
    error: str,
    req_id: int | None,
    time_in: str,
    time_out: str,
    symbol: str | None = None,
) -> bytes:
    """Kraken's rejection shape: `success: false`, `error`, optional top-level `symbol`."""
    msg: dict[str, Any] = {"error": error, "method": method or "", "success": False}
    if symbol is not None:
        msg["symbol"] = symbol
    msg["time_in"] = time_in
    msg["time_out"] = time_out
    if req_id is not None:
        msg["req_id"] = req_id
    return orjson.dumps(msg)


def encode_pong(req_id: int | None, time_in: str, time_out: str) -> bytes:
    msg: dict[str, Any] = {"method": "pong"}
    if req_id is not None:
        msg["req_id"] = req_id
    msg["time_in"] = time_in
    msg["time_out"] = time_out
    return orjson.dumps(msg)


def encode_subscribe(
    channel: str,
    symbols: Sequence[str] | None,
    req_id: int | None = None,
    method: str = "subscribe",
    **params: Any,
) -> bytes:
    """A request to Kraken (or to the relay): `{"method":…,"params":{channel, symbol, …},"req_id":…}`."""
    p: dict[str, Any] = {"channel": channel}
    if symbols is not None:
        p["symbol"] = list(symbols)
    p.update({k: v for k, v in params.items() if v is not None})
    msg: dict[str, Any] = {"method": method, "params": p}
    if req_id is not None:
        msg["req_id"] = req_id
    return orjson.dumps(msg)


def encode_ping(req_id: int) -> bytes:
    return orjson.dumps({"method": "ping", "req_id": req_id})


class V2Codec:
    """How the merge renders the frames it synthesizes, for clients of the v2 protocol.

    The arbiters never format frames themselves: they call their merge's codec, so a merge for
    another protocol (Spot v1) reuses the same arbitration with its own framing.
    """

    name = "v2"
    book = staticmethod(encode_book)
    elements = staticmethod(encode_elements)
    instrument = staticmethod(encode_instrument)

    @staticmethod
    def status(system: str) -> bytes:
        return encode_status(system, "relay", 0)

    timestamp_text = staticmethod(now_rfc3339)

    @staticmethod
    def timestamp_value(text: str) -> float | None:
        """An RFC 3339 timestamp as epoch seconds (None: not one)."""
        try:
            return datetime.fromisoformat(text).timestamp()
        except ValueError:
            return None
