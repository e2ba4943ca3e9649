"""The local Futures endpoint (`ws://127.0.0.1:8765/ws/v1`): Kraken's futures protocol, served
from the futures merge, so a futures client (ccxt `krakenfutures`) works unchanged but the URL.

Requests (Kraken's shape): `{"event":"subscribe"|"unsubscribe","feed":F,"product_ids":[...]}`.
Answers: `info` on connect (the upstream's `version`); one `subscribed`/`unsubscribed` per product
(as Kraken does); then for `book` a `book_snapshot` carrying the current `seq` followed by the
deltas, for `trade` a `trade_snapshot` of Kraken's 100 latest (newest first) followed by trades;
`ticker`/`ticker_lite` the latest record. A repeated subscribe gets Kraken's `alert` ("Already
subscribed to feed, re-requesting"), then `subscribed` and a fresh snapshot again. `heartbeat`
sends `{"feed":"heartbeat","time":ms}` every `heartbeat_interval` s. `relay` is this relay's own
state feed (`relay_snapshot`, then `relay` on every state change), per product.

Products on demand: the configured products (`futures.channels`) are the warm set, always
subscribed upstream. Any other product a client asks for is subscribed upstream on every line
(a `DemandTracker` key per (feed, product), shared by every client asking for it, released
`release_after` s after the last one left); the client gets `subscribed` and the snapshot once the
first data is there. Kraken validates it: its `Invalid product id` (attributed by the merge's
`ProductValidator`) is forwarded to the waiting clients at once and remembered for a while; a
refusal by the operator's cap or patterns, or no data within `timeout`, is an `error` event too.

Registration and snapshot happen in one synchronous step, so no delta can fall between the
snapshot's seq and the first live delta. Book frames go through `ClientConnection.deliver_book`:
the shared slow-client policy then replaces dropped deltas by one fresh `book_snapshot`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import orjson

from relay.config import DynamicSubscriptionsConfig
from relay.core.keys import SubKey
from relay.core.wsframe import text_frame
from relay.protocols.demand import DemandTracker, is_transient
from relay.protocols.futures.merge import REFUSED
from relay.protocols.futures.wire import (
    ALERT_ALREADY,
    ERR_FEED,
    ERR_JSON,
    ERR_PRODUCT,
    HEARTBEAT_INTERVAL,
    TRADE_SNAPSHOT,
    encode_event,
    encode_heartbeat,
    encode_info,
)
from relay.protocols.interfaces import Session

log = logging.getLogger("relay.server")

FEEDS = ("book", "trade", "ticker", "ticker_lite")
ERR_TIMEOUT = "Timed out waiting for market data"  # on-demand product, no data within `timeout`
ERR_LIMIT = "Subscription limit exceeded"  # server.max_subscriptions_per_client
MAX_SUBSCRIPTIONS = 200
REFUSED_FOR = 60.0  # s a product Kraken refused is answered at once, without asking again
HEARTBEAT_KEY = SubKey("heartbeat", "", 0)

Key = tuple[str, str]  # (feed, product)


class ClientState:
    __slots__ = ("subs", "waiting", "held", "heartbeat", "relay", "last_heartbeat")

    def __init__(self) -> None:
        self.subs: set[Key] = set()
        self.waiting: dict[Key, int] = {}  # on-demand subscribes waiting for first data (count)
        self.held: set[Key] = set()  # on-demand keys this client holds a tracker reference on
        self.heartbeat = False
        self.relay: set[str] | None = None  # products whose relay states it receives (None: off)
        self.last_heartbeat = 0.0


class FuturesEndpoint:
    """Futures protocol on its own path of the shared listener (`relay.protocols.interfaces.Endpoint`)."""

    name = "futures"

    def __init__(
        self,
        source: Any,
        products: Mapping[str, Iterable[str]],
        path: str = "/ws/v1",
        max_subscriptions: int = MAX_SUBSCRIPTIONS,
        trade_snapshot_count: int = TRADE_SNAPSHOT,
        dynamic: DynamicSubscriptionsConfig | None = None,
        resubscribe: Callable[[], None] | None = None,
    ) -> None:
        """`products`: feed -> configured (warm) products served on it; `dynamic`: on-demand
        serving (`server.dynamic_subscriptions`); `resubscribe`: called when the demanded
        upstream set changes (the daemon re-reads `demanded_subscriptions()`)."""
        self.source = source
        self.path = path
        self.max_subscriptions = max_subscriptions
        self.trade_snapshot_count = trade_snapshot_count
        self.heartbeat_interval = HEARTBEAT_INTERVAL
        self.products = {feed: frozenset(p) for feed, p in products.items()}
        self.dynamic = dynamic or DynamicSubscriptionsConfig()
        self._resubscribe = resubscribe or (lambda: None)
        self.tracker: DemandTracker[SubKey] = DemandTracker(self.dynamic, self._changed, noun="Product")
        self.waiters: dict[Key, dict[Any, float]] = {}  # on-demand key -> client -> deadline
        self.refused: dict[str, float] = {}  # product Kraken refused -> until when we say so at once
        self.subs: dict[Key, set[Any]] = {}
        self.clients: set[Any] = set()
        self.now = 0.0
        self.published = 0
        self.delivered = 0
        self.requests = 0
        self.errors = 0
        self.timeouts = 0
        self._expect()

    def set_products(self, products: Mapping[str, Iterable[str]]) -> None:
        self.products = {feed: frozenset(p) for feed, p in products.items()}

    def _warm(self, feed: str, product: str) -> bool:
        return product in self.products.get(feed, ())

    # -- the upstream set ----------------------------------------------------------------------
    def demanded_subscriptions(self) -> list[SubKey]:
        """Heartbeat, the configured products, then what clients asked for (minus what Kraken
        refused): the pool's desired set."""
        keys = [HEARTBEAT_KEY]
        for feed in FEEDS:
            keys += [SubKey(feed, p, 0) for p in sorted(self.products.get(feed, ())) if p not in self.refused]
        keys += [k for k in self.tracker.keys() if k.symbol not in self.refused and not self._warm(k.channel, k.symbol)]
        return keys

    def _expect(self) -> None:
        expect = getattr(self.source, "expect", None)
        if expect is not None:
            expect([(k.channel, k.symbol) for k in self.demanded_subscriptions() if k.symbol], self.now)

    def _changed(self) -> None:
        """The demanded set changed (tracker): tell the merge what to expect, then every line."""
        self._expect()
        self._resubscribe()

    def upstream_rejected(self, key: SubKey, error: str, now: float) -> None:
        """Kraken refused one of our subscriptions with a failed ack: clients waiting on it get its
        error at once (the planner would retry it; nobody wants it any more)."""
        fkey = (key.channel, key.symbol)
        if fkey not in self.waiters or is_transient(error):
            return  # a transient refusal is retried by the planner; the client keeps waiting
        self._fail(fkey, encode_event("error", message=error or ERR_PRODUCT))
        self.tracker.forget(key)

    def reload(self, cfg: Any) -> Any:
        """SIGHUP: serve the reloaded `futures:` products. A product no longer configured that
        clients hold becomes on demand (released after its last client leaves). Returns the config
        unchanged (nothing vetoed)."""
        if cfg.futures is None:
            return cfg
        before = {(f, p) for f, ps in self.products.items() for p in ps}
        self.set_products(products_by_feed(cfg.futures))
        self.refused.clear()
        drop = getattr(self.source, "drop", None)
        for feed, product in before:
            key = (feed, product)
            if drop is not None and not self._warm(*key) and key not in self.subs:
                if not self.tracker.known(SubKey(feed, product, 0)):
                    drop(feed, product, self.now)  # nobody holds it: a later subscriber starts fresh
        for key, group in self.subs.items():
            if self._warm(*key):
                continue
            skey = SubKey(key[0], key[1], 0)
            for conn in group:
                st: ClientState = conn.ep_state
                if key not in st.held:
                    st.held.add(key)
                    self._hold(skey)
            self.tracker.mark_ready(skey)
        self._expect()
        return cfg

    def _hold(self, skey: SubKey) -> None:
        """A tracker reference without the cap check (a client already served)."""
        e = self.tracker.entries.get(skey)
        if e is None:
            self.tracker.acquire(skey)
        else:
            e.refs += 1
            e.release_at = None

    # -- connection lifecycle ------------------------------------------------------------------
    def opened(self, conn: Session, now: float) -> None:
        conn.ep_state = ClientState()
        self.clients.add(conn)
        conn.queue(encode_info(self.source.upstream_version() or 1))

    def closed(self, conn: Session, now: float) -> None:
        self.clients.discard(conn)
        st: ClientState | None = conn.ep_state
        if st is None:
            return
        for key in st.subs:
            group = self.subs.get(key)
            if group is not None:
                group.discard(conn)
                if not group:
                    del self.subs[key]
        for key in st.waiting:
            waiting = self.waiters.get(key)
            if waiting is not None:
                waiting.pop(conn, None)
                if not waiting:
                    del self.waiters[key]
        for key in st.held:
            self.tracker.release(SubKey(key[0], key[1], 0), now)
        st.subs.clear()
        st.waiting.clear()
        st.held.clear()

    def reject(self, conn: Session, reason: str, data: bytes | None) -> None:
        self.errors += 1
        text = {"rate": "Exceeded msg rate", "binary": ERR_JSON, "too_big": ERR_JSON}.get(reason, ERR_JSON)
        conn.queue(encode_event("error", message=text))

    # -- requests ------------------------------------------------------------------------------
    def message(self, conn: Session, data: bytes, now: float) -> None:
        self.requests += 1
        self.now = now
        try:
            msg = orjson.loads(data)
        except orjson.JSONDecodeError:
            msg = None
        if not isinstance(msg, dict):
            self._error(conn, ERR_JSON)
            return
        event = msg.get("event")
        event = event.strip() if isinstance(event, str) else event
        if event == "ping":  # not documented for futures; Kraken answers it, and clients send it
            conn.queue(b'{"event":"pong"}')
            return
        if event not in ("subscribe", "unsubscribe"):
            self._error(conn, ERR_JSON)
            return
        feed = msg.get("feed")
        st: ClientState = conn.ep_state
        if feed == "heartbeat":
            st.heartbeat = event == "subscribe"
            st.last_heartbeat = now
            conn.queue(encode_event("subscribed" if st.heartbeat else "unsubscribed", "heartbeat"))
            return
        products = msg.get("product_ids")
        if feed == "relay":
            self._relay(conn, st, event, products)
            return
        if feed not in FEEDS:
            self._error(conn, ERR_FEED)
            return
        if not isinstance(products, list) or not products or not all(isinstance(p, str) for p in products):
            self._error(conn, ERR_JSON)
            return
        for raw_id in products:
            product = raw_id.upper()
            if event == "subscribe":
                self._subscribe(conn, st, feed, product, now)
            else:
                self._unsubscribe(conn, st, feed, product, now)

    def _error(self, conn: Session, text: str) -> None:
        self._error_frame(conn, encode_event("error", message=text))

    def _error_frame(self, conn: Session, frame: bytes) -> None:
        self.errors += 1
        conn.count_error()
        conn.queue(frame)

    def _subscribe(self, conn: Session, st: ClientState, feed: str, product: str, now: float) -> None:
        key = (feed, product)
        if key in st.subs:  # Kraken: an alert, then the subscription is requested again
            conn.queue(encode_event("alert", message=ALERT_ALREADY))
            conn.queue(encode_event("subscribed", feed, [product]))
            self._snapshot(conn, feed, product)
            return
        if key in st.waiting:  # answered (subscribed + snapshot) with the first one
            conn.queue(encode_event("alert", message=ALERT_ALREADY))
            st.waiting[key] += 1
            return
        if len(st.subs) + len(st.waiting) >= self.max_subscriptions:
            self._error(conn, ERR_LIMIT)
            return
        if self._warm(feed, product):
            if product in self.refused:
                self._error(conn, ERR_PRODUCT)
                return
            self._add(conn, st, key)
            return
        until = self.refused.get(product)
        if until is not None:
            if now < until:
                self._error(conn, ERR_PRODUCT)
                return
            del self.refused[product]
        skey = SubKey(feed, product, 0)
        if key not in st.held:
            refusal = self.tracker.refusal(skey, product)
            if refusal is not None:
                self._error(conn, refusal)
                return
            st.held.add(key)
            self.tracker.acquire(skey)
        if self._has_data(feed, product):
            self.tracker.mark_ready(skey)
            self._add(conn, st, key)
            return
        st.waiting[key] = 1
        self.waiters.setdefault(key, {})[conn] = now + self.dynamic.timeout

    def _add(self, conn: Session, st: ClientState, key: Key) -> None:
        """Subscribed: the ack, registration and snapshot in one step."""
        st.subs.add(key)
        self.subs.setdefault(key, set()).add(conn)
        conn.queue(encode_event("subscribed", key[0], [key[1]]))
        self._snapshot(conn, *key)

    def _has_data(self, feed: str, product: str) -> bool:
        src = self.source
        if feed == "book":
            return src.book_snapshot(product, 0) is not None
        if feed == "trade":
            return src.trade_snapshot(product, 0) is not None
        return src.ticker_snapshot(product, feed) is not None

    def _snapshot(self, conn: Session, feed: str, product: str) -> None:
        src = self.source
        if feed == "book":
            conn.open_book(("book", product, 0), True)
        elif feed == "trade":
            snap = src.trade_snapshot(product, self.trade_snapshot_count)
            if snap is not None:
                conn.queue(snap)
        else:
            snap = src.ticker_snapshot(product, feed)
            if snap is not None:
                conn.queue(snap)

    def _unsubscribe(self, conn: Session, st: ClientState, feed: str, product: str, now: float) -> None:
        key = (feed, product)
        if key in st.waiting:  # asked for, not served yet: it ends here
            del st.waiting[key]
            waiting = self.waiters.get(key)
            if waiting is not None:
                waiting.pop(conn, None)
                if not waiting:
                    del self.waiters[key]
            self._release(st, key, now)
            conn.queue(encode_event("unsubscribed", feed, [product]))
            return
        if key not in st.subs:
            conn.queue(encode_event("unsubscribed_failed", feed, [product]))
            return
        st.subs.discard(key)
        group = self.subs.get(key)
        if group is not None:
            group.discard(conn)
            if not group:
                del self.subs[key]
        if feed == "book":
            conn.stop_book(("book", product, 0))
        self._release(st, key, now)
        conn.queue(encode_event("unsubscribed", feed, [product]))

    def _release(self, st: ClientState, key: Key, now: float) -> None:
        if key in st.held:
            st.held.discard(key)
            self.tracker.release(SubKey(key[0], key[1], 0), now)

    def _relay(self, conn: Session, st: ClientState, event: str, products: Any) -> None:
        if event == "unsubscribe":
            st.relay = None
            conn.queue(encode_event("unsubscribed", "relay"))
            return
        wanted = [p.upper() for p in products if isinstance(p, str)] if isinstance(products, list) else None
        st.relay = set(wanted) if wanted else set()
        conn.queue(encode_event("subscribed", "relay", wanted))
        served = {p for ps in self.products.values() for p in ps} | {k.symbol for k in self.tracker.keys()}
        syms = wanted or sorted(served)
        states = [self.source.symbol_state(s) for s in syms]
        conn.queue(orjson.dumps({"feed": "relay_snapshot", "states": states}))

    # -- on-demand answers ---------------------------------------------------------------------
    def _ready(self, key: Key) -> None:
        """First data for an on-demand subscription: its waiting clients are answered."""
        waiting = self.waiters.pop(key, None)
        self.tracker.mark_ready(SubKey(key[0], key[1], 0))
        if not waiting:
            return
        for conn in waiting:
            st: ClientState | None = conn.ep_state
            if st is None:
                continue
            count = st.waiting.pop(key, 0)
            if count <= 0:
                continue
            self._add(conn, st, key)
            for _ in range(count - 1):  # repeated while waiting: answered like a repeat
                conn.queue(encode_event("subscribed", key[0], [key[1]]))
                self._snapshot(conn, *key)

    def _fail(self, key: Key, frame: bytes) -> None:
        """An on-demand subscription that will not be served: its waiting clients get `frame`."""
        waiting = self.waiters.pop(key, None)
        if not waiting:
            return
        for conn in waiting:
            st: ClientState | None = conn.ep_state
            if st is None:
                continue
            for _ in range(st.waiting.pop(key, 0)):
                self._error_frame(conn, frame)
            if key in st.held:
                st.held.discard(key)
                self.tracker.release(SubKey(key[0], key[1], 0), self.now)

    def _refused(self, product: str, frame: bytes) -> None:
        """Kraken answered `Invalid product id` for `product` (the merge attributed it)."""
        self.refused[product] = self.now + REFUSED_FOR
        warm = [f for f in FEEDS if self._warm(f, product)]
        if warm:
            log.warning("configured futures product %s refused by Kraken (Invalid product id)", product)
        for feed in FEEDS:
            key = (feed, product)
            self._fail(key, frame)
            skey = SubKey(feed, product, 0)
            if self.tracker.known(skey) and not self.tracker.refs(skey):
                self.tracker.forget(skey)  # resubscribes (without it)
        if warm:
            self._changed()

    # -- publications --------------------------------------------------------------------------
    def publish(self, pubs: Iterable[Any]) -> None:
        for pub in pubs:
            self.published += 1
            try:
                self._dispatch(pub)
            except Exception:  # one bad publication must not reach the upstream reader
                log.exception("futures dispatch of a %s publication failed", pub.channel)

    def _dispatch(self, pub: Any) -> None:
        channel = pub.channel
        if channel == "relay":
            wire = None
            for c in tuple(self.clients):
                rel = c.ep_state.relay if c.ep_state is not None else None
                if rel is not None and (not rel or pub.symbol in rel):
                    wire = wire or text_frame(pub.frame)
                    c.deliver(wire)
                    self.delivered += 1
            return
        if channel == REFUSED:
            self._refused(pub.symbol, pub.frame)
            return
        key = (channel, pub.symbol)
        clients = self.subs.get(key)
        if clients:
            wire = text_frame(pub.frame)  # framed once for every subscriber
            if channel == "book":
                bkey = ("book", pub.symbol, 0)
                for c in tuple(clients):
                    c.deliver_book(bkey, wire, pub.snapshot)
            else:
                for c in tuple(clients):
                    c.deliver(wire)
            self.delivered += len(clients)
        if key in self.waiters:
            self._ready(key)  # after the live subscribers: the snapshot already holds this frame

    # -- the NATS publisher's view (`BusSource`) -------------------------------------------
    bus_frames_as_is = True  # `bus_frame(pub)` is `pub.frame`: the publisher skips the call

    def bus_channel(self, channel: str) -> bool:
        """Feed data (book, trade, ticker, ticker_lite); not the relay's own kinds."""
        return channel not in ("relay", REFUSED, "status")

    def bus_frame(self, pub: Any) -> bytes | None:
        """Futures clients receive the merge's frame unchanged."""
        return pub.frame

    def bus_snapshot(self, channel: str, symbol: str, key: int) -> bytes | None:
        """What a client subscribing to (feed, product) now gets first."""
        src = self.source
        if channel == "book":
            return src.book_snapshot(symbol, 0)
        if channel == "trade":
            return src.trade_snapshot(symbol, self.trade_snapshot_count)
        return src.ticker_snapshot(symbol, channel)

    def bus_want_book(self, symbol: str, depth: int) -> bool:
        """Futures books have one depth (the feed's): nothing to add."""
        return False

    def tick(self, now: float) -> None:
        self.now = now
        frame = None
        interval = self.heartbeat_interval
        for c in tuple(self.clients):
            st: ClientState | None = c.ep_state
            if st is not None and st.heartbeat and now - st.last_heartbeat >= interval:
                st.last_heartbeat = now
                frame = frame or encode_heartbeat()
                c.queue(frame)
        if self.waiters:
            late = [k for k, w in self.waiters.items() if any(d <= now for d in w.values())]
            for key in late:
                self._timeout(key, now)
        for skey in self.tracker.tick(now):  # released upstream (on_change already resubscribed)
            if not self._warm(skey.channel, skey.symbol):
                drop = getattr(self.source, "drop", None)
                if drop is not None:
                    drop(skey.channel, skey.symbol, now)
        if self.refused:
            for p in [p for p, t in self.refused.items() if t <= now and not self._warm_anywhere(p)]:
                del self.refused[p]

    def _warm_anywhere(self, product: str) -> bool:
        return any(product in ps for ps in self.products.values())

    def _timeout(self, key: Key, now: float) -> None:
        waiting = self.waiters.get(key)
        if waiting is None:
            return
        frame = encode_event("error", message=ERR_TIMEOUT)
        for conn in [c for c, d in waiting.items() if d <= now]:
            del waiting[conn]
            st: ClientState | None = conn.ep_state
            if st is None:
                continue
            self.timeouts += 1
            for _ in range(st.waiting.pop(key, 0)):
                self._error_frame(conn, frame)
            self._release(st, key, now)
        if not waiting:
            del self.waiters[key]

    def stats(self) -> dict[str, Any]:
        tracker = self.tracker
        return {
            "clients": len(self.clients),
            "subscriptions": sum(len(s) for s in self.subs.values()),
            "published": self.published,
            "delivered": self.delivered,
            "requests": self.requests,
            "errors": self.errors,
            "dynamic_subscriptions": len(tracker.entries),
            "dynamic_demanded": tracker.demanded,
            "dynamic_released": tracker.released,
            "dynamic_refused": tracker.refused,
            "dynamic_waiting": sum(len(w) for w in self.waiters.values()),
            "dynamic_timeouts": self.timeouts,
            "products_refused": len(self.refused),
        }


def products_by_feed(section: Any) -> dict[str, list[str]]:
    """feed -> products from a `FuturesConfig` section."""
    ch = section.channels
    return {feed: list(getattr(ch, feed).products) if getattr(ch, feed) is not None else [] for feed in FEEDS}
