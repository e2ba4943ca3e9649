"""Futures verifier: a book per product with `seq` contiguity checked; every trade `uid` once;
ticker records counted per (feed, product)."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

MAX_UIDS = 100_000  # trade uids remembered for the duplicate check (bounded for long runs)


class FuturesVerifier:
    """Subscribes `book` and `trade` for `products` (`PF_XBTUSD`); checks what arrives."""

    def __init__(self, products: list[str], depth: int = 0, *, trades: bool = True) -> None:
        self.products, self.trades = list(products), trades  # futures books are full depth
        self.books: dict[str, dict[str, Any]] = {}  # product -> {"seq", "bids", "asks"}
        self.snapshots: Counter[str] = Counter()
        self.book_frames = 0
        self.deltas = 0
        self.seq_errors: list[tuple[str, int, int]] = []  # (product, last seq, received seq)
        self.trade_uids: dict[str, None] = {}  # the most recent MAX_UIDS uids, oldest first
        self.trade_count = 0
        self.trade_dups = 0
        self.errors: list[dict[str, Any]] = []
        self.tickers: Counter[tuple[str, str]] = Counter()  # (ticker | ticker_lite, product) -> records

    def requests(self) -> list[bytes]:
        out = [{"event": "subscribe", "feed": "book", "product_ids": self.products}]
        if self.trades:
            out.append({"event": "subscribe", "feed": "trade", "product_ids": self.products})
        return [json.dumps(m).encode() for m in out]

    def feed(self, raw: bytes | str) -> None:
        m = json.loads(raw)
        if "event" in m:  # acks carry `feed` too (`{"event":"subscribed","feed":"book",...}`)
            if m["event"] == "error":
                self.errors.append(m)
            return
        feed = m.get("feed")
        if feed == "book_snapshot":
            p = m["product_id"]
            self.book_frames += 1
            self.snapshots[p] += 1
            self.books[p] = {
                "seq": m["seq"],
                "bids": {lv["price"]: lv["qty"] for lv in m.get("bids", ()) if lv["qty"]},
                "asks": {lv["price"]: lv["qty"] for lv in m.get("asks", ()) if lv["qty"]},
            }
        elif feed == "book":
            p = m["product_id"]
            self.book_frames += 1
            b = self.books.get(p)
            if b is None:
                self.seq_errors.append((p, -1, m["seq"]))
                return
            if m["seq"] != b["seq"] + 1:
                self.seq_errors.append((p, b["seq"], m["seq"]))
            side = b["bids"] if m["side"] == "buy" else b["asks"]
            if m["qty"] == 0:
                side.pop(m["price"], None)
            else:
                side[m["price"]] = m["qty"]
            b["seq"] = m["seq"]
            self.deltas += 1
        elif feed == "trade":
            self._trade(m["uid"], snapshot=False)
        elif feed == "trade_snapshot":
            for t in m.get("trades", ()):
                self._trade(t["uid"], snapshot=True)
        elif feed in ("ticker", "ticker_lite"):
            self.tickers[(feed, m.get("product_id", ""))] += 1

    def _trade(self, uid: str, snapshot: bool) -> None:
        uids = self.trade_uids
        if uid in uids:
            self.trade_dups += not snapshot  # a snapshot after a reconnect repeats recent trades
            return
        uids[uid] = None
        if len(uids) > MAX_UIDS:
            del uids[next(iter(uids))]
        self.trade_count += 1

    @property
    def ok(self) -> bool:
        return not (self.seq_errors or self.trade_dups)

    def report(self) -> dict[str, Any]:
        return {
            "book_frames": self.book_frames,
            "deltas": self.deltas,
            "seq_errors": len(self.seq_errors),
            "snapshots": dict(self.snapshots),
            "trades": self.trade_count,
            "trade_duplicates": self.trade_dups,
            "errors": len(self.errors),
            "tickers": sum(self.tickers.values()),
        }
