"""Newest-wins channels: ticker, ohlc and instrument.

Each of these frames restates a full record, so the merge only has to publish a record newer
than the last one it published (ticker by exchange timestamp, ohlc by interval start and trade
count) and drop everything else. The last record is kept for late joiners' snapshots.
"""

from __future__ import annotations

from typing import Any

import orjson

from relay.core.events import InstrumentEvent, OhlcEvent, TickerEvent
from relay.core.outputs import ArbiterHost, Publication


class NewestWins:
    """One full-record stream (a symbol's ticker, or one ohlc interval): publish only newer records.

    `order` gives the record's position (ticker: exchange timestamp; ohlc: interval start, then
    trade count). An upstream snapshot that is newer is re-framed as an update for live clients.
    """

    def __init__(self, merge: ArbiterHost, channel: str, symbol: str, key: int = 0) -> None:
        self.merge = merge
        self.channel = channel
        self.symbol = symbol
        self.key = key  # the publication key: 0, or the ohlc interval
        self.order: Any = None
        self.element: bytes | None = None
        self.last_raw = b""  # ohlc: the frame-level `timestamp` of snapshots comes from it
        self.published = 0
        self.last_update = 0.0

    def on_dup(self, up: int, token: int, now: float, raw: bytes | None = None) -> bool:
        return True

    def offer(self, up: int, order: Any, element: bytes, snapshot: bool, raw: bytes, now: float) -> bool:
        """Publish the record if it is newer; True when it was published."""
        merge = self.merge
        if self.element is not None and order <= self.order:
            merge.counters.duplicates += 1
            return False
        self.order, self.element = order, element
        if self.channel == "ohlc":
            self.last_raw = raw
        if snapshot:
            extra = _ohlc_ts(raw) if self.channel == "ohlc" else b""
            frame = merge.codec.elements(self.channel, False, [element], extra)
        else:
            frame = raw
            merge.remember(raw, self, 0)
        merge.outbox.append(Publication(self.channel, self.symbol, self.key, frame, False))
        merge.upstream_stats[up].wins += 1
        self.published += 1
        self.last_update = now
        return True

    def snapshot_frame(self) -> bytes | None:
        if self.element is None:
            return None
        extra = _ohlc_ts(self.last_raw) if self.last_raw else b""
        return self.merge.codec.elements(self.channel, True, [self.element], extra)


TICKER_TRADES, TICKER_BBO = 0, 1  # publication keys of the two v2 ticker streams (event_trigger)


class TickerArbiter(NewestWins):
    """A symbol's ticker, published as two streams from one upstream subscription per line.

    Upstream the relay subscribes one trigger per symbol on a line (Kraken's frames do not say
    which trigger produced them): `bbo` while any client wants it, else `trades`. Every newer
    record goes out on the `bbo` key; the `trades` key gets the records whose trade fields (last
    price, 24 h volume) changed, which is Kraken's `trades` stream (a trade moves them). Both
    forward the upstream bytes unchanged.
    """

    def __init__(self, merge: ArbiterHost, symbol: str) -> None:
        super().__init__(merge, "ticker", symbol, TICKER_BBO)
        self.trade_mark: Any = None
        self.trade_element: bytes | None = None  # the last record published on the trades key

    def on_event(self, up: int, ev: TickerEvent, now: float) -> None:
        if not self.offer(up, ev.timestamp, ev.element, ev.snapshot, ev.raw, now):
            return
        if ev.trade_mark is None or ev.trade_mark != self.trade_mark or self.trade_element is None:
            self.trade_mark, self.trade_element = ev.trade_mark, ev.element
            outbox = self.merge.outbox
            last = outbox[-1]
            outbox.append(Publication("ticker", self.symbol, TICKER_TRADES, last.frame, False))

    def snapshot_frame_for(self, key: int) -> bytes | None:
        element = self.element if key == TICKER_BBO else self.trade_element
        return None if element is None else self.merge.codec.elements(self.channel, True, [element])


class OhlcArbiter(NewestWins):
    """One (symbol, interval) candle stream; a candle is newer by start time, then trade count."""

    def __init__(self, merge: ArbiterHost, symbol: str, interval: int) -> None:
        super().__init__(merge, "ohlc", symbol, interval)
        self.interval = interval

    def on_event(self, up: int, ev: OhlcEvent, now: float) -> None:
        self.offer(up, (ev.interval_begin, ev.trades), ev.element, ev.snapshot, ev.raw, now)


def _ohlc_ts(raw: bytes) -> bytes:
    """The frame-level `timestamp` that ohlc frames carry, re-attached when re-framing."""
    try:
        ts = orjson.loads(raw).get("timestamp")
    except orjson.JSONDecodeError:
        return b""
    return b',"timestamp":' + orjson.dumps(ts) if ts else b""


class InstrumentArbiter:
    """The merged instrument list (assets and pairs), kept for snapshots; changes are published."""

    def __init__(self, merge: ArbiterHost) -> None:
        self.merge = merge
        self.assets: dict[str, Any] = {}
        self.pairs: dict[str, Any] = {}
        self.snapshot_raw: bytes | None = None
        self.published = 0

    def on_dup(self, up: int, token: int, now: float, raw: bytes | None = None) -> bool:
        return True

    def on_event(self, up: int, ev: InstrumentEvent, now: float) -> None:
        changed_assets = [a for a in ev.data.get("assets") or () if self.assets.get(a.get("id")) != a]
        changed_pairs = [p for p in ev.data.get("pairs") or () if self.pairs.get(p.get("symbol")) != p]
        if not changed_assets and not changed_pairs:
            self.merge.counters.duplicates += 1
            return
        first = not self.pairs and not self.assets
        # Serve late joiners Kraken's own snapshot bytes (exact number text) until something changes.
        self.snapshot_raw = ev.raw if (ev.snapshot and first) else None
        for a in changed_assets:
            self.assets[a.get("id")] = a
        for p in changed_pairs:
            self.pairs[p.get("symbol")] = p
        merge = self.merge
        merge.remember(ev.raw, self, 0)
        if not first:
            frame = self.merge.codec.instrument(False, {"assets": changed_assets, "pairs": changed_pairs})
            merge.outbox.append(Publication("instrument", "", 0, frame, False))
            self.published += 1

    def snapshot_frame(self) -> bytes | None:
        if not self.pairs:
            return None
        if self.snapshot_raw is not None:
            return self.snapshot_raw
        return self.merge.codec.instrument(
            True, {"assets": list(self.assets.values()), "pairs": list(self.pairs.values())}
        )
