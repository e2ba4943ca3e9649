"""What a capture says about each line (`kraken-relay capture inspect`), Sans-I/O.

`Inspector` is fed `Record`s (`relay.capture.reader.Reader` order: per line, as recorded) and
keeps per-stream state only (counters, the current session's books, bounded lists), so a capture
of any length streams through it in O(n log k). Book frames are re-verified with the client-side
verifiers (`relay.verify`): a line's books per session (a reconnect starts fresh verifiers, as a
client would), spot CRC32 per (symbol, depth) and futures `seq` steps per product; trades per
line (v2 `trade_id`, futures `uid`, v1 the exact trade array, a weaker key). The published
stream is re-verified per (protocol, symbol, depth), as its clients receive it.

Times: gaps inside a session are measured on the monotonic clock (`m`, one relay run); the time
a line was down (a disconnect to the next connect, possibly across relay runs) on the wall clock.

`result()` returns this dict (times as ISO 8601 UTC strings, `*_ns` as epoch nanoseconds):
  `gap_seconds`    the gap threshold
  `records`        records fed;  `ok`  no checksum mismatch, seq error or trade duplicate anywhere
  `lines`          {line name: line}, where a line is:
    `protocol`, `urls` (list), `first`, `last`, `first_ns`, `last_ns`, `duration_seconds`,
    `records`, `connects`, `sessions` (connects plus sessions whose connect the capture lacks),
    `unterminated_sessions` (a connect or the end of the capture with no disconnect before it),
    `subscribes` (requests sent), `frames`, `bytes`, `unparsed_frames` (not JSON of the protocol),
    `channels`          {channel: {"frames": n, "symbols": {symbol: n}}} (symbol "" when none;
                        v2 `channel` or the `method` of acks/pongs, v1 the channel name or event,
                        futures `feed` or `event`)
    `disconnects`       {"total", "by_reason": {}, "by_code": {} (null code counted as "1006"),
                        "by": {"server"|"relay"|"none": n}}
    `connect_failures`  {"total", "by_reason": {}}
    `resyncs`           {"total", "by_reason": {}, "by_result": {}}
    `gaps`              periods with no frame longer than `gap_seconds` inside a session:
                        {"count", "total_seconds", "longest_seconds",
                         "listed": the longest 20, by start: [{"start", "end", "seconds"}]}
    `downtime`          disconnect to next connect: same keys, listed entries add "reason";
                        plus "down_at_end" (no connect after the last disconnect: also a clean
                        stop), "down_since", "failed_connects_at_end" (connect failures after
                        it: still down when the capture ends)
    `books`             {"frames", "snapshots", "verified" (checksum ok / contiguous seq),
                        "checksum_mismatches" (spot), "seq_errors" (futures), "mismatch_runs"
                        (runs of consecutive bad frames of one symbol: one per corruption),
                        "before_snapshot" (updates with no book yet), "unchecked" (no checksum),
                        "by_symbol": {symbol: {"frames", "snapshots", "verified", "bad"}},
                        "listed": the first 20 bad frames [{"at", "session", "symbol",
                        "expected", "computed"} (spot) | {"at", "session", "symbol", "last_seq",
                        "seq"} (futures)]}
    `trades`            {"trades", "duplicates", "id_gaps" (v2 trade_id jumps; expected across
                        reconnects)}
    `unknown_kinds`     {kind: n} for record kinds this version does not know
  `published`      {protocol: {"records", "first", "last", "first_ns", "last_ns", "frames", "bytes",
                    "unparsed_frames", "channels", "books" (as above, "listed" entries add
                    "depth"; "by_symbol" keyed "SYMBOL@DEPTH"), "trades"}}
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import orjson

from relay.capture.fixtures import depth_for, sniff_protocol
from relay.capture.format import CONNECT, CONNECT_FAILED, DISCONNECT, FRAME, PUBLISHED, RESYNC, SUBSCRIBE, Record
from relay.protocols.spot_v1.endpoint import ChannelIds
from relay.protocols.spot_v1.wire import V1Parser, V1TradeEvent, channel_base, encode_subscription_status
from relay.verify.futures import FuturesVerifier
from relay.verify.spot_v1 import V1Verifier
from relay.verify.spot_v2 import V2Verifier

LISTED = 20  # gaps, downtimes and bad book frames listed per stream (the counts are complete)
V1_TRADE_WINDOW = 10_000  # recent v1 trade arrays remembered per pair for the duplicate check
_FEED_ERRORS = (ValueError, LookupError, TypeError, AttributeError)  # hostile or unexpected frames


def iso(ns: int | None) -> str | None:
    """Epoch nanoseconds as ISO 8601 UTC with microseconds (Kraken's v2 format)."""
    if ns is None:
        return None
    dt = datetime.fromtimestamp(ns // 10**9, UTC).replace(microsecond=ns // 1000 % 10**6)  # exact, no float
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# -- periods (gaps, downtime) --------------------------------------------------------------------
class _Periods:
    """Count, total and longest of some periods, keeping only the `LISTED` longest."""

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0
        self.longest = 0.0
        self._heap: list[tuple[float, int, dict[str, Any]]] = []

    def add(self, start_ns: int, end_ns: int, seconds: float, **extra: Any) -> None:
        self.count += 1
        self.total += seconds
        self.longest = max(self.longest, seconds)
        entry = {"start": iso(start_ns), "end": iso(end_ns), "seconds": round(seconds, 6), **extra}
        item = (seconds, self.count, entry)
        if len(self._heap) < LISTED:
            heapq.heappush(self._heap, item)
        elif seconds > self._heap[0][0]:
            heapq.heapreplace(self._heap, item)

    def as_dict(self) -> dict[str, Any]:
        listed = [e for _, _, e in sorted(self._heap, key=lambda t: t[1])]
        return {
            "count": self.count,
            "total_seconds": round(self.total, 6),
            "longest_seconds": round(self.longest, 6),
            "listed": listed,
        }


# -- book re-verification ------------------------------------------------------------------------
class BookCheck:
    """One protocol's book verifiers for one stream: a line's session, or a published stream.

    `feed(raw, msg, symbol, depth)` -> (snapshot, status, detail): status `ok`, `bad`, `early`
    (an update with no book), `none` (nothing to check: a v1 snapshot or an update without
    `"c"`); detail the verifier's (symbol, expected, computed) / (product, last seq, seq).
    Spot verifiers are kept per depth (one depth per book), v1 channelIDs are announced to them
    from the frame itself when the capture lacks the `subscriptionStatus`.
    """

    def __init__(self, protocol: str) -> None:
        self.protocol = protocol
        self.depths: dict[str, int] = {}  # v2: symbol -> subscribed depth (requests and acks)
        self._v2: dict[int, V2Verifier] = {}
        self._v1: dict[int, V1Verifier] = {}
        self._futures = FuturesVerifier([])

    def feed(self, raw: bytes, msg: Any, symbol: str, depth: int | None) -> tuple[bool, str, tuple[Any, ...] | None]:
        if self.protocol == "v2":
            return self._feed_v2(raw, msg, symbol, depth)
        if self.protocol == "v1":
            return self._feed_v1(raw, msg, depth)
        return self._feed_futures(raw, msg)

    def _feed_v2(
        self, raw: bytes, msg: Any, symbol: str, depth: int | None
    ) -> tuple[bool, str, tuple[Any, ...] | None]:
        snapshot = msg.get("type") == "snapshot"
        if depth is None:
            depth = self.depths.get(symbol)
            if depth is None and snapshot:  # no request or ack seen: the snapshot's size tells
                item = msg["data"][0]
                depth = self.depths[symbol] = depth_for(max(len(item["bids"]), len(item["asks"])))
        depth = depth or 10  # Kraken's default
        v = self._v2.get(depth)
        if v is None:
            v = self._v2[depth] = V2Verifier([], depth, trades=False)
        ok, early = v.checksums_ok, v.updates_before_snapshot
        v.feed(raw)
        if v.checksum_bad:
            detail = v.checksum_bad[-1]
            v.checksum_bad.clear()
            return snapshot, "bad", detail
        if v.updates_before_snapshot > early:
            return snapshot, "early", None
        return snapshot, "ok" if v.checksums_ok > ok else "none", None

    def _feed_v1(self, raw: bytes, msg: Any, depth: int | None) -> tuple[bool, str, tuple[Any, ...] | None]:
        cid, name, pair = msg[0], msg[-2], msg[-1]
        depth = channel_base(name)[1] or depth or 10
        v = self._v1.get(depth)
        if v is None:
            v = self._v1[depth] = V1Verifier([], depth, trades=False)
        if v.channels.get(cid) != (name, pair):  # announce the channel the frame names
            v.feed(encode_subscription_status("subscribed", pair, {"depth": depth, "name": "book"}, None, name, cid))
        ok, snaps, early = v.checksums_ok, v.snapshots, v.updates_before_snapshot
        v.feed(raw)
        if v.checksum_bad:
            detail = v.checksum_bad[-1]
            v.checksum_bad.clear()
            return False, "bad", detail
        if v.snapshots > snaps:
            return True, "none", None
        if v.updates_before_snapshot > early:
            return False, "early", None
        return False, "ok" if v.checksums_ok > ok else "none", None

    def _feed_futures(self, raw: bytes, msg: Any) -> tuple[bool, str, tuple[Any, ...] | None]:
        v = self._futures
        v.feed(raw)
        if msg.get("feed") == "book_snapshot":
            return True, "none", None
        if v.seq_errors:
            detail = v.seq_errors[-1]
            v.seq_errors.clear()
            return False, "early" if detail[1] == -1 else "bad", detail
        return False, "ok", None


class _BookStats:
    """Counts of re-verified book frames for one stream, with the first bad ones listed."""

    def __init__(self, protocol: str | None) -> None:
        self.protocol = protocol
        self.frames = self.snapshots = self.verified = self.bad = self.runs = self.early = self.unchecked = 0
        self.by_symbol: dict[str, list[int]] = {}  # symbol -> [frames, snapshots, verified, bad]
        self.listed: list[dict[str, Any]] = []
        self._bad_now: set[str] = set()  # symbols whose last checked frame was bad

    def new_session(self) -> None:
        self._bad_now.clear()

    def add(self, key: str, snapshot: bool, status: str, detail: tuple[Any, ...] | None, at: int, **where: Any) -> None:
        self.frames += 1
        row = self.by_symbol.get(key)
        if row is None:
            row = self.by_symbol[key] = [0, 0, 0, 0]
        row[0] += 1
        if snapshot:
            self.snapshots += 1
            row[1] += 1
        if status == "ok":
            self.verified += 1
            row[2] += 1
            self._bad_now.discard(key)
        elif status == "bad":
            self.bad += 1
            row[3] += 1
            if key not in self._bad_now:
                self.runs += 1
                self._bad_now.add(key)
            if len(self.listed) < LISTED and detail is not None:
                entry: dict[str, Any] = {"at": iso(at), **where, "symbol": detail[0]}
                if self.protocol == "futures":
                    entry.update(last_seq=detail[1], seq=detail[2])
                else:
                    entry.update(expected=detail[1], computed=detail[2])
                self.listed.append(entry)
        elif status == "early":
            self.early += 1
        elif snapshot:  # a v1 / futures snapshot: nothing to check, but a fresh book
            self._bad_now.discard(key)
        else:
            self.unchecked += 1

    def as_dict(self) -> dict[str, Any]:
        futures = self.protocol == "futures"
        return {
            "frames": self.frames,
            "snapshots": self.snapshots,
            "verified": self.verified,
            "checksum_mismatches": 0 if futures else self.bad,
            "seq_errors": self.bad if futures else 0,
            "mismatch_runs": self.runs,
            "before_snapshot": self.early,
            "unchecked": self.unchecked,
            "by_symbol": {
                k: {"frames": r[0], "snapshots": r[1], "verified": r[2], "bad": r[3]}
                for k, r in sorted(self.by_symbol.items())
            },
            "listed": self.listed,
        }


# -- trades --------------------------------------------------------------------------------------
class _Trades:
    """Every trade of one stream once: v2 `trade_id`, futures `uid` (the verifiers), v1 the
    exact trade array within a bounded recent window per pair (v1 has no trade id)."""

    def __init__(self, protocol: str) -> None:
        self.protocol = protocol
        self.trades = self.duplicates = self.id_gaps = 0
        self._v2 = V2Verifier([]) if protocol == "v2" else None
        self._futures = FuturesVerifier([]) if protocol == "futures" else None
        self._v1 = V1Parser() if protocol == "v1" else None
        self._recent: dict[str, dict[bytes, None]] = {}

    def feed(self, raw: bytes) -> None:
        v: V2Verifier | FuturesVerifier | None = self._v2 or self._futures
        if v is not None:
            n, d = v.trade_count, v.trade_dups
            v.feed(raw)
            self.trades += v.trade_count - n
            self.duplicates += v.trade_dups - d
            if self._v2 is not None:
                self.id_gaps += len(self._v2.trade_gaps)
                self._v2.trade_gaps.clear()
            v.errors.clear()
            return
        assert self._v1 is not None
        ev = self._v1.parse(raw)
        if not isinstance(ev, V1TradeEvent):
            raise ValueError("not a v1 trade frame")
        recent = self._recent.setdefault(ev.symbol, {})
        for element in ev.trades:
            if element in recent:
                self.duplicates += 1
                continue
            self.trades += 1
            recent[element] = None
            if len(recent) > V1_TRADE_WINDOW:
                del recent[next(iter(recent))]

    def as_dict(self) -> dict[str, Any]:
        return {"trades": self.trades, "duplicates": self.duplicates, "id_gaps": self.id_gaps}


# -- frame classification ------------------------------------------------------------------------
def _symbols(values: Iterable[Any]) -> list[str]:
    return list(dict.fromkeys(v for v in values if isinstance(v, str))) or [""]


def classify(protocol: str | None, msg: Any, v1_channels: dict[int, tuple[str, str]]) -> tuple[str, list[str]]:
    """(channel, symbols) of a parsed received frame (see the module docstring's `channels`)."""
    if protocol == "v1" and isinstance(msg, list):
        if len(msg) >= 4 and isinstance(msg[-2], str) and isinstance(msg[-1], str):
            return msg[-2], [msg[-1]]
        known = v1_channels.get(msg[0]) if msg and isinstance(msg[0], int) else None
        return (known[0], [known[1]]) if known else ("(unknown array)", [""])
    if not isinstance(msg, dict):
        return "(not an object)", [""]
    if protocol == "v2":
        channel = msg.get("channel")
        if isinstance(channel, str) and "method" not in msg:
            data = msg.get("data")
            items = data if isinstance(data, list) else []
            return channel, _symbols(d.get("symbol") for d in items if isinstance(d, dict))
        result = msg.get("result")
        symbol = result.get("symbol") if isinstance(result, dict) else None
        return str(msg.get("method", "(unknown)")), _symbols([symbol if symbol is not None else msg.get("symbol")])
    if protocol == "v1":
        return str(msg.get("event", "(unknown)")), _symbols([msg.get("pair")])
    if protocol == "futures":
        event, feed = msg.get("event"), msg.get("feed")
        if event is None and isinstance(feed, str):
            return feed, _symbols([msg.get("product_id")])
        products = msg.get("product_ids")  # acks name the feed too: `subscribed` is the channel
        return str(event or "(unknown)"), _symbols(products if isinstance(products, list) else [])
    return "(unknown)", [""]


class _Channels:
    def __init__(self) -> None:
        self.by: dict[str, Counter[str]] = {}

    def add(self, channel: str, symbols: list[str]) -> None:
        c = self.by.get(channel)
        if c is None:
            c = self.by[channel] = Counter()
        for s in symbols:
            c[s] += 1

    def as_dict(self, frames: dict[str, int]) -> dict[str, Any]:
        return {ch: {"frames": frames[ch], "symbols": dict(sorted(c.items()))} for ch, c in sorted(self.by.items())}


def _loads(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


# -- one line ------------------------------------------------------------------------------------
class _Line:
    def __init__(self, name: str, gap_ns: int) -> None:
        self.name, self.gap_ns = name, gap_ns
        self.protocol: str | None = None
        self.urls: dict[str, None] = {}
        self.first: int | None = None
        self.last: int | None = None
        self.records = self.connects = self.sessions = self.unterminated = self.subscribes = 0
        self.frames = self.bytes = self.unparsed = 0
        self.channels = _Channels()
        self.channel_frames: Counter[str] = Counter()
        self.disc_reason: Counter[str] = Counter()
        self.disc_code: Counter[str] = Counter()
        self.disc_by: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self.resync_reason: Counter[str] = Counter()
        self.resync_result: Counter[str] = Counter()
        self.unknown_kinds: Counter[str] = Counter()
        self.gaps = _Periods()
        self.downtime = _Periods()
        self.books = _BookStats(None)
        self.trades: dict[str, _Trades] = {}
        # the current session
        self.in_session = False
        self.check: BookCheck | None = None
        self.v1_channels: dict[int, tuple[str, str]] = {}
        self.last_mono = 0
        self.last_wall = 0
        self.down_since: int | None = None
        self.down_reason = ""
        self.failed_since_down = 0

    # -- sessions ---------------------------------------------------------------------------
    def _start(self, wall: int, mono: int) -> None:
        if self.down_since is not None:
            self.downtime.add(
                self.down_since, wall, max(0, wall - self.down_since) / 1e9, reason=self.down_reason or None
            )
            self.down_since = None
        self.failed_since_down = 0
        self.in_session = True
        self.sessions += 1
        self.check = None  # fresh verifiers, created with the session's protocol on first use
        self.v1_channels = {}
        self.books.new_session()
        self.last_mono, self.last_wall = mono, wall

    def _silence(self, wall: int, mono: int) -> None:
        if mono - self.last_mono > self.gap_ns:
            self.gaps.add(self.last_wall, wall, (mono - self.last_mono) / 1e9)
        self.last_mono, self.last_wall = mono, wall

    def feed(self, rec: Record) -> None:
        self.records += 1
        w, m, kind, f = rec.wall_ns, rec.mono_ns, rec.kind, rec.fields
        if self.first is None:
            self.first = w
        self.last = w
        if kind == FRAME:
            if not self.in_session:
                self._start(w, m)
            self._silence(w, m)
            self._frame(rec.data or b"", w)
        elif kind == CONNECT:
            if self.in_session:
                self.unterminated += 1
            self._note_endpoint(f)
            self.connects += 1
            self._start(w, m)
        elif kind == DISCONNECT:
            if self.in_session:
                self._silence(w, m)
            self.in_session = False
            self.check = None
            reason = str(f.get("reason") or "")
            code = f.get("code")
            self.disc_reason[reason] += 1
            self.disc_code[str(code if code is not None else 1006)] += 1
            self.disc_by[str(f.get("by") or "none")] += 1
            self.down_since, self.down_reason = w, reason
        elif kind == SUBSCRIBE:
            if not self.in_session:
                self._start(w, m)
            self.subscribes += 1
            self._request(rec.data or b"")
        elif kind == CONNECT_FAILED:
            self._note_endpoint(f)
            self.failures[str(f.get("reason") or "")] += 1
            self.failed_since_down += 1
        elif kind == RESYNC:
            self.resync_reason[str(f.get("reason") or "")] += 1
            self.resync_result[str(f.get("result") or "")] += 1
        else:
            self.unknown_kinds[kind] += 1

    def _note_endpoint(self, f: dict[str, Any]) -> None:
        if isinstance(f.get("p"), str):
            self.protocol = f["p"]
            self.books.protocol = self.books.protocol or f["p"]
        if isinstance(f.get("url"), str):
            self.urls[f["url"]] = None

    # -- requests and frames ----------------------------------------------------------------
    def _request(self, raw: bytes) -> None:
        """v2: the depth each book symbol was subscribed at (for the verifier's truncation)."""
        if self.protocol != "v2":
            return
        msg = _loads(raw)
        if not isinstance(msg, dict) or msg.get("method") != "subscribe":
            return
        params = msg.get("params")
        if isinstance(params, dict) and params.get("channel") == "book" and isinstance(params.get("symbol"), list):
            depth = params.get("depth", 10)
            for s in params["symbol"]:
                if isinstance(s, str) and isinstance(depth, int):
                    self._session_check().depths[s] = depth

    def _session_check(self) -> BookCheck:
        if self.check is None or self.check.protocol != self.protocol:
            self.check = BookCheck(self.protocol or "v2")
        return self.check

    def _frame(self, raw: bytes, at: int) -> None:
        self.frames += 1
        self.bytes += len(raw)
        if self.protocol is None:
            self.protocol = sniff_protocol(raw)
            self.books.protocol = self.protocol
        msg = _loads(raw)
        if msg is None:
            self.unparsed += 1
            self._count("(invalid json)", [""])
            return
        protocol = self.protocol
        channel, symbols = classify(protocol, msg, self.v1_channels)
        self._count(channel, symbols)
        try:
            if protocol == "v2":
                self._v2(raw, msg, channel, symbols, at)
            elif protocol == "v1":
                self._v1(raw, msg, channel, at)
            elif protocol == "futures":
                self._futures(raw, msg, channel, symbols, at)
        except _FEED_ERRORS:
            self.unparsed += 1

    def _count(self, channel: str, symbols: list[str]) -> None:
        self.channel_frames[channel] += 1
        self.channels.add(channel, symbols)

    def _book(self, raw: bytes, msg: Any, symbol: str, at: int, depth: int | None = None) -> None:
        snapshot, status, detail = self._session_check().feed(raw, msg, symbol, depth)
        self.books.add(symbol, snapshot, status, detail, at, session=self.sessions)

    def _trade(self, raw: bytes) -> None:
        assert self.protocol is not None
        t = self.trades.get(self.protocol)
        if t is None:
            t = self.trades[self.protocol] = _Trades(self.protocol)
        t.feed(raw)

    def _v2(self, raw: bytes, msg: Any, channel: str, symbols: list[str], at: int) -> None:
        if channel == "book":
            self._book(raw, msg, symbols[0], at)
        elif channel == "trade":
            self._trade(raw)
        elif channel == "subscribe" and msg.get("success"):
            result = msg.get("result") or {}
            if result.get("channel") == "book" and isinstance(result.get("depth"), int):
                self._session_check().depths[str(result.get("symbol"))] = result["depth"]

    def _v1(self, raw: bytes, msg: Any, channel: str, at: int) -> None:
        if isinstance(msg, list):
            name = channel_base(channel)[0]
            if name == "book" and isinstance(msg[-1], str) and isinstance(msg[-2], str):
                self._book(raw, msg, msg[-1], at)
            elif name == "trade":
                self._trade(raw)
        elif channel == "subscriptionStatus" and msg.get("status") == "subscribed":
            cid, name, pair = msg.get("channelID"), msg.get("channelName"), msg.get("pair")
            if isinstance(cid, int) and isinstance(name, str) and isinstance(pair, str):
                self.v1_channels[cid] = (name, pair)

    def _futures(self, raw: bytes, msg: Any, channel: str, symbols: list[str], at: int) -> None:
        if channel in ("book", "book_snapshot"):
            self._book(raw, msg, symbols[0], at)
        elif channel in ("trade", "trade_snapshot"):
            self._trade(raw)

    # -- the result -------------------------------------------------------------------------
    def as_dict(self) -> dict[str, Any]:
        trades = [t.as_dict() for t in self.trades.values()]
        return {
            "protocol": self.protocol,
            "urls": list(self.urls),
            **_span(self.first, self.last),
            "records": self.records,
            "connects": self.connects,
            "sessions": self.sessions,
            "unterminated_sessions": self.unterminated + self.in_session,
            "subscribes": self.subscribes,
            "frames": self.frames,
            "bytes": self.bytes,
            "unparsed_frames": self.unparsed,
            "channels": self.channels.as_dict(self.channel_frames),
            "disconnects": {
                "total": sum(self.disc_reason.values()),
                "by_reason": dict(self.disc_reason.most_common()),
                "by_code": dict(self.disc_code.most_common()),
                "by": dict(self.disc_by.most_common()),
            },
            "connect_failures": {"total": sum(self.failures.values()), "by_reason": dict(self.failures.most_common())},
            "resyncs": {
                "total": sum(self.resync_reason.values()),
                "by_reason": dict(self.resync_reason.most_common()),
                "by_result": dict(self.resync_result.most_common()),
            },
            "gaps": self.gaps.as_dict(),
            "downtime": {
                **self.downtime.as_dict(),
                "down_at_end": self.down_since is not None,
                "down_since": iso(self.down_since),
                "failed_connects_at_end": self.failed_since_down if self.down_since is not None else 0,
            },
            "books": self.books.as_dict(),
            "trades": {k: sum(t[k] for t in trades) for k in ("trades", "duplicates", "id_gaps")},
            "unknown_kinds": dict(self.unknown_kinds),
        }


def _span(first: int | None, last: int | None) -> dict[str, Any]:
    return {
        "first": iso(first),
        "last": iso(last),
        "first_ns": first,
        "last_ns": last,
        "duration_seconds": round((last - first) / 1e9, 6) if first is not None and last is not None else 0.0,
    }


# -- the published stream ------------------------------------------------------------------------
class _Published:
    """One protocol's published stream: frames per (channel, symbol), books per (symbol, depth)."""

    def __init__(self, protocol: str) -> None:
        self.protocol = protocol
        self.records = self.frames = self.bytes = self.unparsed = 0
        self.first: int | None = None
        self.last: int | None = None
        self.channels = _Channels()
        self.channel_frames: Counter[str] = Counter()
        self.books = _BookStats(protocol)
        self.checks: dict[tuple[str, int | None], BookCheck] = {}
        self.trades = _Trades(protocol)
        self._ids = ChannelIds()  # v1: frames stamped as the endpoint stamps them for clients

    def feed(self, rec: Record) -> None:
        self.records += 1
        if self.first is None:
            self.first = rec.wall_ns
        self.last = rec.wall_ns
        if rec.kind != FRAME:
            return
        raw = rec.data or b""
        f = rec.fields
        channel, symbol = str(f.get("channel") or ""), str(f.get("symbol") or "")
        key = f.get("key") if isinstance(f.get("key"), int) else None
        self.frames += 1
        self.bytes += len(raw)
        self.channel_frames[channel] += 1
        self.channels.add(channel, [symbol])
        try:
            if channel == "book":
                if self.protocol == "v1":
                    raw = self._ids.stamp(("book", symbol, key or 10), raw)
                msg = orjson.loads(raw)
                check = self.checks.get((symbol, key))
                if check is None:
                    check = self.checks[(symbol, key)] = BookCheck(self.protocol)
                snapshot, status, detail = check.feed(raw, msg, symbol, key)
                self.books.add(f"{symbol}@{key}", snapshot, status, detail, rec.wall_ns, depth=key)
            elif channel == "trade":
                self.trades.feed(raw)
        except (*_FEED_ERRORS, orjson.JSONDecodeError):
            self.unparsed += 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "records": self.records,
            **_span(self.first, self.last),
            "frames": self.frames,
            "bytes": self.bytes,
            "unparsed_frames": self.unparsed,
            "channels": self.channels.as_dict(self.channel_frames),
            "books": self.books.as_dict(),
            "trades": self.trades.as_dict(),
        }


# -- the inspector -------------------------------------------------------------------------------
class Inspector:
    """Feed it every record of a capture (`feed`), then read `result()` (module docstring)."""

    def __init__(self, gap_seconds: float = 5.0) -> None:
        self.gap_seconds = gap_seconds
        self._gap_ns = int(gap_seconds * 1e9)
        self.records = 0
        self.lines: dict[str, _Line] = {}
        self.published: dict[str, _Published] = {}

    def feed(self, rec: Record) -> None:
        self.records += 1
        if rec.line == PUBLISHED:
            p = str(rec.fields.get("p") or "v2")
            stream = self.published.get(p)
            if stream is None:
                stream = self.published[p] = _Published(p)
            stream.feed(rec)
            return
        line = self.lines.get(rec.line)
        if line is None:
            line = self.lines[rec.line] = _Line(rec.line, self._gap_ns)
        line.feed(rec)

    def feed_all(self, records: Iterable[Record]) -> Inspector:
        for rec in records:
            self.feed(rec)
        return self

    def result(self) -> dict[str, Any]:
        lines = {name: ln.as_dict() for name, ln in sorted(self.lines.items())}
        published = {p: s.as_dict() for p, s in sorted(self.published.items())}
        streams = list(lines.values()) + list(published.values())
        ok = all(
            s["books"]["checksum_mismatches"] == 0 and s["books"]["seq_errors"] == 0 and s["trades"]["duplicates"] == 0
            for s in streams
        )
        return {
            "gap_seconds": self.gap_seconds,
            "records": self.records,
            "ok": ok,
            "lines": lines,
            "published": published,
        }


def inspect(records: Iterable[Record], gap_seconds: float = 5.0) -> dict[str, Any]:
    """`Inspector(gap_seconds)` fed `records`: the result dict."""
    return Inspector(gap_seconds).feed_all(records).result()


# -- the text report -----------------------------------------------------------------------------
def _counts(d: dict[str, int]) -> str:
    return ", ".join(f"{k or '-'} x{n}" for k, n in d.items())


def _channels_text(channels: dict[str, Any], indent: str) -> list[str]:
    out = []
    for ch, c in channels.items():
        syms = {s: n for s, n in c["symbols"].items() if s}
        detail = f" ({', '.join(f'{s} {n}' for s, n in syms.items())})" if syms else ""
        out.append(f"{indent}{ch} {c['frames']}{detail}")
    return out


def _books_text(b: dict[str, Any], protocol: str | None) -> str:
    bad = (
        f"{b['seq_errors']} seq errors" if protocol == "futures" else f"{b['checksum_mismatches']} checksum mismatches"
    )
    text = f"{b['frames']} frames, {b['snapshots']} snapshots, {b['verified']} verified, {bad}"
    if b["mismatch_runs"]:
        text += f" in {b['mismatch_runs']} runs"
    if b["before_snapshot"]:
        text += f", {b['before_snapshot']} before a snapshot"
    return text


def _periods_text(p: dict[str, Any], what: str) -> list[str]:
    out = [f"{p['count']} {what}, {p['total_seconds']:g} s total, longest {p['longest_seconds']:g} s"]
    for e in p["listed"]:
        reason = f" ({e['reason']})" if e.get("reason") else ""
        out.append(f"      {e['start']} -> {e['end']}  {e['seconds']:g} s{reason}")
    return out


def text_report(result: dict[str, Any]) -> str:
    """The result as an operator reads it: one block per line, then the published stream."""
    out = [
        f"{result['records']} records; gap threshold {result['gap_seconds']:g} s; {'OK' if result['ok'] else 'PROBLEMS'}"
    ]
    for name, ln in result["lines"].items():
        out.append("")
        out.append(f"line {name}  {ln['protocol'] or '?'}  {' '.join(ln['urls'])}")
        out.append(f"  span        {ln['first']} .. {ln['last']} ({ln['duration_seconds']:g} s)")
        unterminated = f", {ln['unterminated_sessions']} without disconnect" if ln["unterminated_sessions"] else ""
        out.append(
            f"  sessions    {ln['sessions']} ({ln['connects']} connects{unterminated}), {ln['subscribes']} requests sent"
        )
        unparsed = f", {ln['unparsed_frames']} unparsed" if ln["unparsed_frames"] else ""
        out.append(f"  frames      {ln['frames']} ({ln['bytes']} bytes{unparsed})")
        out += _channels_text(ln["channels"], "      ")
        out.append(f"  books       {_books_text(ln['books'], ln['protocol'])}")
        for e in ln["books"]["listed"]:
            what = (
                f"seq {e['last_seq']} -> {e['seq']}"
                if "seq" in e
                else f"checksum {e['expected']}, computed {e['computed']}"
            )
            out.append(f"      {e['at']} session {e['session']} {e['symbol']}: {what}")
        t = ln["trades"]
        out.append(f"  trades      {t['trades']}, {t['duplicates']} duplicates, {t['id_gaps']} id gaps")
        d = ln["disconnects"]
        out.append(
            f"  disconnects {d['total']}"
            + (f": {_counts(d['by_reason'])}; codes {_counts(d['by_code'])}" if d["total"] else "")
        )
        cf = ln["connect_failures"]
        if cf["total"]:
            out.append(f"  connect failures {cf['total']}: {_counts(cf['by_reason'])}")
        rs = ln["resyncs"]
        if rs["total"]:
            out.append(f"  resyncs     {rs['total']}: {_counts(rs['by_reason'])}; results {_counts(rs['by_result'])}")
        out += [
            "  gaps        " + s if i == 0 else s for i, s in enumerate(_periods_text(ln["gaps"], "silent periods"))
        ]
        dt = ln["downtime"]
        down = _periods_text(dt, "down periods")
        if dt["failed_connects_at_end"]:
            down[0] += (
                f"; still down at the end: since {dt['down_since']}, {dt['failed_connects_at_end']} failed connects"
            )
        out += ["  down        " + s if i == 0 else s for i, s in enumerate(down)]
    for p, pub in result["published"].items():
        out.append("")
        out.append(f"published {p}")
        out.append(f"  span        {pub['first']} .. {pub['last']} ({pub['duration_seconds']:g} s)")
        unparsed = f", {pub['unparsed_frames']} unparsed" if pub["unparsed_frames"] else ""
        out.append(f"  frames      {pub['frames']} ({pub['bytes']} bytes{unparsed})")
        out += _channels_text(pub["channels"], "      ")
        out.append(f"  books       {_books_text(pub['books'], p)}")
        for e in pub["books"]["listed"]:
            what = (
                f"seq {e['last_seq']} -> {e['seq']}"
                if "seq" in e
                else f"checksum {e['expected']}, computed {e['computed']}"
            )
            out.append(f"      {e['at']} {e['symbol']}@{e['depth']}: {what}")
        t = pub["trades"]
        out.append(f"  trades      {t['trades']}, {t['duplicates']} duplicates, {t['id_gaps']} id gaps")
    return "\n".join(out) + "\n"
