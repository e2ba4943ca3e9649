"""Subscription registry and publication dispatch for the local v2 endpoint (no I/O).

The hub maps (channel, symbol, key) to the set of client sessions subscribed to it and hands
each merge `Publication` to those sessions as the exact bytes the merge encoded (encode once,
fan out). Subscribing registers the client and takes the snapshot from the merge in the same
synchronous step, so no publication can fall between snapshot and live updates.

Clients are `relay.protocols.interfaces.Session`s, so the hub can be tested without sockets.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from relay.config import ChannelsConfig, DynamicSubscriptionsConfig
from relay.core.keys import SubKey
from relay.core.wsframe import text_frame
from relay.protocols.interfaces import Session
from relay.protocols.spot_v2 import requests as rq
from relay.protocols.spot_v2.demand import DemandHandler, DemandTracker
from relay.protocols.spot_v2.wire import encode_ack, encode_error, now_rfc3339

log = logging.getLogger("relay.server")


class Source(Protocol):
    """The read side of `relay.protocols.spot_v2.merge.Merge` that the server uses."""

    def want_book_depth(self, symbol: str, depth: int) -> None: ...
    def release_book_depth(self, symbol: str, depth: int) -> None: ...
    def book_snapshot(self, symbol: str, depth: int) -> bytes | None: ...
    def trade_snapshot(self, symbol: str, count: int = 50) -> bytes | None: ...
    def ticker_snapshot(self, symbol: str) -> bytes | None: ...
    def ohlc_snapshot(self, symbol: str, interval: int) -> bytes | None: ...
    def instrument_snapshot(self) -> bytes | None: ...
    def system_status(self) -> str: ...
    def symbol_state(self, symbol: str) -> dict[str, Any]: ...


@dataclass(slots=True)
class _Pending:
    """A subscribe waiting for a dynamically demanded symbol to produce data."""

    client: Session
    sub: rq.Subscription
    symbol: str
    time_in: str
    deadline: float


def encode_relay(snapshot: bool, states: Iterable[dict[str, Any]]) -> bytes:
    """The opt-in `relay` channel frame: one element per symbol (`symbol`, `book`, `upstreams`, ...)."""
    return orjson.dumps({"channel": "relay", "type": "snapshot" if snapshot else "update", "data": list(states)})


class Hub:
    def __init__(
        self,
        source: Source,
        channels: ChannelsConfig,
        *,
        max_subscriptions_per_client: int = 200,
        dynamic: DynamicSubscriptionsConfig | None = None,
        demand: DemandHandler | None = None,
        demand_timeout: float = 15.0,
        trade_snapshot_count: int = 50,
    ) -> None:
        self.source = source
        self.channels = channels
        self.max_subs = max_subscriptions_per_client
        self.demand = DemandTracker(dynamic or DynamicSubscriptionsConfig(), demand)
        self.demand_timeout = demand_timeout
        self.trade_snapshot_count = trade_snapshot_count
        self.subs: dict[tuple[str, str, int], set[Session]] = {}  # SubKey -> subscribers
        self.relay_clients: set[Session] = set()
        self.clients: set[Session] = set()
        self.pending: list[_Pending] = []
        self._pending_keys: set[tuple[str, str]] = set()
        self.static: dict[str, frozenset[str]] = {}
        self.set_channels(channels)
        # The depth the merge holds books at; with no book channel configured (dynamic-only
        # books) it is the merge's own setting.
        merge_depth = getattr(getattr(source, "settings", None), "book_depth", 0)
        self.book_depth = channels.book.depth if channels.book else merge_depth
        self.published = 0
        self.delivered = 0
        self.dispatch_errors = 0

    def set_channels(self, channels: ChannelsConfig) -> None:
        """The configured (always live) symbols; called again on a config reload (SIGHUP)."""
        self.channels = channels
        self.static = {
            "book": frozenset(channels.book.symbols if channels.book else ()),
            "trade": frozenset(channels.trade.symbols if channels.trade else ()),
            "ticker": frozenset(channels.ticker.symbols if channels.ticker else ()),
            "ohlc": frozenset(channels.ohlc.symbols if channels.ohlc else ()),
        }
        self.ohlc_intervals = frozenset(channels.ohlc.intervals if channels.ohlc else (1,))  # Kraken's default

    # -- clients --------------------------------------------------------------------------
    def add_client(self, client: Session) -> None:
        self.clients.add(client)

    def remove_client(self, client: Session, now: float) -> None:
        """Connection gone: drop every subscription it held (and its pending requests)."""
        self.clients.discard(client)
        self.relay_clients.discard(client)
        client.relay_subscribed = False
        for key in list(client.subs):
            self._unregister(client, key, now)
        mine = [p for p in self.pending if p.client is client]
        if mine:
            self._drop_pending(mine, now)  # releases their upstream demand too

    def subscription_count(self) -> int:
        return sum(len(s) for s in self.subs.values()) + len(self.relay_clients)

    def symbols(self) -> list[str]:
        seen: dict[str, None] = {}
        for syms in self.static.values():
            seen.update(dict.fromkeys(sorted(syms)))
        seen.update(dict.fromkeys(sorted(self.demand.symbols())))
        return list(seen)

    # -- publications ---------------------------------------------------------------------
    def publish(self, pubs: Iterable[Any], now: float) -> None:
        """Fan each publication's frame out to its subscribers (frames are never re-encoded).

        Called from the upstream readers: a bug while serving one publication is logged and
        counted, never raised into the upstream connection that delivered the data.
        """
        for pub in pubs:
            self.published += 1
            try:
                self._dispatch(pub, now)
            except Exception:
                self.dispatch_errors += 1
                if self.dispatch_errors <= 10:
                    log.exception("dispatch of a %s publication failed", pub.channel)

    def _dispatch(self, pub: Any, now: float) -> None:
        subs = self.subs
        channel = pub.channel
        if channel == "book":
            key = ("book", pub.symbol, pub.key)  # a plain tuple on the hot path: equal to the SubKey
            clients = subs.get(key)
            if clients:
                wire, snap = text_frame(pub.frame), pub.snapshot
                for c in tuple(clients):
                    c.deliver_book(key, wire, snap)
                self.delivered += len(clients)
        elif channel == "status":
            wire = text_frame(pub.frame)
            for c in tuple(self.clients):
                c.deliver(wire)
            self.delivered += len(self.clients)
        elif channel == "relay":
            wire, sym = text_frame(pub.frame), pub.symbol
            for c in tuple(self.relay_clients):
                if c.relay_filter is None or sym in c.relay_filter:
                    c.deliver(wire)
                    self.delivered += 1
        else:
            clients = subs.get((channel, "" if channel == "instrument" else pub.symbol, pub.key))
            if clients:
                wire = text_frame(pub.frame)
                for c in tuple(clients):
                    c.deliver(wire)
                self.delivered += len(clients)
        if self._pending_keys and (channel, pub.symbol) in self._pending_keys:
            self.demand_ready(channel, pub.symbol, now)

    # -- requests -------------------------------------------------------------------------
    def handle(self, client: Session, sub: rq.Subscription, now: float, time_in: str) -> None:
        """Answer one validated (un)subscribe: one ack or error per symbol, then snapshots."""
        channel = sub.channel
        if sub.method == "unsubscribe":
            self._unsubscribe(client, sub, now, time_in)
            return
        if channel == "heartbeat":
            client.queue(encode_ack("subscribe", {"channel": "heartbeat"}, sub.req_id, time_in, now_rfc3339()))
            return
        if channel == "relay":
            self._subscribe_relay(client, sub, time_in)
            return
        if channel == "instrument":
            if not self.channels.instrument:
                client.queue(encode_error("subscribe", rq.ERR_CHANNEL, sub.req_id, time_in, now_rfc3339()))
                return
            self._subscribe_one(client, sub, "", time_in)
            return
        # Per-request checks that Kraken answers once, without a symbol.
        if channel == "book" and sub.depth > self.book_depth:
            client.queue(encode_error("subscribe", rq.ERR_DEPTH, sub.req_id, time_in, now_rfc3339()))
            return
        if channel == "ohlc" and sub.interval not in self.ohlc_intervals:
            client.queue(encode_error("subscribe", rq.ERR_INTERVAL, sub.req_id, time_in, now_rfc3339()))
            return
        if channel == "ticker" and sub.event_trigger != "trades":
            client.queue(encode_error("subscribe", rq.ERR_TRIGGER, sub.req_id, time_in, now_rfc3339()))
            return
        static = self.static[channel]
        for symbol in sub.symbols:
            err = None
            key = SubKey(channel, symbol, sub.key)
            if key in client.subs or any(
                p.client is client and p.symbol == symbol and p.sub.key == sub.key and p.sub.channel == channel
                for p in self.pending
            ):
                err = rq.ERR_ALREADY
            elif len(client.subs) >= self.max_subs:
                err = rq.ERR_LIMIT
            elif symbol in static or self.demand.is_ready(channel, symbol):
                if self.demand.known(channel, symbol):
                    self.demand.acquire(channel, symbol)
                self._subscribe_one(client, sub, symbol, time_in)
                continue
            elif not self.demand.enabled or not self.demand.allowed(symbol):
                err = rq.err_pair(symbol)
            elif not self.demand.can_add(channel, symbol):
                err = rq.ERR_DYNAMIC_LIMIT
            if err is not None:
                client.queue(encode_error("subscribe", err, sub.req_id, time_in, now_rfc3339(), symbol=symbol))
                continue
            self.demand.acquire(channel, symbol)
            self.pending.append(_Pending(client, sub, symbol, time_in, now + self.demand_timeout))
            self._pending_keys.add((channel, symbol))
            self._check_pending_now(channel, symbol, now)

    def _subscribe_one(self, client: Session, sub: rq.Subscription, symbol: str, time_in: str) -> None:
        """Register, ack, snapshot: all in this one synchronous step."""
        channel = sub.channel
        key = SubKey(channel, symbol, sub.key)
        if key in client.subs:
            client.queue(
                encode_error("subscribe", rq.ERR_ALREADY, sub.req_id, time_in, now_rfc3339(), symbol=symbol or None)
            )
            return
        client.subs.add(key)
        self.subs.setdefault(key, set()).add(client)
        client.queue(encode_ack("subscribe", sub.result(symbol or None), sub.req_id, time_in, now_rfc3339()))
        src = self.source
        if channel == "book":
            src.want_book_depth(symbol, sub.depth)
            client.open_book(key, sub.snapshot)  # its snapshot now, or paced as the buffer drains
            return
        if not sub.snapshot:
            return
        if channel == "trade":
            snap = src.trade_snapshot(symbol, self.trade_snapshot_count)
        elif channel == "ticker":
            snap = src.ticker_snapshot(symbol)
        elif channel == "ohlc":
            snap = src.ohlc_snapshot(symbol, sub.interval)
        else:
            snap = src.instrument_snapshot()
        if snap is not None:
            client.queue(snap)

    def _subscribe_relay(self, client: Session, sub: rq.Subscription, time_in: str) -> None:
        client.relay_subscribed = True
        client.relay_filter = set(sub.symbols) if sub.symbol_given else None
        self.relay_clients.add(client)
        client.queue(
            encode_ack("subscribe", {"channel": "relay", "snapshot": True}, sub.req_id, time_in, now_rfc3339())
        )
        symbols = sub.symbols if sub.symbol_given else self.symbols()
        client.queue(encode_relay(True, self.relay_states(symbols)))

    def relay_states(self, symbols: Iterable[str]) -> list[dict[str, Any]]:
        out = []
        for sym in symbols:
            try:
                state = dict(self.source.symbol_state(sym))
            except (KeyError, ValueError):
                state = {"book": "down", "upstreams": {}}
            out.append({"symbol": sym, **state})
        return out

    def _unsubscribe(self, client: Session, sub: rq.Subscription, now: float, time_in: str) -> None:
        channel = sub.channel
        if channel in ("relay", "heartbeat"):
            ok = channel == "heartbeat" or client.relay_subscribed
            if channel == "relay":
                client.relay_subscribed = False
                client.relay_filter = None
                self.relay_clients.discard(client)
            if ok:
                client.queue(encode_ack("unsubscribe", {"channel": channel}, sub.req_id, time_in, now_rfc3339()))
            else:
                client.queue(encode_error("unsubscribe", rq.ERR_NOT_SUBSCRIBED, sub.req_id, time_in, now_rfc3339()))
            return
        symbols = sub.symbols if channel != "instrument" else [""]
        for symbol in symbols:
            key = SubKey(channel, symbol, sub.key)
            pend = [
                p
                for p in self.pending
                if p.client is client and p.sub.channel == channel and p.symbol == symbol and p.sub.key == sub.key
            ]
            if key in client.subs:
                self._unregister(client, key, now)
            elif pend:
                self._drop_pending(pend, now)
            else:
                client.queue(
                    encode_error(
                        "unsubscribe", rq.ERR_NOT_SUBSCRIBED, sub.req_id, time_in, now_rfc3339(), symbol=symbol or None
                    )
                )
                continue
            client.queue(encode_ack("unsubscribe", sub.result(symbol or None), sub.req_id, time_in, now_rfc3339()))

    def _unregister(self, client: Session, key: SubKey, now: float) -> None:
        channel, symbol, k = key
        client.subs.discard(key)
        clients = self.subs.get(key)
        if clients is not None:
            clients.discard(client)
            if not clients:
                del self.subs[key]
        if channel == "book":
            client.stop_book(key)
            self.source.release_book_depth(symbol, k)
        if self.demand.known(channel, symbol):
            self.demand.release(channel, symbol, now)

    def _drop_pending(self, pend: list[_Pending], now: float) -> None:
        for p in pend:
            self.pending.remove(p)
            self.demand.release(p.sub.channel, p.symbol, now)
        self._pending_keys = {(p.sub.channel, p.symbol) for p in self.pending}

    # -- dynamic subscriptions ------------------------------------------------------------
    def _has_data(self, channel: str, symbol: str) -> bool:
        src = self.source
        if channel == "book":
            return src.book_snapshot(symbol, self.book_depth) is not None
        if channel == "ticker":
            return src.ticker_snapshot(symbol) is not None
        if channel == "trade":
            return src.trade_snapshot(symbol, 1) is not None
        if channel == "ohlc":
            return any(src.ohlc_snapshot(symbol, i) is not None for i in self.ohlc_intervals)
        return False

    def _check_pending_now(self, channel: str, symbol: str, now: float) -> None:
        if self._has_data(channel, symbol):
            self.demand_ready(channel, symbol, now)

    def demand_ready(self, channel: str, symbol: str, now: float) -> None:
        """Data for a demanded pair is available: complete the waiting subscribes."""
        self.demand.mark_ready(channel, symbol)
        done = [p for p in self.pending if p.sub.channel == channel and p.symbol == symbol]
        if not done:
            return
        self.pending = [p for p in self.pending if not (p.sub.channel == channel and p.symbol == symbol)]
        self._pending_keys.discard((channel, symbol))
        for p in done:
            self._subscribe_one(p.client, p.sub, symbol, p.time_in)

    def demand_failed(self, channel: str, symbol: str, error: str, now: float) -> None:
        """Upstream refused the pair: every waiting subscribe gets that error."""
        done = [p for p in self.pending if p.sub.channel == channel and p.symbol == symbol]
        self.pending = [p for p in self.pending if not (p.sub.channel == channel and p.symbol == symbol)]
        self._pending_keys.discard((channel, symbol))
        if not self.demand.is_ready(channel, symbol):
            self.demand.forget(channel, symbol)
        for p in done:
            p.client.queue(encode_error("subscribe", error, p.sub.req_id, p.time_in, now_rfc3339(), symbol=symbol))

    def tick(self, now: float) -> None:
        """Timers: pending subscribes that found data or timed out, upstream releases."""
        if self.pending:
            for channel, symbol in list(self._pending_keys):
                self._check_pending_now(channel, symbol, now)
            expired = [p for p in self.pending if p.deadline <= now]
            if expired:
                self._drop_pending(expired, now)
                for p in expired:
                    p.client.queue(
                        encode_error(
                            "subscribe", rq.ERR_TIMEOUT, p.sub.req_id, p.time_in, now_rfc3339(), symbol=p.symbol
                        )
                    )
        self.demand.tick(now)
