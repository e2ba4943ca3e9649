"""Spot v1 verifier: books per channelID with every `"c"` checksum recomputed; trades counted."""

from __future__ import annotations

import json
from typing import Any

from relay.verify.crc import book_crc, is_zero, truncate


class V1Verifier:
    """Subscribes `book` (at `depth`) and `trade` for `pairs` (v1 names: `XBT/USD`)."""

    def __init__(self, pairs: list[str], depth: int = 10, *, trades: bool = True) -> None:
        self.pairs, self.depth, self.trades = list(pairs), depth, trades
        self.channels: dict[int, tuple[str, str]] = {}  # channelID -> (channelName, pair)
        self.books: dict[int, tuple[dict[str, str], dict[str, str]]] = {}  # channelID -> (asks, bids)
        self.book_frames = 0
        self.snapshots = 0
        self.checksums_ok = 0
        self.checksum_bad: list[tuple[str, int, int]] = []
        self.unknown_channel = 0  # data on a channelID no subscriptionStatus announced
        self.updates_before_snapshot = 0
        self.trade_count = 0
        self.errors: list[dict[str, Any]] = []

    def requests(self) -> list[bytes]:
        out = [
            {
                "event": "subscribe",
                "reqid": 1,
                "pair": self.pairs,
                "subscription": {"name": "book", "depth": self.depth},
            }
        ]
        if self.trades:
            out.append({"event": "subscribe", "reqid": 2, "pair": self.pairs, "subscription": {"name": "trade"}})
        return [json.dumps(m).encode() for m in out]

    def feed(self, raw: bytes | str) -> None:
        msg = json.loads(raw)
        if isinstance(msg, dict):
            if msg.get("event") == "subscriptionStatus":
                if msg.get("status") == "subscribed":
                    self.channels[msg["channelID"]] = (msg["channelName"], msg["pair"])
                elif msg.get("status") == "error":
                    self.errors.append(msg)
            elif msg.get("event") == "error":
                self.errors.append(msg)
            return
        cid, name = msg[0], msg[-2]
        if self.channels.get(cid) != (name, msg[-1]):
            self.unknown_channel += 1
            return
        if name.startswith("book-"):
            self._book(cid, msg[1:-2])
        elif name == "trade":
            self.trade_count += len(msg[1])

    def _book(self, cid: int, parts: list[dict[str, Any]]) -> None:
        self.book_frames += 1
        if "as" in parts[0] or "bs" in parts[0]:
            self.books[cid] = (
                {lv[0]: lv[1] for lv in parts[0].get("as", [])},
                {lv[0]: lv[1] for lv in parts[0].get("bs", [])},
            )
            self.snapshots += 1
            return  # a v1 snapshot carries no checksum
        book = self.books.get(cid)
        if book is None:
            self.updates_before_snapshot += 1
            return
        asks, bids = book
        crc = None
        for part in parts:  # both sides of one frame are applied before the check
            for key, side in (("a", asks), ("b", bids)):
                for lv in part.get(key, []):
                    if is_zero(lv[1]):
                        side.pop(lv[0], None)
                    else:
                        side[lv[0]] = lv[1]
            if "c" in part:
                crc = int(part["c"])
        truncate(asks, bids, self.depth)
        if crc is None:
            return
        got = book_crc(asks, bids)
        if got == crc:
            self.checksums_ok += 1
        else:
            self.checksum_bad.append((self.channels[cid][1], crc, got))

    @property
    def ok(self) -> bool:
        return not (self.checksum_bad or self.unknown_channel or self.updates_before_snapshot)

    def report(self) -> dict[str, Any]:
        return {
            "book_frames": self.book_frames,
            "checksums_ok": self.checksums_ok,
            "checksum_bad": len(self.checksum_bad),
            "snapshots": self.snapshots,
            "trades": self.trade_count,
            "unknown_channel": self.unknown_channel,
            "errors": len(self.errors),
        }
