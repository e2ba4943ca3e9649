"""Kraken Spot facts that both Spot websocket APIs (v1 and v2) and the config share."""

from __future__ import annotations

BOOK_DEPTHS = (10, 25, 100, 500, 1000)
OHLC_INTERVALS = (1, 5, 15, 30, 60, 240, 1440, 10080, 21600)
