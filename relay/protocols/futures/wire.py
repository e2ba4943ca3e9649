"""Kraken Derivatives (Futures, `wss://futures.kraken.com/ws/v1`) adapter and encoders (Sans-I/O).

`FuturesParser.parse(raw)` turns one upstream frame into an event: the futures data events below
(the futures merge consumes them) or the protocol-neutral control events of `relay.core.events`
(`info` -> StatusEvent("online"), `subscribed`/`subscribed_failed`/`unsubscribed` -> AckEvent with
`req_id=None`, `heartbeat` -> HeartbeatEvent, anything else -> UnknownEvent).

Futures numbers are JSON numbers without a checksum. Data frames are forwarded byte for byte;
where the relay must write numbers itself (late-joiner `book_snapshot`) it reuses the lexemes
cut from the wire bytes (`_LEVEL`), so a price is never re-rendered through a float.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

import orjson

from relay.core.events import AckEvent, HeartbeatEvent, StatusEvent, UnknownEvent

BUY, SELL = 0, 1  # book sides: "buy" = bid, "sell" = ask

_NUM = rb"(-?[0-9][0-9.eE+-]*)"
_LEVEL = re.compile(rb'\{\s*"price"\s*:\s*' + _NUM + rb'\s*,\s*"qty"\s*:\s*' + _NUM + rb"\s*\}")
_PRICE = re.compile(rb'"price"\s*:\s*' + _NUM)
_QTY = re.compile(rb'"qty"\s*:\s*' + _NUM)
_OBJ = re.compile(rb"\{[^{}]*\}")  # a flat JSON object (futures trades have no nesting)


@dataclass(slots=True)
class FLevel:
    price: float
    price_text: bytes
    qty_text: bytes
    qty: float


@dataclass(slots=True)
class FBookSnapshot:
    product: str
    seq: int
    timestamp: int
    bids: list[FLevel]
    asks: list[FLevel]
    raw: bytes


@dataclass(slots=True)
class FBookDelta:
    product: str
    seq: int
    side: int
    level: FLevel
    timestamp: int
    raw: bytes


@dataclass(slots=True)
class FTrade:
    uid: str
    seq: int
    time: int
    element: bytes  # the trade as a standalone `{"feed":"trade",...}` frame


@dataclass(slots=True)
class FTradeEvent:
    product: str
    snapshot: bool
    trades: list[FTrade]  # as received (snapshots are newest first)
    raw: bytes


@dataclass(slots=True)
class FTickerEvent:
    feed: str  # ticker | ticker_lite
    product: str
    time: int | None
    raw: bytes


FuturesDataEvent = FBookSnapshot | FBookDelta | FTradeEvent | FTickerEvent


def _num_text(value: Any) -> bytes:
    return orjson.dumps(value)


def _levels(items: list[dict[str, Any]], section: bytes | None) -> list[FLevel]:
    """Levels with their wire lexemes; the re-rendered number when the bytes do not line up."""
    lexemes = _LEVEL.findall(section) if section is not None else []
    use = len(lexemes) == len(items)
    out: list[FLevel] = []
    for i, it in enumerate(items):
        price, qty = it.get("price"), it.get("qty")
        if not isinstance(price, (int, float)) or not isinstance(qty, (int, float)):
            raise ValueError("level without numeric price/qty")
        if use:
            ptxt, qtxt = lexemes[i]
        else:
            ptxt, qtxt = _num_text(price), _num_text(qty)
        out.append(FLevel(float(price), ptxt, qtxt, float(qty)))
    return out


def _section(raw: bytes, key: bytes) -> bytes | None:
    i = raw.find(b'"' + key + b'"')
    if i < 0:
        return None
    j = raw.find(b"[", i)
    k = raw.find(b"]", j)
    return raw[j : k + 1] if j >= 0 and k > j else None


class FuturesParser:
    """Upstream adapter: raw futures frame bytes -> event."""

    def parse(self, raw: bytes) -> Any:
        try:
            msg = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return UnknownEvent("not JSON", raw)
        if not isinstance(msg, dict):
            return UnknownEvent("not an object", raw)
        feed = msg.get("feed")
        event = msg.get("event")
        try:
            if event is None and isinstance(feed, str):
                return self._data(feed, msg, raw)
            if isinstance(event, str):
                return self._event(event.strip(), msg, raw)
        except (ValueError, TypeError, KeyError) as exc:
            return UnknownEvent(f"malformed {feed or event}: {exc}", raw)
        return UnknownEvent("no feed or event", raw)

    def _data(self, feed: str, msg: dict[str, Any], raw: bytes) -> Any:
        if feed == "book":
            side = msg["side"]
            price, qty = msg["price"], msg["qty"]
            pm, qm = _PRICE.search(raw), _QTY.search(raw)
            ptxt = pm.group(1) if pm else _num_text(price)
            qtxt = qm.group(1) if qm else _num_text(qty)
            return FBookDelta(
                str(msg["product_id"]).upper(),
                int(msg["seq"]),
                BUY if side == "buy" else SELL,
                FLevel(float(price), ptxt, qtxt, float(qty)),
                int(msg.get("timestamp") or 0),
                raw,
            )
        if feed == "book_snapshot":
            return FBookSnapshot(
                str(msg["product_id"]).upper(),
                int(msg["seq"]),
                int(msg.get("timestamp") or 0),
                _levels(msg.get("bids") or [], _section(raw, b"bids")),
                _levels(msg.get("asks") or [], _section(raw, b"asks")),
                raw,
            )
        if feed == "trade":
            return FTradeEvent(str(msg["product_id"]).upper(), False, [_trade(msg, raw)], raw)
        if feed == "trade_snapshot":
            items = msg.get("trades") or []
            section = raw[raw.find(b'"trades"') :] if b'"trades"' in raw else b""
            objs = _OBJ.findall(section)
            if len(objs) != len(items):  # cannot cut the wire bytes: re-render (lexemes may change)
                objs = [orjson.dumps(t) for t in items]
            trades = [_trade(t, o) for t, o in zip(items, objs)]
            return FTradeEvent(str(msg["product_id"]).upper(), True, trades, raw)
        if feed in ("ticker", "ticker_lite"):
            t = msg.get("time")
            return FTickerEvent(feed, str(msg["product_id"]).upper(), t if isinstance(t, int) else None, raw)
        if feed == "heartbeat":
            return HeartbeatEvent()
        return UnknownEvent(f"feed {feed}", raw)

    def _event(self, event: str, msg: dict[str, Any], raw: bytes) -> Any:
        if event == "info":
            return StatusEvent("online", version=str(msg.get("version", "")))
        if event in ("subscribed", "subscribed_failed", "unsubscribed", "unsubscribed_failed"):
            products = msg.get("product_ids") or []
            method = "subscribe" if event.startswith("subscribed") else "unsubscribe"
            ok = not event.endswith("_failed")
            return AckEvent(
                method,
                ok,
                msg.get("feed"),
                str(products[0]).upper() if products else None,
                None,
                None if ok else str(msg.get("message") or event),
                {"_symbols": [str(p).upper() for p in products]} if len(products) > 1 else {},
            )
        if event == "pong":
            from relay.core.events import PongEvent

            return PongEvent(None)
        if event in ("alert", "error"):
            return UnknownEvent(f"{event}: {msg.get('message')}", raw)
        return UnknownEvent(f"event {event}", raw)


def _trade(t: dict[str, Any], element: bytes) -> FTrade:
    return FTrade(str(t["uid"]), int(t.get("seq") or 0), int(t.get("time") or 0), element)


# -- encoders (requests to Kraken, frames to clients) -------------------------------------------
def encode_request(
    channel: str, symbols: list[str] | None, req_id: int = 0, method: str = "subscribe", **_: Any
) -> bytes:
    """`{"event":"subscribe","feed":F,"product_ids":[...]}` (futures requests carry no id)."""
    msg: dict[str, Any] = {"event": method, "feed": channel}
    if symbols:
        msg["product_ids"] = list(symbols)
    return orjson.dumps(msg)


def request_params(channel: str, param: int) -> dict[str, Any]:
    return {}


def now_ms() -> int:
    return int(time.time() * 1000)


def encode_event(event: str, feed: str | None = None, products: list[str] | None = None, **extra: Any) -> bytes:
    msg: dict[str, Any] = {"event": event}
    if feed is not None:
        msg["feed"] = feed
    if products is not None:
        msg["product_ids"] = products
    msg.update(extra)
    return orjson.dumps(msg)


INFO = b'{"event":"info","version":1}'

# What Kraken sends, shared by the relay's endpoint and the simulator so both answer alike.
TRADE_SNAPSHOT = 100  # trades in a `trade_snapshot` (every one in the 2021 capture has 100)
# The `heartbeat` feed's cadence. Kraken documents only "at timed intervals" and the capture
# has no heartbeat subscription; a client's measurement of Kraken Futures reports one every 10 s.
HEARTBEAT_INTERVAL = 10.0
ERR_PRODUCT = "Invalid product id"
ERR_FEED = "Invalid feed"
ERR_JSON = "Json Error"
ALERT_ALREADY = "Already subscribed to feed, re-requesting"


def encode_info(version: str | int = 1) -> bytes:
    """`{"event":"info","version":N}` (Kraken's greeting; `version` as the upstream reports it)."""
    if isinstance(version, str):
        version = int(version) if version.isdigit() else 1
    return b'{"event":"info","version":%d}' % version


def encode_heartbeat(ms: int | None = None) -> bytes:
    return b'{"feed":"heartbeat","time":%d}' % (now_ms() if ms is None else ms)


def encode_book_snapshot(product: str, seq: int, timestamp: int, bids: list[FLevel], asks: list[FLevel]) -> bytes:
    """A `book_snapshot` frame (bids best first, asks best first) from wire lexemes."""

    def side(levels: list[FLevel]) -> bytes:
        return b",".join(b'{"price":%s,"qty":%s}' % (lv.price_text, lv.qty_text) for lv in levels)

    return (
        b'{"feed":"book_snapshot","product_id":%s,"timestamp":%d,"seq":%d,"tickSize":null,"bids":[%s],"asks":[%s]}'
        % (orjson.dumps(product), timestamp, seq, side(bids), side(asks))
    )


def encode_trade_snapshot(product: str, elements: list[bytes]) -> bytes:
    """`trade_snapshot` with the trades' own frames as elements (newest first, as Kraken sends)."""
    return b'{"feed":"trade_snapshot","product_id":%s,"trades":[%s]}' % (orjson.dumps(product), b",".join(elements))
