"""The local Futures endpoint (`ws://127.0.0.1:8765/ws/v1`): Kraken's futures protocol, served
from the futures merge, so a futures client (ccxt `krakenfutures`) works unchanged but the URL.

Requests (Kraken's shape): `{"event":"subscribe"|"unsubscribe","feed":F,"product_ids":[...]}`.
Answers: `info` on connect; one `subscribed`/`unsubscribed` per product (as Kraken does); then
for `book` a `book_snapshot` carrying the current `seq` followed by the deltas, for `trade` a
`trade_snapshot` (newest first) followed by trades; `ticker`/`ticker_lite` the latest record.
`heartbeat` sends `{"feed":"heartbeat","time":ms}` every `HEARTBEAT_INTERVAL` s. `relay` is this
relay's own state feed (`relay_snapshot`, then `relay` on every state change), per product.
Unknown products get Kraken's `{"event":"error","message":"Invalid product id"}`.

Registration and snapshot happen in one synchronous step, so no delta can fall between the
snapshot's seq and the first live delta. Book frames go through `ClientConnection.deliver_book`:
the shared slow-client policy then replaces dropped deltas by one fresh `book_snapshot`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from relay.core.keys import SubKey
from relay.core.wsframe import text_frame
from relay.protocols.futures.wire import INFO, encode_event, encode_heartbeat
from relay.protocols.interfaces import Session

log = logging.getLogger("relay.server")

FEEDS = ("book", "trade", "ticker", "ticker_lite")
HEARTBEAT_INTERVAL = 5.0  # Kraken does not document its heartbeat feed interval
ERR_PRODUCT = "Invalid product id"
ERR_FEED = "Invalid feed"
ERR_JSON = "Json Error"
MAX_SUBSCRIPTIONS = 200


class ClientState:
    __slots__ = ("subs", "heartbeat", "relay", "last_heartbeat")

    def __init__(self) -> None:
        self.subs: set[tuple[str, str]] = set()
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
        trade_snapshot_count: int = 50,
    ) -> None:
        """`products`: feed -> configured products served on it."""
        self.source = source
        self.path = path
        self.max_subscriptions = max_subscriptions
        self.trade_snapshot_count = trade_snapshot_count
        self.products = {feed: frozenset(p) for feed, p in products.items()}
        self.subs: dict[tuple[str, str], set[Any]] = {}
        self.clients: set[Any] = set()
        self.published = 0
        self.delivered = 0
        self.requests = 0
        self.errors = 0

    def set_products(self, products: Mapping[str, Iterable[str]]) -> None:
        self.products = {feed: frozenset(p) for feed, p in products.items()}

    def upstream_rejected(self, key: SubKey, error: str, now: float) -> None:
        """Kraken refused one of our subscriptions (nothing waits on it here yet)."""

    def demanded_subscriptions(self) -> None:
        return None  # the configured products only

    def reload(self, cfg: Any) -> Any:
        """SIGHUP: serve the reloaded `futures:` products (clients of removed ones keep their
        subscription but receive nothing new). Returns the config unchanged (nothing vetoed)."""
        if cfg.futures is not None:
            self.set_products(products_by_feed(cfg.futures))
        return cfg

    # -- connection lifecycle ------------------------------------------------------------------
    def opened(self, conn: Session, now: float) -> None:
        conn.ep_state = ClientState()
        self.clients.add(conn)
        conn.queue(INFO)

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
        st.subs.clear()

    def reject(self, conn: Session, reason: str, data: bytes | None) -> None:
        self.errors += 1
        text = {"rate": "Exceeded msg rate", "binary": ERR_JSON, "too_big": ERR_JSON}.get(reason, ERR_JSON)
        conn.queue(encode_event("error", message=text))

    # -- requests ------------------------------------------------------------------------------
    def message(self, conn: Session, data: bytes, now: float) -> None:
        self.requests += 1
        try:
            msg = orjson.loads(data)
        except orjson.JSONDecodeError:
            msg = None
        if not isinstance(msg, dict):
            self._error(conn, ERR_JSON)
            return
        event = msg.get("event")
        event = event.strip() if isinstance(event, str) else event
        if event == "ping":  # not in Kraken's futures API, answered for clients that try
            conn.queue(b'{"event":"pong"}')
            return
        if event not in ("subscribe", "unsubscribe"):
            self._error(conn, ERR_JSON if event is None else "Invalid event")
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
        served = self.products.get(feed, frozenset())
        for raw_id in products:
            product = raw_id.upper()
            if product not in served:
                self._error(conn, ERR_PRODUCT)
                continue
            if event == "subscribe":
                self._subscribe(conn, st, feed, product)
            else:
                self._unsubscribe(conn, st, feed, product)

    def _error(self, conn: Session, text: str) -> None:
        self.errors += 1
        conn.queue(encode_event("error", message=text))

    def _subscribe(self, conn: Session, st: ClientState, feed: str, product: str) -> None:
        key = (feed, product)
        if key in st.subs:
            conn.queue(encode_event("alert", message="Already subscribed to feed, re-requesting"))
            self._snapshot(conn, feed, product)
            return
        if len(st.subs) >= self.max_subscriptions:
            self._error(conn, "Subscription limit exceeded")
            return
        st.subs.add(key)
        self.subs.setdefault(key, set()).add(conn)
        conn.queue(encode_event("subscribed", feed, [product]))
        self._snapshot(conn, feed, product)

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

    def _unsubscribe(self, conn: Session, st: ClientState, feed: str, product: str) -> None:
        key = (feed, product)
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
        conn.queue(encode_event("unsubscribed", feed, [product]))

    def _relay(self, conn: Session, st: ClientState, event: str, products: Any) -> None:
        if event == "unsubscribe":
            st.relay = None
            conn.queue(encode_event("unsubscribed", "relay"))
            return
        wanted = [p.upper() for p in products] if isinstance(products, list) else None
        st.relay = set(wanted) if wanted else set()
        conn.queue(encode_event("subscribed", "relay", wanted))
        syms = wanted or sorted({p for ps in self.products.values() for p in ps})
        states = [self.source.symbol_state(s) for s in syms]
        conn.queue(orjson.dumps({"feed": "relay_snapshot", "states": states}))

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
        clients = self.subs.get((channel, pub.symbol))
        if not clients:
            return
        wire = text_frame(pub.frame)  # framed once for every subscriber
        if channel == "book":
            key = ("book", pub.symbol, 0)
            for c in tuple(clients):
                c.deliver_book(key, wire, pub.snapshot)
        else:
            for c in tuple(clients):
                c.deliver(wire)
        self.delivered += len(clients)

    def tick(self, now: float) -> None:
        frame = None
        for c in tuple(self.clients):
            st: ClientState | None = c.ep_state
            if st is not None and st.heartbeat and now - st.last_heartbeat >= HEARTBEAT_INTERVAL:
                st.last_heartbeat = now
                frame = frame or encode_heartbeat()
                c.queue(frame)

    def stats(self) -> dict[str, Any]:
        return {
            "clients": len(self.clients),
            "subscriptions": sum(len(s) for s in self.subs.values()),
            "published": self.published,
            "delivered": self.delivered,
            "requests": self.requests,
            "errors": self.errors,
        }


def products_by_feed(section: Any) -> dict[str, list[str]]:
    """feed -> products from a `FuturesConfig` section."""
    ch = section.channels
    return {feed: list(getattr(ch, feed).products) if getattr(ch, feed) is not None else [] for feed in FEEDS}
