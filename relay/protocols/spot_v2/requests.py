"""Sans-I/O parsing and validation of one client request on the local v2 endpoint.

`parse_request(raw)` turns one text message into a typed request (`Ping`, `Subscription`) or a
`Rejection` carrying the Kraken-style error text. Only what can be decided from the message alone
is checked here (shape, channel, depth/interval enums); what depends on relay state (is the
symbol served, is the depth held, limits) is decided by the hub.

Error texts: the ones Kraken is known to send are reused verbatim (`Currency pair not supported
SYM`, `Subscription depth not supported`, `Exceeded msg rate`, `Unsupported field: 'params' for the
given msg type: ping`); the others follow the same short style (see ERRORS below).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from relay.core.spot import BOOK_DEPTHS, OHLC_INTERVALS

# Channels clients may subscribe to. `relay` is this relay's own opt-in state channel;
# `heartbeat` is accepted for clients that follow Kraken's reconnection guide (heartbeats are
# sent anyway). `status` cannot be requested on Kraken either.
DATA_CHANNELS = ("book", "trade", "ticker", "ohlc", "instrument")
CHANNELS = DATA_CHANNELS + ("relay", "heartbeat", "level3")
SYMBOL_CHANNELS = ("book", "trade", "ticker", "ohlc")

# Error texts (one place, so tests and docs can refer to them).
ERR_MALFORMED = "Malformed request"
ERR_METHOD = "Method not found"
ERR_CHANNEL = "Channel not found"
ERR_PARAMS = "Missing field: params"
ERR_SYMBOL_MISSING = "Missing field: symbol"
ERR_SYMBOL_TYPE = "Field 'symbol' must be a list of strings"
ERR_DEPTH = "Subscription depth not supported"
ERR_INTERVAL = "Subscription ohlc interval not supported"
ERR_TRIGGER = "Subscription event_trigger not supported"
ERR_SNAPSHOT = "Field 'snapshot' must be a boolean"
ERR_REQ_ID = "Field 'req_id' must be an integer"
ERR_RATE = "Exceeded msg rate"
ERR_TOO_BIG = "Message too large"
ERR_BINARY = "Binary messages are not supported"
ERR_TOO_MANY_SYMBOLS = "Too many symbols in one request"
ERR_ALREADY = "Already subscribed"
ERR_NOT_SUBSCRIBED = "Subscription Not Found"
ERR_LIMIT = "Subscription limit exceeded"
ERR_TIMEOUT = "Timed out waiting for market data"
# level3 on the public endpoint: Kraken's answer to a level3 subscribe that carries no token.
ERR_TOKEN = "Token required"
ERR_OPTION = "Field 'include_tokenized_assets' must be a boolean"
ERR_VENUE = "Unsupported execution_venue"
EXECUTION_VENUES = ("international", "bitnomial-exchange")


def err_not_served(symbol: str, key: tuple[str, str, int], warm_symbol: bool) -> str:
    """On-demand serving is off and `key` is outside the configured set: say so (this is the
    relay's config, not Kraken's list), naming the switch."""
    what = f"{key[0]} {symbol}" if warm_symbol else symbol
    return f"Currency pair not served by this relay {what} (server.dynamic_subscriptions.enabled is false)"


def err_pair(symbol: str) -> str:
    """Kraken's own text for a symbol it does not serve."""
    return f"Currency pair not supported {symbol}"


@dataclass(slots=True)
class Ping:
    req_id: int | None


@dataclass(slots=True)
class Subscription:
    """A validated subscribe/unsubscribe: channel parameters, Kraken defaults applied."""

    method: str  # "subscribe" | "unsubscribe"
    channel: str
    symbols: list[str]  # empty for instrument/heartbeat/relay-without-filter
    req_id: int | None
    depth: int = 10  # book
    interval: int = 1  # ohlc
    snapshot: bool = True
    event_trigger: str = "trades"  # ticker
    symbol_given: bool = False  # relay: whether the client filtered by symbol
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> int:
        """Publication key: depth for book, interval for ohlc, the trigger for ticker (0 trades,
        1 bbo: `relay.core.latest.TICKER_TRADES` / `TICKER_BBO`), 0 otherwise."""
        if self.channel == "book":
            return self.depth
        if self.channel == "ohlc":
            return self.interval
        if self.channel == "ticker":
            return 1 if self.event_trigger == "bbo" else 0
        return 0

    def result(self, symbol: str | None) -> dict[str, Any]:
        """The `result` object of the ack, in Kraken's shape for this channel."""
        res: dict[str, Any] = {"channel": self.channel}
        ch = self.channel
        if ch == "book":
            res["depth"] = self.depth
        elif ch == "ohlc":
            res["interval"] = self.interval
        elif ch == "ticker":
            res["event_trigger"] = self.event_trigger
        if ch in DATA_CHANNELS and self.method == "subscribe":
            res["snapshot"] = self.snapshot
        if symbol is not None:
            res["symbol"] = symbol
        res.update(self.extra)  # instrument options, echoed as given
        return res


@dataclass(slots=True)
class Rejection:
    """A request we answer with one error frame (connection kept)."""

    method: str | None
    error: str
    req_id: int | None
    symbol: str | None = None
    symbols: list[str] = field(default_factory=list)  # a parameter refused per symbol: one error each


Request = Ping | Subscription | Rejection


def peek_ids(raw: bytes | str) -> tuple[str | None, int | None]:
    """(method, req_id) of a message if cheaply recoverable, for error replies."""
    try:
        msg = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None, None
    if not isinstance(msg, dict):
        return None, None
    method, req_id = msg.get("method"), msg.get("req_id")
    return (method if isinstance(method, str) else None, req_id if _is_int(req_id) else None)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def parse_request(raw: bytes | str, max_symbols: int = 1000) -> Request:
    """Parse and validate one client message (already size-checked)."""
    try:
        msg = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return Rejection(None, ERR_MALFORMED, None)
    if not isinstance(msg, dict):
        return Rejection(None, ERR_MALFORMED, None)
    method = msg.get("method")
    req_id = msg.get("req_id")
    if req_id is not None and not _is_int(req_id):
        return Rejection(method if isinstance(method, str) else None, ERR_REQ_ID, None)
    if not isinstance(method, str):
        return Rejection(None, ERR_METHOD, req_id)
    if method == "ping":
        return Ping(req_id)  # with or without `params` (some libraries always send one)
    if method not in ("subscribe", "unsubscribe"):
        return Rejection(method, ERR_METHOD, req_id)
    params = msg.get("params")
    if not isinstance(params, dict):
        return Rejection(method, ERR_PARAMS, req_id)
    return _subscription(method, params, req_id, max_symbols)


def _subscription(method: str, params: dict[str, Any], req_id: int | None, max_symbols: int) -> Request:
    channel = params.get("channel")
    if not isinstance(channel, str) or channel not in CHANNELS:
        return Rejection(method, ERR_CHANNEL, req_id)
    if channel == "level3":
        return Rejection(method, ERR_TOKEN, req_id)  # public endpoint, no token: as Kraken answers
    sub = Subscription(method, channel, [], req_id)

    raw_symbols = params.get("symbol")
    if channel in SYMBOL_CHANNELS or (channel == "relay" and raw_symbols is not None):
        if raw_symbols is None:
            return Rejection(method, ERR_SYMBOL_MISSING, req_id)
        if (
            not isinstance(raw_symbols, list)
            or not raw_symbols
            or not all(isinstance(s, str) and s for s in raw_symbols)
        ):
            return Rejection(method, ERR_SYMBOL_TYPE, req_id)
        if len(raw_symbols) > max_symbols:
            return Rejection(method, ERR_TOO_MANY_SYMBOLS, req_id)
        sub.symbols = list(dict.fromkeys(raw_symbols))  # duplicates get one ack
        sub.symbol_given = True

    snapshot = params.get("snapshot")
    if snapshot is None:
        sub.snapshot = channel != "trade"  # Kraken: trade snapshot defaults to false
    elif isinstance(snapshot, bool):
        sub.snapshot = snapshot
    else:
        return Rejection(method, ERR_SNAPSHOT, req_id)

    if channel == "book":
        depth = params.get("depth", 10)
        if not _is_int(depth) or depth not in BOOK_DEPTHS:
            return Rejection(method, ERR_DEPTH, req_id, symbols=sub.symbols)
        sub.depth = depth
    elif channel == "ohlc":
        interval = params.get("interval", 1)
        if not _is_int(interval) or interval not in OHLC_INTERVALS:
            return Rejection(method, ERR_INTERVAL, req_id, symbols=sub.symbols)
        sub.interval = interval
    elif channel == "ticker":
        trigger = params.get("event_trigger", "trades")
        if trigger not in ("trades", "bbo"):
            return Rejection(method, ERR_TRIGGER, req_id, symbols=sub.symbols)
        sub.event_trigger = trigger
    elif channel == "instrument":
        tokenized = params.get("include_tokenized_assets")
        if tokenized is not None and not isinstance(tokenized, bool):
            return Rejection(method, ERR_OPTION, req_id)
        venue = params.get("execution_venue")
        if venue is not None and venue not in EXECUTION_VENUES:
            return Rejection(method, ERR_VENUE, req_id)
    return sub
