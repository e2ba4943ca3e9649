"""What the relay subscribes upstream on a Spot v2 line, and with which request parameters."""

from __future__ import annotations

from typing import Any

from relay.config import ChannelsConfig
from relay.core.keys import SubKey


def desired_from_channels(ch: ChannelsConfig) -> list[SubKey]:
    """The subscriptions a relay needs for a `channels:` config section."""
    keys: list[SubKey] = []
    if ch.instrument:
        keys.append(SubKey("instrument", "", 0))
    if ch.book is not None:
        keys += [SubKey("book", s, ch.book.depth) for s in ch.book.symbols]
    if ch.trade is not None:
        keys += [SubKey("trade", s, 0) for s in ch.trade.symbols]
    if ch.ticker is not None:
        keys += [SubKey("ticker", s, 0) for s in ch.ticker.symbols]
    if ch.ohlc is not None:
        keys += [SubKey("ohlc", s, i) for s in ch.ohlc.symbols for i in ch.ohlc.intervals]
    return keys


def request_params(channel: str, param: int) -> dict[str, Any]:
    """Channel parameters; trade asks for a snapshot so trades missed while down are recovered."""
    if channel == "book":
        return {"depth": param, "snapshot": True}
    if channel == "ohlc":
        return {"interval": param, "snapshot": True}
    if channel == "ticker":  # param: the trigger (0 trades, 1 bbo: relay.core.latest)
        return {"event_trigger": "bbo" if param == 1 else "trades", "snapshot": True}
    return {"snapshot": True}
