"""The benchmark's measuring tools: a client must key every frame exactly once however the byte
stream is split into reads (a bug here once dropped most frames), and the latency/gap maths."""

from __future__ import annotations

import sys

import pytest

from tests.kit.paths import ROOT

sys.path.insert(0, str(ROOT))

from bench.e2e_client import Conn
from bench.harness import deltas, longest_gap, summary_us
from relay.protocols.spot_v2.wire import encode_book, encode_elements


def _stream() -> tuple[bytes, list[bytes], list[bytes]]:
    frames, books, trades = [], [], []
    for i in range(200):
        ts = f"2026-01-01T00:00:{i // 10:02d}.{i:06d}Z"
        frames.append(encode_book("BTC/USD", False, [(b"100.%d" % i, b"1.5")], [], 1000 + i, ts))
        books.append(f'{1000 + i},"timestamp":"{ts}'.encode())
        if i % 3 == 0:
            el = (
                b'{"symbol":"ETH/USD","side":"buy","price":2000.1,"qty":0.5,"ord_type":"market","trade_id":%d,'
                b'"timestamp":"%s"}' % (i, ts.encode())
            )
            frames.append(encode_elements("trade", False, [el]))
            trades.append(b"ETH/USD:%d" % i)
    # websocket framing is irrelevant to the scan: markers never occur in 2-10 byte headers
    return b"".join(b"\x81\x7e" + len(f).to_bytes(2, "big") + f for f in frames), books, trades


@pytest.mark.parametrize("chunk", [1, 5, 11, 64, 333, 4096, 1 << 20])
def test_recording_client_keys_every_frame_once_however_split(chunk: int) -> None:
    data, books, trades = _stream()
    conn = Conn.__new__(Conn)  # no socket: only the byte-scanning state
    conn.record, conn.upgraded, conn.carry, conn.bytes = True, True, b"", 0
    conn.books = conn.trades = 0
    conn.first = conn.last = 0.0
    conn.book_t, conn.trade_t, conn.chunks, conn.kept, conn.truncated = {}, {}, [], 0, False
    for n, i in enumerate(range(0, len(data), chunk)):
        conn.chunks.append((float(n), data[i : i + chunk]))
    conn.scan()
    assert list(conn.book_t) == books
    assert list(conn.trade_t) == trades
    assert conn.books == len(books) and conn.trades == len(trades)
    # a key gets the time of the read in which it became complete
    last_read = (len(data) - 1) // chunk
    assert max(conn.book_t.values()) <= last_read


def test_deltas_gap_and_percentiles() -> None:
    ref = {b"a": 1.0, b"b": 2.0, b"c": 3.0, b"d": 9.0}
    other = {b"a": 1.0005, b"b": 2.001, b"x": 5.0}
    d, missing = deltas(ref, other, 0.0, 5.0)
    assert sorted(round(x, 6) for x in d) == [0.0005, 0.001] and missing == 1  # c missing; d out of window
    assert longest_gap([1.0, 1.5, 3.0, 3.1, 10.0], 0.0, 5.0) == pytest.approx(1.5)
    s = summary_us([i / 1e6 for i in range(1, 1001)])
    assert (s["p50_us"], s["p99_us"], s["max_us"]) == (501, 991, 1000)
