"""The merge framework every protocol's merge is built on (Sans-I/O, protocol-neutral).

A protocol's merge (`relay.protocols.<name>.merge`) feeds upstream frames to per-symbol arbiters
(`book_arbiter`, `trade_arbiter`, `latest`). What they produce goes out through the
`MergeOutputs` they are handed: `Publication`s in `outbox` for the local server, and
per-(upstream, symbol) `ResyncRequest`s in `requests` for the upstream sessions; the I/O layers
drain both. Nothing here parses or encodes a protocol: that is the protocol's `Codec`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

# Engine modes, best first: the relay reports the best mode any connected line reports.
STATUS_RANK = {"online": 0, "post_only": 1, "limit_only": 2, "cancel_only": 3, "maintenance": 4}
BLOCKING_STATUS = ("maintenance",)


class Publication(NamedTuple):
    """One frame to send to the subscribers of (channel, symbol, key), encoded once."""

    channel: str
    symbol: str
    key: int  # book: depth of the view; ohlc: interval; otherwise 0
    frame: bytes
    snapshot: bool


class ResyncRequest(NamedTuple):
    """Resubscribe `symbol` on `channel` on upstream `upstream` (checksum, stale or gap)."""

    upstream: int
    channel: str
    symbol: str
    reason: str


@dataclass(frozen=True, slots=True)
class MergeSettings:
    book_depth: int = 100
    trade_gap_wait: float = 0.5
    stale_after: float = 10.0
    history: int = 512
    recent_trades: int = 50
    # Plausibility (cross-checked lines): a book timestamp more than `max_clock_skew` seconds
    # ahead of the wall clock, or `max_line_lead` ahead of every other live line's exchange
    # clock, is not believed; `quarantine_after` such contradictions within `suspect_window`
    # mute a line for `quarantine_for` seconds while another line is live.
    max_clock_skew: float = 60.0
    max_line_lead: float = 5.0
    suspect_window: float = 60.0
    quarantine_after: int = 5
    quarantine_for: float = 60.0


@dataclass(slots=True)
class UpstreamStats:
    """Merge outcomes per upstream, read by the metrics collector at scrape time (frames and
    bytes received are counted once, by the connection)."""

    name: str
    duplicates: int = 0
    wins: int = 0
    checksum_mismatches: int = 0
    resyncs: dict[str, int] = field(default_factory=dict)
    unknown: int = 0
    unsolicited: int = 0  # data frames for a stream nobody subscribed to (dropped, no state)
    suspect: dict[str, int] = field(default_factory=dict)  # implausible claims dropped, by kind
    quarantines: int = 0
    quarantined: bool = False


@dataclass(slots=True)
class MergeCounters:
    duplicates: int = 0
    book_dropped: int = 0
    maintenance_dropped: int = 0
    gaps_reported: int = 0


@dataclass(slots=True)
class Line:
    name: str
    connected: bool = False
    status: str = ""
    version: str = ""  # what the line's status frame reports (Kraken's engine version)


class Parser(Protocol):
    """A protocol's upstream adapter: one frame's bytes -> one `relay.core.events` event."""

    def parse(self, raw: bytes) -> Any: ...


class Codec(Protocol):
    """How a merge writes the frames it synthesizes, in its clients' protocol."""

    name: str

    def book(
        self,
        symbol: str,
        snapshot: bool,
        bids: Iterable[tuple[bytes, ...]],
        asks: Iterable[tuple[bytes, ...]],
        checksum: int,
        timestamp: str,
    ) -> bytes: ...
    def elements(self, channel: str, snapshot: bool, elements: Iterable[bytes], extra: bytes = b"") -> bytes: ...
    def instrument(self, snapshot: bool, data: dict[str, Any]) -> bytes: ...
    def status(self, system: str) -> bytes: ...
    def timestamp_text(self, wall: float) -> str: ...
    def timestamp_value(self, text: str) -> float | None: ...


class ArbiterHost(Protocol):
    """What the per-symbol arbiters see of their merge: its outputs, settings, codec, lines."""

    settings: MergeSettings
    codec: Codec
    lines: list[Line]
    counters: MergeCounters
    outbox: list[Publication]
    seen: dict[bytes, tuple[Any, int]]
    upstream_stats: list[UpstreamStats]
    ts_ceiling: list[str]  # per line: the newest book timestamp believed (see `Merge.tick`)
    line_clock: list[str]  # per line: the newest book timestamp it sent
    line_clock_at: list[float]  # per line: when that arrived (monotonic)

    def suspect(self, up: int, kind: str, now: float) -> None: ...
    def remember(self, raw: bytes, owner: Any, token: int) -> None: ...
    def request_resync(self, up: int, channel: str, symbol: str, reason: str) -> None: ...
    def report_gap(self, symbol: str, first: int, last: int) -> None: ...


class MergeBase:
    """What every protocol's merge shares: publications out, resync requests back to the
    upstreams, reported gaps, and the registry of published bytes for the pre-parse duplicate
    check. Subclasses call `_init_outputs()` and keep their own per-symbol arbiters."""

    SEEN_RING = 4096  # non-book frames remembered for the duplicate check
    lines: list[Any]  # per upstream: `Line` or the protocol's own line state
    counters: Any  # the protocol's counters (`MergeCounters` or its own), with `gaps_reported`

    def _init_outputs(self) -> None:
        self.upstream_stats: list[UpstreamStats] = []
        self.outbox: list[Publication] = []
        self.requests: list[ResyncRequest] = []
        self.gaps: list[tuple[str, int, int]] = []  # recent (symbol, first missing, last missing)
        self.seen: dict[bytes, tuple[Any, int]] = {}
        self._ring: deque[bytes] = deque()
        self._system = "maintenance"

    def remember(self, raw: bytes, owner: Any, token: int) -> None:
        """Register published bytes of a non-book channel for the pre-parse duplicate check."""
        ring = self._ring
        ring.append(raw)
        self.seen[raw] = (owner, token)
        if len(ring) > self.SEEN_RING:
            self.seen.pop(ring.popleft(), None)

    def forget_owner(self, owner: Any) -> None:
        """Drop every remembered frame of an arbiter that is being discarded (a frame equal to
        one of them must reach the arbiter that replaces it, not be taken for a duplicate)."""
        seen = self.seen
        for raw, hit in list(seen.items()):
            if hit[0] is owner:
                del seen[raw]

    def request_resync(self, up: int, channel: str, symbol: str, reason: str) -> None:
        self.requests.append(ResyncRequest(up, channel, symbol, reason))
        resyncs = self.upstream_stats[up].resyncs
        resyncs[reason] = resyncs.get(reason, 0) + 1

    def report_gap(self, symbol: str, first: int, last: int) -> None:
        self.counters.gaps_reported += 1
        self.gaps.append((symbol, first, last))
        del self.gaps[:-100]

    def upstream_up(self, up: int, now: float) -> None:
        """A connection is established (its data starts with fresh snapshots)."""
        self.lines[up].connected = True

    def upstream_version(self) -> str:
        """The engine version a connected line reported (clients see Kraken's, not ours)."""
        for line in self.lines:
            if line.connected and getattr(line, "version", ""):
                return str(line.version)
        return next((str(ln.version) for ln in self.lines if getattr(ln, "version", "")), "")

    def take(self) -> list[Publication]:
        out = self.outbox
        if out:
            self.outbox = []
        return out

    def take_requests(self) -> list[ResyncRequest]:
        out = self.requests
        if out:
            self.requests = []
        return out

    def system_status(self) -> str:
        return self._system
