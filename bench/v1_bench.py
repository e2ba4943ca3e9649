"""Spot v1 merge and endpoint cost on the real capture (cryptofeed KRAKEN.ws.50.0: 10 pairs,
book-1000, 4321 frames, 4269 updates).

`python bench/v1_bench.py`: microseconds per upstream frame with 1, 2 and 3 lines carrying the
same updates under different upstream channel ids (copies are normalized to id 0 and take the
pre-parse byte-identical fast path), the per-publication cost of stamping the relay's channel id
and websocket framing in the v1 endpoint, and a depth-1000 late-joiner snapshot. Best of 5 runs;
no assertions (numbers for the README).
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from relay.core.outputs import MergeSettings
from relay.core.wsframe import text_frame
from relay.protocols.spot_v1.endpoint import ChannelIds, V1Endpoint
from relay.protocols.spot_v1.merge import V1Merge
from tests.protocols.spot_v1.helpers import cryptofeed_frames

_ID = re.compile(rb"^\[(\d+),")


def copies(frames: list[bytes], lines: int) -> list[list[bytes]]:
    return [[_ID.sub(lambda m, up=up: b"[%d," % (int(m.group(1)) * 7 + up), f) for f in frames] for up in range(lines)]


def per_frame(frames: list[bytes], lines: int, runs: int = 5) -> tuple[float, V1Merge]:
    data = copies(frames, lines)
    best, merge = float("inf"), None
    for _ in range(runs):
        m = V1Merge(MergeSettings(book_depth=1000))
        for i in range(lines):
            m.add_upstream(f"l{i}")
        t = time.perf_counter()
        for i in range(len(frames)):
            for up in range(lines):
                m.feed(up, data[up][i], 0.0)
            m.take()
        dt = time.perf_counter() - t
        if dt < best:
            best, merge = dt, m
    return best / (len(frames) * lines) * 1e6, merge  # type: ignore[return-value]


def stamp_cost(frames: list[bytes], runs: int = 5) -> float:
    ids = ChannelIds()
    books = [(f, f.rsplit(b'"', 2)[-2].decode()) for f in frames if f.startswith(b"[")]
    best = float("inf")
    for _ in range(runs):
        t = time.perf_counter()
        for f, pair in books:
            text_frame(ids.stamp(("book", pair, 1000), f))
        best = min(best, time.perf_counter() - t)
    return best / len(books) * 1e6


def main() -> None:
    frames = cryptofeed_frames()
    for lines in (1, 2, 3):
        us, merge = per_frame(frames, lines)
        print(f"merge, {lines} line(s): {us:.1f} us per upstream frame")
    print(f"endpoint stamp + websocket framing: {stamp_cost(frames):.2f} us per publication")
    ep = V1Endpoint(merge, {"book": list(merge.books)}, 1000)
    t = time.perf_counter()
    n = 0
    for pair in merge.books:
        n += len(ep.source.book_snapshot(pair, 1000) or b"")
    dt = time.perf_counter() - t
    print(
        f"late-joiner depth-1000 snapshots: {dt / len(merge.books) * 1e3:.2f} ms per pair ({n // len(merge.books)} bytes)"
    )


if __name__ == "__main__":
    main()
