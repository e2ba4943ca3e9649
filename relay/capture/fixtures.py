"""Turn third-party Kraken recordings into capture records (`kraken-relay capture import`).

Real Kraken traffic exists only in other projects' test data (`../shared/fixtures/kraken/`), in
their own layouts. Converted to capture files, it can be inspected, exported and replayed like
anything the relay recorded. Conversion is pure: `convert(content, fmt, protocol, line)` yields
`Record`s; writing them (`CaptureWriter`) is the caller's business.

Formats:
  `cryptofeed`   cryptofeed's sample_data: `<url> <-> <ts>` a connect, `<url> <- <ts>: <json>` a
                 request the client sent (-> `subscribe`), `<ts>: <json>` a frame received
                 verbatim (-> `frame`); `<ts>` (epoch seconds) becomes `w` and `m`.
  `kraken-sdk`   python-kraken-sdk's `{"init": [...] | {...}, "updates": [...]}`; every message is
                 re-serialized compactly (v1 numbers are strings, so they survive; the sdk's v2
                 file lost its number lexemes and does not verify: use the derived wire file).
  `wire-ndjson`  one raw frame per line, kept byte for byte.

Frames without receive times (`kraken-sdk`, `wire-ndjson`) get synthetic ones: the message's
own time where it has one (v2 `timestamp`, v1 book level / trade times, futures `timestamp` or
`time`), never going backwards, else 10 ms after the previous frame. Frames before the first
timed one count back from it in 10 ms steps; a file with no times at all starts at
2000-01-01T00:00:00Z. `m` equals `w` in imported records.

Every imported line is: a `connect` (`p`, `url`: `--url`, else the file's, else the protocol's
public Kraken URL; `egress` null) 2 ms before the first frame unless the file has one; the
file's requests as `subscribe` records, or when it has none one synthesized request per channel
(and depth / interval) for the symbols the frames carry, 1 ms before the first frame (v1 and
futures: taken from the `subscriptionStatus` / `subscribed` acks when present); for v2, when
the file lacks them, the `status` frame Kraken sends on connect and one ack per subscribed
symbol (frame records marked `synthetic: true`: a relay replaying the file waits for both
before it takes the data); the frames; a
final `disconnect` (code 1000, by `server`) at the last frame's time. A second connect in a
cryptofeed file first closes the previous session (code null, reason `fixture reconnect`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import orjson

from relay.capture.format import CONNECT, DISCONNECT, FRAME, SUBSCRIBE, Record
from relay.core.spot import BOOK_DEPTHS
from relay.protocols.futures.wire import encode_request as futures_request
from relay.protocols.spot_v1.wire import channel_base
from relay.protocols.spot_v1.wire import encode_request as v1_request
from relay.protocols.spot_v2.wire import encode_ack as v2_ack
from relay.protocols.spot_v2.wire import encode_status as v2_status
from relay.protocols.spot_v2.wire import encode_subscribe as v2_request

FORMATS = ("cryptofeed", "kraken-sdk", "wire-ndjson")
PROTOCOLS = ("v2", "v1", "futures")
PUBLIC_URLS = {"v2": "wss://ws.kraken.com/v2", "v1": "wss://ws.kraken.com", "futures": "wss://futures.kraken.com/ws/v1"}
STEP_NS = 10_000_000  # spacing of frames without a time of their own
DEFAULT_START_NS = 946_684_800 * 10**9  # 2000-01-01T00:00:00Z: a file with no times at all
_MS = 1_000_000


class FixtureError(ValueError):
    """The file is not in the named format, or not traffic of the named protocol."""


@dataclass(slots=True)
class _Item:
    kind: str  # connect, subscribe, frame
    ts: int | None  # wall ns; None: to be synthesized
    data: bytes | None = None
    url: str | None = None


# -- sniffing ------------------------------------------------------------------------------------
_V1_EVENTS = {"systemStatus", "subscriptionStatus", "heartbeat", "pong", "ping"}
_FUTURES_EVENTS = {"info", "subscribed", "unsubscribed", "subscribed_failed", "unsubscribed_failed", "alert"}


def sniff_protocol(raw: bytes) -> str | None:
    """The protocol a received frame belongs to (`v2`, `v1`, `futures`), None when it does not
    tell (invalid JSON, `{"event":"error"}` that v1 and futures share)."""
    try:
        msg = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if isinstance(msg, list):
        return "v1"
    if not isinstance(msg, dict):
        return None
    if "channel" in msg or "method" in msg:
        return "v2"
    if "feed" in msg:
        return "futures"
    event = msg.get("event")
    if event in _V1_EVENTS:
        return "v1"
    if event in _FUTURES_EVENTS:
        return "futures"
    return None


# -- parsing the formats -------------------------------------------------------------------------
def _seconds_ns(text: str) -> int:
    try:
        return int(Decimal(text.strip()) * 10**9)
    except InvalidOperation:
        raise FixtureError(f"not an epoch time: {text!r}") from None


def _cryptofeed(content: bytes) -> list[_Item]:
    items: list[_Item] = []
    for n, line in enumerate(content.splitlines(), 1):
        text = line.decode("utf-8", "surrogateescape")
        if not text.strip():
            continue
        try:
            if " <-> " in text.partition(": ")[0]:
                url, _, ts = text.partition(" <-> ")
                items.append(_Item(CONNECT, _seconds_ns(ts), url=url.strip()))
                continue
            head, sep, body = line.partition(b": ")
            if not sep:
                raise FixtureError("no `: ` separator")
            head_text = head.decode()
            if " <- " in head_text:
                url, _, ts = head_text.partition(" <- ")
                items.append(_Item(SUBSCRIBE, _seconds_ns(ts), body, url.strip()))
            elif " -> " in head_text:  # a REST response in the same layout: not websocket traffic
                continue
            else:
                items.append(_Item(FRAME, _seconds_ns(head_text), body))
        except (FixtureError, UnicodeDecodeError) as exc:
            raise FixtureError(f"line {n}: not a cryptofeed capture line ({exc})") from None
    return items


def _compact(msg: Any) -> bytes:
    return json.dumps(msg, separators=(",", ":"), ensure_ascii=False).encode()


def _kraken_sdk(content: bytes) -> list[_Item]:
    try:
        doc = json.loads(content)
    except ValueError as exc:
        raise FixtureError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict) or "updates" not in doc:
        raise FixtureError('not a python-kraken-sdk fixture ({"init": ..., "updates": [...]})')
    init = doc.get("init")
    init_msgs = init if isinstance(init, list) else [] if init is None else [init]
    updates = doc["updates"] if isinstance(doc["updates"], list) else []
    return [_Item(FRAME, None, _compact(m)) for m in init_msgs + updates]


def _wire_ndjson(content: bytes) -> list[_Item]:
    return [_Item(FRAME, None, ln.strip()) for ln in content.splitlines() if ln.strip()]


_PARSERS = {"cryptofeed": _cryptofeed, "kraken-sdk": _kraken_sdk, "wire-ndjson": _wire_ndjson}


# -- a message's own time ------------------------------------------------------------------------
def _iso_ns(text: Any) -> int | None:
    if not isinstance(text, str):
        return None
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        return None
    return int(dt.timestamp()) * 10**9 + dt.microsecond * 1000


def _epoch_ns(text: Any) -> int | None:
    try:
        return int(Decimal(text) * 10**9) if isinstance(text, str) else None
    except InvalidOperation:
        return None


def _latest(values: list[int | None]) -> int | None:
    return max((v for v in values if v is not None), default=None)


def own_time_ns(raw: bytes, protocol: str) -> int | None:
    """The time a message carries itself (the newest one in it), in ns; None when it has none."""
    try:
        msg = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    try:
        if protocol == "v2" and isinstance(msg, dict):
            data = msg.get("data")
            items = data if isinstance(data, list) else []
            return _latest([_iso_ns(msg.get("timestamp"))] + [_iso_ns(d.get("timestamp")) for d in items])
        if protocol == "v1" and isinstance(msg, list) and len(msg) >= 4:
            name = channel_base(str(msg[-2]))[0]
            if name == "book":
                return _latest(
                    [_epoch_ns(lv[2]) for part in msg[1:-2] for k, lvs in part.items() if k != "c" for lv in lvs]
                )
            if name == "trade":
                return _latest([_epoch_ns(t[2]) for t in msg[1]])
            return None
        if protocol == "futures" and isinstance(msg, dict):
            ms = msg.get("timestamp", msg.get("time"))
            return ms * _MS if isinstance(ms, int) and not isinstance(ms, bool) else None
    except (AttributeError, IndexError, KeyError, TypeError):
        return None
    return None


def _synthesize_times(items: list[_Item], protocol: str) -> None:
    """Fill in `ts` where it is None (module docstring: own time, never backwards, else +10 ms)."""
    own = [it.ts if it.ts is not None else own_time_ns(it.data, protocol) if it.data else None for it in items]
    first_i, first_t = next(((i, t) for i, t in enumerate(own) if t is not None), (0, DEFAULT_START_NS))
    prev = first_t - STEP_NS * (first_i + 1)
    for it, t in zip(items, own):
        if it.ts is None:
            it.ts = max(t, prev) if t is not None else prev + STEP_NS
        prev = it.ts


# -- synthesized requests ------------------------------------------------------------------------
def depth_for(levels: int) -> int:
    """The smallest Kraken depth holding a snapshot of `levels` levels a side."""
    return next((d for d in BOOK_DEPTHS if d >= levels), BOOK_DEPTHS[-1])


def _requests(frames: list[bytes], protocol: str) -> list[bytes]:
    """One subscribe per (channel, parameters) for the symbols the frames carry (module docstring)."""
    subs: dict[tuple[str, str, int], dict[str, None]] = {}  # (channel, param name, value) -> symbols

    def add(channel: str, symbol: Any, param: str = "", value: int = 0) -> None:
        if isinstance(symbol, str):
            subs.setdefault((channel, param, value), {})[symbol] = None

    for raw in frames:
        try:
            msg = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        try:
            if protocol == "v2" and isinstance(msg, dict):
                channel, data = msg.get("channel"), msg.get("data")
                if channel in ("book", "ticker", "trade", "ohlc") and isinstance(data, list):
                    for d in data:
                        if channel == "book" and msg.get("type") == "snapshot":
                            add("book", d["symbol"], "depth", depth_for(max(len(d["bids"]), len(d["asks"]))))
                        elif channel == "ohlc":
                            add("ohlc", d["symbol"], "interval", int(d["interval"]))
                        elif channel in ("ticker", "trade"):
                            add(channel, d["symbol"])
                elif channel == "instrument":
                    subs.setdefault(("instrument", "", 0), {})
            elif protocol == "v1" and isinstance(msg, list) and len(msg) >= 4:
                name, param = channel_base(str(msg[-2]))
                add(name, msg[-1], "depth" if name == "book" else "interval" if name == "ohlc" else "", param)
            elif protocol == "futures" and isinstance(msg, dict):
                feed = msg.get("feed")
                if isinstance(feed, str) and feed != "heartbeat":
                    add(feed.removesuffix("_snapshot"), msg.get("product_id"))
        except (AttributeError, KeyError, TypeError, ValueError):
            continue
    acks = _acked(frames, protocol)
    out: list[bytes] = []
    for (channel, pname, value), symbols in (acks or subs).items():
        params: dict[str, Any] = {pname: value} if pname else {}
        if protocol == "v2":
            out.append(v2_request(channel, list(symbols) or None, len(out) + 1, **params))
        elif protocol == "v1":
            out.append(v1_request(channel, list(symbols), len(out) + 1, **params))
        else:
            out.append(futures_request(channel, list(symbols)))
    return out


def _acked(frames: list[bytes], protocol: str) -> dict[tuple[str, str, int], dict[str, None]]:
    """What the acks say was subscribed (v2 `subscribe` results, v1 `subscriptionStatus`, futures
    `subscribed`)."""
    subs: dict[tuple[str, str, int], dict[str, None]] = {}
    for raw in frames:
        if b'"subscri' not in raw:
            continue
        try:
            msg = orjson.loads(raw)
            if not isinstance(msg, dict):
                continue
            if protocol == "v2" and msg.get("method") == "subscribe" and msg.get("success"):
                res = msg["result"]
                param = "depth" if "depth" in res else "interval" if "interval" in res else ""
                symbols = subs.setdefault((res["channel"], param, int(res[param]) if param else 0), {})
                if isinstance(res.get("symbol"), str):
                    symbols[res["symbol"]] = None
            elif protocol == "v1" and msg.get("event") == "subscriptionStatus" and msg.get("status") == "subscribed":
                sub = msg["subscription"]
                name = sub["name"]
                param = "depth" if "depth" in sub else "interval" if "interval" in sub else ""
                subs.setdefault((name, param, int(sub.get(param, 0)) if param else 0), {})[msg["pair"]] = None
            elif protocol == "futures" and msg.get("event") == "subscribed":
                for p in msg.get("product_ids") or ():
                    subs.setdefault((msg["feed"], "", 0), {})[p] = None
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
    return subs


# -- assembling a line ---------------------------------------------------------------------------
def convert(content: bytes, fmt: str, protocol: str, line: str, url: str | None = None) -> Iterator[Record]:
    """The capture records of one fixture (module docstring); `FixtureError` when it is not one."""
    if fmt not in _PARSERS:
        raise FixtureError(f"unknown format {fmt!r} (one of {', '.join(FORMATS)})")
    if protocol not in PROTOCOLS:
        raise FixtureError(f"unknown protocol {protocol!r} (one of {', '.join(PROTOCOLS)})")
    items = _PARSERS[fmt](content)
    frames = [it.data for it in items if it.kind == FRAME and it.data is not None]
    if not frames:
        raise FixtureError("no received frames in the file")
    seen = next((p for p in map(sniff_protocol, frames[:50]) if p is not None), None)
    if seen is not None and seen != protocol:
        raise FixtureError(f"the frames are {seen} traffic, not {protocol}")
    _synthesize_times(items, protocol)
    file_url = next((it.url for it in items if it.url), None)
    the_url = url or file_url or PUBLIC_URLS[protocol]
    first_frame = next(it.ts for it in items if it.kind == FRAME)
    assert first_frame is not None

    def connect(ts: int) -> Record:
        return Record(ts, ts, line, CONNECT, None, {"p": protocol, "url": the_url, "egress": None})

    if items[0].kind != CONNECT:
        yield connect(first_frame - 2 * _MS)
    requests = [] if any(it.kind == SUBSCRIBE for it in items) else _requests(frames, protocol)
    session, last = items[0].kind != CONNECT, first_frame
    for it in items:
        ts = it.ts
        assert ts is not None
        if it.kind == CONNECT:
            if session:
                yield Record(ts, ts, line, DISCONNECT, None, _closed(None, None, "fixture reconnect"))
            session = True
            yield connect(ts)
            continue
        if requests and it.kind == FRAME:  # the synthesized requests, once, before the first frame
            for req in requests:
                yield Record(ts - _MS, ts - _MS, line, SUBSCRIBE, req, {})
            if protocol == "v2":
                for frame in _v2_greeting(frames, requests, ts - _MS):
                    yield Record(ts - _MS, ts - _MS, line, FRAME, frame, {"synthetic": True})
            requests = []
        yield Record(ts, ts, line, it.kind, it.data, {})
        last = ts
    yield Record(last, last, line, DISCONNECT, None, _closed(1000, "server", "1000"))


def _v2_greeting(frames: list[bytes], requests: list[bytes], ts: int) -> list[bytes]:
    """What Kraken sends before any v2 data and a wire file may lack: the `status` frame on
    connect and one subscribe ack per symbol of each (synthesized) request. A relay waits for
    both before it takes data for a stream, so a replay of the file needs them."""
    head = frames[:10]
    out: list[bytes] = []
    if not any(f.startswith(b'{"channel":"status"') for f in head):
        out.append(v2_status("online", "2.0.0", 0))
    if any(b'"method":"subscribe"' in f for f in head):
        return out
    when = datetime.fromtimestamp(ts / 1e9, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    for raw in requests:
        req = orjson.loads(raw)
        params = dict(req["params"])
        symbols = params.pop("symbol", None) or [None]
        for sym in symbols:
            result = {**params, "snapshot": True} if params["channel"] in ("book", "ohlc") else dict(params)
            if sym is not None:
                result["symbol"] = sym
            out.append(v2_ack("subscribe", result, req.get("req_id"), when, when))
    return out


def _closed(code: int | None, by: str | None, reason: str) -> dict[str, Any]:
    return {"code": code, "text": "", "by": by, "reason": reason}


def convert_file(path: str | Path, fmt: str, protocol: str, line: str, url: str | None = None) -> Iterator[Record]:
    """`convert` of a file's content."""
    return convert(Path(path).read_bytes(), fmt, protocol, line, url)
