"""Protocol-neutral events produced by the protocol adapters and consumed by the merge.

A protocol's parser (`relay.protocols.<name>.wire`) turns one upstream frame into one event.
The merge only sees these types, so a new protocol is a new adapter, not a new merge.
Every data event keeps the `raw` frame bytes so the winner can be forwarded unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from relay.core.book import LevelTuple


@dataclass(slots=True)
class BookEvent:
    symbol: str
    snapshot: bool
    bids: list[LevelTuple]
    asks: list[LevelTuple]
    checksum: int | None
    timestamp: str
    raw: bytes


@dataclass(slots=True)
class Trade:
    trade_id: int
    element: bytes  # the trade's JSON object exactly as received


@dataclass(slots=True)
class TradeEvent:
    symbol: str
    snapshot: bool
    trades: list[Trade]
    raw: bytes


@dataclass(slots=True)
class TickerEvent:
    symbol: str
    snapshot: bool
    timestamp: str
    element: bytes
    raw: bytes
    trade_mark: Any = None  # what changes with every trade (v2: last price and 24 h volume)


@dataclass(slots=True)
class OhlcEvent:
    symbol: str
    snapshot: bool
    interval: int
    interval_begin: str
    trades: int
    element: bytes
    raw: bytes


@dataclass(slots=True)
class InstrumentEvent:
    snapshot: bool
    data: dict[str, Any]
    raw: bytes


@dataclass(slots=True)
class StatusEvent:
    system: str
    api_version: str = ""
    version: str = ""
    connection_id: int | None = None


@dataclass(slots=True)
class HeartbeatEvent:
    pass


@dataclass(slots=True)
class AckEvent:
    """One per-symbol (un)subscribe acknowledgement or rejection, in any of Kraken's shapes."""

    method: str
    success: bool
    channel: str | None
    symbol: str | None
    req_id: int | None
    error: str | None = None
    result: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class PongEvent:
    req_id: int | None


@dataclass(slots=True)
class UnknownEvent:
    """Anything we do not understand: counted and logged, never fatal."""

    reason: str
    raw: bytes
    channel: str = ""  # set when the frame was for a known stream whose data was bad:
    symbol: str = ""  # that (line, stream) is resynced, nothing else


DataEvent = BookEvent | TradeEvent | TickerEvent | OhlcEvent | InstrumentEvent
ControlEvent = StatusEvent | HeartbeatEvent | AckEvent | PongEvent | UnknownEvent
Event = DataEvent | ControlEvent
