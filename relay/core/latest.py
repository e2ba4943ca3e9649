"""Newest-wins channels: ticker, ohlc and instrument.

Each of these frames restates a full record, so the merge only has to publish a record newer
than the last one it published (ticker by exchange timestamp, ohlc by interval start and trade
count) and drop everything else. The last record is kept for late joiners' snapshots.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from relay.core.events import InstrumentEvent, OhlcEvent, TickerEvent

if TYPE_CHECKING:
    from relay.core.merge import Merge


class TickerArbiter:
    def __init__(self, merge: Merge, symbol: str) -> None:
        self.merge = merge
        self.symbol = symbol
        self.timestamp = ""
        self.element: bytes | None = None
        self.published = 0
        self.last_update = 0.0

    def on_dup(self, up: int, token: int, now: float) -> bool:
        return True

    def on_event(self, up: int, ev: TickerEvent, now: float) -> None:
        if self.element is not None and ev.timestamp <= self.timestamp:
            self.merge.counters.duplicates += 1
            return
        self.timestamp, self.element = ev.timestamp, ev.element
        merge = self.merge
        frame = self.merge.codec.elements("ticker", False, [ev.element]) if ev.snapshot else ev.raw
        if not ev.snapshot:
            merge.remember(ev.raw, self, 0)
        merge.outbox.append(merge.Publication("ticker", self.symbol, 0, frame, False))
        merge.upstream_stats[up].wins += 1
        self.published += 1
        self.last_update = now

    def snapshot_frame(self) -> bytes | None:
        return None if self.element is None else self.merge.codec.elements("ticker", True, [self.element])


class OhlcArbiter:
    """One (symbol, interval) candle stream; a candle is newer by start time, then trade count."""

    def __init__(self, merge: Merge, symbol: str, interval: int) -> None:
        self.merge = merge
        self.symbol = symbol
        self.interval = interval
        self.key: tuple[str, int] = ("", -1)
        self.element: bytes | None = None
        self.published = 0
        self.last_update = 0.0

    def on_dup(self, up: int, token: int, now: float) -> bool:
        return True

    def on_event(self, up: int, ev: OhlcEvent, now: float) -> None:
        key = (ev.interval_begin, ev.trades)
        if self.element is not None and key <= self.key:
            self.merge.counters.duplicates += 1
            return
        self.key, self.element = key, ev.element
        merge = self.merge
        frame = self.merge.codec.elements("ohlc", False, [ev.element], _ohlc_ts(ev.raw)) if ev.snapshot else ev.raw
        if not ev.snapshot:
            merge.remember(ev.raw, self, 0)
        merge.outbox.append(merge.Publication("ohlc", self.symbol, self.interval, frame, False))
        merge.upstream_stats[up].wins += 1
        self.published += 1
        self.last_update = now

    def snapshot_frame(self) -> bytes | None:
        return None if self.element is None else self.merge.codec.elements("ohlc", True, [self.element])


def _ohlc_ts(raw: bytes) -> bytes:
    """The frame-level `timestamp` that ohlc frames carry, re-attached when re-framing."""
    try:
        ts = orjson.loads(raw).get("timestamp")
    except orjson.JSONDecodeError:
        return b""
    return b',"timestamp":' + orjson.dumps(ts) if ts else b""


class InstrumentArbiter:
    """The merged instrument list (assets and pairs), kept for snapshots; changes are published."""

    def __init__(self, merge: Merge) -> None:
        self.merge = merge
        self.assets: dict[str, Any] = {}
        self.pairs: dict[str, Any] = {}
        self.published = 0

    def on_dup(self, up: int, token: int, now: float) -> bool:
        return True

    def on_event(self, up: int, ev: InstrumentEvent, now: float) -> None:
        changed_assets = [a for a in ev.data.get("assets") or () if self.assets.get(a.get("id")) != a]
        changed_pairs = [p for p in ev.data.get("pairs") or () if self.pairs.get(p.get("symbol")) != p]
        if not changed_assets and not changed_pairs:
            self.merge.counters.duplicates += 1
            return
        first = not self.pairs and not self.assets
        for a in changed_assets:
            self.assets[a.get("id")] = a
        for p in changed_pairs:
            self.pairs[p.get("symbol")] = p
        merge = self.merge
        merge.remember(ev.raw, self, 0)
        if not first:
            frame = self.merge.codec.instrument(False, {"assets": changed_assets, "pairs": changed_pairs})
            merge.outbox.append(merge.Publication("instrument", "", 0, frame, False))
            self.published += 1

    def snapshot_frame(self) -> bytes | None:
        if not self.pairs:
            return None
        return self.merge.codec.instrument(True, {"assets": list(self.assets.values()), "pairs": list(self.pairs.values())})
