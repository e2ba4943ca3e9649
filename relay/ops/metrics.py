"""Prometheus metrics that describe the *data* (lines, symbols, clients), read at scrape time.

Why a custom Collector: the hot path handles tens of thousands of frames per second, and a
prometheus `Counter.inc()` costs a lock and a few attribute look-ups per call. The core and I/O
layers therefore keep plain int attributes, and the lead's wiring hands this module one
`stats()` callable returning a plain-dict snapshot. `RelayCollector.collect()` calls it once per
scrape and turns it into metric families. Only the exchange-to-receive lag is a real prometheus
Histogram, observed on a sample of frames (`LagSampler`).

Snapshot shape returned by `stats()` (every key optional; missing ones are simply not exported,
counters must be monotonic totals since process start)::

    {
      "upstreams": [                          # one per configured line, label `upstream`
        {"name": "primary",
         "up": 1,                             # 1 while the websocket is open (subscribing, live, maintenance)
         "state": "live",                     # one of UPSTREAM_STATES
         "system": "online",                  # engine status on that line (online|maintenance|cancel_only|post_only)
         "connects": 3,                       # successful websocket handshakes
         "attempts": 4,                       # connection attempts (successful or not)
         "budget_remaining": 96,              # attempts left in the per-address window (Cloudflare ~150/10 min)
         "disconnects": {"close_1006": 1},    # by reason, e.g. close_1001, close_1006, frame_timeout, error
         "frames": 123456, "bytes": 9876543,  # received
         "last_frame_age": 0.12,              # seconds since the last frame arrived (None: never)
         "wins": 120000,                      # data frames this line delivered first (published)
         "duplicates": 119000,                # data frames dropped because another line was first
         "checksum_mismatches": 0,
         "resyncs": {"checksum": 0, "stale": 0, "gap": 0},    # resubscriptions requested, by reason
         "unsolicited": 0,                    # data frames for streams nobody subscribed to (dropped)
         "suspect": {"timestamp": 0, "trade_id": 0},   # claims the clock or other lines contradict
         "quarantined": 0, "quarantines": 0},  # 1 while its data is ignored; times quarantined
      ],
      "symbols": [                            # one per (symbol, channel) served, labels `symbol`, `channel`
        {"symbol": "BTC/USD", "channel": "book",
         "state": "ok",                       # one of SYMBOL_STATES
         "published": 1000,                   # frames published to clients
         "age": 0.4,                          # seconds since the last published update
         "upstreams": {"primary": "valid", "beta": "resyncing"},   # per-line state (UPSTREAM_SYMBOL_STATES)
         "gaps": 0, "missing_trades": 0,      # trade channel: gaps seen on every line, trade ids never seen,
         "late_trades": 0},                   # and trades that came after their gap was reported (published late)
      ],
      "clients": {
         "connected": 2, "subscriptions": 10,
         "buffer_bytes": 0, "buffer_max_bytes": 0,   # queued output, total and the worst client
         "frames_sent": 1234, "snapshot_resets": 0, "slow_closes": 0,
         "budget_closes": 0, "squeezed": 0, "snapshots_paced": 0,   # global budget, snapshot pacing
         "rejected": {"rate_limit": 0, "bad_request": 0, "too_many_subscriptions": 0, "unknown_symbol": 0}},
      "system_status": "online",              # best status among lines (merge.system_status())
      "ready": 1,                             # same verdict as /readyz
      "capture": {...},                       # the flight recorder (`CaptureWriter.stats()`), when on
      "nats": {"connected": 1, "messages": 10, "bytes": 900,          # the NATS publisher, when on
               "dropped": {"disconnected": 0, "buffer_full": 0, "unroutable": 0},
               "pending_bytes": 0, "snapshot_requests": {"ok": 1, "unavailable": 0, "bad_subject": 0},
               "connects": 1, "disconnects": 0, "down_since": None, "jetstream_ok": None, "keyframes": 0},
    }

An upstream that is a NATS line adds `"line_events": {"gap": 0, "epoch": 0, "snapshot": 1,
"snapshot_unavailable": 0, "overflow": 0}` (`relay.upstream.nats_line`).

Event-loop lag comes from a `LoopLagMonitor` given to `RelayMetrics`, not from the snapshot.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any, TypedDict

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from relay import __version__
from relay.ops.loopmon import LoopLagMonitor

PREFIX = "kraken_relay_"
UPSTREAM_STATES = ("down", "backoff", "connecting", "subscribing", "live", "maintenance")  # upstream session
SYMBOL_STATES = ("ok", "resyncing", "stale", "down")
UPSTREAM_SYMBOL_STATES = ("valid", "resyncing", "stale", "down", "maintenance", "quarantined")
SYSTEM_STATUSES = ("online", "maintenance", "cancel_only", "post_only")
SUSPECT_KINDS = ("timestamp", "trade_id")  # claims refused by the cross-checks (README "No single line is trusted")
RESYNC_REASONS = ("checksum", "stale", "gap")  # exported as 0 before the first one, so rate() works
NATS_DROP_REASONS = ("disconnected", "buffer_full", "unroutable")
NATS_SNAPSHOT_RESULTS = ("ok", "unavailable", "bad_subject")
NATS_LINE_EVENTS = ("gap", "epoch", "snapshot", "snapshot_unavailable", "overflow")
# exchange timestamp -> our receive time; Kraken stamps in µs, loopback/LAN lag is ms, WAN 10-300 ms
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

log = logging.getLogger(__name__)


class UpstreamStats(TypedDict, total=False):
    name: str
    up: int
    state: str
    system: str
    connects: int
    attempts: int
    budget_remaining: int
    disconnects: Mapping[str, int]
    frames: int
    bytes: int
    last_frame_age: float
    wins: int
    duplicates: int
    checksum_mismatches: int
    resyncs: Mapping[str, int]


class SymbolStats(TypedDict, total=False):
    symbol: str
    channel: str
    state: str
    published: int
    age: float
    upstreams: Mapping[str, str]
    gaps: int
    missing_trades: int
    late_trades: int


class ClientStats(TypedDict, total=False):
    connected: int
    subscriptions: int
    buffer_bytes: int
    buffer_max_bytes: int
    frames_sent: int
    snapshot_resets: int
    slow_closes: int
    rejected: Mapping[str, int]


class RelayStats(TypedDict, total=False):
    upstreams: list[UpstreamStats]
    symbols: list[SymbolStats]
    clients: ClientStats
    system_status: str
    ready: int


def _num(value: Any) -> float | None:
    """Accept ints/floats (and bools); anything else is skipped rather than breaking the scrape."""
    if isinstance(value, (int, float)):
        return float(value)
    return None


class _Families:
    """Lazily created metric families, yielded in creation order."""

    def __init__(self) -> None:
        self._by_name: dict[str, Metric] = {}

    def gauge(self, name: str, doc: str, labels: tuple[str, ...] = ()) -> GaugeMetricFamily:
        fam = self._by_name.get(name)
        if fam is None:
            fam = self._by_name[name] = GaugeMetricFamily(PREFIX + name, doc, labels=list(labels))
        return fam  # type: ignore[return-value]

    def counter(self, name: str, doc: str, labels: tuple[str, ...] = ()) -> CounterMetricFamily:
        fam = self._by_name.get(name)
        if fam is None:
            fam = self._by_name[name] = CounterMetricFamily(PREFIX + name, doc, labels=list(labels))
        return fam  # type: ignore[return-value]

    def __iter__(self) -> Iterator[Metric]:
        return iter(self._by_name.values())


def _add(fam: GaugeMetricFamily | CounterMetricFamily, labels: list[str], value: Any) -> None:
    v = _num(value)
    if v is not None:
        fam.add_metric(labels, v)


def _enum(fam: GaugeMetricFamily, labels: list[str], current: Any, known: Iterable[str]) -> None:
    """Enum-as-gauge: one series per known state, 1 for the current one (an unknown state is added)."""
    states = list(known)
    if isinstance(current, str) and current not in states:
        states.append(current)
    for s in states:
        fam.add_metric([*labels, s], 1.0 if s == current else 0.0)


class RelayCollector:
    """A prometheus Collector exporting a `stats()` snapshot (shape: see the module docstring)."""

    def __init__(self, stats: Callable[[], Mapping[str, Any]], loop_monitor: LoopLagMonitor | None = None) -> None:
        self._stats = stats
        self._loop = loop_monitor
        self.scrape_errors = 0

    def collect(self) -> Iterable[Metric]:
        f = _Families()
        info = f.gauge("build_info", "Build information (always 1).", ("version",))
        info.add_metric([__version__], 1.0)
        try:
            snap = self._stats() or {}
            self._collect_snapshot(f, snap)
        except Exception:  # a scrape must never take the relay down, nor stop exporting the rest
            self.scrape_errors += 1
            log.exception("metrics stats() snapshot failed")
        errs = f.counter("scrape_errors", "Scrapes whose stats snapshot failed (partial data exported).")
        errs.add_metric([], float(self.scrape_errors))
        if self._loop is not None:
            f.gauge("event_loop_lag_seconds", "Current event-loop lag (how late a periodic timer fires).").add_metric(
                [], self._loop.lag()
            )
            f.gauge("event_loop_lag_max_seconds", "Worst event-loop lag over the last minute.").add_metric(
                [], self._loop.max_lag()
            )
        return [m for m in f if m.samples]  # no HELP/TYPE noise for series nobody reported

    # -----------------------------------------------------------------------------------------
    def _collect_snapshot(self, f: _Families, snap: Mapping[str, Any]) -> None:
        for u in snap.get("upstreams") or ():
            self._upstream(f, u)
        for s in snap.get("symbols") or ():
            self._symbol(f, s)
        clients = snap.get("clients")
        if clients:
            self._clients(f, clients)
        for od in snap.get("on_demand") or ():
            self._on_demand(f, od)
        cap = snap.get("capture")
        if cap:
            self._capture(f, cap)
        nats = snap.get("nats")
        if nats:
            self._nats(f, nats)
        status = snap.get("system_status")
        if isinstance(status, str):
            _enum(
                f.gauge("system_status", "Best engine status among the lines (1 = current).", ("status",)),
                [],
                status,
                SYSTEM_STATUSES,
            )
        _add(
            f.gauge("ready", "1 when every configured symbol has fresh valid data (same as /readyz)."),
            [],
            snap.get("ready"),
        )

    def _upstream(self, f: _Families, u: Mapping[str, Any]) -> None:
        name = str(u.get("name", "?"))
        L = ("upstream",)
        _add(
            f.gauge("upstream_up", "1 while the upstream websocket is open (subscribing, live or in maintenance).", L),
            [name],
            u.get("up"),
        )
        if u.get("state"):
            _enum(
                f.gauge("upstream_state", "Upstream session state (1 = current).", ("upstream", "state")),
                [name],
                u["state"],
                UPSTREAM_STATES,
            )
        if u.get("system"):  # "" until the line has reported a status
            _enum(
                f.gauge(
                    "upstream_system_status",
                    "Engine status reported on this line (1 = current).",
                    ("upstream", "status"),
                ),
                [name],
                u["system"],
                SYSTEM_STATUSES,
            )
        _add(f.counter("upstream_connects", "Successful websocket handshakes.", L), [name], u.get("connects"))
        _add(
            f.counter("upstream_connect_attempts", "Connection attempts, successful or not.", L),
            [name],
            u.get("attempts"),
        )
        _add(
            f.gauge(
                "upstream_connect_budget_remaining",
                "Connection attempts left in the per-address window before Kraken/Cloudflare throttles.",
                L,
            ),
            [name],
            u.get("budget_remaining"),
        )
        disc = f.counter("upstream_disconnects", "Connections lost, by reason.", ("upstream", "reason"))
        for reason, n in (u.get("disconnects") or {}).items():
            _add(disc, [name, str(reason)], n)
        _add(f.counter("upstream_frames_received", "Websocket frames received.", L), [name], u.get("frames"))
        _add(f.counter("upstream_bytes_received", "Websocket payload bytes received.", L), [name], u.get("bytes"))
        _add(
            f.gauge("upstream_last_frame_age_seconds", "Seconds since this line delivered any frame.", L),
            [name],
            u.get("last_frame_age"),
        )
        _add(
            f.counter("upstream_first_arrivals", "Data frames this line delivered first (published).", L),
            [name],
            u.get("wins"),
        )
        _add(
            f.counter("upstream_duplicates", "Data frames dropped because another line was first.", L),
            [name],
            u.get("duplicates"),
        )
        _add(
            f.counter("upstream_checksum_mismatches", "Book checksum mismatches on this line.", L),
            [name],
            u.get("checksum_mismatches"),
        )
        res = f.counter(
            "upstream_resyncs", "Symbol resubscriptions requested on this line, by reason.", ("upstream", "reason")
        )
        if "resyncs" in u:
            resyncs = {**dict.fromkeys(RESYNC_REASONS, 0), **(u.get("resyncs") or {})}
            for reason, n in resyncs.items():
                _add(res, [name, str(reason)], n)
        _add(
            f.counter("upstream_unsolicited", "Data frames for streams nobody subscribed to (dropped, no state).", L),
            [name],
            u.get("unsolicited"),
        )
        if "line_events" in u:
            ev = f.counter(
                "nats_line_events",
                "A NATS line's stream events: sequence gaps, publisher restarts (epoch), snapshots fetched.",
                ("upstream", "event"),
            )
            for event, n in {**dict.fromkeys(NATS_LINE_EVENTS, 0), **(u.get("line_events") or {})}.items():
                _add(ev, [name, str(event)], n)
        if "suspect" in u:
            sus = f.counter(
                "upstream_suspect",
                "Claims the clock or the other lines contradict (dropped), by kind.",
                ("upstream", "kind"),
            )
            for kind, n in {**dict.fromkeys(SUSPECT_KINDS, 0), **(u.get("suspect") or {})}.items():
                _add(sus, [name, str(kind)], n)
        _add(
            f.gauge("upstream_quarantined", "1 while this line's data is ignored for contradicting the others.", L),
            [name],
            u.get("quarantined"),
        )
        _add(f.counter("upstream_quarantines", "Times this line was quarantined.", L), [name], u.get("quarantines"))

    def _symbol(self, f: _Families, s: Mapping[str, Any]) -> None:
        labels = [str(s.get("symbol", "?")), str(s.get("channel", "?"))]
        L = ("symbol", "channel")
        _add(f.counter("published_frames", "Frames published to clients.", L), labels, s.get("published"))
        if s.get("state"):
            _enum(
                f.gauge("symbol_state", "Published feed state per symbol (1 = current).", (*L, "state")),
                labels,
                s["state"],
                SYMBOL_STATES,
            )
        _add(
            f.gauge("symbol_last_update_age_seconds", "Seconds since the last published update.", L),
            labels,
            s.get("age"),
        )
        per_line = s.get("upstreams")
        if per_line:
            valid = f.gauge(
                "symbol_upstream_valid", "1 when this line holds fresh valid data for the symbol.", (*L, "upstream")
            )
            for up, state in per_line.items():
                valid.add_metric([*labels, str(up)], 1.0 if state == "valid" else 0.0)
            n_valid = sum(1 for state in per_line.values() if state == "valid")
            f.gauge(
                "symbol_valid_upstreams", "Lines holding fresh valid data for the symbol (redundancy left).", L
            ).add_metric(labels, float(n_valid))
        _add(
            f.counter("trade_gaps", "Trade-id gaps seen (on every line, i.e. not filled by another line).", L),
            labels,
            s.get("gaps"),
        )
        _add(f.counter("trades_missing", "Trade ids never received from any line.", L), labels, s.get("missing_trades"))
        _add(
            f.counter(
                "trades_late", "Trades that arrived after their gap was reported (published late, out of id order).", L
            ),
            labels,
            s.get("late_trades"),
        )

    def _capture(self, f: _Families, c: Mapping[str, Any]) -> None:
        """The flight recorder (best effort: never part of readiness)."""
        _add(f.counter("capture_records", "Records written to capture files."), [], c.get("records_written"))
        _add(
            f.counter("capture_dropped_records", "Records dropped because the capture writer fell behind."),
            [],
            c.get("records_dropped"),
        )
        _add(f.counter("capture_bytes", "Compressed bytes written to capture files."), [], c.get("bytes_written"))
        _add(
            f.counter("capture_write_errors", "Failed capture writes (full or failing disk)."),
            [],
            c.get("write_errors"),
        )
        _add(f.gauge("capture_disk_bytes", "Bytes the capture directory holds."), [], c.get("disk_bytes"))
        _add(
            f.gauge("capture_writer_lag_seconds", "Age of the oldest batch not yet written."), [], c.get("lag_seconds")
        )

    def _nats(self, f: _Families, n: Mapping[str, Any]) -> None:
        """The NATS publisher (best effort: a NATS outage never touches readiness or clients)."""
        _add(f.gauge("nats_connected", "1 while the NATS publisher is connected."), [], n.get("connected"))
        _add(f.counter("nats_published_messages", "Messages handed to NATS."), [], n.get("messages"))
        _add(f.counter("nats_published_bytes", "Payload bytes handed to NATS."), [], n.get("bytes"))
        dropped = f.counter("nats_dropped_messages", "Messages not published, by reason.", ("reason",))
        for reason, v in {**dict.fromkeys(NATS_DROP_REASONS, 0), **(n.get("dropped") or {})}.items():
            _add(dropped, [str(reason)], v)
        _add(f.gauge("nats_pending_bytes", "Bytes waiting to be written to NATS."), [], n.get("pending_bytes"))
        snaps = f.counter("nats_snapshot_requests", "Snapshot requests answered, by result.", ("result",))
        for result, v in {**dict.fromkeys(NATS_SNAPSHOT_RESULTS, 0), **(n.get("snapshot_requests") or {})}.items():
            _add(snaps, [str(result)], v)
        _add(
            f.counter("nats_connects", "Connections to NATS established (nats-py reconnects included)."),
            [],
            n.get("connects"),
        )
        _add(f.counter("nats_disconnects", "Connections to NATS lost."), [], n.get("disconnects"))
        down = n.get("down_since")
        _add(
            f.gauge("nats_down_seconds", "Seconds the NATS publisher has been disconnected (0 while connected)."),
            [],
            (time.time() - down) if down else 0,
        )
        if n.get("jetstream_ok") is not None:
            _add(
                f.gauge("nats_jetstream_ok", "1 when the JetStream stream is set up."), [], int(bool(n["jetstream_ok"]))
            )
        _add(f.counter("nats_keyframes", "Book keyframes published for JetStream replay."), [], n.get("keyframes"))

    def _on_demand(self, f: _Families, od: Mapping[str, Any]) -> None:
        """On-demand upstream subscriptions per protocol (beyond the configured warm set)."""
        p = [str(od.get("protocol", "?"))]
        L = ("protocol",)
        _add(f.gauge("on_demand_subscriptions", "On-demand upstream subscriptions held now.", L), p, od.get("held"))
        _add(f.gauge("on_demand_pending", "Client subscribes waiting for on-demand data.", L), p, od.get("pending"))
        _add(f.counter("on_demand_added", "On-demand upstream subscriptions added.", L), p, od.get("demanded"))
        _add(f.counter("on_demand_released", "On-demand upstream subscriptions released.", L), p, od.get("released"))
        _add(
            f.counter("on_demand_refused", "Client requests refused by the on-demand cap or patterns.", L),
            p,
            od.get("refused"),
        )

    def _clients(self, f: _Families, c: Mapping[str, Any]) -> None:
        _add(f.gauge("clients_connected", "Downstream websocket clients connected."), [], c.get("connected"))
        _add(
            f.gauge("client_subscriptions", "Downstream subscriptions (client x channel x symbol)."),
            [],
            c.get("subscriptions"),
        )
        _add(f.gauge("client_buffer_bytes", "Output bytes queued for all clients."), [], c.get("buffer_bytes"))
        _add(
            f.gauge("client_buffer_max_bytes", "Output bytes queued for the most backlogged client."),
            [],
            c.get("buffer_max_bytes"),
        )
        _add(f.counter("client_frames_sent", "Frames sent to clients (sum over clients)."), [], c.get("frames_sent"))
        _add(
            f.counter("client_snapshot_resets", "Times a lagging client was reset with a fresh snapshot."),
            [],
            c.get("snapshot_resets"),
        )
        _add(
            f.counter("client_slow_closes", "Clients closed because their output buffer overflowed."),
            [],
            c.get("slow_closes"),
        )
        _add(
            f.counter(
                "client_budget_closes", "Clients closed (1008) to keep all output under server.total_buffer_bytes."
            ),
            [],
            c.get("budget_closes"),
        )
        _add(
            f.gauge("clients_squeezed", "Clients held to a lower output budget under global memory pressure."),
            [],
            c.get("squeezed"),
        )
        _add(
            f.counter("client_snapshots_paced", "Book snapshots deferred by a client's snapshot pacing."),
            [],
            c.get("snapshots_paced"),
        )
        rej = f.counter("client_rejected_requests", "Client requests rejected, by reason.", ("reason",))
        for reason, n in (c.get("rejected") or {}).items():
            _add(rej, [str(reason)], n)


# ---------------------------------------------------------------------------------------------
class LagSampler:
    """Observes exchange-to-receive lag on one frame in `every`, for one upstream.

    The caller does `if sampler.due(): sampler.observe_rfc3339(ts_text, time.time())` – one
    integer decrement per frame on the hot path, the parsing only on sampled frames.
    """

    __slots__ = ("_observe", "_every", "_left")

    def __init__(self, observe: Callable[[float], None], every: int = 64) -> None:
        self._observe = observe
        self._every = max(1, every)
        self._left = 1  # sample the first frame

    def due(self) -> bool:
        self._left -= 1
        if self._left <= 0:
            self._left = self._every
            return True
        return False

    def observe(self, seconds: float) -> None:
        # clocks differ: a negative lag is clock skew, recorded as 0 rather than dropped
        self._observe(seconds if seconds > 0 else 0.0)

    def observe_rfc3339(self, timestamp: str | bytes, received: float | None = None) -> None:
        """Kraken's `timestamp` (e.g. 2023-10-06T17:35:55.440295Z) against our wall clock."""
        ts = parse_rfc3339(timestamp)
        if ts is not None:
            self.observe((time.time() if received is None else received) - ts)


def parse_rfc3339(text: str | bytes) -> float | None:
    """Epoch seconds of an RFC 3339 timestamp, or None if it does not parse."""
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


class RelayMetrics:
    """Owns the relay's registry: the snapshot collector, the lag histogram, process metrics.

    Wiring: `m = RelayMetrics(stats, loop_monitor)`; each upstream session gets
    `m.lag_sampler("primary")`; `HttpServer(..., registry=m.registry, ...)` serves it.
    """

    def __init__(
        self,
        stats: Callable[[], Mapping[str, Any]],
        loop_monitor: LoopLagMonitor | None = None,
        *,
        process_metrics: bool = True,
    ) -> None:
        self.registry = CollectorRegistry()
        self.collector = RelayCollector(stats, loop_monitor)
        self.registry.register(self.collector)
        self.lag = Histogram(
            PREFIX + "upstream_lag_seconds",
            "Exchange timestamp to receive time, on a sample of data frames (includes clock skew).",
            ["upstream"],
            buckets=LAG_BUCKETS,
            registry=self.registry,
        )
        if process_metrics:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)

    def lag_sampler(self, upstream: str, every: int = 64) -> LagSampler:
        return LagSampler(self.lag.labels(upstream).observe, every)
