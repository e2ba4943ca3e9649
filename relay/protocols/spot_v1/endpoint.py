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

On-demand subscriptions (`server.dynamic_subscriptions`, on by default): the configured
channels (`v1.channels`) are the warm set, always subscribed upstream. Any other valid request
(another pair, a deeper book, another ohlc interval) acquires its upstream subscription in a
`DemandTracker` (keyed by the upstream `SubKey`): the stack subscribes it on every line, the
client is answered `subscribed` once it is live (the first upstream ack, or for a book a
complete snapshot at its depth), every client asking for the same shares it, and it is released
`release_after` seconds after the last one left. A pair's book is subscribed once, at the
deepest depth any client needs (at least the configured depth); shallower depths are views of
it. v1 has no instrument list to validate pairs against: a malformed pair is refused here with
Kraken's text, anything else is left to Kraken, whose refusal (`upstream_rejected`) reaches the
waiting client verbatim. With on-demand serving off, only the warm set is served.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from relay.config import DynamicSubscriptionsConfig
from relay.core.keys import SubKey
from relay.core.spot import BOOK_DEPTHS, OHLC_INTERVALS
from relay.core.wsframe import text_frame
from relay.protocols.demand import DemandTracker, is_transient
from relay.protocols.interfaces import Session
from relay.protocols.spot_v1.merge import ACK
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
    ERR_REQID,
    ERR_SUB_FIELD,
    HEARTBEAT,
    V1_VERSION,
    encode_error,
    encode_pong,
    encode_request_error,
    encode_subscription_status,
    encode_system_status,
    err_pair,
    err_pair_format,
    pair_format_ok,
    split_frame,
    subscription_echo,
    valid_reqid,
)

log = logging.getLogger("relay.server")

ERR_LIMIT = "Subscription limit exceeded"
ERR_TOO_MANY = "Too many pairs in one request"
ERR_TIMEOUT = "Timed out waiting for market data"
CHANNELS = ("book", "trade", "ticker", "spread", "ohlc")
# Upstream refusals that say "not now" rather than "no": the planner retries them, and a waiting
# client keeps waiting (within `timeout`).

__all__ = [
    "CHANNELS",
    "ChannelIds",
    "StampedSource",
    "V1Endpoint",
    "V1Ping",
    "V1Reject",
    "V1Subscribe",
    "V1UnsubscribeId",
    "channel_name",
    "err_pair",
    "parse_request",
]


def channel_name(channel: str, key: int) -> str:
    return f"{channel}-{key}" if channel in ("book", "ohlc") else channel


def key_echo(key: SubKey) -> dict[str, Any]:
    """The `subscription` object Kraken echoes for a subscription, in Kraken's key order."""
    channel, _, k = key
    if channel == "book":
        return {"depth": k, "name": channel}
    if channel == "ohlc":
        return {"interval": k, "name": channel}
    return {"name": channel}


class ChannelIds:
    """The relay's own channelID per (channelName, pair): assigned once, never reused."""

    def __init__(self) -> None:
        self._ids: dict[tuple[str, str], int] = {}
        self._names: dict[int, tuple[str, str]] = {}
        self._next = itertools.count(1)
        self._stamps: dict[tuple[str, str, int], tuple[bytes, bytes]] = {}

    def get(self, name: str, pair: str) -> int:
        cid = self._ids.get((name, pair))
        if cid is None:
            cid = self._ids[(name, pair)] = next(self._next)
            self._names[cid] = (name, pair)
        return cid

    def lookup(self, cid: int) -> tuple[str, str] | None:
        """(channelName, pair) of a channelID the relay gave out."""
        return self._names.get(cid)

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
class V1UnsubscribeId:
    """`{"event":"unsubscribe","channelID":N}` (Kraken's legacy v1 form)."""

    channel_id: int
    req_id: int | None


@dataclass(slots=True)
class V1Ping:
    req_id: int | None


@dataclass(slots=True)
class V1Reject:
    error: str
    req_id: int | None
    frames: list[bytes] = field(default_factory=list)  # the replies, when not one `error` event


def parse_request(raw: bytes, max_pairs: int = 200) -> V1Subscribe | V1UnsubscribeId | V1Ping | V1Reject:
    """One client message -> a typed request, or a rejection in Kraken's v1 shapes."""
    try:
        msg = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return V1Reject(ERR_MALFORMED, None)
    if not isinstance(msg, dict):
        return V1Reject(ERR_MALFORMED, None)
    event = msg.get("event")
    if "reqid" in msg and not valid_reqid(msg["reqid"]):
        status = "pingStatus" if event == "ping" else "subscriptionStatus"
        return V1Reject(ERR_REQID, None, [encode_request_error(ERR_REQID, msg["reqid"], status)])
    rid = msg.get("reqid")
    if event == "ping":
        return V1Ping(rid)
    if event is None:
        return V1Reject(ERR_NO_EVENT, rid, [encode_request_error(ERR_NO_EVENT, rid)])
    if event not in ("subscribe", "unsubscribe"):
        return V1Reject(ERR_EVENT, rid, [encode_request_error(ERR_EVENT, rid)])
    if event == "unsubscribe" and "channelID" in msg:
        cid = msg["channelID"]
        if not isinstance(cid, int) or isinstance(cid, bool):
            return V1Reject(ERR_MALFORMED, rid)
        return V1UnsubscribeId(cid, rid)
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
    if name == "book" and "depth" in sub:
        echo["depth"] = sub["depth"]
    elif name == "ohlc" and "interval" in sub:
        echo["interval"] = sub["interval"]

    def per_pair(error: str) -> V1Reject:
        e = subscription_echo(echo)
        return V1Reject(error, rid, [encode_subscription_status("error", p, e, rid, error=error) for p in pairs])

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
    return V1Subscribe(event, name, list(dict.fromkeys(pairs)), key, snapshot, rid, subscription_echo(echo))


@dataclass(slots=True)
class _Waiter:
    """A subscribe waiting for its on-demand upstream subscription to go live."""

    client: Session
    req: V1Subscribe
    key: SubKey  # the client's subscription
    dkey: SubKey  # the upstream subscription it waits for
    deadline: float


class _ClientState:
    """Per client (`Session.ep_state`): its on-demand references and waiting subscribes."""

    __slots__ = ("demands", "waiting")

    def __init__(self) -> None:
        self.demands: dict[SubKey, SubKey] = {}  # client subscription -> demanded upstream key
        self.waiting: dict[SubKey, _Waiter] = {}


def _state(client: Session) -> _ClientState:
    st = client.ep_state
    if not isinstance(st, _ClientState):
        st = client.ep_state = _ClientState()
    return st


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
        path: str = "/",
        heartbeat_interval: float = 1.0,
        dynamic: DynamicSubscriptionsConfig | None = None,
        resubscribe: Callable[[], None] | None = None,
        fallback_version: str = V1_VERSION,
    ) -> None:
        """`static`: the warm pairs per channel, `book_depth` their book depth (the merge's),
        `ohlc_intervals` their intervals; `dynamic`: on-demand serving (default: on, with the
        config defaults); `resubscribe`: called when the upstream set changes
        (`demanded_subscriptions`); `fallback_version`: the `version` clients are told until a
        line reported Kraken's."""
        self.path = path
        self.heartbeat_interval = heartbeat_interval
        self.merge = merge
        self.ids = ChannelIds()
        self.source = StampedSource(merge, self.ids)
        self.static = {ch: frozenset(static.get(ch, ())) for ch in CHANNELS}
        self.book_depth = book_depth
        self.ohlc_intervals = frozenset(ohlc_intervals)
        self.max_subs = max_subscriptions_per_client
        self.fallback_version = fallback_version
        self.resubscribe = resubscribe
        self.dynamic = dynamic if dynamic is not None else DynamicSubscriptionsConfig()
        self.demand: DemandTracker[SubKey] = DemandTracker(self.dynamic, self._demand_changed)
        self.waiting: dict[SubKey, list[_Waiter]] = {}  # demanded upstream key -> waiting subscribes
        self._book_waiting: dict[str, int] = {}  # pair -> waiting book subscribes
        self._upstream: dict[tuple[str, str, int], int] = {}  # stream -> param, as last synced
        self._quiet = False
        self.subs: dict[tuple[str, str, int], set[Any]] = {}  # SubKey -> subscribers
        self.clients: set[Any] = set()
        self.published = 0
        self.delivered = 0
        self.dispatch_errors = 0
        self.timeouts = 0
        self.rejected_upstream = 0
        self._sync_merge()

    # -- the upstream set -------------------------------------------------------------------
    def warm_keys(self) -> list[SubKey]:
        """The configured upstream subscriptions (what `spec.desired` lists)."""
        keys = [SubKey("book", p, self.book_depth) for p in sorted(self.static["book"])]
        for name in ("trade", "ticker", "spread"):
            keys += [SubKey(name, p, 0) for p in sorted(self.static[name])]
        keys += [SubKey("ohlc", p, i) for p in sorted(self.static["ohlc"]) for i in sorted(self.ohlc_intervals)]
        return keys

    def demanded_subscriptions(self) -> list[SubKey]:
        """The warm set plus what clients demanded: one book subscription per pair, at the
        deepest depth any of them needs."""
        books: dict[str, int] = {}
        out: dict[SubKey, None] = {}
        for key in (*self.warm_keys(), *self.demand.keys()):
            if key.channel == "book":
                books[key.symbol] = max(books.get(key.symbol, 0), key.param)
            else:
                out[key] = None
        return [SubKey("book", p, d) for p, d in books.items()] + list(out)

    def _sync_merge(self) -> None:
        """Tell the merge which streams are subscribed upstream, and each book's depth."""
        merge = self.merge
        if not hasattr(merge, "set_book_target"):
            return
        demanded = self.demanded_subscriptions()
        merge.set_subscribed(demanded)  # data for anything else creates no state
        now = {
            (("book", k.symbol, 0) if k.channel == "book" else (k.channel, k.symbol, k.param)): k.param
            for k in demanded
        }
        for stream in self._upstream.keys() - now.keys():
            merge.retire(*stream)
        for stream, param in now.items():
            merge.activate(*stream)
            if stream[0] == "book":
                merge.set_book_target(stream[1], param)
        self._upstream = now

    def _demand_changed(self) -> None:
        self._sync_merge()
        if self.resubscribe is not None and not self._quiet:
            self.resubscribe()

    def upstream_rejected(self, key: SubKey, error: str, now: float) -> None:
        """Kraken refused an upstream subscription: the clients waiting for it get Kraken's text."""
        if is_transient(error):
            return  # retried by the planner; waiting clients keep waiting (until `timeout`)
        demand = self.demand
        if not demand.known(key) or demand.is_ready(key):
            return  # not on demand, or live already (a line's resubscription: retried)
        self.rejected_upstream += 1
        for w in self.waiting.pop(key, []):
            self._unwait(w)
            st = _state(w.client)
            st.demands.pop(w.key, None)
            self._status(w.client, w.req, w.key[1], "error", error)
            w.client.count_error()
        demand.forget(key)

    def reload(self, cfg: Any) -> Any:
        """SIGHUP: serve the new pair set. The configured book depth is fixed for the life of the
        merge, so a changed `v1.channels.book.depth` is reverted (with a warning) in the config
        returned. Clients of pairs that left the warm set keep them, on demand."""
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
        self._quiet = True  # the stack resubscribes once the reload is applied
        try:
            if self.demand.enabled:
                for key, clients in self.subs.items():
                    if self._warm_serves(SubKey(*key)):
                        continue
                    dkey = self._demand_key(SubKey(*key))
                    for c in clients:
                        st = _state(c)
                        if key not in st.demands:
                            self.demand.acquire(dkey)
                            self.demand.mark_ready(dkey)
                            st.demands[SubKey(*key)] = dkey
            self._sync_merge()
        finally:
            self._quiet = False
        return cfg

    # -- clients --------------------------------------------------------------------------
    def version(self) -> str:
        """The engine version clients are told: the upstream's, else `fallback_version`."""
        version = getattr(self.merge, "upstream_version", None)
        return (version() if version is not None else "") or self.fallback_version

    def hello(self, connection_id: int) -> bytes:
        """First frame on a new connection, as Kraken sends it."""
        return encode_system_status(self.merge.system_status(), connection_id, self.version())

    def add_client(self, client: Session) -> None:
        self.clients.add(client)

    def remove_client(self, client: Session, now: float = 0.0) -> None:
        self.clients.discard(client)
        for key in list(client.subs):
            self._unregister(client, key, now)
        st = client.ep_state
        if isinstance(st, _ClientState):
            for w in list(st.waiting.values()):
                self._unwait(w)
                self._release(client, w.key, now)

    # -- listener `Endpoint` interface ------------------------------------------------------
    def opened(self, conn: Session, now: float) -> None:
        self.add_client(conn)
        conn.queue(self.hello(conn.connection_id))

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
                rid = msg.get("reqid") if isinstance(msg, dict) and valid_reqid(msg.get("reqid")) else None
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
        if isinstance(req, V1UnsubscribeId):
            return self._unsubscribe_id(client, req, now)
        if req.event == "unsubscribe":
            self._unsubscribe(client, req, now)
        else:
            self._subscribe(client, req, now)
        return True

    def _status(self, client: Session, req: V1Subscribe, pair: str, status: str, error: str | None = None) -> None:
        name = channel_name(req.channel, req.key)
        cid = self.ids.get(name, pair) if error is None else None
        client.queue(
            encode_subscription_status(
                status, pair, req.subscription, req.req_id, name if error is None else None, cid, error
            )
        )

    def _warm_serves(self, key: SubKey) -> bool:
        channel, pair, k = key
        if pair not in self.static[channel]:
            return False
        if channel == "book":
            return k <= self.book_depth
        if channel == "ohlc":
            return k in self.ohlc_intervals
        return True

    def _demand_key(self, key: SubKey) -> SubKey:
        """The upstream subscription serving `key` on demand (a book at least the warm depth)."""
        if key.channel == "book":
            return SubKey("book", key.symbol, max(key.param, self.book_depth))
        return key

    def _fixed_error(self, key: SubKey) -> str:
        """Why the warm set does not serve `key` (on-demand serving off)."""
        channel, pair, _ = key
        if pair not in self.static[channel]:
            return err_pair(pair)
        return ERR_DEPTH if channel == "book" else ERR_INTERVAL

    def _subscribe(self, client: Session, req: V1Subscribe, now: float) -> None:
        channel = req.channel
        st = _state(client)
        for pair in req.pairs:
            key = SubKey(channel, pair, req.key)
            if not pair_format_ok(pair):
                self._status(client, req, pair, "error", err_pair_format(pair))
            elif key in client.subs or key in st.waiting:
                self._status(client, req, pair, "error", ERR_ALREADY)
            elif len(client.subs) + len(st.waiting) >= self.max_subs:
                self._status(client, req, pair, "error", ERR_LIMIT)
            elif self._warm_serves(key):
                self._subscribe_one(client, req, key)
            elif not self.demand.enabled:
                self._status(client, req, pair, "error", self._fixed_error(key))
            else:
                self._subscribe_demand(client, req, key, now)

    def _subscribe_demand(self, client: Session, req: V1Subscribe, key: SubKey, now: float) -> None:
        dkey = self._demand_key(key)
        refusal = self.demand.refusal(dkey, key.symbol)
        if refusal is not None:
            self._status(client, req, key.symbol, "error", refusal)
            return
        st = _state(client)
        st.demands[key] = dkey
        self.demand.acquire(dkey)
        if self._ready(key, dkey):
            self._subscribe_one(client, req, key)
            return
        one = V1Subscribe(req.event, req.channel, [key.symbol], req.key, req.snapshot, req.req_id, req.subscription)
        w = _Waiter(client, one, key, dkey, now + self.dynamic.timeout)
        st.waiting[key] = w
        self.waiting.setdefault(dkey, []).append(w)
        if key.channel == "book":
            self._book_waiting[key.symbol] = self._book_waiting.get(key.symbol, 0) + 1

    def _ready(self, key: SubKey, dkey: SubKey) -> bool:
        """Whether an on-demand subscription can be answered now."""
        if key.channel == "book":
            ready = getattr(self.merge, "book_ready", None)
            return bool(ready is not None and ready(key.symbol, key.param))
        return self.demand.is_ready(dkey)

    def _unwait(self, w: _Waiter) -> None:
        """Take a waiter off the books (its demand reference is the caller's to settle)."""
        _state(w.client).waiting.pop(w.key, None)
        lst = self.waiting.get(w.dkey)
        if lst is not None:
            if w in lst:
                lst.remove(w)
            if not lst:
                del self.waiting[w.dkey]
        if w.key.channel == "book":
            n = self._book_waiting.get(w.key.symbol, 0) - 1
            if n > 0:
                self._book_waiting[w.key.symbol] = n
            else:
                self._book_waiting.pop(w.key.symbol, None)

    def _serve_waiters(self, dkey: SubKey) -> None:
        for w in list(self.waiting.get(dkey, ())):
            if self._ready(w.key, dkey):
                self._unwait(w)
                self._subscribe_one(w.client, w.req, w.key)

    def _subscribe_one(self, client: Session, req: V1Subscribe, key: SubKey) -> None:
        """Register, ack, snapshot in one synchronous step: no publication can fall between."""
        channel, pair, k = key
        client.subs.add(key)
        self.subs.setdefault(key, set()).add(client)
        dkey = _state(client).demands.get(key)
        if dkey is not None:
            self.demand.mark_ready(dkey)
        self._status(client, req, pair, "subscribed")
        merge = self.merge
        if channel == "book":
            merge.want_book_depth(pair, k)
            client.open_book(key, req.snapshot)
            return
        if not req.snapshot or channel == "trade":  # Kraken sends no trade snapshot (the captures)
            return
        if channel == "ticker":
            snap = merge.ticker_snapshot(pair)
        elif channel == "spread":
            snap = merge.spread_snapshot(pair)
        else:
            snap = merge.ohlc_snapshot(pair, k)
        if snap is not None:
            client.queue(self.ids.stamp(key, snap))

    def _unsubscribe(self, client: Session, req: V1Subscribe, now: float) -> None:
        st = _state(client)
        if req.channel == "*":
            for pair in req.pairs:
                keys = sorted(k for k in (*client.subs, *st.waiting) if k[1] == pair)
                if not keys:
                    self._status(client, req, pair, "error", ERR_NOT_SUBSCRIBED)
                for key in keys:
                    self._unsubscribe_key(client, SubKey(*key), req.req_id, now)
            return
        for pair in req.pairs:
            key = SubKey(req.channel, pair, req.key)
            if key not in client.subs and key not in st.waiting:
                self._status(client, req, pair, "error", ERR_NOT_SUBSCRIBED)
                continue
            self._unsubscribe_key(client, key, req.req_id, now)

    def _unsubscribe_id(self, client: Session, req: V1UnsubscribeId, now: float) -> bool:
        hit = self.ids.lookup(req.channel_id)
        st = _state(client)
        if hit is not None:
            name, pair = hit
            for key in (*client.subs, *st.waiting):
                if key[1] == pair and channel_name(key[0], key[2]) == name:
                    self._unsubscribe_key(client, SubKey(*key), req.req_id, now)
                    return True
        client.queue(encode_request_error(ERR_NOT_SUBSCRIBED, req.req_id, channel_id=req.channel_id))
        return False

    def _unsubscribe_key(self, client: Session, key: SubKey, req_id: int | None, now: float) -> None:
        one = V1Subscribe("unsubscribe", key.channel, [key.symbol], key.param, False, req_id, key_echo(key))
        w = _state(client).waiting.get(key)
        if w is not None:  # still waiting: answer the subscribe first, as Kraken's order would be
            self._unwait(w)
            self._status(client, w.req, key.symbol, "subscribed")
            self._release(client, key, now)
        else:
            self._unregister(client, key, now)
        self._status(client, one, key.symbol, "unsubscribed")

    def _release(self, client: Session, key: SubKey, now: float) -> None:
        dkey = _state(client).demands.pop(key, None)
        if dkey is not None:
            self.demand.release(dkey, now)

    def _unregister(self, client: Session, key: SubKey | tuple[str, str, int], now: float = 0.0) -> None:
        client.subs.discard(key)
        clients = self.subs.get(key)
        if clients is not None:
            clients.discard(client)
            if not clients:
                del self.subs[key]
        if key[0] == "book":
            client.stop_book(key)
            self.merge.release_book_depth(key[1], key[2])
        self._release(client, SubKey(*key), now)

    # -- publications ---------------------------------------------------------------------
    def publish(self, pubs: Iterable[Any], now: float = 0.0) -> None:
        """Stamp each publication once with the relay's channel id/name and fan it out."""
        for pub in pubs:
            self.published += 1
            try:
                self._dispatch(pub)
                if self.waiting:
                    self._arrived(pub)
            except Exception:  # never raised into the upstream reader
                self.dispatch_errors += 1
                log.exception("v1 dispatch failed")

    def _arrived(self, pub: Any) -> None:
        """Publications that make on-demand subscriptions live (after they were dispatched, so
        that a client answered now gets them in its snapshot, not twice)."""
        channel = pub.channel
        if channel == "book":
            if pub.symbol in self._book_waiting:
                for dkey in [k for k in self.waiting if k.channel == "book" and k.symbol == pub.symbol]:
                    self._serve_waiters(dkey)
            return
        if channel == ACK:
            channel = pub.frame.decode()
            if channel == "book":
                return  # a book is live with its snapshot, not with the ack
        dkey = SubKey(channel, pub.symbol, pub.key)
        if dkey in self.waiting:
            self.demand.mark_ready(dkey)
            self._serve_waiters(dkey)

    def _dispatch(self, pub: Any) -> None:
        channel = pub.channel
        if channel == "status":
            system, version = self.merge.system_status(), self.version()
            for c in tuple(self.clients):  # rare: each client keeps its own connectionID
                c.queue(encode_system_status(system, c.connection_id, version))
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

    # -- the NATS publisher's view (`BusSource`) -------------------------------------------
    BUS_CHANNELS = frozenset(("book", "trade", "ticker", "spread", "ohlc"))

    def bus_channel(self, channel: str) -> bool:
        """Channel data; not acks, status or the relay's own channel."""
        return channel in self.BUS_CHANNELS

    def bus_frame(self, pub: Any) -> bytes | None:
        """What v1 clients receive: the frame stamped with the relay's channel id and name."""
        return self.ids.stamp((pub.channel, pub.symbol, pub.key), pub.frame)

    def bus_snapshot(self, channel: str, symbol: str, key: int) -> bytes | None:
        """What a client subscribing now gets first (stamped); Kraken sends no trade snapshot."""
        merge = self.merge
        if channel == "book":
            arb = merge.books.get(symbol)
            if arb is None or not (key == arb.depth or key in arb.views):
                return None
            snap = merge.book_snapshot(symbol, key)
        elif channel == "ticker":
            snap = merge.ticker_snapshot(symbol)
        elif channel == "spread":
            snap = merge.spread_snapshot(symbol)
        elif channel == "ohlc":
            snap = merge.ohlc_snapshot(symbol, key)
        else:
            return None
        return None if snap is None else self.ids.stamp(SubKey(channel, symbol, key), snap)

    def bus_want_book(self, symbol: str, depth: int) -> bool:
        arb = self.merge.books.get(symbol)
        if arb is None or depth not in BOOK_DEPTHS or depth > arb.depth:
            return False
        self.merge.want_book_depth(symbol, depth)
        return True

    def tick(self, now: float) -> None:
        """Heartbeats for subscribed clients that got nothing for `heartbeat_interval`; waiting
        subscribes that timed out; on-demand subscriptions whose release is due."""
        after = self.heartbeat_interval * 0.95
        for c in tuple(self.clients):
            if c.subs and c.idle(now) >= after:
                c.queue(HEARTBEAT)
        if self.waiting:
            for lst in list(self.waiting.values()):
                for w in list(lst):
                    if w.deadline <= now:
                        self.timeouts += 1
                        self._unwait(w)
                        self._release(w.client, w.key, now)
                        self._status(w.client, w.req, w.key.symbol, "error", ERR_TIMEOUT)
                        w.client.count_error()
        self.demand.tick(now)

    def stats(self) -> dict[str, Any]:
        demand = self.demand
        pending = sum(len(lst) for lst in self.waiting.values())
        return {
            "clients": len(self.clients),
            "subscriptions": self.subscription_count(),
            "published": self.published,
            "delivered": self.delivered,
            "dispatch_errors": self.dispatch_errors,
            "on_demand": {  # the metrics' on_demand_* families (relay.ops.metrics)
                "held": len(demand.entries),
                "demanded": demand.demanded,
                "released": demand.released,
                "refused": demand.refused,
                "pending": pending,
                "timeouts": self.timeouts,
                "rejected": self.rejected_upstream,
            },
        }
