"""The local Spot v2 endpoint (`/v2`): requests, acks, errors and fan-out for v2 clients (no I/O).

`V2Endpoint` is what the listener (`relay.server.listener.LocalServer`) routes the v2 path to,
exactly like the v1 and futures endpoints: it greets a client with `status`, answers each text
message (ping, subscribe, unsubscribe; Kraken's error texts), fans merge publications out through
the `Hub`, and follows the symbols clients demand beyond the configured set (`DemandedSymbols`),
which it hands back to its stack as extra upstream subscriptions.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from relay.config import BookChannelConfig, ChannelsConfig, RelayConfig, SymbolsChannelConfig
from relay.core.keys import SubKey
from relay.core.outputs import Publication
from relay.protocols.interfaces import Session
from relay.protocols.spot_v2 import requests as rq
from relay.protocols.spot_v2.demand import DemandHandler
from relay.protocols.spot_v2.hub import Hub, Source
from relay.protocols.spot_v2.plan import desired_from_channels
from relay.protocols.spot_v2.wire import HEARTBEAT, encode_error, encode_pong, encode_status, now_rfc3339

log = logging.getLogger("relay.server")


class DemandedSymbols:
    """The (channel, symbol) pairs clients made the relay fetch upstream, and which await data.

    The hub decides *when* (allowlist, limit, release delay); this adds them to the upstream
    subscriptions (through `resubscribe`) and tells the hub once the merge has data for them.
    """

    def __init__(self, merge: Any, resubscribe: Callable[[], None]) -> None:
        self.merge = merge
        self.resubscribe = resubscribe
        self.extra: dict[str, set[str]] = {}  # channel -> symbols added on demand
        self.waiting: set[tuple[str, str]] = set()

    def on_demand(self, channel: str, symbol: str) -> None:
        self.extra.setdefault(channel, set()).add(symbol)
        self.waiting.add((channel, symbol))
        self.resubscribe()

    def on_release(self, channel: str, symbol: str) -> None:
        self.extra.get(channel, set()).discard(symbol)
        self.waiting.discard((channel, symbol))
        self.resubscribe()

    def channels(self, base: ChannelsConfig) -> ChannelsConfig:
        """`base` with the demanded symbols added (book depth: the merge's)."""
        update: dict[str, Any] = {}
        for channel, symbols in self.extra.items():
            current = getattr(base, channel, None)
            if not symbols:
                continue
            if current is None:
                if channel == "book":
                    current = BookChannelConfig(symbols=[], depth=self.merge.settings.book_depth)
                else:
                    current = SymbolsChannelConfig(symbols=[])
            merged = list(dict.fromkeys([*current.symbols, *sorted(symbols)]))
            update[channel] = current.model_copy(update={"symbols": merged})
        return base.model_copy(update=update) if update else base

    def arrived(self) -> list[tuple[str, str]]:
        """The waiting pairs whose data the merge now has (no longer waiting)."""
        merge = self.merge
        have: dict[str, Callable[[str], Any]] = {
            "book": lambda s: merge.book_snapshot(s, 10),
            "trade": lambda s: merge.trades.get(s),
            "ticker": merge.ticker_snapshot,
        }
        done = [(c, s) for c, s in self.waiting if have.get(c, lambda _s: True)(s)]
        self.waiting.difference_update(done)
        return done


class V2Endpoint:
    """Spot v2 clients on `path`: the listener's `Endpoint` for the v2 protocol."""

    name = "v2"

    def __init__(
        self,
        merge: Source,
        channels: ChannelsConfig,
        *,
        path: str = "/v2",
        version: str = "",
        max_subscriptions_per_client: int = 200,
        dynamic: Any = None,
        resubscribe: Callable[[], None] | None = None,
        demand: DemandHandler | None = None,
        demand_timeout: float = 15.0,
        heartbeat_interval: float = 1.0,
    ) -> None:
        """`resubscribe`: called when the demanded set changes (`demanded_subscriptions`);
        `demand`: another handler of demanded symbols instead (tests)."""
        self.path = path
        self.source = merge
        self.version = version
        self.max_subs = max_subscriptions_per_client
        self.heartbeat_interval = heartbeat_interval
        self.demanded = DemandedSymbols(merge, resubscribe or (lambda: None))
        self.hub = Hub(
            merge,
            channels,
            max_subscriptions_per_client=max_subscriptions_per_client,
            dynamic=dynamic,
            demand=demand if demand is not None else self.demanded if resubscribe is not None else None,
            demand_timeout=demand_timeout,
        )

    # -- the stack's view: upstream subscriptions and config reloads ------------------------
    def demanded_subscriptions(self) -> list[SubKey]:
        """The configured channels plus what clients demanded (the pool's desired set)."""
        return desired_from_channels(self.demanded.channels(self.hub.channels))

    def reload(self, cfg: RelayConfig) -> RelayConfig:
        """SIGHUP: serve the new symbol set. The book depth is fixed for the life of the merge, so
        a changed `channels.book.depth` is reverted (with a warning) in the config returned."""
        old = self.hub.channels
        new = cfg.channels
        if new.book and old.book and new.book.depth != old.book.depth:
            log.warning("reload: book depth changes need a restart; keeping the old depth")
            book = new.book.model_copy(update={"depth": old.book.depth})
            new = new.model_copy(update={"book": book})
            cfg = cfg.model_copy(update={"channels": new})
        self.hub.set_channels(new)
        return cfg

    def upstream_rejected(self, key: SubKey, error: str, now: float) -> None:
        """Kraken refused an upstream subscription: clients waiting on it get Kraken's error."""
        self.hub.demand_failed(key.channel, key.symbol, error, now)

    def demand_ready(self, channel: str, symbol: str, now: float) -> None:
        """Upstream subscribed a demanded pair (the first published data counts too)."""
        self.hub.demand_ready(channel, symbol, now)

    def demand_failed(self, channel: str, symbol: str, error: str, now: float) -> None:
        """Upstream refused a demanded pair: waiting clients get `error`."""
        self.hub.demand_failed(channel, symbol, error, now)

    # -- listener `Endpoint` interface ------------------------------------------------------
    def opened(self, conn: Session, now: float) -> None:
        self.hub.add_client(conn)
        conn.queue(encode_status(self.source.system_status(), self.version, conn.connection_id))

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
            conn.queue(encode_error(req.method, req.error, req.req_id, time_in, now_rfc3339(), symbol=req.symbol))
        else:
            try:
                self.hub.handle(conn, req, now, time_in)
            except Exception:  # a bug must cost this request, not the connection
                log.exception("request handling failed")
                conn.count_error()
                conn.queue(encode_error(req.method, "Internal error", req.req_id, time_in, now_rfc3339()))

    def publish(self, pubs: Iterable[Publication]) -> None:
        self.hub.publish(pubs, time.monotonic())

    def tick(self, now: float) -> None:
        """Heartbeats for subscribed clients idle for `heartbeat_interval`; demanded symbols
        whose data arrived; the hub's timers."""
        after = self.heartbeat_interval * 0.95
        for c in tuple(self.hub.clients):
            if (c.subs or c.relay_subscribed) and c.idle(now) >= after:
                c.queue(HEARTBEAT)
        for channel, symbol in self.demanded.arrived():
            self.hub.demand_ready(channel, symbol, now)
        self.hub.tick(now)

    def stats(self) -> dict[str, Any]:
        hub = self.hub
        return {
            "subscriptions": hub.subscription_count(),
            "published": hub.published,
            "dispatch_errors": hub.dispatch_errors,
            "delivered": hub.delivered,
            "dynamic_symbols": sorted(hub.demand.symbols()),
            "pending_subscriptions": len(hub.pending),
        }
