"""Micro-benchmark of the Sans-I/O core: cost per frame through parse, book, checksum and merge.

Measured next to bare `orjson.loads` of the same frames in the same run, so the ratios hold on a
noisy machine. The last line printed is one JSON object with every figure (microseconds per
frame), for scripts comparing runs. Runs in well under a minute.

    python bench/core_bench.py [--frames N] [--repeat R]
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from relay.core.outputs import MergeSettings
from relay.protocols.spot_v2.merge import V2Merge
from tests.core.streams import book_stream, trade_frames


def per_frame_us(fn, frames: list[bytes], repeat: int) -> float:
    """Best of `repeat` runs of fn over all frames, in µs per frame (fn builds fresh state)."""
    best = float("inf")
    for _ in range(repeat):
        run = fn()
        t0 = time.perf_counter_ns()
        for raw in frames:
            run(raw)
        best = min(best, (time.perf_counter_ns() - t0) / len(frames) / 1000)
    return best


def merge_leader(depth: int, snapshot: bytes | None, history: int = 512):
    def make():
        m = V2Merge(MergeSettings(book_depth=depth, history=history))
        up = m.add_upstream("a")
        m.line_status(up, "online", 0.0)
        if snapshot is not None:
            m.feed(up, snapshot, 0.0)
        m.take()
        feed, take = m.feed, m.take

        def run(raw: bytes) -> None:
            feed(up, raw, 1.0)
            take()

        return run

    return make


def merge_duplicate(depth: int, snapshot: bytes, updates: list[bytes]):
    def make():
        m = V2Merge(MergeSettings(book_depth=depth, history=len(updates) + 1))
        a, b = m.add_upstream("a"), m.add_upstream("b")
        m.line_status(a, "online", 0.0)
        m.line_status(b, "online", 0.0)
        m.feed(a, snapshot, 0.0)
        m.feed(b, snapshot, 0.0)
        for raw in updates:
            m.feed(a, raw, 1.0)
        m.take()
        feed = m.feed

        def run(raw: bytes) -> None:
            feed(b, raw, 2.0)

        return run

    return make


def bare_loads():
    loads = orjson.loads
    return lambda: loads


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    n, r = args.frames, args.repeat

    s10 = book_stream(n, depth=10, seed=1)
    s100 = book_stream(n, depth=100, seed=2, deep=150)
    trades = [raw for _, raw in trade_frames(n, seed=3) if raw.count(b"trade_id") == 1][: n // 2]

    gc.collect()
    res = {
        "orjson_loads_book10_us": per_frame_us(bare_loads(), s10.updates, r),
        "book10_us": per_frame_us(merge_leader(10, s10.snapshot), s10.updates, r),
        "orjson_loads_book100_us": per_frame_us(bare_loads(), s100.updates, r),
        "book100_us": per_frame_us(merge_leader(100, s100.snapshot), s100.updates, r),
        "orjson_loads_trade_us": per_frame_us(bare_loads(), trades, r),
        "trade_us": per_frame_us(merge_leader(10, None), trades, r),
        "duplicate_us": per_frame_us(merge_duplicate(10, s10.snapshot, s10.updates), s10.updates, r),
    }
    res["ratio_book10"] = res["book10_us"] / res["orjson_loads_book10_us"]
    res["ratio_book100"] = res["book100_us"] / res["orjson_loads_book100_us"]
    res["ratio_trade"] = res["trade_us"] / res["orjson_loads_trade_us"]
    res["ratio_duplicate"] = res["duplicate_us"] / res["orjson_loads_book10_us"]
    res["frames"] = n
    res["python"] = platform.python_version()

    print("| frame | core µs/frame | bare orjson.loads µs | ratio |")
    print("|---|---|---|---|")
    for name, core, base in (
        ("book update, depth 10", "book10_us", "orjson_loads_book10_us"),
        ("book update, depth 100", "book100_us", "orjson_loads_book100_us"),
        ("trade", "trade_us", "orjson_loads_trade_us"),
        ("duplicate (2nd copy of a published book frame)", "duplicate_us", "orjson_loads_book10_us"),
    ):
        print(f"| {name} | {res[core]:.2f} | {res[base]:.2f} | {res[core] / res[base]:.1f}x |")
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in res.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
