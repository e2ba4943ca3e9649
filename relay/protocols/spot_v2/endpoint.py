"""The local Spot v2 endpoint (`/v2`): requests, acks, errors and fan-out for v2 clients (no I/O).

`V2Endpoint` is what the listener (`relay.server.listener.LocalServer`) routes the v2 path to,
exactly like the v1 and futures endpoints: it greets a client with `status`, answers each text
message (ping, subscribe, unsubscribe; Kraken's error texts), fans merge publications out through
the `Hub`, and turns what clients demand beyond the configured (warm) set into upstream
subscriptions (`upstream_plan`): one book subscription per symbol at the deepest depth any client
needs, one ticker trigger per symbol (`bbo` while a client wants it), every ohlc interval asked.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from relay.config import ChannelsConfig, RelayConfig
from relay.core.keys import SubKey
from relay.core.outputs import Publication
from relay.core.spot import BOOK_DEPTHS
from relay.protocols.demand import is_transient
from relay.protocols.interfaces import Session
from relay.protocols.spot_v2 import requests as rq
from relay.protocols.spot_v2.hub import Hub
from relay.protocols.spot_v2.merge import V2Merge
from relay.protocols.spot_v2.plan import desired_from_channels
from relay.protocols.spot_v2.wire import HEARTBEAT, encode_error, encode_pong, encode_status, now_rfc3339

log = logging.getLogger("relay.server")


class V2Endpoint:
    """Spot v2 clients on `path`: the listener's `Endpoint` for the v2 protocol."""

    name = "v2"

    def __init__(
        self,
        merge: V2Merge,
        channels: ChannelsConfig,
        *,
        path: str = "/v2",
        version: str = "",
        max_subscriptions_per_client: int = 200,
        dynamic: Any = None,
        resubscribe: Callable[[], None] | None = None,
        heartbeat_interval: float = 1.0,
    ) -> None:
        """`version`: the relay's own (its `relay` channel); clients' `status` carries Kraken's.
        `resubscribe()`: the upstream set changed (`demanded_subscriptions`)."""
        self.path = path
        self.source = merge
        self.version = version
        self.max_subs = max_subscriptions_per_client
        self.heartbeat_interval = heartbeat_interval
        self.resubscribe = resubscribe or (lambda: None)
        self.hub = Hub(
            merge,
            channels,
            max_subscriptions_per_client=max_subscriptions_per_client,
            dynamic=dynamic,
            on_demand_change=self._demand_changed,
            identity={"name": "kraken-relay", "version": version},
        )
        self._streams: set[tuple[str, str, int]] = set()  # upstream (channel, symbol, ohlc interval)
        self._next_sweep = 0.0
        self._plan = self.upstream_plan()
        self._apply_plan()

    # -- the stack's view: upstream subscriptions and config reloads ------------------------
    def demanded_subscriptions(self) -> list[SubKey]:
        """The configured channels plus what clients demanded (the pool's desired set)."""
        return list(self._plan)

    def upstream_plan(self) -> list[SubKey]:
        """The warm set's subscriptions merged with the on-demand keys: per symbol one book
        subscription (the deepest depth needed) and one ticker trigger (bbo if any client)."""
        warm = desired_from_channels(self.hub.channels)
        depth: dict[str, int] = {}
        trigger: dict[str, int] = {}
        rest: dict[SubKey, None] = {}
        for key in [*warm, *self.hub.demand.keys()]:
            channel, symbol, param = key
            if channel == "book":
                depth[symbol] = max(depth.get(symbol, 0), param)
            elif channel == "ticker":
                trigger[symbol] = max(trigger.get(symbol, 0), param)
            else:
                rest[SubKey(channel, symbol, param)] = None
        books = [SubKey("book", s, d) for s, d in depth.items()]
        tickers = [SubKey("ticker", s, t) for s, t in trigger.items()]
        return [*rest, *books, *tickers]

    def _demand_changed(self) -> None:
        self._plan = self.upstream_plan()
        self._apply_plan()
        self.resubscribe()

    def _apply_plan(self) -> None:
        """Books held at their upstream depth; streams no longer subscribed are forgotten (and
        leftovers of a stream subscribed again), so nothing stale is served to a new client."""
        merge = self.source
        merge.set_subscribed(self._plan)  # data for anything else creates no state
        streams = {(c, s, p if c == "ohlc" else 0) for c, s, p in self._plan if c != "instrument"}
        for channel, symbol, key in (self._streams - streams) | (streams - self._streams):
            merge.drop_stream(channel, symbol, key)
        self._streams = streams
        for channel, symbol, param in self._plan:
            if channel == "book":
                merge.set_book_depth(symbol, param)

    def _sweep(self) -> None:
        """Forget state that frames still in flight after an unsubscribe created again (once a
        second; the merge only holds what is subscribed)."""
        merge = self.source
        streams = self._streams
        tables = (("book", merge.books), ("trade", merge.trades), ("ticker", merge.tickers))
        for channel, table in tables:
            for symbol in [s for s in table if (channel, s, 0) not in streams]:
                merge.drop_stream(channel, symbol)
        for symbol, interval in [k for k in merge.ohlc if ("ohlc", k[0], k[1]) not in streams]:
            merge.drop_stream("ohlc", symbol, interval)

    def reload(self, cfg: RelayConfig) -> RelayConfig:
        """SIGHUP: serve the new warm set. A changed `channels.book.depth` is applied like an
        on-demand depth change (the lines resubscribe; subscribers see no break). Removed
        symbols that clients hold: see `Hub.reloaded`."""
        self.hub.set_channels(cfg.channels)
        self.hub.reloaded(time.monotonic())
        self._plan = self.upstream_plan()
        self._apply_plan()
        return cfg

    def upstream_rejected(self, key: SubKey, error: str, now: float) -> None:
        """Kraken refused an upstream subscription: clients waiting on it get Kraken's error.
        Refusals about our pace or state (`Exceeded msg rate`, `Already subscribed`) are the
        relay's business, not the client's: the line retries, the client keeps waiting."""
        if is_transient(error):
            return
        self.hub.demand_failed(key.channel, key.symbol, error, now)

    def demand_failed(self, channel: str, symbol: str, error: str, now: float) -> None:
        """Upstream refused a demanded pair: waiting clients get `error`."""
        self.hub.demand_failed(channel, symbol, error, now)

    # -- listener `Endpoint` interface ------------------------------------------------------
    def opened(self, conn: Session, now: float) -> None:
        self.hub.add_client(conn)
        src = self.source
        conn.queue(encode_status(src.system_status(), src.upstream_version(), conn.connection_id))

    def closed(self, conn: Session, now: float) -> None:
        self.hub.remove_client(conn, now)

    def reject(self, conn: Session, reason: str, data: bytes | None) -> None:
        """A message refused before parsing (size, binary, rate), with Kraken's error text."""
        time_in = now_rfc3339()
        if reason == "too_big":
            conn.queue(encode_error(None, rq.ERR_TOO_BIG, None, time_in, now_rfc3339()))
        elif reason == "binary":
            conn.queue(encode_error(None, rq.ERR_BINARY, None, time_in, now_rfc3339()))
        else:
            method, req_id = rq.peek_ids(data or b"")
            conn.queue(encode_error(method, rq.ERR_RATE, req_id, time_in, now_rfc3339()))

    def message(self, conn: Session, data: bytes, now: float) -> None:
        time_in = now_rfc3339()
        req = rq.parse_request(data, self.max_subs)
        if isinstance(req, rq.Ping):
            conn.queue(encode_pong(req.req_id, time_in, now_rfc3339()))
        elif isinstance(req, rq.Rejection):
            conn.count_error()
            symbols: list[str | None] = [*req.symbols] or [req.symbol]  # per symbol where Kraken answers so
            for symbol in symbols:
                conn.queue(encode_error(req.method, req.error, req.req_id, time_in, now_rfc3339(), symbol=symbol))
        else:
            try:
                self.hub.handle(conn, req, now, time_in)
            except Exception:  # a bug must cost this request, not the connection
                log.exception("request handling failed")
                conn.count_error()
                conn.queue(encode_error(req.method, "Internal error", req.req_id, time_in, now_rfc3339()))

    def publish(self, pubs: Iterable[Publication]) -> None:
        self.hub.publish(pubs, time.monotonic())

    # -- the NATS publisher's view (`BusSource`) -------------------------------------------
    BUS_CHANNELS = frozenset(("book", "trade", "ticker", "ohlc", "instrument"))

    bus_frames_as_is = True  # `bus_frame(pub)` is `pub.frame`: the publisher skips the call

    def bus_channel(self, channel: str) -> bool:
        """Client data; `status` and `relay` are per client and the relay's own (the state subject)."""
        return channel in self.BUS_CHANNELS

    def bus_frame(self, pub: Publication) -> bytes | None:
        """v2 clients receive the merge's frame unchanged."""
        return pub.frame

    def bus_snapshot(self, channel: str, symbol: str, key: int) -> bytes | None:
        """What a client subscribing to (channel, symbol, key) now gets first; a book only at a
        depth this relay publishes (its book's depth, or a view someone holds)."""
        src = self.source
        if channel == "book":
            arb = src.books.get(symbol)
            if arb is None or not (key == arb.depth or key in arb.views):
                return None
            return src.book_snapshot(symbol, key)
        if channel == "trade":
            return src.trade_snapshot(symbol, self.hub.trade_snapshot_count)
        if channel == "ticker":
            return src.ticker_snapshot(symbol, key)
        if channel == "ohlc":
            return src.ohlc_snapshot(symbol, key)
        if channel == "instrument":
            return src.instrument_snapshot()
        return None

    def bus_want_book(self, symbol: str, depth: int) -> bool:
        """Publish `symbol`'s book at `depth` from now on (a NATS consumer asked for it), if the
        book is served here and `depth` is one Kraken offers: bounded by what is subscribed."""
        src = self.source
        arb = src.books.get(symbol)
        if depth not in BOOK_DEPTHS or arb is None or depth > arb.depth:
            return False
        src.want_book_depth(symbol, depth)
        return True

    def tick(self, now: float) -> None:
        """Heartbeats for subscribed clients idle for `heartbeat_interval`; demanded symbols
        whose data arrived; the hub's timers."""
        after = self.heartbeat_interval * 0.95
        for c in tuple(self.hub.clients):
            if (c.subs or c.relay_subscribed) and c.idle(now) >= after:
                c.queue(HEARTBEAT)
        self.hub.tick(now)
        if now >= self._next_sweep:
            self._next_sweep = now + 1.0
            self._sweep()

    def stats(self) -> dict[str, Any]:
        hub = self.hub
        return {
            "subscriptions": hub.subscription_count(),
            "published": hub.published,
            "dispatch_errors": hub.dispatch_errors,
            "delivered": hub.delivered,
            "dynamic_symbols": sorted({k.symbol for k in hub.demand.keys()}),
            "on_demand": {
                "held": len(hub.demand.entries),
                "demanded": hub.demand.demanded,
                "released": hub.demand.released,
                "refused": hub.demand.refused,
                "pending": len(hub.pending),
            },
            "pending_subscriptions": len(hub.pending),
        }
