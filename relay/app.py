"""The daemon: one merge, the upstream pool feeding it, the local server publishing it, and the
operator surface (metrics, health, systemd), with SIGTERM/SIGINT shutdown and SIGHUP reload.

One stack per protocol (relay.protocols): the Spot v2 stack (`merge`, `pool`, the server's own
`/v2` endpoint) always exists; every other configured protocol (Futures, Spot v1) gets its own
merge, pool and endpoint on the same listener (`stacks`). Readiness and metrics cover them all.

`kraken-relay run --config FILE`. Everything here is wiring; the behaviour lives in the modules
it connects, so `Relay` can also be started in-process by tests and by `kraken-relay demo`.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import signal
import sys
import time
from pathlib import Path
from typing import Any

import structlog

from relay import __version__, protocols
from relay.core.merge import Merge, MergeSettings
from relay.ops.config import ChannelsConfig, ConfigError, RelayConfig, load_config, split_host_port
from relay.ops.http import HttpServer, readiness
from relay.ops.logging import configure_logging
from relay.ops.loopmon import LoopLagMonitor
from relay.ops.metrics import RelayMetrics
from relay.ops.systemd import Notifier, ReadyGate, start_watchdog, status_text
from relay.server.listener import LocalServer
from relay.upstream.pool import UpstreamPool

log = structlog.get_logger("relay.app")

SHUTDOWN_GRACE = 4.0  # seconds: clients get 1001 and the process exits within 5 s of SIGTERM


def merge_settings(cfg: RelayConfig) -> MergeSettings:
    book = cfg.channels.book
    return MergeSettings(
        book_depth=book.depth if book is not None else 10,
        trade_gap_wait=cfg.merge.trade_gap_wait,
        stale_after=cfg.liveness.stale_after,
        history=cfg.merge.history,
        recent_trades=cfg.merge.recent_trades,
    )


class Stack:
    """One non-v2 protocol: its merge, its upstream pool and its local endpoint."""

    def __init__(self, spec: Any, merge: Any, pool: UpstreamPool, endpoint: Any) -> None:
        self.spec = spec
        self.merge = merge
        self.pool = pool
        self.endpoint = endpoint

    def symbols(self, cfg: RelayConfig) -> list[str]:
        section = self.spec.section(cfg)
        return self.spec.symbols(section) if section is not None else []


class DynamicSymbols:
    """Subscribes symbols upstream on a client's demand and releases them when unused.

    The local server decides *when* (allowlist, limit, release delay); this bridge changes the
    upstream subscriptions and tells the server once the merge has data for the symbol.
    """

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.extra: dict[str, set[str]] = {}  # channel -> symbols added on demand
        self.waiting: set[tuple[str, str]] = set()

    def on_demand(self, channel: str, symbol: str) -> None:
        self.extra.setdefault(channel, set()).add(symbol)
        self.waiting.add((channel, symbol))
        self.relay.apply_channels()

    def on_release(self, channel: str, symbol: str) -> None:
        self.extra.get(channel, set()).discard(symbol)
        self.waiting.discard((channel, symbol))
        self.relay.apply_channels()

    def channels(self, base: ChannelsConfig) -> ChannelsConfig:
        update: dict[str, Any] = {}
        for channel, symbols in self.extra.items():
            current = getattr(base, channel, None)
            if not symbols:
                continue
            if current is None:
                if channel == "book":
                    from relay.ops.config import BookChannelConfig

                    current = BookChannelConfig(symbols=[], depth=self.relay.merge.settings.book_depth)
                else:
                    from relay.ops.config import SymbolsChannelConfig

                    current = SymbolsChannelConfig(symbols=[])
            merged = list(dict.fromkeys([*current.symbols, *sorted(symbols)]))
            update[channel] = current.model_copy(update={"symbols": merged})
        return base.model_copy(update=update) if update else base

    def poll(self) -> None:
        """Tell the server about symbols whose data has arrived."""
        merge = self.relay.merge
        for channel, symbol in list(self.waiting):
            have = {
                "book": lambda s: merge.book_snapshot(s, 10),
                "trade": lambda s: merge.trades.get(s),
                "ticker": merge.ticker_snapshot,
            }.get(channel, lambda s: True)(symbol)
            if have:
                self.waiting.discard((channel, symbol))
                self.relay.server.demand_ready(channel, symbol)


class Relay:
    """The assembled daemon. `await start()`, `await stop()`, `await reload(cfg)`."""

    def __init__(self, config: RelayConfig, *, server_port: int | None = None, http_port: int | None = None) -> None:
        self.config = config
        self.merge = Merge(merge_settings(config))
        self.dynamic = DynamicSymbols(self)
        self.server = LocalServer(
            config.server, self.merge, config.channels, demand=self.dynamic, port=server_port, version=__version__
        )
        self.loop_monitor = LoopLagMonitor()
        self.metrics = RelayMetrics(self.stats, self.loop_monitor)
        self.pool = UpstreamPool(config, self.merge, self.server.publish, lag_sampler=self.metrics.lag_sampler)
        self.stacks: list[Stack] = []
        for spec in protocols.configured(config):
            if spec.name == "v2":
                continue
            merge = spec.make_merge(merge_settings(config), config)
            endpoint = spec.endpoint(self.server, merge, config)
            self.server.add_endpoint(endpoint)
            pool = UpstreamPool(
                config,
                merge,
                self.server.publisher(endpoint.publish),
                lag_sampler=self.metrics.lag_sampler,
                protocol=spec,
                budgets=self.pool.budgets,  # attempt budgets and stagger are per relay
                stagger=self.pool.stagger,
            )
            self.stacks.append(Stack(spec, merge, pool, endpoint))
        host, port = split_host_port(config.http.listen)
        self.http = HttpServer(host, port if http_port is None else http_port, self.metrics.registry, self.ready, self.loop_monitor)
        self.notifier = Notifier()
        # READY=1 once data flows, or after a grace period anyway: during a Kraken outage at boot
        # the relay is healthy and serving status frames, and must not be restarted in a loop.
        self.ready_gate = ReadyGate(self.notifier, grace=60.0)
        self._watchdog: Any = None
        self._tasks: list[asyncio.Task] = []
        self.started_at = time.time()

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        self.loop_monitor.start()
        await self.server.start()
        await self.http.start()
        await self.pool.start()
        for stack in self.stacks:
            await stack.pool.start()
        self._watchdog = start_watchdog(self.notifier, self.loop_monitor)
        self._tasks.append(asyncio.create_task(self._housekeeping(), name="relay-housekeeping"))
        # The steady state allocates few container objects; freezing start-up objects and a
        # higher gen-0 threshold keep cyclic-GC passes (ms-long pauses) off the hot path.
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 50, 100)
        log.info(
            "relay started",
            server=self.server.url,
            http=f"http://{self.http.host}:{self.http.port}",
            upstreams=[u.name for u in self.config.upstreams],
        )

    async def stop(self) -> None:
        self.notifier.stopping()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.wait_for(self.server.stop(1001, "relay shutting down"), SHUTDOWN_GRACE)
        try:
            pools = [self.pool.stop(), *(s.pool.stop() for s in self.stacks)]
            await asyncio.wait_for(asyncio.gather(*pools), SHUTDOWN_GRACE / 2)
        except asyncio.TimeoutError:
            log.warning("upstreams did not close in time")
        await self.http.stop()
        if self._watchdog is not None:
            await self._watchdog.stop()
        self.loop_monitor.stop()

    async def _housekeeping(self) -> None:
        """Tell systemd READY (see ready_gate) and keep STATUS current; poll dynamic symbols."""
        ticks = 0
        while True:
            await asyncio.sleep(0.2)
            self.dynamic.poll()
            ticks += 1
            if self.ready_gate.sent and ticks % 25:
                continue  # STATUS every 5 s once started
            ok, _ = self.ready()
            status = status_text(self.stats())
            if self.ready_gate.poll(ok, status):
                log.info("ready", reason=self.ready_gate.reason)
            elif self.ready_gate.sent:
                self.notifier.status(status)

    def apply_channels(self) -> None:
        self.pool.set_symbols(self.dynamic.channels(self.config.channels))

    async def reload(self, new: RelayConfig) -> bool:
        """SIGHUP: apply symbol changes without dropping clients. Other changes need a restart."""
        old = self.config
        if new.channels.book and old.channels.book and new.channels.book.depth != old.channels.book.depth:
            log.warning("reload: book depth changes need a restart; keeping the old depth")
            book = new.channels.book.model_copy(update={"depth": old.channels.book.depth})
            new = new.model_copy(update={"channels": new.channels.model_copy(update={"book": book})})
        restart_only = [k for k in ("upstreams", "server", "http") if getattr(new, k) != getattr(old, k)]
        if restart_only:
            log.warning("reload: these sections need a restart and were not applied", sections=restart_only)
            new = new.model_copy(update={k: getattr(old, k) for k in restart_only})
        self.config = new
        self.server.hub.set_channels(new.channels)
        self.pool.config = new
        self.apply_channels()
        for stack in self.stacks:
            reload = getattr(stack.endpoint, "reload", None)  # the endpoint's served set (may veto changes)
            if reload is not None:
                new = self.config = reload(new)
            stack.pool.config = new
            section = stack.spec.section(new)
            if section is not None:
                stack.pool.set_desired(stack.spec.desired(section))
        log.info("config reloaded", symbols=new.channels.all_symbols())
        return True

    # -- state ----------------------------------------------------------------------------
    def ready(self) -> tuple[bool, dict[str, Any]]:
        v2_symbols = self.config.channels.all_symbols() if protocols.V2.section(self.config) is not None else []
        ok, detail = readiness(v2_symbols, self.merge.symbol_state) if v2_symbols else (True, {})
        for stack in self.stacks:
            s_ok, s_detail = readiness(stack.symbols(self.config), stack.merge.symbol_state)
            ok = ok and s_ok
            prefix = stack.spec.label_prefix
            detail.update({prefix + k: v for k, v in s_detail.items()} if prefix else s_detail)
        return ok and bool(detail), detail

    def merges(self) -> list[Any]:
        return [self.merge, *(s.merge for s in self.stacks)]

    def pools(self) -> list[UpstreamPool]:
        return [self.pool, *(s.pool for s in self.stacks)]

    def stats(self) -> dict[str, Any]:
        """The snapshot `relay.ops.metrics` exports (shape documented there)."""
        now = asyncio.get_event_loop().time() if self.server.loop else time.monotonic()
        ustats = {s.name: s for m in self.merges() for s in m.upstream_stats}
        upstreams = []
        for c in (c for pool in self.pools() for c in pool.stats()["upstreams"]):
            m = ustats.get(c["name"])
            budget = self.pool.budgets.for_upstream(next(u for u in self.config.upstreams if u.name == c["name"]))
            upstreams.append(
                {
                    "name": c["name"],
                    "up": int(c["state"] in ("streaming", "subscribing", "live", "maintenance")),
                    "state": c["state"],
                    "system": c.get("system") or "",
                    "connects": c["connects"],
                    "attempts": c["attempts"],
                    "budget_remaining": max(0, budget.attempts - budget.used(now)),
                    "disconnects": c["disconnects"],
                    "frames": c["frames"],
                    "bytes": c["bytes"],
                    "last_frame_age": (now - c["last_frame_time"]) if c.get("last_frame_time") else None,
                    "wins": m.wins if m else 0,
                    "duplicates": m.duplicates if m else 0,
                    "checksum_mismatches": m.checksum_mismatches if m else 0,
                    "resyncs": dict(m.resyncs) if m else {},
                }
            )
        symbols: list[dict[str, Any]] = _merge_symbols(self.merge, now)
        for stack in self.stacks:
            rows = _merge_symbols(stack.merge, now)
            for row in rows if stack.spec.label_prefix else ():
                row["symbol"] = stack.spec.label_prefix + row["symbol"]
            symbols += rows
        s = self.server.stats()
        ep_subs = sum(int(e.get("subscriptions", 0)) for e in s.get("endpoints", {}).values())
        clients = {
            "connected": s["clients"],
            "subscriptions": s["subscriptions"] + ep_subs,
            "buffer_bytes": s["buffered_bytes"],
            "buffer_max_bytes": s["max_client_buffered_bytes"],
            "frames_sent": s["frames_out"],
            "snapshot_resets": s["book_resets"],
            "slow_closes": s["slow_closes"],
            "rejected": {"rate_limit": s["rate_limited"], "bad_request": s["error_replies"], **s["refused"]},
        }
        ok, _ = self.ready()
        return {
            "upstreams": upstreams,
            "symbols": symbols,
            "clients": clients,
            "system_status": _best_status([m.system_status() for m in self.merges()]),
            "ready": int(ok),
        }


def _merge_symbols(merge: Any, now: float) -> list[dict[str, Any]]:
    """Per (symbol, channel) rows for the metrics snapshot, from any protocol's merge."""
    symbols: list[dict[str, Any]] = []
    for sym, arb in merge.books.items():
        st = merge.symbol_state(sym)
        symbols.append(
            {
                "symbol": sym,
                "channel": "book",
                "state": st.get("book", "down"),
                "published": arb.published,
                "age": (now - arb.last_update) if arb.last_update else None,
                "upstreams": st["upstreams"],
            }
        )
    for sym, tarb in merge.trades.items():
        symbols.append(
            {
                "symbol": sym,
                "channel": "trade",
                "state": tarb.state(),
                "published": tarb.published,
                "age": (now - tarb.last_update) if tarb.last_update else None,
                "gaps": tarb.gaps,
                "missing_trades": tarb.missing,
                "late_trades": tarb.late,
            }
        )
    for channel, table in (("ticker", merge.tickers), ("spread", getattr(merge, "spreads", {}))):
        for sym, kar in table.items():
            symbols.append(
                {
                    "symbol": sym,
                    "channel": channel,
                    "state": "ok" if kar.element is not None else "down",
                    "published": kar.published,
                    "age": (now - kar.last_update) if kar.last_update else None,
                }
            )
    return symbols


def _best_status(statuses: list[str]) -> str:
    """The best engine status across protocols (one gauge; each endpoint reports its own)."""
    from relay.core.merge import STATUS_RANK

    known = [s for s in statuses if s in STATUS_RANK]
    return min(known, key=STATUS_RANK.__getitem__) if known else "maintenance"


# -- CLI ----------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", required=True, metavar="FILE", help="YAML config (see config/relay.yaml)")


async def serve(config_path: str | Path, config: RelayConfig) -> int:
    """Run until SIGTERM/SIGINT; SIGHUP reloads `config_path` (keeping the old config if invalid)."""
    relay = Relay(config)
    await relay.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_hup() -> None:
        try:
            new = load_config(config_path)
        except ConfigError as exc:
            log.error("reload failed, keeping the running config", error=str(exc))
            return
        asyncio.ensure_future(relay.reload(new))

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, on_hup)
    await stop.wait()
    log.info("shutting down")
    try:
        await relay.stop()
    except Exception:
        log.exception("error during shutdown")
        return 1
    return 0


def run_loop(coro: Any) -> int:
    """Run on uvloop (mandated for throughput); plain asyncio if uvloop is unavailable."""
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:  # pragma: no cover
        return asyncio.run(coro)


def main(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"kraken-relay: invalid config {exc}", file=sys.stderr)
        return 2
    configure_logging(config.logging.level, config.logging.format)
    return run_loop(serve(args.config, config))
