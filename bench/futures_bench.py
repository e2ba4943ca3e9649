"""Futures merge cost on the real capture (cryptofeed KRAKEN_FUTURES.ws.1.0, 7175 frames).

`python bench/futures_bench.py`: microseconds per upstream frame with 1, 2 and 3 lines carrying
the same frames (copies take the pre-parse byte-identical fast path), and the cost of a
full-depth late-joiner `book_snapshot`. Best of 5 runs; no assertions (numbers for the README).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from relay.protocols.futures.merge import FuturesMerge
from tests.protocols.futures.capture import frames


def per_frame(lines: int, runs: int = 5) -> float:
    fr = frames()
    best = float("inf")
    for _ in range(runs):
        m = FuturesMerge()
        for i in range(lines):
            m.add_upstream(f"l{i}")
            m.upstream_up(i, 0.0)
        t = time.perf_counter()
        for f in fr:
            for up in range(lines):
                m.feed(up, f, 0.0)
            m.take()
        best = min(best, time.perf_counter() - t)
    return best / len(fr) * 1e6


def snapshot_cost(n: int = 1000) -> tuple[float, int]:
    m = FuturesMerge()
    m.add_upstream("a")
    for f in frames():
        m.feed(0, f, 0.0)
    pb = max(m.books.values(), key=lambda b: len(b.book[0]) + len(b.book[1]))
    t = time.perf_counter()
    for _ in range(n):
        pb._snap = None
        m.book_snapshot(pb.product, 0)
    return (time.perf_counter() - t) / n * 1e6, len(pb.book[0]) + len(pb.book[1])


def main() -> None:
    for n in (1, 2, 3):
        print(f"{n} line(s): {per_frame(n):.2f} us per frame")
    us, levels = snapshot_cost()
    print(f"book_snapshot ({levels} levels): {us:.0f} us")


if __name__ == "__main__":
    main()
