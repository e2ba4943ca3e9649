"""Kraken Spot websocket v1 (legacy, `wss://ws.kraken.com`): upstream adapter and client codec.

v1 data frames are positional arrays `[channelID, payload..., channelName, pair]`; numbers are
quoted strings, so the lexemes the checksum needs are simply the strings as sent (no regex, no
precision table). Connection-level frames are objects keyed by `event`.

Two things are v1-specific and handled here:

* `channelID` is per upstream connection, so the same update carries different leading bytes on
  every line. `normalize()` rewrites the id to 0 before the merge sees the frame: copies become
  byte-identical again (the merge's pre-parse duplicate check works) and nothing connection-scoped
  reaches clients. The local v1 endpoint stamps its own stable id per (channelName, pair).
* Book levels carry a per-level timestamp (`[price, volume, time]`) that the protocol-neutral
  `Book` does not keep. `LevelTimes` remembers it per (pair, price) so synthesized frames (diffs,
  snapshots for late joiners) re-render the exchange's time; levels it does not know (synthesized
  deletes) get the book's latest time.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from relay.core.book import Level, LevelTuple
from relay.core.events import (
    AckEvent,
    BookEvent,
    Event,
    HeartbeatEvent,
    OhlcEvent,
    PongEvent,
    StatusEvent,
    TickerEvent,
    UnknownEvent,
)
from relay.protocols.spot_v2.wire import encode_elements, encode_instrument

CHANNELS = ("book", "trade", "ticker", "spread", "ohlc")
STATUS_OK = ("subscribed", "unsubscribed", "ok")

# The engine version v1 clients are told before any line reported Kraken's own (the version of
# the newest real capture, python-kraken-sdk 2023-08, and of the simulator).
V1_VERSION = "1.9.1"

# Kraken's v1 request error texts (kraken-protocol.md 4.1, the captures, and replies observed
# from Kraken 1.9.0), shared by the relay's endpoint and the simulator.
ERR_MALFORMED = "Malformed request"
ERR_NO_EVENT = "Event(s) not found"
ERR_EVENT = "Unsupported event"
ERR_REQID = "Reqid field must be a positive integer less than 18446744073709551616"
ERR_PAIR_FIELD = "Pair field must be an array"
ERR_SUB_FIELD = "Subscription field must be an object"
ERR_NAME = "Subscription name invalid"
ERR_DEPTH = "Subscription depth not supported"
ERR_INTERVAL = "Subscription ohlc interval not supported"
ERR_ALREADY = "Already subscribed"
ERR_NOT_SUBSCRIBED = "Subscription Not Found"
ERR_RATE = "Exceeded msg rate"
MAX_REQID = 1 << 64

_PAIR_RE = re.compile(r"[A-Za-z0-9.]+/[A-Za-z0-9.]+")


def pair_format_ok(pair: str) -> bool:
    """`BASE/QUOTE` (`XBT/USD`, `ETH2.S/ETH`): anything else Kraken refuses without a look-up."""
    return _PAIR_RE.fullmatch(pair) is not None


def err_pair_format(pair: str) -> str:
    return f"Currency pair not in ISO 4217-A3 format {pair}"


def err_pair(pair: str) -> str:
    return f"Currency pair not supported {pair}"


def valid_reqid(rid: Any) -> bool:
    return isinstance(rid, int) and not isinstance(rid, bool) and 0 <= rid < MAX_REQID


def subscription_echo(sub: dict[str, Any]) -> dict[str, Any]:
    """A `subscription` object in Kraken's key order (alphabetical: `depth`, `interval`, `name`)."""
    return dict(sorted(sub.items()))


def frame_book_depth(raw: bytes) -> int | None:
    """The depth in a book frame's channel name (`...,"book-1000","XBT/USD"]` -> 1000)."""
    i = raw.rfind(b',"book-', max(0, len(raw) - 64))
    if i < 0:
        return None
    j = raw.find(b'"', i + 7)
    digits = raw[i + 7 : j]
    return int(digits) if digits.isdigit() else None


_loads = orjson.loads
_ID_RE = re.compile(rb"\[\s*\d+\s*,")
_FLAT_ARRAY_RE = re.compile(rb"\[[^\[\]]*\]")


@dataclass(slots=True)
class V1TradeEvent:
    """A v1 trade frame: trades as their exact array bytes (`["p","v","t","s","l",""]`), no ids."""

    symbol: str
    trades: list[bytes]
    raw: bytes


@dataclass(slots=True)
class SpreadEvent:
    """A v1 spread frame `[bid, ask, time, bidVolume, askVolume]`."""

    symbol: str
    time: str
    element: bytes
    raw: bytes


def channel_base(channel_name: str) -> tuple[str, int]:
    """`book-25` -> ("book", 25); `ohlc-5` -> ("ohlc", 5); `trade` -> ("trade", 0)."""
    name, _, param = channel_name.partition("-")
    try:
        return name, int(param) if param else 0
    except ValueError:
        return channel_name, 0


def normalize(raw: bytes) -> bytes:
    """The frame with its leading channelID replaced by 0 (see module docstring)."""
    if raw[:1] != b"[":
        return raw
    comma = raw.find(b",", 1, 24)
    if comma < 0 or raw[1:comma] == b"0":
        return raw
    return b"[0" + raw[comma:]


def split_frame(raw: bytes) -> tuple[int, int] | None:
    """Byte offsets (start, end) of the payload between `[id,` and `,"channelName","pair"]`."""
    start = raw.find(b",") + 1
    last = raw.rfind(b',"')
    if start <= 0 or last < 0:
        return None
    end = raw.rfind(b',"', 0, last)
    if end < start:
        return None
    return start, end


class LevelTimes:
    """Per pair: price text -> (qty text, level time), for re-rendering synthesized book frames.

    Bounded per pair (`cap` levels; the oldest quarter is dropped beyond it): a level pushed out
    of the subscribed depth never gets a delete, so without a bound dead prices would pile up.
    """

    def __init__(self, cap: int = 4096) -> None:
        self.cap = cap
        self.by_symbol: dict[str, dict[bytes, tuple[bytes, bytes]]] = {}
        # the pairs whose books are subscribed (None: all): a line sending books for pairs
        # nobody asked for must not make this table grow
        self.allowed: set[str] | None = None

    def note(self, symbol: str, levels: Iterable[Sequence[Any]]) -> None:
        d = self.by_symbol.get(symbol)
        if d is None:
            allowed = self.allowed
            if allowed is not None and symbol not in allowed:
                return
            d = self.by_symbol[symbol] = {}
        for lv in levels:
            p = lv[0].encode()
            d.pop(p, None)
            if len(lv) > 2:
                d[p] = (lv[1].encode(), lv[2].encode())
        if len(d) > self.cap:
            for k in list(d)[: len(d) // 4]:
                del d[k]

    def get(self, symbol: str, price: bytes, qty: bytes) -> bytes | None:
        d = self.by_symbol.get(symbol)
        if d is None:
            return None
        hit = d.get(price)
        return hit[1] if hit is not None and hit[0] == qty else None

    def forget(self, symbol: str) -> None:
        self.by_symbol.pop(symbol, None)


class V1Parser:
    """Raw v1 frames -> protocol-neutral events (plus `V1TradeEvent` / `SpreadEvent`)."""

    def __init__(self, times: LevelTimes | None = None) -> None:
        self.times = times or LevelTimes()
        self.unknown = 0

    def parse(self, raw: bytes) -> Event | V1TradeEvent | SpreadEvent:
        try:
            msg = _loads(raw)
        except orjson.JSONDecodeError:
            return self._unknown("invalid json", raw)
        if isinstance(msg, list):
            return self._data(msg, raw)
        if not isinstance(msg, dict):
            return self._unknown("not an object", raw)
        event = msg.get("event")
        if event == "heartbeat":
            return HeartbeatEvent()
        if event == "pong":
            rid = msg.get("reqid")
            return PongEvent(rid if isinstance(rid, int) else None)
        if event == "systemStatus":
            cid = msg.get("connectionID")
            return StatusEvent(
                str(msg.get("status", "")), "v1", str(msg.get("version", "")), cid if isinstance(cid, int) else None
            )
        if event == "subscriptionStatus":
            return subscription_ack(msg)
        if event == "error":
            rid = msg.get("reqid")
            return AckEvent(
                "subscribe",
                False,
                None,
                None,
                rid if isinstance(rid, int) else None,
                str(msg.get("errorMessage", "error")),
            )
        return self._unknown(f"event {event!r}", raw)

    # -- data frames ----------------------------------------------------------------------
    def _data(self, msg: list, raw: bytes) -> Event | V1TradeEvent | SpreadEvent:
        if len(msg) < 4 or not isinstance(msg[-1], str) or not isinstance(msg[-2], str):
            return self._unknown("array shape", raw)
        name, param = channel_base(msg[-2])
        symbol = msg[-1]
        if name == "book":
            return self._book(msg, symbol, raw)
        span = split_frame(raw)
        if span is None:
            return self._unknown("array shape", raw)
        payload = raw[span[0] : span[1]]
        item = msg[1]
        try:
            if name == "trade":
                elements = _FLAT_ARRAY_RE.findall(payload)
                if len(elements) != len(item):
                    return self._unknown("trade elements not flat", raw)
                if not all(_decimal(tr[0]) and _decimal(tr[1]) for tr in item):
                    return self._unknown("trade number not a plain decimal", raw, "trade", symbol)
                return V1TradeEvent(symbol, elements, raw)
            if name in ("ticker", "spread", "ohlc") and not _all_plain(
                item.values() if isinstance(item, dict) else item
            ):
                return self._unknown(f"{name} number not a plain decimal", raw, name, symbol)
            if name == "ticker":
                return TickerEvent(symbol, False, "", payload, raw)
            if name == "spread":
                return SpreadEvent(symbol, str(item[2]), payload, raw)
            if name == "ohlc":
                # [time, endTime, open, high, low, close, vwap, volume, count]: newest by end, then time
                return OhlcEvent(symbol, False, param or 1, f"{item[1]}|{item[0]}", int(item[8]), payload, raw)
        except (IndexError, TypeError, ValueError):
            return self._unknown(f"{name} fields", raw)
        return self._unknown(f"channel {msg[-2]!r}", raw)

    def _book(self, msg: list, symbol: str, raw: bytes) -> Event:
        bids: list[LevelTuple] = []
        asks: list[LevelTuple] = []
        checksum: int | None = None
        snapshot = False
        ts = ""
        times = self.times
        try:
            for part in msg[1:-2]:
                for key, levels in part.items():
                    if key == "c":
                        checksum = int(levels)
                        continue
                    if key in ("as", "bs"):
                        snapshot = True
                    elif key not in ("a", "b"):
                        continue
                    out = bids if key[0] == "b" else asks
                    for lv in levels:
                        if not (_decimal(lv[0]) and _decimal(lv[1])):
                            return self._unknown("book number not a plain decimal", raw, "book", symbol)
                        out.append(Level(float(lv[0]), lv[0].encode(), lv[1].encode()))
                        if len(lv) > 2 and (snapshot or len(lv) == 3) and lv[2] > ts:
                            ts = lv[2]  # republished ("r") levels keep their old time
                    times.note(symbol, levels)
        except (AttributeError, IndexError, TypeError, ValueError):
            return self._unknown("malformed book level", raw)
        return BookEvent(symbol, snapshot, bids, asks, checksum, ts, raw)

    def _unknown(self, reason: str, raw: bytes, channel: str = "", symbol: str = "") -> UnknownEvent:
        self.unknown += 1
        return UnknownEvent(reason, raw, channel, symbol)


_DECIMAL_RE = re.compile(r"[0-9]{1,24}(?:\.[0-9]{1,24})?")


def _all_plain(values: Any, depth: int = 0) -> bool:
    """Every number in a v1 ticker, spread or ohlc record is a plain non-negative decimal string
    or a finite non-negative JSON number (Kraken's counts), nested at most two lists deep."""
    for v in values:
        if isinstance(v, str):
            if _DECIMAL_RE.fullmatch(v) is None:
                return False
        elif isinstance(v, list):
            if depth >= 2 or not _all_plain(v, depth + 1):
                return False
        elif isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v < float("inf"):
            return False
    return True


def _decimal(text: Any) -> bool:
    """v1 numbers are strings: plain non-negative decimals (never `1e400`, `nan` or `-1`)."""
    return isinstance(text, str) and _DECIMAL_RE.fullmatch(text) is not None


def subscription_ack(msg: dict) -> AckEvent:
    """`subscriptionStatus` -> AckEvent. An `unsubscribed` status is an unsubscribe ack (Kraken
    also sends it when it drops a subscription itself, then with no reqid)."""
    status = msg.get("status")
    sub = msg.get("subscription")
    sub = sub if isinstance(sub, dict) else {}
    channel = sub.get("name")
    if not isinstance(channel, str):
        name = msg.get("channelName")
        channel = channel_base(name)[0] if isinstance(name, str) else None
    pair = msg.get("pair")
    if isinstance(pair, list):
        pair = pair[0] if len(pair) == 1 else None
    rid = msg.get("reqid")
    err = msg.get("errorMessage")
    result = {k: msg[k] for k in ("channelName", "channelID") if k in msg}
    result.update(sub)
    return AckEvent(
        method="unsubscribe" if status == "unsubscribed" else "subscribe",
        success=status in STATUS_OK,
        channel=channel,
        symbol=pair if isinstance(pair, str) else None,
        req_id=rid if isinstance(rid, int) and not isinstance(rid, bool) else None,
        error=str(err) if err is not None else None,
        result=result,
    )


# ---------------------------------------------------------------------------------------------
# Encoding: requests to Kraken v1, and frames for v1 clients.
# ---------------------------------------------------------------------------------------------


def encode_request(
    channel: str,
    symbols: Sequence[str] | None,
    req_id: int | None = None,
    method: str = "subscribe",
    **params: Any,
) -> bytes:
    """`{"event":"subscribe","reqid":n,"pair":[...],"subscription":{"name":..,"depth":..}}`."""
    sub: dict[str, Any] = {"name": channel}
    for k in ("depth", "interval", "snapshot"):
        v = params.get(k)
        if v is not None and not (k == "snapshot" and method != "subscribe"):
            sub[k] = v
    msg: dict[str, Any] = {"event": method}
    if req_id is not None:
        msg["reqid"] = req_id
    if symbols is not None:
        msg["pair"] = list(symbols)
    msg["subscription"] = sub
    return orjson.dumps(msg)


def encode_ping(req_id: int) -> bytes:
    return orjson.dumps({"event": "ping", "reqid": req_id})


def encode_pong(req_id: int | None) -> bytes:
    return orjson.dumps({"event": "pong", "reqid": req_id} if req_id is not None else {"event": "pong"})


HEARTBEAT = b'{"event":"heartbeat"}'


def encode_system_status(system: str, connection_id: int = 0, version: str = V1_VERSION) -> bytes:
    """Kraken's key order (alphabetical): connectionID, event, status, version."""
    return orjson.dumps({"connectionID": connection_id, "event": "systemStatus", "status": system, "version": version})


def encode_subscription_status(
    status: str,
    pair: str | None,
    subscription: dict[str, Any],
    req_id: int | None,
    channel_name: str | None = None,
    channel_id: int | None = None,
    error: str | None = None,
) -> bytes:
    """Kraken's key order: channelID, channelName, event, pair, reqid, status, subscription."""
    msg: dict[str, Any] = {}
    if channel_id is not None:
        msg["channelID"] = channel_id
    if channel_name is not None:
        msg["channelName"] = channel_name
    if error is not None:
        msg["errorMessage"] = error
    msg["event"] = "subscriptionStatus"
    if pair is not None:
        msg["pair"] = pair
    if req_id is not None:
        msg["reqid"] = req_id
    msg["status"] = status
    msg["subscription"] = subscription
    return orjson.dumps(msg)


def encode_error(error: str, req_id: int | None = None) -> bytes:
    msg: dict[str, Any] = {"errorMessage": error, "event": "error"}
    if req_id is not None:
        msg["reqid"] = req_id
    return orjson.dumps(msg)


def encode_request_error(
    error: str, req_id: Any = None, event: str = "subscriptionStatus", channel_id: int | None = None
) -> bytes:
    """A request-level error in Kraken's status shape, as Kraken 1.9 answers an unknown or missing
    `event` (`{"errorMessage":..,"event":"subscriptionStatus","reqid":1,"status":"error"}`), a bad
    `reqid` (`event: pingStatus` for a ping, the reqid echoed as sent) or an unknown `channelID`."""
    msg: dict[str, Any] = {}
    if channel_id is not None:
        msg["channelID"] = channel_id
    msg["errorMessage"] = error
    msg["event"] = event
    if req_id is not None:
        msg["reqid"] = req_id
    msg["status"] = "error"
    return orjson.dumps(msg)


def _sym(symbol: str) -> bytes:
    return orjson.dumps(symbol)


def encode_data(channel_name: str, symbol: str, payload: bytes, channel_id: int = 0) -> bytes:
    """`[channelID,<payload>,"channelName","pair"]` with the payload spliced in verbatim."""
    return b"[%d," % channel_id + payload + b',"' + channel_name.encode() + b'",' + _sym(symbol) + b"]"


class V1Codec:
    """How a v1 merge renders the frames it synthesizes (the arbiters only call `merge.codec`).

    Frames carry channelID 0 and the bare channel name (`book`); the v1 endpoint stamps its own
    id and `book-<depth>` per publication (`relay.protocols.spot_v1.endpoint`), so a frame is still encoded once.
    """

    name = "v1"

    def __init__(self, times: LevelTimes | None = None) -> None:
        self.times = times or LevelTimes()

    @staticmethod
    def timestamp_text(wall: float) -> str:
        """v1 level times: epoch seconds with microseconds (`1534614057.321597`)."""
        return f"{wall:.6f}"

    @staticmethod
    def timestamp_value(text: str) -> float | None:
        try:
            value = float(text)
        except ValueError:
            return None
        return value if 0.0 <= value < 1e11 else None

    def _levels(self, symbol: str, levels: Iterable[tuple[bytes, ...]], ts: bytes) -> bytes:
        get = self.times.get
        parts = []
        for lv in levels:
            p, q = lv[0], lv[1]
            t = get(symbol, p, q) or ts
            parts.append(b'["' + p + b'","' + q + b'","' + t + b'"]')
        return b",".join(parts)

    def book(
        self,
        symbol: str,
        snapshot: bool,
        bids: Iterable[tuple[bytes, ...]],
        asks: Iterable[tuple[bytes, ...]],
        checksum: int,
        timestamp: str,
    ) -> bytes:
        ts = timestamp.encode()
        if snapshot:  # Kraken's v1 snapshots carry no checksum
            payload = b'{"as":[' + self._levels(symbol, asks, ts) + b'],"bs":[' + self._levels(symbol, bids, ts) + b"]}"
        else:
            bids, asks = list(bids), list(asks)
            crc = b'"c":"%d"' % checksum
            if asks and bids:
                payload = (
                    b'{"a":['
                    + self._levels(symbol, asks, ts)
                    + b']},{"b":['
                    + self._levels(symbol, bids, ts)
                    + b"],"
                    + crc
                    + b"}"
                )
            elif asks:
                payload = b'{"a":[' + self._levels(symbol, asks, ts) + b"]," + crc + b"}"
            else:
                payload = b'{"b":[' + self._levels(symbol, bids, ts) + b"]," + crc + b"}"
        return encode_data("book", symbol, payload)

    @staticmethod
    def trades(symbol: str, elements: Iterable[bytes]) -> bytes:
        return encode_data("trade", symbol, b"[" + b",".join(elements) + b"]")

    @staticmethod
    def element(channel: str, symbol: str, element: bytes) -> bytes:
        return encode_data(channel, symbol, element)

    # The merge's `relay` state channel and instrument list keep the v2 object framing.
    elements = staticmethod(encode_elements)
    instrument = staticmethod(encode_instrument)

    @staticmethod
    def status(system: str) -> bytes:
        return encode_system_status(system, 0)  # re-encoded per client by the endpoint
