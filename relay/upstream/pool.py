"""The set of redundant upstream lines, plus the merge's timer task.

Each configured upstream runs in its own task (`UpstreamConnection.run`); one failing never
disturbs another. They share a `Stagger` (reconnects never storm together while a line still
serves; when none does, they race back) and one attempt budget per egress address. The ticker
calls `merge.tick(now)` every `tick_interval`, publishes what it produced and routes the
merge's resync requests to the right line.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import structlog

from relay.config import RelayConfig
from relay.core.keys import SubKey
from relay.protocols.interfaces import ProtocolMerge
from relay.protocols.spec import ProtocolSpec
from relay.upstream.backoff import Stagger
from relay.upstream.budget import BudgetRegistry
from relay.upstream.connection import LIVE, Publish, UpstreamConnection

log = structlog.get_logger("relay.upstream")


class UpstreamPool:
    """Owns the upstream connections of one protocol. `start()`, `stop()`, `stats()`, `set_desired()`."""

    def __init__(
        self,
        config: RelayConfig,
        merge: ProtocolMerge,
        publish: Publish,
        *,
        protocol: ProtocolSpec,
        tick_interval: float = 0.1,
        planner_options: dict[str, Any] | None = None,
        stable_after: float = 10.0,
        max_queue: int = 64,
        lag_sampler: Callable[[str], Any] | None = None,
        budgets: BudgetRegistry | None = None,
        stagger: Stagger | None = None,
        on_rejected: Callable[[SubKey, str, float], None] | None = None,
    ) -> None:
        """`budgets`/`stagger`: share another pool's (one per relay, whatever the protocol);
        `on_rejected(key, error, now)`: a line's subscription was refused by Kraken (the endpoint
        answers clients waiting for an on-demand subscription)."""
        self.protocol = protocol  # only the upstreams of this protocol are ours
        self.config = config
        self.merge = merge
        self.publish = publish
        self.tick_interval = tick_interval
        self.planner_options = planner_options
        self.stable_after = stable_after
        self.max_queue = max_queue
        self.lag_sampler = lag_sampler  # e.g. RelayMetrics.lag_sampler: name -> sampler
        self.budgets = budgets or BudgetRegistry(config.budget)
        self.stagger = stagger or Stagger(config.reconnect.stagger)
        self.on_rejected = on_rejected
        self.connections: list[UpstreamConnection] = []
        self.resync_requests = 0
        self.resync_ignored = 0
        self._tasks: list[asyncio.Task] = []
        section = self.protocol.section(config)
        self._desired = self.protocol.desired(section) if section is not None else []
        self._clock = time.monotonic
        self._quarantined: set[str] = set()  # lines logged as quarantined
        self.capture: Any = None  # the flight recorder's `record` (set before `start`)
        self.capture_frame: Any = None  # ... and its `frame(line, data)`, the per-frame path

    async def start(self) -> None:
        """Register every upstream with the merge and start its task, plus the ticker."""
        if self._tasks:
            return
        self._clock = asyncio.get_running_loop().time
        for up in self.upstreams():
            index = self.merge.add_upstream(up.name)
            conn = UpstreamConnection(
                index,
                up,
                self.config,
                self.merge,
                self.publish,
                self.budgets.for_upstream(up),
                self.stagger,
                list(self._desired),
                planner_options=self.planner_options,
                stable_after=self.stable_after,
                max_queue=self.max_queue,
                lag_sampler=self.lag_sampler(up.name) if self.lag_sampler else None,
                protocol=self.protocol,
                on_rejected=self.on_rejected,
                peers_live=self.any_live,
            )
            conn.capture = self.capture
            conn.capture_frame = self.capture_frame
            conn.route_requests = self._route_requests
            self.connections.append(conn)
        for conn in self.connections:
            self._tasks.append(asyncio.create_task(conn.run(), name=f"upstream-{conn.name}"))
        self._tasks.append(asyncio.create_task(self._ticker(), name="upstream-ticker"))

    async def stop(self) -> None:
        """Close every connection (bounded), then cancel the tasks."""
        await asyncio.gather(*(c.stop() for c in self.connections), return_exceptions=True)
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    def any_live(self) -> bool:
        """Some line of this pool serves now (while none does, reconnects skip the stagger)."""
        return any(c.state == LIVE for c in self.connections)

    def upstreams(self) -> list[Any]:
        """The configured upstreams of this pool's protocol."""
        return [u for u in self.config.upstreams if u.protocol == self.protocol.name]

    def by_index(self, index: int) -> UpstreamConnection | None:
        for conn in self.connections:
            if conn.index == index:
                return conn
        return None

    def set_desired(self, desired: list[SubKey]) -> None:
        """The new desired `SubKey`s on every line: added ones are subscribed, removed ones
        unsubscribed (config reload, client demand)."""
        self._desired = list(desired)
        for conn in self.connections:
            conn.set_desired(list(self._desired))

    async def _ticker(self) -> None:
        loop = asyncio.get_running_loop()
        merge = self.merge
        while True:
            await asyncio.sleep(self.tick_interval)
            try:
                merge.tick(loop.time())
                self._route_requests()
                pubs = merge.take()
                if pubs:
                    self.publish(pubs)
                self._log_quarantines()
            except Exception:  # the timer must survive a bug in one tick
                log.exception("merge tick failed")

    def _log_quarantines(self) -> None:
        """One line when a line is quarantined for contradicting the others, one when it ends."""
        for st in self.merge.upstream_stats:
            was = st.name in self._quarantined
            if st.quarantined and not was:
                self._quarantined.add(st.name)
                log.warning(
                    "upstream quarantined: it keeps contradicting the other lines",
                    upstream=st.name,
                    suspect=dict(st.suspect),
                )
            elif was and not st.quarantined:
                self._quarantined.discard(st.name)
                log.info("upstream quarantine over: resyncing its streams", upstream=st.name)

    def _route_requests(self) -> None:
        for req in self.merge.take_requests():
            self.resync_requests += 1
            conn = self.by_index(req.upstream)
            result = conn.request_resync(req.channel, req.symbol, req.reason) if conn else "unknown upstream"
            if self.capture is not None and conn is not None:
                self.capture(
                    conn.name, "resync", channel=req.channel, symbol=req.symbol, reason=req.reason, result=result
                )
            if result not in ("started", "deferred"):
                self.resync_ignored += 1

    def stats(self) -> dict[str, Any]:
        """Plain data for metrics and the health endpoint."""
        symbols: dict[str, Any] = {}
        for sym in dict.fromkeys(k.symbol for k in self._desired if k.symbol):  # incl. dynamic ones
            try:
                symbols[sym] = self.merge.symbol_state(sym)
            except Exception:
                symbols[sym] = None
        loop_now = self._clock()
        upstreams = []
        for conn in self.connections:
            st = conn.stats()
            st["symbols"] = {
                sym: (state or {}).get("upstreams", {}).get(conn.name, "down") for sym, state in symbols.items()
            }
            upstreams.append(st)
        return {
            "upstreams": upstreams,
            "symbols": symbols,
            "budgets": {
                egress: {"used": b.used(loop_now), "limit": b.attempts, "window": b.window, "denied": b.denied}
                for egress, b in self.budgets.budgets.items()
            },
            "resync_requests": self.resync_requests,
            "resync_ignored": self.resync_ignored,
        }
