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
from relay.protocols.demand import DemandTracker, denied_text
from relay.protocols.interfaces import Session
from relay.protocols.spot_v2 import requests as rq
from relay.protocols.spot_v2.wire import encode_ack, encode_error, encode_status, now_rfc3339

log = logging.getLogger("relay.server")


class Source(Protocol):
    """The read side of `relay.protocols.spot_v2.merge.Merge` that the server uses."""

    def want_book_depth(self, symbol: str, depth: int) -> None: ...
    def release_book_depth(self, symbol: str, depth: int) -> None: ...
    def book_snapshot(self, symbol: str, depth: int) -> bytes | None: ...
    def trade_snapshot(self, symbol: str, count: int = 50) -> bytes | None: ...
    def ticker_snapshot(self, symbol: str, key: int = 0) -> bytes | None: ...
    def has_data(self, channel: str, symbol: str, key: int = 0) -> bool: ...
    def knows_symbol(self, symbol: str) -> bool | None: ...
    def upstream_version(self) -> str: ...
    def ohlc_snapshot(self, symbol: str, interval: int) -> bytes | None: ...
    def instrument_snapshot(self) -> bytes | None: ...
    def system_status(self) -> str: ...
    def symbol_state(self, symbol: str) -> dict[str, Any]: ...


@dataclass(slots=True)
class _Pending:
    """A subscribe waiting for an on-demand subscription's first data."""

    client: Session
    sub: rq.Subscription
    symbol: str
    key: SubKey
    time_in: str
    deadline: float


def encode_relay(snapshot: bool, states: Iterable[dict[str, Any]], identity: dict[str, str] | None = None) -> bytes:
    """The opt-in `relay` channel frame: one element per symbol (`symbol`, `book`, `upstreams`, ...);
    snapshots also name the relay (`relay`: name and version), which Kraken's frames never do."""
    msg: dict[str, Any] = {"channel": "relay", "type": "snapshot" if snapshot else "update", "data": list(states)}
    if identity is not None:
        msg["relay"] = identity
    return orjson.dumps(msg)


class Hub:
    def __init__(
        self,
        source: Source,
        channels: ChannelsConfig,
        *,
        max_subscriptions_per_client: int = 200,
        dynamic: DynamicSubscriptionsConfig | None = None,
        on_demand_change: Any = None,
        trade_snapshot_count: int = 50,
        identity: dict[str, str] | None = None,
    ) -> None:
        """`on_demand_change()`: the on-demand upstream set changed (the endpoint replans)."""
        self.source = source
        self.channels = channels
        self.max_subs = max_subscriptions_per_client
        cfg = dynamic or DynamicSubscriptionsConfig()
        self.demand: DemandTracker[SubKey] = DemandTracker(cfg, on_demand_change)
        self.demand_timeout = cfg.timeout
        self.trade_snapshot_count = trade_snapshot_count
        self.identity = identity
        self.subs: dict[tuple[str, str, int], set[Session]] = {}  # SubKey -> subscribers
        self.relay_clients: set[Session] = set()
        self.clients: set[Session] = set()
        self.pending: list[_Pending] = []
        self._pending_streams: set[tuple[str, str]] = set()  # (channel, symbol) of pending keys
        self.static: dict[str, frozenset[str]] = {}
        self.set_channels(channels)
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
        self.ohlc_intervals = frozenset(channels.ohlc.intervals if channels.ohlc else ())
        self.warm_depth = channels.book.depth if channels.book else 0

    def reloaded(self, now: float) -> None:
        """After `set_channels` on a reload: a subscription clients hold outside the new set stays
        served on demand (released `release_after` after its last client), or, with on-demand
        serving off or the symbol outside `allow`/`deny`, ends with an unsubscribe ack without
        `req_id` whose `warnings` say why (never silence). The caller replans upstream."""
        demand = self.demand
        for key, clients in list(self.subs.items()):
            k = SubKey(*key)
            if k.channel == "instrument":
                if self.channels.instrument:
                    continue
                why = "Channel not served by this relay instrument (channels.instrument is false)"
            elif self.is_warm(k):
                continue
            elif demand.enabled and demand.permitted(k.symbol):
                demand.hold(k, len(clients) + sum(1 for p in self.pending if p.key == k))
                continue
            elif demand.enabled:
                why = denied_text(k.symbol)
            else:
                why = rq.err_not_served(k.symbol, k, k.symbol in self.static.get(k.channel, ()))
            result: dict[str, Any] = {"channel": k.channel}
            if k.channel == "book":
                result["depth"] = k.param
            elif k.channel == "ohlc":
                result["interval"] = k.param
            elif k.channel == "ticker":
                result["event_trigger"] = "bbo" if k.param == 1 else "trades"
            if k.symbol:
                result["symbol"] = k.symbol
            ts = now_rfc3339()
            notice = encode_ack("unsubscribe", result, None, ts, ts, warnings=[why])
            for c in tuple(clients):
                self._unregister(c, k, now)
                c.queue(notice)

    def is_warm(self, key: SubKey) -> bool:
        """Part of the configured set, always subscribed upstream (no on-demand step)."""
        channel, symbol, param = key
        if symbol not in self.static.get(channel, ()):
            return False
        if channel == "book":
            return param <= self.warm_depth
        if channel == "ohlc":
            return param in self.ohlc_intervals
        if channel == "ticker":
            return param == 0  # the configured ticker streams use Kraken's default trigger
        return True

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
        seen.update(dict.fromkeys(sorted({k.symbol for k in self.demand.keys()})))
        return list(seen)

    # -- publications ---------------------------------------------------------------------
    def publish(self, pubs: Iterable[Any], now: float) -> None:
        """Fan each publication's frame out to its subscribers (frames are never re-encoded).

        Called from the upstream readers: a bug while serving one publication is logged and
        counted, never raised into the upstream connection that delivered the data.
        """
        pending = self._pending_streams
        arrived: set[tuple[str, str]] = set()
        for pub in pubs:
            self.published += 1
            try:
                self._dispatch(pub, now)
            except Exception:
                self.dispatch_errors += 1
                if self.dispatch_errors <= 10:
                    log.exception("dispatch of a %s publication failed", pub.channel)
            if pending and (pub.channel, pub.symbol) in pending:
                arrived.add((pub.channel, pub.symbol))
        # After the whole batch: a subscriber joining mid-batch would get a snapshot and then
        # the rest of the batch the snapshot already holds.
        for channel, symbol in arrived:
            self._check_pending(channel, symbol, now)

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
            # Rare: encoded per client, each keeps its own connection_id (as on Kraken).
            system, version = self.source.system_status(), self.source.upstream_version()
            for c in tuple(self.clients):
                c.deliver(text_frame(encode_status(system, version, c.connection_id)))
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
        for symbol in sub.symbols:
            self._subscribe_symbol(client, sub, symbol, now, time_in)

    def _subscribe_symbol(self, client: Session, sub: rq.Subscription, symbol: str, now: float, time_in: str) -> None:
        """One symbol of a subscribe: served at once (warm, or on-demand data already there),
        refused with Kraken's text, or demanded upstream and answered when its data arrives."""
        key = SubKey(sub.channel, symbol, sub.key)
        demand = self.demand
        err = None
        if key in client.subs or any(p.client is client and p.key == key for p in self.pending):
            err = rq.ERR_ALREADY
        elif len(client.subs) >= self.max_subs:
            err = rq.ERR_LIMIT
        elif self.is_warm(key) or demand.is_ready(key):
            if demand.known(key):
                demand.acquire(key)
            self._subscribe_one(client, sub, symbol, time_in)
            return
        elif self.source.knows_symbol(symbol) is False:
            err = rq.err_pair(symbol)  # Kraken does not list it: refused at once, as Kraken does
        elif not demand.enabled:
            err = rq.err_not_served(symbol, key, symbol in self.static.get(sub.channel, ()))
        else:
            err = demand.refusal(key, symbol)
        if err is not None:
            client.count_error()
            client.queue(encode_error("subscribe", err, sub.req_id, time_in, now_rfc3339(), symbol=symbol))
            return
        demand.acquire(key)
        self.pending.append(_Pending(client, sub, symbol, key, time_in, now + self.demand_timeout))
        self._pending_streams.add((sub.channel, symbol))
        self._check_pending(sub.channel, symbol, now)

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
            snap = src.ticker_snapshot(symbol, sub.key)
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
        client.queue(encode_relay(True, self.relay_states(symbols), self.identity))

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
            pend = [p for p in self.pending if p.client is client and p.key == key]
            if key in client.subs:
                self._unregister(client, key, now)
            elif pend:
                # Kraken would have acked the subscribe by now: the client gets that ack first
                for p in pend:
                    client.queue(encode_ack("subscribe", p.sub.result(symbol), p.sub.req_id, p.time_in, now_rfc3339()))
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
        if self.demand.known(key):
            self.demand.release(key, now)

    def _drop_pending(self, pend: list[_Pending], now: float) -> None:
        for p in pend:
            self.pending.remove(p)
            self.demand.release(p.key, now)
        self._pending_streams = {(p.sub.channel, p.symbol) for p in self.pending}

    # -- on-demand subscriptions ----------------------------------------------------------
    def _check_pending(self, channel: str, symbol: str, now: float) -> None:
        """Complete the pending subscribes of this stream whose data is there now."""
        has_data = self.source.has_data
        for key in {p.key for p in self.pending if p.sub.channel == channel and p.symbol == symbol}:
            if has_data(channel, symbol, key.param):
                self.demand_ready(key, now)

    def demand_ready(self, key: SubKey, now: float) -> None:
        """Data for an on-demand key is available: complete the waiting subscribes."""
        self.demand.mark_ready(key)
        done = [p for p in self.pending if p.key == key]
        if not done:
            return
        self.pending = [p for p in self.pending if p.key != key]
        self._pending_streams = {(p.sub.channel, p.symbol) for p in self.pending}
        for p in done:
            self._subscribe_one(p.client, p.sub, p.symbol, p.time_in)

    def demand_failed(self, channel: str, symbol: str, error: str, now: float) -> None:
        """Kraken refused an upstream subscription of this stream: waiting subscribes get its error."""
        done = [p for p in self.pending if p.sub.channel == channel and p.symbol == symbol]
        if not done:
            return
        self.pending = [p for p in self.pending if not (p.sub.channel == channel and p.symbol == symbol)]
        self._pending_streams = {(p.sub.channel, p.symbol) for p in self.pending}
        for key in {p.key for p in done}:
            if not self.demand.is_ready(key):
                self.demand.forget(key)
        for p in done:
            p.client.count_error()
            p.client.queue(encode_error("subscribe", error, p.sub.req_id, p.time_in, now_rfc3339(), symbol=p.symbol))

    def tick(self, now: float) -> None:
        """Timers: pending subscribes that found data or timed out, upstream releases."""
        if self.pending:
            for channel, symbol in list(self._pending_streams):
                self._check_pending(channel, symbol, now)
            expired = [p for p in self.pending if p.deadline <= now]
            if expired:
                self._drop_pending(expired, now)
                for p in expired:
                    p.client.count_error()
                    p.client.queue(
                        encode_error(
                            "subscribe", rq.ERR_TIMEOUT, p.sub.req_id, p.time_in, now_rfc3339(), symbol=p.symbol
                        )
                    )
        self.demand.tick(now)
