"""The local Spot v1 endpoint (`/`, as Kraken serves it) for existing v1 clients (cryptofeed, ...).

Sans-I/O: `V1Endpoint` answers requests and fans publications out to client sessions
(`relay.protocols.interfaces.Session`: `queue(text)`, `deliver(websocket frame)`,
`deliver_book`, `open_book`, `stop_book`, `subs`), so the listener's client machinery
(coalesced writes, slow-client policy, limits) serves v1 clients exactly as it serves v2 ones.

Channel ids: v1 streams are keyed by a channelID. Upstream ids die with each upstream connection,
so the relay assigns its own, one per (channelName, pair), stable for the life of the process:
a client keeps the same id across upstream failovers. The merge publishes frames with id 0 and
the bare channel name; `stamp()` rewrites the leading id and the trailing channel name once per
publication (not per client), so frames are still encoded once.

Only configured pairs are served (no dynamic upstream subscriptions on v1).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from relay.core.keys import SubKey
from relay.core.spot import BOOK_DEPTHS, OHLC_INTERVALS
from relay.core.wsframe import text_frame
from relay.protocols.interfaces import Session
from relay.protocols.spot_v1.wire import (
    HEARTBEAT,
    encode_error,
    encode_pong,
    encode_subscription_status,
    encode_system_status,
    split_frame,
)

log = logging.getLogger("relay.server")

ERR_MALFORMED = "Malformed request"
ERR_EVENT = "Unsupported event"
ERR_PAIR_FIELD = "Pair field must be an array"
ERR_SUB_FIELD = "Subscription field must be an object"
ERR_NAME = "Subscription name invalid"
ERR_DEPTH = "Subscription depth not supported"
ERR_INTERVAL = "Subscription ohlc interval not supported"
ERR_ALREADY = "Already subscribed"
ERR_NOT_SUBSCRIBED = "Subscription Not Found"
ERR_LIMIT = "Subscription limit exceeded"
ERR_TOO_MANY = "Too many pairs in one request"
ERR_REQID = "Reqid field must be an integer"
CHANNELS = ("book", "trade", "ticker", "spread", "ohlc")


def err_pair(pair: str) -> str:
    return f"Currency pair not supported {pair}"


def channel_name(channel: str, key: int) -> str:
    return f"{channel}-{key}" if channel in ("book", "ohlc") else channel


class ChannelIds:
    """The relay's own channelID per (channelName, pair): assigned once, never reused."""

    def __init__(self) -> None:
        self._ids: dict[tuple[str, str], int] = {}
        self._next = itertools.count(1)
        self._stamps: dict[tuple[str, str, int], tuple[bytes, bytes]] = {}

    def get(self, name: str, pair: str) -> int:
        cid = self._ids.get((name, pair))
        if cid is None:
            cid = self._ids[(name, pair)] = next(self._next)
        return cid

    def stamp(self, key: tuple[str, str, int], frame: bytes) -> bytes:
        """`frame` (from the merge: any id, any channel name) as sent on subscription `key`."""
        parts = self._stamps.get(key)
        if parts is None:
            channel, pair, k = key
            name = channel_name(channel, k)
            parts = (b"[%d," % self.get(name, pair), b',"' + name.encode() + b'",' + orjson.dumps(pair) + b"]")
            self._stamps[key] = parts
        span = split_frame(frame)
        if span is None:
            return frame
        return parts[0] + frame[span[0] : span[1]] + parts[1]


class StampedSource:
    """The merge as the client machinery sees it: snapshots already carry the relay's ids."""

    def __init__(self, merge: Any, ids: ChannelIds) -> None:
        self.merge = merge
        self.ids = ids

    def book_snapshot(self, symbol: str, depth: int) -> bytes | None:
        snap = self.merge.book_snapshot(symbol, depth)
        return None if snap is None else self.ids.stamp(SubKey("book", symbol, depth), snap)

    def system_status(self) -> str:
        return self.merge.system_status()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.merge, name)


@dataclass(slots=True)
class V1Subscribe:
    event: str  # subscribe | unsubscribe
    channel: str
    pairs: list[str]
    key: int  # depth (book), interval (ohlc), else 0
    snapshot: bool
    req_id: int | None
    subscription: dict[str, Any] = field(default_factory=dict)  # echoed in subscriptionStatus


@dataclass(slots=True)
class V1Ping:
    req_id: int | None


@dataclass(slots=True)
class V1Reject:
    error: str
    req_id: int | None
    frames: list[bytes] = field(default_factory=list)  # per-pair errors, when the pairs are known


def parse_request(raw: bytes, max_pairs: int = 200) -> V1Subscribe | V1Ping | V1Reject:
    """One client message -> a typed request, or a rejection in Kraken's v1 shapes."""
    try:
        msg = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return V1Reject(ERR_MALFORMED, None)
    if not isinstance(msg, dict):
        return V1Reject(ERR_MALFORMED, None)
    rid = msg.get("reqid")
    if rid is not None and (not isinstance(rid, int) or isinstance(rid, bool)):
        return V1Reject(ERR_REQID, None)
    event = msg.get("event")
    if event == "ping":
        return V1Ping(rid)
    if event not in ("subscribe", "unsubscribe"):
        return V1Reject(ERR_EVENT, rid)
    sub = msg.get("subscription")
    if not isinstance(sub, dict):
        return V1Reject(ERR_SUB_FIELD, rid)
    pairs = msg.get("pair")
    if not isinstance(pairs, list) or not pairs or not all(isinstance(p, str) for p in pairs):
        return V1Reject(ERR_PAIR_FIELD, rid)
    if len(pairs) > max_pairs:
        return V1Reject(ERR_TOO_MANY, rid)
    name = sub.get("name")
    echo: dict[str, Any] = {"name": name}

    def per_pair(error: str) -> V1Reject:
        return V1Reject(error, rid, [encode_subscription_status("error", p, echo, rid, error=error) for p in pairs])

    if name == "*" and event == "unsubscribe":  # every subscription of these pairs
        return V1Subscribe(event, "*", list(dict.fromkeys(pairs)), 0, False, rid, echo)
    if name not in CHANNELS:
        return per_pair(ERR_NAME)
    key = 0
    if name == "book":
        depth = sub.get("depth", 10)
        if depth not in BOOK_DEPTHS or isinstance(depth, bool):
            return per_pair(ERR_DEPTH)
        key = echo["depth"] = depth
    elif name == "ohlc":
        interval = sub.get("interval", 1)
        if interval not in OHLC_INTERVALS or isinstance(interval, bool):
            return per_pair(ERR_INTERVAL)
        key = echo["interval"] = interval
    snapshot = sub.get("snapshot", True)
    if not isinstance(snapshot, bool):
        return per_pair(ERR_MALFORMED)
    return V1Subscribe(event, name, list(dict.fromkeys(pairs)), key, snapshot, rid, echo)


class V1Endpoint:
    """Subscriptions and dispatch for v1 clients (no I/O); the listener's `Endpoint` for `path`.

    Heartbeats: `{"event":"heartbeat"}` to a client with subscriptions after `heartbeat_interval`
    without any frame (Kraken: about 1 s), sent from `tick`.
    """

    name = "v1"
    heartbeat = HEARTBEAT

    def __init__(
        self,
        merge: Any,
        static: Mapping[str, Iterable[str]],
        book_depth: int,
        ohlc_intervals: Iterable[int] = (1,),
        *,
        max_subscriptions_per_client: int = 200,
        trade_snapshot_count: int = 50,
        version: str = "relay",
        path: str = "/",
        heartbeat_interval: float = 1.0,
    ) -> None:
        self.path = path
        self.heartbeat_interval = heartbeat_interval
        self.merge = merge
        self.ids = ChannelIds()
        self.source = StampedSource(merge, self.ids)
        self.static = {ch: frozenset(static.get(ch, ())) for ch in CHANNELS}
        self.book_depth = book_depth
        self.ohlc_intervals = frozenset(ohlc_intervals)
        self.max_subs = max_subscriptions_per_client
        self.trade_snapshot_count = trade_snapshot_count
        self.version = version
        self.subs: dict[tuple[str, str, int], set[Any]] = {}  # SubKey -> subscribers
        self.clients: set[Any] = set()
        self.published = 0
        self.delivered = 0
        self.dispatch_errors = 0

    def upstream_rejected(self, key: SubKey, error: str, now: float) -> None:
        """Kraken refused one of our subscriptions (nothing waits on it here yet)."""

    def demanded_subscriptions(self) -> None:
        return None  # the configured pairs only

    def reload(self, cfg: Any) -> Any:
        """SIGHUP: serve the new pair set. The book depth is fixed for the life of the merge, so a
        changed `v1.channels.book.depth` is reverted (with a warning) in the config returned."""
        section = getattr(cfg, "v1", None)
        if section is None:
            return cfg
        ch = section.channels
        if ch.book is not None and ch.book.depth != self.book_depth:
            log.warning("reload: v1 book depth changes need a restart; keeping depth %d", self.book_depth)
            book = ch.book.model_copy(update={"depth": self.book_depth})
            ch = ch.model_copy(update={"book": book})
            cfg = cfg.model_copy(update={"v1": section.model_copy(update={"channels": ch})})
        self.static = {
            name: frozenset(getattr(ch, name).symbols if getattr(ch, name) is not None else ()) for name in CHANNELS
        }
        self.ohlc_intervals = frozenset(ch.ohlc.intervals if ch.ohlc is not None else (1,))
        return cfg

    # -- clients --------------------------------------------------------------------------
    def hello(self, connection_id: int) -> bytes:
        """First frame on a new connection, as Kraken sends it."""
        return encode_system_status(self.merge.system_status(), connection_id, self.version)

    def add_client(self, client: Session) -> None:
        self.clients.add(client)

    def remove_client(self, client: Session, now: float = 0.0) -> None:
        self.clients.discard(client)
        for key in list(client.subs):
            self._unregister(client, key)

    # -- listener `Endpoint` interface ------------------------------------------------------
    def opened(self, conn: Session, now: float) -> None:
        self.add_client(conn)
        conn.queue(self.hello(getattr(conn, "connection_id", 0)))

    def closed(self, conn: Session, now: float) -> None:
        self.remove_client(conn, now)

    def message(self, conn: Session, data: bytes, now: float) -> None:
        if not self.handle_message(conn, data, now):
            conn.count_error()

    def reject(self, conn: Session, reason: str, data: bytes | None) -> None:
        """A message refused before parsing (size, binary, rate): Kraken-style `error` event."""
        rid = None
        if data:
            try:
                msg = orjson.loads(data)
                rid = msg.get("reqid") if isinstance(msg, dict) and isinstance(msg.get("reqid"), int) else None
            except orjson.JSONDecodeError:
                pass
        text = {
            "too_big": "Message too large",
            "binary": "Binary messages are not supported",
            "rate": "Exceeded msg rate",
        }.get(reason, ERR_MALFORMED)
        conn.queue(encode_error(text, rid))

    def subscription_count(self) -> int:
        return sum(len(s) for s in self.subs.values())

    # -- requests -------------------------------------------------------------------------
    def handle_message(self, client: Session, raw: bytes, now: float = 0.0) -> bool:
        """Answer one text message. Returns False when it was rejected (an error reply)."""
        req = parse_request(raw, self.max_subs)
        if isinstance(req, V1Ping):
            client.queue(encode_pong(req.req_id))
            return True
        if isinstance(req, V1Reject):
            for f in req.frames or [encode_error(req.error, req.req_id)]:
                client.queue(f)
            return False
        if req.event == "unsubscribe":
            self._unsubscribe(client, req)
        else:
            self._subscribe(client, req)
        return True

    def _status(self, client: Session, req: V1Subscribe, pair: str, status: str, error: str | None = None) -> None:
        name = channel_name(req.channel, req.key)
        cid = self.ids.get(name, pair) if error is None else None
        client.queue(
            encode_subscription_status(
                status, pair, req.subscription, req.req_id, name if error is None else None, cid, error
            )
        )

    def _subscribe(self, client: Session, req: V1Subscribe) -> None:
        channel = req.channel
        for pair in req.pairs:
            key = SubKey(channel, pair, req.key)
            if pair not in self.static[channel]:
                self._status(client, req, pair, "error", err_pair(pair))
            elif channel == "book" and req.key > self.book_depth:
                self._status(client, req, pair, "error", ERR_DEPTH)
            elif channel == "ohlc" and req.key not in self.ohlc_intervals:
                self._status(client, req, pair, "error", ERR_INTERVAL)
            elif key in client.subs:
                self._status(client, req, pair, "error", ERR_ALREADY)
            elif len(client.subs) >= self.max_subs:
                self._status(client, req, pair, "error", ERR_LIMIT)
            else:
                self._subscribe_one(client, req, key)

    def _subscribe_one(self, client: Session, req: V1Subscribe, key: SubKey) -> None:
        """Register, ack, snapshot in one synchronous step: no publication can fall between."""
        channel, pair, k = key
        client.subs.add(key)
        self.subs.setdefault(key, set()).add(client)
        self._status(client, req, pair, "subscribed")
        merge = self.merge
        if channel == "book":
            merge.want_book_depth(pair, k)
            client.open_book(key, req.snapshot)
            return
        if not req.snapshot:
            return
        if channel == "trade":
            snap = merge.trade_snapshot(pair, self.trade_snapshot_count)
        elif channel == "ticker":
            snap = merge.ticker_snapshot(pair)
        elif channel == "spread":
            snap = merge.spread_snapshot(pair)
        else:
            snap = merge.ohlc_snapshot(pair, k)
        if snap is not None:
            client.queue(self.ids.stamp(key, snap))

    def _unsubscribe(self, client: Session, req: V1Subscribe) -> None:
        if req.channel == "*":
            for pair in req.pairs:
                keys = sorted(k for k in client.subs if k[1] == pair)
                if not keys:
                    self._status(client, req, pair, "error", ERR_NOT_SUBSCRIBED)
                for key in keys:
                    self._unregister(client, key)
                    echo = {
                        "name": key[0],
                        **({"depth": key[2]} if key[0] == "book" else {}),
                        **({"interval": key[2]} if key[0] == "ohlc" else {}),
                    }
                    one = V1Subscribe("unsubscribe", key[0], [pair], key[2], False, req.req_id, echo)
                    self._status(client, one, pair, "unsubscribed")
            return
        for pair in req.pairs:
            key = SubKey(req.channel, pair, req.key)
            if key not in client.subs:
                self._status(client, req, pair, "error", ERR_NOT_SUBSCRIBED)
                continue
            self._unregister(client, key)
            self._status(client, req, pair, "unsubscribed")

    def _unregister(self, client: Session, key: SubKey) -> None:
        client.subs.discard(key)
        clients = self.subs.get(key)
        if clients is not None:
            clients.discard(client)
            if not clients:
                del self.subs[key]
        if key[0] == "book":
            client.stop_book(key)
            self.merge.release_book_depth(key[1], key[2])

    # -- publications ---------------------------------------------------------------------
    def publish(self, pubs: Iterable[Any], now: float = 0.0) -> None:
        """Stamp each publication once with the relay's channel id/name and fan it out."""
        for pub in pubs:
            self.published += 1
            try:
                self._dispatch(pub)
            except Exception:  # never raised into the upstream reader
                self.dispatch_errors += 1

    def _dispatch(self, pub: Any) -> None:
        channel = pub.channel
        if channel == "status":
            wire = text_frame(encode_system_status(self.merge.system_status(), 0, self.version))
            for c in tuple(self.clients):
                c.deliver(wire)
            self.delivered += len(self.clients)
            return
        key = (channel, pub.symbol, pub.key)  # a plain tuple on the hot path: equal to the SubKey
        clients = self.subs.get(key)
        if not clients:
            return
        wire = text_frame(self.ids.stamp(key, pub.frame))  # stamped and framed once for all clients
        if channel == "book":
            snap = pub.snapshot
            for c in tuple(clients):
                c.deliver_book(key, wire, snap)
        else:
            for c in tuple(clients):
                c.deliver(wire)
        self.delivered += len(clients)

    def tick(self, now: float) -> None:
        """Heartbeats for subscribed clients that got nothing for `heartbeat_interval`."""
        after = self.heartbeat_interval * 0.95
        for c in tuple(self.clients):
            if c.subs and c.idle(now) >= after:
                c.queue(HEARTBEAT)

    def stats(self) -> dict[str, Any]:
        return {
            "clients": len(self.clients),
            "subscriptions": self.subscription_count(),
            "published": self.published,
            "delivered": self.delivered,
            "dispatch_errors": self.dispatch_errors,
        }
