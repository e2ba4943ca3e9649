"""Joining many deep books at once: snapshots are paced through the client's buffer budget (not
queued all at once, which would close the client as "too slow"), and shared between clients."""

from __future__ import annotations

from relay.core.book import Book
from relay.protocols.spot_v2.wire import V2Parser, encode_book
from tests.server.conftest import channels

SMALL = {"client_buffer_bytes": 64 * 1024}
SYMBOLS = [f"S{i:02d}/USD" for i in range(40)]


def deep_frame(symbol: str, snapshot: bool, ts: str, bids, asks) -> bytes:
    """A book frame with the checksum the book it describes really has."""
    draft = encode_book(symbol, snapshot, bids, asks, 0, ts)
    ev = V2Parser().parse(draft)
    book = Book(symbol, 100)
    crc = book.load_snapshot(ev.bids, ev.asks, ts)
    return encode_book(symbol, snapshot, bids, asks, crc, ts)


def deep_snapshot(symbol: str, ts: str = "2026-11-21T00:00:00.000000Z") -> bytes:
    bids = [(b"%d.%d" % (50_000 - i, i % 10), b"%d.%08d" % (i % 7, 12345 + i)) for i in range(100)]
    asks = [(b"%d.%d" % (50_001 + i, i % 10), b"%d.%08d" % (i % 5, 54321 + i)) for i in range(100)]
    return deep_frame(symbol, True, ts, bids, asks)


def bid_update(relay, symbol: str, ts: str) -> bytes:
    """One changed bid quantity, with the checksum the merge's book will have after it."""
    pub = relay.merge.books[symbol].pub.copy()
    ev = V2Parser().parse(encode_book(symbol, False, [(b"49999.1", b"9.00000001")], [], 0, ts))
    crc = pub.apply(ev.bids, ev.asks, ts, None)
    return encode_book(symbol, False, [(b"49999.1", b"9.00000001")], [], crc, ts)


async def test_joining_forty_deep_books_paced_within_the_budget(make_relay, clients):
    relay = await make_relay(SMALL, chans=channels(book={"symbols": SYMBOLS, "depth": 100}))
    for s in SYMBOLS:
        relay.feed(deep_snapshot(s))
    snap_bytes = sum(len(relay.merge.book_snapshot(s, 100)) for s in SYMBOLS)
    assert snap_bytes > 2 * SMALL["client_buffer_bytes"]  # more than the slow-close limit at once
    c = await clients(relay.url)
    c.depth = 100
    await c.recv()  # status
    await c.send({"method": "subscribe", "params": {"channel": "book", "symbol": SYMBOLS, "depth": 100}})
    peak = 0
    seen: set[str] = set()
    for _ in range(400):
        msg = await c.recv(timeout=10)
        peak = max(peak, relay.server.stats()["max_client_buffered_bytes"])
        if msg.get("type") == "snapshot":
            seen.add(msg["data"][0]["symbol"])
        if len(seen) == len(SYMBOLS):
            break
    assert seen == set(SYMBOLS)
    assert relay.server.stats()["slow_closes"] == 0
    assert peak <= SMALL["client_buffer_bytes"] + 8 * 1024  # paced: never far over the budget
    # live updates flow for every book and keep the client's books valid
    for s in SYMBOLS:
        relay.feed(bid_update(relay, s, "2026-11-21T00:00:01.000000Z"))
    await c.barrier(timeout=10)
    assert c.checksum_bad == 0
    assert c.checksums_ok == 2 * len(SYMBOLS)
    assert all(c.books[s].checksum == relay.merge.books[s].pub.checksum for s in SYMBOLS)


async def test_late_joiners_share_one_snapshot_encoding(make_relay, clients):
    relay = await make_relay(chans=channels(book={"symbols": SYMBOLS[:3], "depth": 100}))
    for s in SYMBOLS[:3]:
        relay.feed(deep_snapshot(s))
    first = relay.merge.book_snapshot(SYMBOLS[0], 100)
    assert relay.merge.book_snapshot(SYMBOLS[0], 100) is first  # unchanged book: same bytes
    joined = []
    for _ in range(3):
        c = await clients(relay.url)
        c.depth = 100
        await c.recv()
        await c.send({"method": "subscribe", "params": {"channel": "book", "symbol": SYMBOLS[:3], "depth": 100}})
        await c.until(lambda m: m.get("type") == "snapshot" and m["data"][0]["symbol"] == SYMBOLS[2])
        joined.append(c)
    assert len(relay.server.shared_frames) == 3  # one frame per book, not per client
    relay.feed(bid_update(relay, SYMBOLS[0], "2026-11-21T00:00:01.000000Z"))
    after = relay.merge.book_snapshot(SYMBOLS[0], 100)
    assert after is not first and b"9.00000001" in after  # a changed book is encoded afresh
    late = await clients(relay.url)
    late.depth = 100
    await late.recv()
    await late.send({"method": "subscribe", "params": {"channel": "book", "symbol": [SYMBOLS[0]], "depth": 100}})
    await late.until(lambda m: m.get("type") == "snapshot")
    for c in (*joined, late):
        await c.barrier()
        assert c.checksum_bad == 0
        assert c.books[SYMBOLS[0]].checksum == relay.merge.books[SYMBOLS[0]].pub.checksum
