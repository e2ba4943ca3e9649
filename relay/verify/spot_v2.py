"""Spot v2 verifier: a book per (symbol, depth) with every checksum recomputed, trades exactly once."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from relay.verify.crc import book_crc, is_zero, truncate


def _loads(raw: bytes | str) -> Any:
    """JSON with every number kept as its wire text (the checksum is computed over it)."""
    return json.loads(raw, parse_float=str, parse_int=str)


class V2Verifier:
    """Subscribes `book` (at `depth`) and `trade` for `symbols`; checks what arrives."""

    def __init__(self, symbols: list[str], depth: int = 10, *, trades: bool = True) -> None:
        self.symbols, self.depth, self.trades = list(symbols), depth, trades
        self.books: dict[str, tuple[dict[str, str], dict[str, str]]] = {}  # symbol -> (asks, bids)
        self.book_frames = 0
        self.checksums_ok = 0
        self.checksum_bad: list[tuple[str, int, int]] = []  # (symbol, expected, computed)
        self.updates_before_snapshot = 0
        self.snapshots: Counter[str] = Counter()
        self.trade_count = 0
        self.last_trade: dict[str, int] = {}
        self.trade_gaps: list[tuple[str, int, int]] = []  # (symbol, first missing, last missing)
        self.trade_dups = 0
        self.errors: list[dict[str, Any]] = []  # error replies
        self.status: list[str] = []  # system status values seen

    def requests(self) -> list[bytes]:
        out = [
            {
                "method": "subscribe",
                "req_id": 1,
                "params": {"channel": "book", "symbol": self.symbols, "depth": self.depth},
            }
        ]
        if self.trades:
            out.append({"method": "subscribe", "req_id": 2, "params": {"channel": "trade", "symbol": self.symbols}})
        return [json.dumps(m).encode() for m in out]

    def feed(self, raw: bytes | str) -> None:
        msg = _loads(raw)
        channel = msg.get("channel")
        if channel == "book":
            for item in msg.get("data", ()):
                self._book(msg.get("type") == "snapshot", item)
        elif channel == "trade":
            snapshot = msg.get("type") == "snapshot"  # recent trades: may repeat ones already seen
            for t in msg.get("data", ()):
                self._trade(t["symbol"], int(t["trade_id"]), snapshot)
        elif channel == "status":
            self.status += [d.get("system", "") for d in msg.get("data", ())]
        elif msg.get("success") is False or "error" in msg:
            self.errors.append(msg)

    def _book(self, snapshot: bool, item: dict[str, Any]) -> None:
        symbol = item["symbol"]
        self.book_frames += 1
        if snapshot:
            self.snapshots[symbol] += 1
            self.books[symbol] = ({}, {})
        book = self.books.get(symbol)
        if book is None:
            self.updates_before_snapshot += 1
            return
        asks, bids = book
        for side, levels in ((asks, item.get("asks", ())), (bids, item.get("bids", ()))):
            for lv in levels:
                if is_zero(lv["qty"]):
                    side.pop(lv["price"], None)
                else:
                    side[lv["price"]] = lv["qty"]
        truncate(asks, bids, self.depth)
        expected = int(item["checksum"])
        got = book_crc(asks, bids)
        if got == expected:
            self.checksums_ok += 1
        else:
            self.checksum_bad.append((symbol, expected, got))

    def _trade(self, symbol: str, trade_id: int, snapshot: bool) -> None:
        last = self.last_trade.get(symbol)
        if last is not None:
            if trade_id <= last:
                self.trade_dups += not snapshot
                return
            if trade_id > last + 1:
                self.trade_gaps.append((symbol, last + 1, trade_id - 1))
        self.trade_count += 1
        self.last_trade[symbol] = trade_id

    @property
    def ok(self) -> bool:
        return not (self.checksum_bad or self.trade_gaps or self.trade_dups or self.updates_before_snapshot)

    def report(self) -> dict[str, Any]:
        return {
            "book_frames": self.book_frames,
            "checksums_ok": self.checksums_ok,
            "checksum_bad": len(self.checksum_bad),
            "snapshots": dict(self.snapshots),
            "trades": self.trade_count,
            "trade_gaps": len(self.trade_gaps),
            "trade_duplicates": self.trade_dups,
            "errors": len(self.errors),
        }
