"""The real Futures capture (cryptofeed KRAKEN_FUTURES.ws.1.0) and a reference book builder."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import orjson

from tests.kit.paths import FIXTURES

CAPTURE = FIXTURES / "cryptofeed" / "sample_data" / "KRAKEN_FUTURES.ws.1.0"
INSTRUMENTS = FIXTURES / "cryptofeed" / "sample_data" / "KRAKEN_FUTURES.0"


@lru_cache(maxsize=1)
def frames() -> tuple[bytes, ...]:
    """Every frame received from Kraken, verbatim (connect and client-sent lines skipped)."""
    out = []
    for line in CAPTURE.read_bytes().splitlines():
        if line.startswith(b"wss://") or not line.strip():
            continue
        _, _, body = line.partition(b": ")
        out.append(body)
    return tuple(out)


def data_frames() -> list[bytes]:
    return [f for f in frames() if f.startswith(b'{"feed"')]


def rebuild(raws: list[bytes]) -> dict[str, dict[str, Any]]:
    """product -> {"seq", "bids": {price: qty}, "asks": {...}} from book_snapshot + book frames."""
    books: dict[str, dict[str, Any]] = {}
    for raw in raws:
        m = orjson.loads(raw)
        feed = m.get("feed")
        if feed == "book_snapshot":
            books[m["product_id"]] = {
                "seq": m["seq"],
                "bids": {lv["price"]: lv["qty"] for lv in m["bids"] if lv["qty"]},
                "asks": {lv["price"]: lv["qty"] for lv in m["asks"] if lv["qty"]},
            }
        elif feed == "book":
            b = books[m["product_id"]]
            side = b["bids"] if m["side"] == "buy" else b["asks"]
            if m["qty"] == 0:
                side.pop(m["price"], None)
            else:
                side[m["price"]] = m["qty"]
            b["seq"] = m["seq"]
    return books


class ClientView:
    """What a futures client rebuilds from the frames it receives; checks seq continuity."""

    def __init__(self) -> None:
        self.books: dict[str, dict[str, Any]] = {}
        self.snapshots: dict[str, int] = {}
        self.deltas = 0
        self.seq_errors: list[tuple[str, int, int]] = []
        self.trade_uids: list[str] = []
        self.frames = 0

    def feed(self, raw: bytes) -> None:
        self.frames += 1
        m = orjson.loads(raw)
        feed = m.get("feed")
        if feed == "book_snapshot":
            p = m["product_id"]
            self.snapshots[p] = self.snapshots.get(p, 0) + 1
            self.books[p] = rebuild([raw])[p]
        elif feed == "book":
            p = m["product_id"]
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
            self.trade_uids.append(m["uid"])
        elif feed == "trade_snapshot":
            self.trade_uids.extend(t["uid"] for t in m["trades"])
