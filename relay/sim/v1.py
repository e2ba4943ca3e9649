"""Spot v1 framing for the simulator: the same market, served on `/` as Kraken serves v1.

Every line serves v2 on `/v2` and v1 on `/` (one market, one fault state per line). The market
encodes v2 frames once; a v1 connection gets them translated by `V1Framer` (cached per frame
within one dispatch, so all v1 clients of a line share the bytes):

* pair names are v1 names (`XBT/USD`, the REST `wsname`);
* channel ids are per line (each line numbers its (channelName, pair) streams differently, as
  two Kraken connections do), so a relay must not rely on upstream ids;
* book levels are `[price, volume, time]` with the v2 wire text, checksum `"c"` in the last
  payload object (the v2 checksum: same texts, same CRC), snapshots `as`/`bs` without checksum;
* trades `[price, volume, time, "b"|"s", "l"|"m", ""]`; ticker the v1 object; `spread`
  `[bid, ask, time, bidVolume, askVolume]` from the bbo ticker; ohlc the v1 array, whose `time`
  is the time of the candle's last update (the trade's), never its `endTime`.

Requests are answered as Kraken answers them: `subscriptionStatus` per pair with Kraken's
`subscription` key order (alphabetical), no trade snapshot after a `trade` subscribe (the real
captures show none), `Currency pair not in ISO 4217-A3 format X` for a malformed pair and
`Currency pair not supported X` for one it does not list, unsubscribe by pair + subscription or
by `channelID`.

Faults act on the v2 frames before translation, so every fault kind works on v1 too (a
corrupted v2 checksum becomes a corrupted `"c"`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from datetime import datetime
from typing import Any, Protocol

import orjson

from relay.core.book import LevelTuple
from relay.core.events import BookEvent
from relay.core.spot import BOOK_DEPTHS, OHLC_INTERVALS
from relay.protocols.spot_v1.wire import (
    ERR_ALREADY,
    ERR_DEPTH,
    ERR_EVENT,
    ERR_INTERVAL,
    ERR_MALFORMED,
    ERR_NAME,
    ERR_NO_EVENT,
    ERR_NOT_SUBSCRIBED,
    ERR_PAIR_FIELD,
    ERR_RATE,
    ERR_REQID,
    ERR_SUB_FIELD,
    HEARTBEAT,
    V1_VERSION,
    encode_data,
    encode_error,
    encode_pong,
    encode_request_error,
    encode_subscription_status,
    encode_system_status,
    err_pair,
    err_pair_format,
    pair_format_ok,
    subscription_echo,
    valid_reqid,
)
from relay.protocols.spot_v2.wire import V2Parser
from relay.sim.instruments import Instrument, rest_asset_pairs
from relay.sim.market import TICKER_BBO, TICKER_TRADES

MarketKey = tuple[str, str, int]  # (channel, v2 symbol, key): the simulator's market subscription


class V1Session(Protocol):
    """What a v1 request needs from the simulator connection it arrived on (`server.SimConn`).

    A seam, so that this module does not depend on the server that uses it."""

    @property
    def requests(self) -> list[tuple[float, dict[str, Any]]]:
        """This line's request log."""
        ...

    def put(self, frame: bytes) -> None: ...

    def rate_ok(self) -> bool:
        """Take a subscribe token (False: `Exceeded msg rate`)."""
        ...

    def market_subscribe(self, key: MarketKey) -> int:
        """Subscribe this connection to a market stream; the market sequence number of the start."""
        ...

    def market_unsubscribe(self, key: MarketKey) -> None: ...

    def market_snapshot(self, key: MarketKey) -> bytes | None: ...


__all__ = ["V1Conn", "V1Framer", "V1Session", "HEARTBEAT", "hello", "on_message", "translate_for"]

_NUM = re.compile(rb'"(\w+)":(-?[0-9][0-9.eE+-]*)')
_FRAME_TS = re.compile(rb'"timestamp":"([^"]+)"\}$')  # a v2 ohlc frame's own time (the update's)
_STR = re.compile(rb'"(\w+)":"([^"]*)"')
_FLAT_OBJECT_RE = re.compile(rb"\{[^{}]*\}")
_ts_cache: dict[str, bytes] = {}


def epoch(ts: str) -> bytes:
    """RFC 3339 -> v1's epoch seconds with µs (`1693415325.036931`)."""
    out = _ts_cache.get(ts)
    if out is None:
        if len(_ts_cache) > 4096:
            _ts_cache.clear()
        try:
            out = b"%.6f" % datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
        except ValueError:
            out = b"%.6f" % time.time()
        _ts_cache[ts] = out
    return out


def _fields(element: bytes) -> dict[bytes, bytes]:
    d = dict(_NUM.findall(element))
    d.update(_STR.findall(element))
    return d


class V1Conn:
    """v1 state of one simulator connection: its market subscriptions by v1 stream."""

    __slots__ = ("streams",)

    def __init__(self) -> None:
        # market key (channel, v2 symbol, key) -> list of (v1 channel, channelName, pair)
        self.streams: dict[MarketKey, list[tuple[str, str, str]]] = {}


class V1Framer:
    """Translate the market's v2 frames for one line's v1 clients."""

    def __init__(self, instruments: Iterable[Instrument], line_idx: int) -> None:
        """`instruments`: the simulated symbols' instruments (the market's symbols)."""
        self.parser = V2Parser()
        self.ids: dict[tuple[str, str], int] = {}
        self.base = 100 + 1000 * line_idx
        self.v1_name: dict[str, str] = {}
        self.v2_name: dict[str, str] = {}
        self.candle_time: dict[tuple[bytes, bytes], bytes] = {}  # (symbol, interval_begin) -> last update
        for inst in instruments:
            sym = inst.symbol
            info = next(iter(rest_asset_pairs([inst])["result"].values()))
            self.v1_name[sym] = info["wsname"]
            self.v2_name[info["wsname"]] = sym

    def channel_id(self, name: str, pair: str) -> int:
        cid = self.ids.get((name, pair))
        if cid is None:
            cid = self.ids[(name, pair)] = self.base + 7 * len(self.ids)
        return cid

    def frame(self, v1_channel: str, name: str, pair: str, v2frame: bytes) -> bytes | None:
        cid = self.channel_id(name, pair)
        try:
            payload = self._payload(v1_channel, v2frame)
        except (KeyError, ValueError, IndexError, TypeError):
            return None
        if payload is None:
            return None
        return encode_data(name, pair, payload, cid)

    def _payload(self, channel: str, raw: bytes) -> bytes | None:
        if channel == "book":
            ev = self.parser.parse(raw)
            if not isinstance(ev, BookEvent):
                return None
            bids, asks = ev.bids, ev.asks
            ts = epoch(ev.timestamp)

            def lv(levels: list[LevelTuple]) -> bytes:
                return b",".join(b'["' + p + b'","' + q + b'","' + ts + b'"]' for _, p, q in levels)

            if ev.snapshot:
                return b'{"as":[' + lv(asks) + b'],"bs":[' + lv(bids) + b"]}"
            if ev.checksum is None:  # an update without a checksum: not a Kraken frame
                return None
            crc = b'"c":"%d"' % ev.checksum
            if asks and bids:
                return b'{"a":[' + lv(asks) + b']},{"b":[' + lv(bids) + b"]," + crc + b"}"
            if asks:
                return b'{"a":[' + lv(asks) + b"]," + crc + b"}"
            return b'{"b":[' + lv(bids) + b"]," + crc + b"}"
        elements = _FLAT_OBJECT_RE.findall(raw, raw.find(b'"data"'))
        if not elements:
            return None
        if channel == "trade":
            out = []
            for e in elements:
                f = _fields(e)
                side = b"b" if f[b"side"] == b"buy" else b"s"
                kind = b"l" if f.get(b"ord_type") == b"limit" else b"m"
                out.append(
                    b'["'
                    + f[b"price"]
                    + b'","'
                    + f[b"qty"]
                    + b'","'
                    + epoch(f[b"timestamp"].decode())
                    + b'","'
                    + side
                    + b'","'
                    + kind
                    + b'",""]'
                )
            return b"[" + b",".join(out) + b"]"
        f = _fields(elements[-1])
        if channel == "ticker":

            def q(k: bytes) -> bytes:
                return b'"' + f[k] + b'"'

            ask_lot, bid_lot = b"%d" % float(f[b"ask_qty"]), b"%d" % float(f[b"bid_qty"])
            return (
                b'{"a":['
                + q(b"ask")
                + b","
                + ask_lot
                + b","
                + q(b"ask_qty")
                + b'],"b":['
                + q(b"bid")
                + b","
                + bid_lot
                + b","
                + q(b"bid_qty")
                + b'],"c":['
                + q(b"last")
                + b',"0.00000000"],"v":['
                + q(b"volume")
                + b","
                + q(b"volume")
                + b'],"p":['
                + q(b"vwap")
                + b","
                + q(b"vwap")
                + b'],"t":[0,0],"l":['
                + q(b"low")
                + b","
                + q(b"low")
                + b'],"h":['
                + q(b"high")
                + b","
                + q(b"high")
                + b'],"o":['
                + q(b"last")
                + b","
                + q(b"last")
                + b"]}"
            )
        if channel == "spread":
            return (
                b'["'
                + f[b"bid"]
                + b'","'
                + f[b"ask"]
                + b'","'
                + epoch(f[b"timestamp"].decode())
                + b'","'
                + f[b"bid_qty"]
                + b'","'
                + f[b"ask_qty"]
                + b'"]'
            )
        if channel == "ohlc":
            begin_text = f[b"interval_begin"]
            begin = float(epoch(begin_text.decode()))
            end = b"%.6f" % (begin + 60 * int(f[b"interval"]))
            ck = (f[b"symbol"], begin_text)
            if b'"type":"update"' in raw and (m := _FRAME_TS.search(raw)) is not None:
                now = self.candle_time[ck] = epoch(m.group(1).decode())  # the trade that changed it
            else:  # a snapshot: the candle's last update, else its start (no trade seen here)
                now = self.candle_time.get(ck) or b"%.6f" % begin
            if len(self.candle_time) > 4096:
                self.candle_time.clear()
            parts = [now, end] + [f[k] for k in (b"open", b"high", b"low", b"close", b"vwap", b"volume")]
            return b"[" + b",".join(b'"' + p + b'"' for p in parts) + b"," + f[b"trades"] + b"]"
        return None


def hello(line_system: str, cid: int) -> bytes:
    return encode_system_status(line_system, cid, V1_VERSION)


def market_key(channel: str, sym: str, sub_key: int) -> tuple[str, str, int]:
    """The market subscription that feeds a v1 stream."""
    if channel == "ticker":
        return ("ticker", sym, TICKER_TRADES)
    if channel == "spread":
        return ("ticker", sym, TICKER_BBO)
    return (channel, sym, sub_key)


def on_message(conn: V1Session, state: V1Conn, framer: V1Framer, raw: bytes) -> None:
    """One v1 request from a client of the simulator (`state`: its v1 streams, `framer`: its line's)."""
    try:
        msg = orjson.loads(raw)
    except orjson.JSONDecodeError:
        msg = None
    reqs = conn.requests
    reqs.append((time.time(), msg if isinstance(msg, dict) else {"_raw": raw[:200].decode("utf-8", "replace")}))
    del reqs[:-10_000]
    if not isinstance(msg, dict):
        conn.put(encode_error(ERR_MALFORMED))
        return
    event = msg.get("event")
    if "reqid" in msg and not valid_reqid(msg["reqid"]):
        conn.put(
            encode_request_error(ERR_REQID, msg["reqid"], "pingStatus" if event == "ping" else "subscriptionStatus")
        )
        return
    rid = msg.get("reqid")
    if event == "ping":
        conn.put(encode_pong(rid))
        return
    if event is None:
        conn.put(encode_request_error(ERR_NO_EVENT, rid))
        return
    if event not in ("subscribe", "unsubscribe"):
        conn.put(encode_request_error(ERR_EVENT, rid))
        return
    if not conn.rate_ok():
        pairs = msg.get("pair")
        names = [p for p in pairs if isinstance(p, str)] if isinstance(pairs, list) else []
        sub = msg.get("subscription")
        echo = subscription_echo(sub) if isinstance(sub, dict) else {}
        for p in names:
            conn.put(encode_subscription_status("error", p, echo, rid, error=ERR_RATE))
        if not names:
            conn.put(encode_error(ERR_RATE, rid))
        return
    if event == "unsubscribe" and "channelID" in msg:
        _unsubscribe_id(conn, state, framer, msg["channelID"], rid)
        return
    sub = msg.get("subscription")
    if not isinstance(sub, dict):
        conn.put(encode_error(ERR_SUB_FIELD, rid))
        return
    pairs = msg.get("pair")
    if not isinstance(pairs, list) or not pairs or not all(isinstance(p, str) for p in pairs):
        conn.put(encode_error(ERR_PAIR_FIELD, rid))
        return
    name = sub.get("name")
    given: dict[str, Any] = {"name": name}
    key = 0
    if name == "book":
        key = sub.get("depth", 10)
        given["depth"] = key
        ok = key in BOOK_DEPTHS and not isinstance(key, bool)
        err = ERR_DEPTH
    elif name == "ohlc":
        key = sub.get("interval", 1)
        given["interval"] = key
        ok = key in OHLC_INTERVALS and not isinstance(key, bool)
        err = ERR_INTERVAL
    else:
        ok = name in ("trade", "ticker", "spread")
        err = ERR_NAME
    echo = subscription_echo(given)
    channel = name if isinstance(name, str) else ""  # == name whenever `ok`
    for pair in dict.fromkeys(pairs):
        if not ok:
            conn.put(encode_subscription_status("error", pair, echo, rid, error=err))
            continue
        if not pair_format_ok(pair):
            conn.put(encode_subscription_status("error", pair, echo, rid, error=err_pair_format(pair)))
            continue
        sym = framer.v2_name.get(pair)
        if sym is None:
            conn.put(encode_subscription_status("error", pair, echo, rid, error=err_pair(pair)))
            continue
        cname = f"{channel}-{key}" if channel in ("book", "ohlc") else channel
        mkey = market_key(channel, sym, key)
        stream = (channel, cname, pair)
        streams = state.streams.get(mkey, [])
        if event == "subscribe":
            if stream in streams:
                conn.put(encode_subscription_status("error", pair, echo, rid, error=ERR_ALREADY))
                continue
            conn.put(encode_subscription_status("subscribed", pair, echo, rid, cname, framer.channel_id(cname, pair)))
            if not streams:
                conn.market_subscribe(mkey)
            state.streams.setdefault(mkey, []).append(stream)
            if channel in ("book", "ticker", "ohlc"):  # no snapshot for trade (the captures) or spread
                snap = conn.market_snapshot(mkey)
                if snap is not None:
                    f = framer.frame(channel, cname, pair, snap)
                    if f is not None:
                        conn.put(f)
        else:
            if stream not in streams:
                conn.put(encode_subscription_status("error", pair, echo, rid, error=ERR_NOT_SUBSCRIBED))
                continue
            _drop_stream(conn, state, mkey, stream)
            conn.put(encode_subscription_status("unsubscribed", pair, echo, rid, cname, framer.channel_id(cname, pair)))


def _drop_stream(conn: V1Session, state: V1Conn, mkey: MarketKey, stream: tuple[str, str, str]) -> None:
    streams = state.streams.get(mkey, [])
    if stream in streams:
        streams.remove(stream)
    if not streams:
        state.streams.pop(mkey, None)
        conn.market_unsubscribe(mkey)


def _unsubscribe_id(conn: V1Session, state: V1Conn, framer: V1Framer, cid: Any, rid: Any) -> None:
    """`{"event":"unsubscribe","channelID":N}`: the stream this connection has under that id."""
    if not isinstance(cid, int) or isinstance(cid, bool):
        conn.put(encode_error(ERR_MALFORMED, rid))
        return
    for mkey, streams in list(state.streams.items()):
        for stream in list(streams):
            channel, cname, pair = stream
            if framer.channel_id(cname, pair) != cid:
                continue
            _drop_stream(conn, state, mkey, stream)
            echo: dict[str, Any] = {"name": channel}
            if channel == "book":
                echo["depth"] = mkey[2]
            elif channel == "ohlc":
                echo["interval"] = mkey[2]
            conn.put(encode_subscription_status("unsubscribed", pair, subscription_echo(echo), rid, cname, cid))
            return
    conn.put(encode_request_error(ERR_NOT_SUBSCRIBED, rid, channel_id=cid))


def translate_for(
    state: V1Conn,
    framer: V1Framer,
    key: MarketKey,
    frame: bytes,
    cache: dict[tuple[MarketKey, tuple[str, str, str]], bytes],
) -> list[bytes]:
    """The v1 frames a v2 market frame on `key` becomes for a connection (`state`) of `framer`'s
    line. `cache` lives for one dispatch of one market event, where each key has exactly one frame."""
    out = []
    for stream in state.streams.get(key, ()):
        ck = (key, stream)
        f = cache.get(ck)
        if f is None:
            f = cache[ck] = framer.frame(stream[0], stream[1], stream[2], frame) or b""
        if f:
            out.append(f)
    return out
