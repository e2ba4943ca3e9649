"""`SubKey`: one subscription, the same key upstream (planner), in the merge and at the endpoints."""

from __future__ import annotations

from typing import NamedTuple


class SubKey(NamedTuple):
    """(channel, symbol, param): `param` is the book depth, the ohlc interval, or 0."""

    channel: str
    symbol: str  # "" for channel-wide subscriptions (v2 instrument, futures heartbeat)
    param: int

    def label(self) -> str:
        base = f"{self.channel}:{self.symbol}" if self.symbol else self.channel
        return f"{base}:{self.param}" if self.param else base
