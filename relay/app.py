"""The daemon: one stack per configured protocol (its merge, the upstream pool feeding it, its
endpoint on the shared local listener), and the operator surface (metrics, health, systemd),
with SIGTERM/SIGINT shutdown and SIGHUP reload.

Every protocol is handled alike (`relay.protocols.PROTOCOLS`): a stack per protocol that has an
upstream in the config, in the table's order. Readiness and metrics cover them all.

`kraken-relay run --config FILE`. Everything here is wiring; the behaviour lives in the modules
it connects, so `Relay` can also be started in-process by tests and by `kraken-relay demo`.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import signal
import ssl
import sys
import time
from collections.abc import Callable, Coroutine, Iterable
from pathlib import Path
from typing import Any

import structlog

from relay import __version__, protocols
from relay.capture.writer import CaptureWriter
from relay.config import ConfigError, RelayConfig, load_config, split_host_port
from relay.core.keys import SubKey
from relay.core.outputs import STATUS_RANK, MergeSettings, Publication
from relay.nats.publisher import NatsPublisher
from relay.ops.check_config import public_listener_problem
from relay.ops.http import HttpServer, readiness
from relay.ops.logging import configure_logging
from relay.ops.loopmon import LoopLagMonitor
from relay.ops.metrics import RelayMetrics
from relay.ops.systemd import Notifier, ReadyGate, start_watchdog, status_text
from relay.protocols import EndpointContext, ProtocolSpec
from relay.protocols.interfaces import Endpoint, ProtocolMerge
from relay.server.listener import LocalServer
from relay.upstream.backoff import Stagger
from relay.upstream.budget import BudgetRegistry
from relay.upstream.connection import Publish
from relay.upstream.pool import UpstreamPool

log = structlog.get_logger("relay.app")

SHUTDOWN_GRACE = 4.0  # seconds: clients get 1001 and the process exits within 5 s of SIGTERM


class StartupError(RuntimeError):
    """A listener could not start; one line naming the config key and address, e.g.
    `server.listen 127.0.0.1:8765: address already in use` (the operator fixes the key)."""


def _reason(exc: BaseException) -> str:
    """`address already in use`, not uvloop's `[Errno 98] error while attempting to bind...`."""
    errno = getattr(exc, "errno", None)
    if isinstance(exc, ssl.SSLError):
        text = exc.reason or exc.strerror or str(exc)
    elif isinstance(errno, int) and errno > 0:
        text = os.strerror(errno)
    else:
        text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return text[:1].lower() + text[1:]


def check_tls(config: RelayConfig) -> None:
    """Load `server.tls` once before listening, so a bad file is named as such."""
    tls = config.server.tls
    if tls is not None:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(tls.cert, tls.key)
        except OSError as exc:
            raise StartupError(f"server.tls {tls.cert}, {tls.key}: cannot load: {_reason(exc)}") from None


def merge_settings(cfg: RelayConfig) -> MergeSettings:
    """The settings every protocol's merge starts from (each sets its own book depth)."""
    return MergeSettings(
        trade_gap_wait=cfg.merge.trade_gap_wait,
        stale_after=cfg.liveness.stale_after,
        history=cfg.merge.history,
        recent_trades=cfg.merge.recent_trades,
        max_clock_skew=cfg.merge.max_clock_skew,
        max_line_lead=cfg.merge.max_line_lead,
        quarantine_after=cfg.merge.quarantine_after,
        quarantine_for=cfg.merge.quarantine_for,
    )


def published_tap(publish: Publish, record: Callable[[str, str, str, int, bytes], None], protocol: str) -> Publish:
    """`publish`, recording each publication first (`capture.published`): the frame every
    client of that stream receives, with its channel, symbol and key."""

    def run(pubs: Iterable[Publication]) -> None:
        pubs = pubs if isinstance(pubs, list) else list(pubs)
        for pub in pubs:
            if pub.frame:
                record(protocol, pub.channel, pub.symbol, pub.key, pub.frame)
        publish(pubs)

    return run


class Stack:
    """One protocol: its merge, its endpoint on the shared listener, its upstream pool."""

    def __init__(
        self,
        spec: ProtocolSpec,
        config: RelayConfig,
        server: LocalServer,
        metrics: RelayMetrics,
        budgets: BudgetRegistry,
        stagger: Stagger,
    ) -> None:
        self.spec = spec
        self.config = config
        self.merge: ProtocolMerge = spec.make_merge(merge_settings(config), config)
        self.endpoint: Endpoint = spec.make_endpoint(
            self.merge, config, EndpointContext(version=__version__, resubscribe=self.resubscribe)
        )
        publish = server.add_endpoint(self.endpoint)
        self.pool = UpstreamPool(
            config,
            self.merge,
            publish,
            protocol=spec,
            lag_sampler=metrics.lag_sampler,
            budgets=budgets,  # attempt budgets and stagger are per relay, whatever the protocol
            stagger=stagger,
            on_rejected=self.endpoint.upstream_rejected,
        )

    @property
    def name(self) -> str:
        return self.spec.name

    def symbols(self) -> list[str]:
        section = self.spec.section(self.config)
        return self.spec.symbols(section) if section is not None else []

    def desired(self) -> list[SubKey]:
        """The upstream subscriptions: what the endpoint needs now, else the configured set."""
        demanded = self.endpoint.demanded_subscriptions()
        if demanded is not None:
            return list(demanded)
        section = self.spec.section(self.config)
        return self.spec.desired(section) if section is not None else []

    def resubscribe(self) -> None:
        self.pool.set_desired(self.desired())

    def bus_state(self) -> dict[str, Any]:
        """This protocol's part of the NATS state subject: engine status, lines, symbols."""
        merge = self.merge
        return {
            "system": merge.system_status(),
            "upstream_version": merge.upstream_version(),
            "lines": [{"name": c.name, "state": c.state} for c in self.pool.connections],
            "symbols": {sym: merge.symbol_state(sym) for sym in list(merge.books)},
        }

    def reload(self, new: RelayConfig) -> RelayConfig:
        """SIGHUP: the endpoint takes the new served set (and may veto parts of it)."""
        new = self.endpoint.reload(new)
        self.config = self.pool.config = new
        self.resubscribe()
        return new


class Relay:
    """The assembled daemon. `await start()`, `await stop()`, `await reload(cfg)`."""

    def __init__(self, config: RelayConfig, *, server_port: int | None = None, http_port: int | None = None) -> None:
        self.config = config
        self._ports = (server_port, http_port)  # test overrides of the configured ports
        self.server = LocalServer(config.server, port=server_port)
        self.loop_monitor = LoopLagMonitor()
        self.metrics = RelayMetrics(self.stats, self.loop_monitor)
        self.budgets = BudgetRegistry(config.budget)
        stagger = Stagger(config.reconnect.stagger)
        self.stacks: list[Stack] = [
            Stack(spec, config, self.server, self.metrics, self.budgets, stagger)
            for spec in protocols.configured(config)
        ]
        host, port = split_host_port(config.http.listen)
        self.http = HttpServer(
            host,
            port if http_port is None else http_port,
            self.metrics.registry,
            self.ready,
            self.loop_monitor,
            health_detail=self.health_detail,
        )
        self.notifier = Notifier()
        # READY=1 once data flows, or after a grace period anyway: during a Kraken outage at boot
        # the relay is healthy and serving status frames, and must not be restarted in a loop.
        self.ready_gate = ReadyGate(self.notifier, grace=60.0)
        self._watchdog: Any = None
        self._tasks: list[asyncio.Task[Any]] = []
        self.started_at = time.time()
        self.capture: CaptureWriter | None = None  # the flight recorder, created at start
        self.nats: NatsPublisher | None = None  # the NATS publisher (`nats:` configured), at start

    def _start_capture(self) -> None:
        """`capture.dir` set: every line's frames and connection events go to the recorder."""
        cap = self.config.capture
        if cap.dir is None:
            return
        self.capture = CaptureWriter(
            cap.dir,
            max_file_bytes=cap.max_file_bytes,
            max_file_seconds=cap.max_file_seconds,
            max_total_bytes=cap.max_total_bytes,
            max_age_seconds=cap.max_age_seconds,
            max_pending_bytes=cap.max_pending_bytes,
            level=cap.compression_level,
        )
        for stack in self.stacks:
            stack.pool.capture = self.capture.record
            stack.pool.capture_frame = self.capture.frame
            if cap.published:
                stack.pool.publish = published_tap(stack.pool.publish, self.capture.published, stack.name)

    def _start_nats(self) -> None:
        """`nats:` set: every frame the local clients get is also published on NATS (after them)."""
        if self.config.nats is None:
            return
        self.nats = NatsPublisher(self.config.nats, __version__)
        for stack in self.stacks:
            if not hasattr(stack.endpoint, "bus_frame"):
                log.warning("nats: this protocol is not published yet", protocol=stack.name)
                continue
            stack.pool.publish = self.nats.tap(
                stack.name,
                stack.pool.publish,
                stack.endpoint,  # type: ignore[arg-type]  # checked above: a BusSource
                _bus_depth(stack),
                stack.bus_state,
            )

    def stack(self, name: str) -> Stack:
        """The stack of protocol `name` (`v2`, `v1`, `futures`)."""
        for stack in self.stacks:
            if stack.name == name:
                return stack
        raise KeyError(name)

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        """Listen, then connect upstream. A listener that cannot start raises `StartupError`
        (nothing is left running)."""
        check_tls(self.config)
        self.loop_monitor.start()
        try:
            await self._listen("server.listen", self.config.server.listen, self._ports[0], self.server.start)
            try:
                await self._listen("http.listen", self.config.http.listen, self._ports[1], self.http.start)
            except StartupError:
                await self.server.stop()
                raise
        except StartupError:
            self.loop_monitor.stop()
            raise
        self._start_capture()
        self._start_nats()
        for stack in self.stacks:
            await stack.pool.start()
        if self.nats is not None:
            await self.nats.start()  # in the background: NATS down at start delays nothing here
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

    @staticmethod
    async def _listen(key: str, listen: str, port: int | None, start: Any) -> None:
        try:
            await start()
        except OSError as exc:
            addr = listen if port is None else f"{listen.rpartition(':')[0]}:{port}"
            raise StartupError(f"{key} {addr}: {_reason(exc)}") from None

    async def stop(self) -> None:
        self.notifier.stopping()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.wait_for(self.server.stop(1001, "relay shutting down"), SHUTDOWN_GRACE)
        try:
            pools = [s.pool.stop() for s in self.stacks]
            await asyncio.wait_for(asyncio.gather(*pools), SHUTDOWN_GRACE / 2)
        except TimeoutError:
            log.warning("upstreams did not close in time")
        await self.http.stop()
        if self.nats is not None:
            await self.nats.stop()
        if self.capture is not None:
            await asyncio.to_thread(self.capture.close)
        if self._watchdog is not None:
            await self._watchdog.stop()
        self.loop_monitor.stop()

    async def _housekeeping(self) -> None:
        """Tell systemd READY (see ready_gate) and keep STATUS current."""
        ticks = 0
        while True:
            await asyncio.sleep(0.2)
            ticks += 1
            if self.capture is not None:
                self.capture.tick()
            if self.ready_gate.sent and ticks % 25:
                continue  # STATUS every 5 s once started
            ok, _ = self.ready()
            status = status_text(self.stats())
            if self.ready_gate.poll(ok, status):
                log.info("ready", reason=self.ready_gate.reason)
            elif self.ready_gate.sent:
                self.notifier.status(status)

    async def reload(self, new: RelayConfig) -> bool:
        """SIGHUP: apply symbol changes without dropping clients. Other changes need a restart."""
        old = self.config
        restart_only = [
            k for k in ("upstreams", "server", "http", "capture", "nats") if getattr(new, k) != getattr(old, k)
        ]
        if restart_only:
            log.warning("reload: these sections need a restart and were not applied", sections=restart_only)
            new = new.model_copy(update={k: getattr(old, k) for k in restart_only})
        for stack in self.stacks:
            new = stack.reload(new)
        self.config = new
        log.info("config reloaded", symbols=[s for stack in self.stacks for s in stack.symbols()])
        return True

    # -- state ----------------------------------------------------------------------------
    def ready(self) -> tuple[bool, dict[str, Any]]:
        """Every configured (warm) symbol has fresh data; a protocol with an empty warm set (all
        on demand) counts as ready while one of its lines is live."""
        ok, detail = True, {}
        for stack in self.stacks:
            symbols = stack.symbols()
            if not symbols:
                ok = ok and any(c.state == "live" for c in stack.pool.connections)
                continue
            s_ok, s_detail = readiness(symbols, stack.merge.symbol_state)
            ok = ok and s_ok
            prefix = stack.spec.label_prefix
            detail.update({prefix + k: v for k, v in s_detail.items()} if prefix else s_detail)
        return ok and bool(self.stacks), detail

    def health_detail(self) -> dict[str, Any]:
        """/healthz's report of the best-effort parts: the NATS publisher (never its status)."""
        if self.nats is None:
            return {}
        n = self.nats.stats()
        return {
            "nats": {
                "connected": bool(n["connected"]),
                "server": n["server"],
                "down_since": n["down_since"],
                "dropped": n["dropped"],
                "last_error": n["last_error"],
            }
        }

    def merges(self) -> list[ProtocolMerge]:
        return [s.merge for s in self.stacks]

    def pools(self) -> list[UpstreamPool]:
        return [s.pool for s in self.stacks]

    def stats(self) -> dict[str, Any]:
        """The snapshot `relay.ops.metrics` exports (shape documented there)."""
        now = asyncio.get_event_loop().time() if self.server.loop else time.monotonic()
        ustats = {s.name: s for m in self.merges() for s in m.upstream_stats}
        upstreams = []
        for c in (c for pool in self.pools() for c in pool.stats()["upstreams"]):
            m = ustats.get(c["name"])
            budget = self.budgets.for_upstream(next(u for u in self.config.upstreams if u.name == c["name"]))
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
                    "unsolicited": m.unsolicited if m else 0,
                    "suspect": dict(m.suspect) if m else {},
                    "quarantined": int(m.quarantined) if m else 0,
                    "quarantines": m.quarantines if m else 0,
                    **({"line_events": c["line_events"]} if c.get("url", "").startswith(("nats://", "tls://")) else {}),
                }
            )
        symbols: list[dict[str, Any]] = []
        for stack in self.stacks:
            rows = _merge_symbols(stack.merge, now)
            for row in rows if stack.spec.label_prefix else ():
                row["symbol"] = stack.spec.label_prefix + row["symbol"]
            symbols += rows
        s = self.server.stats()
        clients = {
            "connected": s["clients"],
            "subscriptions": s["subscriptions"],
            "buffer_bytes": s["buffered_bytes"],
            "buffer_max_bytes": s["max_client_buffered_bytes"],
            "frames_sent": s["frames_out"],
            "snapshot_resets": s["book_resets"],
            "slow_closes": s["slow_closes"],
            "budget_closes": s.get("budget_closes", 0),
            "squeezed": s.get("squeezed_clients", 0),
            "snapshots_paced": s.get("snapshots_paced", 0),
            "rejected": {"rate_limit": s["rate_limited"], "bad_request": s["error_replies"], **s["refused"]},
        }
        ok, _ = self.ready()
        on_demand = []
        for stack in self.stacks:
            od = stack.endpoint.stats().get("on_demand")
            if od:
                on_demand.append({"protocol": stack.name, **od})
        return {
            "upstreams": upstreams,
            "symbols": symbols,
            "clients": clients,
            "on_demand": on_demand,
            "system_status": _best_status([m.system_status() for m in self.merges()]),
            "ready": int(ok),
            "capture": self.capture.stats() if self.capture is not None else None,
            "nats": self.nats.stats() if self.nats is not None else None,
        }


def _bus_depth(stack: Stack) -> int:
    """The book depth published on the bare `book` subject: the configured one."""
    settings = getattr(stack.merge, "settings", None)
    return int(getattr(settings, "book_depth", 0) or 0)


def _merge_symbols(merge: ProtocolMerge, now: float) -> list[dict[str, Any]]:
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
    known = [s for s in statuses if s in STATUS_RANK]
    return min(known, key=STATUS_RANK.__getitem__) if known else "maintenance"


# -- CLI ----------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", required=True, metavar="FILE", help="YAML config (see config/relay.yaml)")


async def serve(config_path: str | Path, config: RelayConfig) -> int:
    """Run until SIGTERM/SIGINT; SIGHUP reloads `config_path` (keeping the old config if invalid)."""
    relay = Relay(config)
    try:
        await relay.start()
    except StartupError as exc:  # one line, no traceback: the operator fixes the named key
        print(f"kraken-relay: error: {exc}", file=sys.stderr)
        return 1
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_hup() -> None:
        try:
            new = load_config(config_path)
        except ConfigError as exc:
            log.error("reload failed, keeping the running config", error=str(exc))
            return
        reloading = asyncio.ensure_future(relay.reload(new))
        relay._tasks.append(reloading)  # keep a reference until it is done
        reloading.add_done_callback(relay._tasks.remove)

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


def run_loop(coro: Coroutine[Any, Any, int]) -> int:
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
    problem = public_listener_problem(config)
    if problem is not None and config.server.public_without_token == "refuse":
        print(f"kraken-relay: refusing to start: {problem}", file=sys.stderr)
        return 2
    configure_logging(config.logging.level, config.logging.format)
    if problem is not None and config.server.public_without_token == "warn":
        log.warning("public listener without a token", problem=problem)
    return run_loop(serve(args.config, config))
