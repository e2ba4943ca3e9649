"""Merge scenarios a user would notice: failover, corruption, divergence, gaps, staleness."""

from __future__ import annotations

import orjson

from relay.core.outputs import ResyncRequest
from relay.protocols.spot_v2.wire import encode_elements
from tests.core.harness import VerifyingClient, new_merge
from tests.core.streams import book_stream, trade_frames
from tests.kit.paths import v2_wire_frames


def corrupt_checksum(frame: bytes) -> bytes:
    doc = orjson.loads(frame)
    doc["data"][0]["checksum"] = (doc["data"][0]["checksum"] + 1) % 2**32
    return orjson.dumps(doc)


def test_two_identical_lines_publish_each_frame_once_with_bytes_unchanged() -> None:
    frames = v2_wire_frames()
    m, (a, b) = new_merge()
    client = VerifyingClient()
    published = []
    for i, raw in enumerate(frames):
        for up in (a, b) if i % 3 else (b, a):
            m.feed(up, raw, i * 0.01)
            pubs = m.take()
            client.receive(pubs)
            published += [p.frame for p in pubs if p.channel == "book"]
    assert published == frames  # the winner's bytes, each frame exactly once
    assert client.mismatches == 0 and client.book_frames == 510
    assert m.upstream_stats[a].duplicates + m.upstream_stats[b].duplicates == 509


def test_leader_dies_follower_takes_over_without_a_gap() -> None:
    frames = v2_wire_frames()
    m, (a, b) = new_merge()
    client = VerifyingClient()
    for i, raw in enumerate(frames[:200]):
        m.feed(a, raw, i * 0.01)
        client.receive(m.take())
    for i, raw in enumerate(frames[:150]):  # b lags 50 frames behind
        m.feed(b, raw, 2 + i * 0.01)
    m.upstream_down(a, 3.0)
    client.receive(m.take())
    for i, raw in enumerate(frames[150:]):
        m.feed(b, raw, 3 + i * 0.01)
        client.receive(m.take())
    assert client.mismatches == 0
    assert client.book_frames == 510  # 1 snapshot + 509 updates: nothing lost, nothing twice
    assert client.book.checksum == orjson.loads(frames[-1])["data"][0]["checksum"]


def test_corrupted_checksum_on_one_line_is_contained_to_that_line() -> None:
    frames = v2_wire_frames()
    m, (a, b) = new_merge()
    client = VerifyingClient()
    for i, raw in enumerate(frames):
        m.feed(a, corrupt_checksum(raw) if i == 100 else raw, i * 0.01)
        client.receive(m.take())
        m.feed(b, raw, i * 0.01 + 0.001)
        client.receive(m.take())
    reqs = m.take_requests()
    assert reqs == [ResyncRequest(a, "book", "BTC/USD", "checksum")]
    assert m.upstream_stats[a].checksum_mismatches == 1
    assert client.mismatches == 0 and client.book_frames == 510
    assert m.symbol_state("BTC/USD")["upstreams"] == {"line0": "resyncing", "line1": "valid"}
    assert m.symbol_state("BTC/USD")["book"] == "ok"


def test_resync_snapshot_rejoins_the_line() -> None:
    frames = v2_wire_frames()
    m, (a, b) = new_merge()
    client = VerifyingClient()
    for i, raw in enumerate(frames[:50]):
        m.feed(a, corrupt_checksum(raw) if i == 10 else raw, i)
        m.feed(b, raw, i + 0.5)
        client.receive(m.take())
    m.symbol_resubscribing(a, "book", "BTC/USD", 60)
    # Kraken answers a resubscribe with a fresh snapshot of the current book.
    book = client.book
    from relay.protocols.spot_v2.wire import encode_book

    snap = encode_book("BTC/USD", True, book.bids.best(), book.asks.best(), book.checksum, book.timestamp)
    m.feed(a, snap, 61)
    assert m.take() == []  # equal to what clients hold: nothing to publish
    assert m.symbol_state("BTC/USD")["upstreams"]["line0"] == "valid"
    for i, raw in enumerate(frames[50:]):
        m.feed(a, raw, 70 + i)
        client.receive(m.take())
    assert client.mismatches == 0 and client.book_frames == 510


def test_differently_coalesced_line_overtakes_with_a_synthesized_diff() -> None:
    """Line b sees the same market but merges every 3 updates into one frame (as a slower
    Kraken connection can); when it is ahead, the relay publishes a diff with a valid checksum."""
    s = book_stream(60, depth=10, seed=5)
    m, (a, b) = new_merge()
    client = VerifyingClient()
    m.feed(a, s.snapshot, 0)
    m.feed(b, s.snapshot, 0)
    client.receive(m.take())
    from relay.protocols.spot_v2.wire import encode_book

    t = 1.0
    for i in range(0, 60, 3):
        for raw in s.updates[i : i + 2]:  # a delivers the first two of each triple
            m.feed(a, raw, t)
            client.receive(m.take())
            t += 0.01
        prev, cur = s.books[i], s.books[i + 3]
        bids, asks = prev.diff_to(cur)
        merged = encode_book("BTC/USD", False, bids, asks, cur.checksum, cur.timestamp)
        m.feed(b, merged, t)  # b is first with the third update's state
        client.receive(m.take())
        m.feed(a, s.updates[i + 2], t + 0.005)  # a's copy of the third update is now late
        client.receive(m.take())
        t += 0.01
    assert client.mismatches == 0
    assert client.book.same_levels(s.books[60])
    assert m.upstream_stats[b].wins == 20
    assert client.timestamps == sorted(client.timestamps)  # never goes backwards


def test_trades_deduplicated_and_ordered_across_lines() -> None:
    tf = trade_frames(300, seed=2)
    m, (a, b) = new_merge()
    client = VerifyingClient()
    for i, (_, raw) in enumerate(tf):
        m.feed(a, raw, i * 0.01)
        client.receive(m.take())
    for i, (_, raw) in enumerate(tf):
        m.feed(b, raw, 10 + i * 0.01)
        client.receive(m.take())
    assert client.trade_ids == list(range(1000, 1300))


def test_trade_gap_held_then_filled_by_the_other_line() -> None:
    tf = trade_frames(30, seed=1)
    m, (a, b) = new_merge(trade_gap_wait=0.5)
    client = VerifyingClient()
    for i, (_, raw) in enumerate(tf):
        if i != 5:  # a loses one frame
            m.feed(a, raw, i * 0.001)
            client.receive(m.take())
    assert client.trade_ids == list(range(1000, tf[5][0][0]))  # held back at the hole
    m.feed(b, tf[5][1], 0.05)  # b fills it within the wait
    client.receive(m.take())
    assert client.trade_ids == list(range(1000, 1030))
    assert m.counters.gaps_reported == 0


def test_trade_gap_reported_with_its_range_when_nobody_fills_it() -> None:
    tf = trade_frames(30, seed=1)
    m, (a, b) = new_merge(trade_gap_wait=0.5)
    client = VerifyingClient()
    for i, (_, raw) in enumerate(tf):
        if i != 5:
            m.feed(a, raw, 1.0)
            client.receive(m.take())
    m.tick(1.2)
    client.receive(m.take())
    assert m.counters.gaps_reported == 0
    m.tick(1.6)
    client.receive(m.take())
    missing = tf[5][0]
    assert m.gaps == [("BTC/USD", missing[0], missing[-1])]
    assert client.trade_ids == [t for t in range(1000, 1030) if t not in missing]
    m.feed(b, tf[5][1], 2.0)  # the hole's trades finally arrive: published late, not lost
    late = [p for p in m.take() if p.channel == "trade"]
    client.receive(late)
    assert len(late) == 1 and sorted(client.trade_ids) == list(range(1000, 1030))
    assert m.trades["BTC/USD"].late == len(missing)
    m.feed(a, tf[5][1], 2.1)  # another copy of them: exactly once
    assert [p for p in m.take() if p.channel == "trade"] == []


def test_silent_line_is_flagged_stale_for_that_symbol_only() -> None:
    frames = v2_wire_frames()
    m, (a, b) = new_merge(stale_after=2.0)
    for i, raw in enumerate(frames[:100]):
        m.feed(a, raw, i * 0.1)
        if i < 30:  # b's BTC/USD book goes silent after 30 frames
            m.feed(b, raw, i * 0.1 + 0.01)
        m.tick(i * 0.1)
    reqs = m.take_requests()
    assert reqs == [ResyncRequest(b, "book", "BTC/USD", "stale")]
    assert m.symbol_state("BTC/USD")["book"] == "ok"


def test_quiet_market_is_not_staleness() -> None:
    frames = v2_wire_frames()
    m, (a, b) = new_merge(stale_after=1.0)
    for i, raw in enumerate(frames[:20]):
        m.feed(a, raw, i * 0.01)
        m.feed(b, raw, i * 0.01)
    for t in range(1, 60):
        m.tick(float(t))
    assert m.take_requests() == []


def test_all_lines_lost_then_back_gives_clients_a_fresh_snapshot_first() -> None:
    s = book_stream(40, depth=10, seed=9)
    m, (a, b) = new_merge()
    client = VerifyingClient()
    m.feed(a, s.snapshot, 0)
    for i, raw in enumerate(s.updates[:10]):
        m.feed(a, raw, 0.1 * i)
    client.receive(m.take())
    m.upstream_down(a, 2)
    m.upstream_down(b, 2)
    assert m.symbol_state("BTC/USD")["book"] == "down"
    m.take()
    from relay.protocols.spot_v2.wire import encode_book

    cur = s.books[30]
    m.feed(b, encode_book("BTC/USD", True, cur.bids.best(), cur.asks.best(), cur.checksum, cur.timestamp), 5)
    pubs = [p for p in m.take() if p.channel == "book"]
    assert pubs and pubs[0].snapshot
    client.receive(pubs)
    for raw in s.updates[30:]:
        m.feed(b, raw, 6)
        client.receive(m.take())
    assert client.mismatches == 0 and client.book.same_levels(s.books[40])


def test_system_status_is_the_best_among_lines() -> None:
    m, (a, b) = new_merge()
    assert m.system_status() == "online"
    m.line_status(a, "maintenance", 1)
    assert m.system_status() == "online"
    m.line_status(b, "maintenance", 1)
    assert m.system_status() == "maintenance"
    status = [p for p in m.take() if p.channel == "status"]
    assert orjson.loads(status[-1].frame)["data"][0]["system"] == "maintenance"
    m.line_status(a, "online", 2)
    assert m.system_status() == "online"


def test_ticker_newest_wins() -> None:
    m, (a, b) = new_merge()

    def tick(ts: str, last: str) -> bytes:
        return encode_elements(
            "ticker", False, [b'{"symbol":"BTC/USD","last":%s,"timestamp":"%s"}' % (last.encode(), ts.encode())]
        )

    m.feed(a, tick("2026-01-01T00:00:01.000000Z", "1.0"), 0)
    m.feed(b, tick("2026-01-01T00:00:01.000000Z", "1.0"), 0)
    m.feed(b, tick("2026-01-01T00:00:02.000000Z", "2.0"), 0)
    m.feed(a, tick("2026-01-01T00:00:02.000000Z", "2.0"), 0)
    m.feed(a, tick("2026-01-01T00:00:01.500000Z", "1.5"), 0)  # older: dropped
    pubs = [p for p in m.take() if p.channel == "ticker"]
    assert [p.key for p in pubs] == [1, 0, 1, 0]  # bbo and trades streams, each record once
    assert pubs[0].frame is pubs[1].frame  # the same bytes on both streams
    assert b'"last":2.0' in (m.ticker_snapshot("BTC/USD") or b"")


def test_ticker_trades_stream_skips_quote_only_records() -> None:
    """Upstream `bbo` feeds both streams: records without a trade reach only bbo subscribers."""
    m, (a,) = new_merge(1)

    def tick(ts: str, bid: str, last: str, volume: str) -> bytes:
        el = b'{"symbol":"BTC/USD","bid":%s,"last":%s,"volume":%s,"timestamp":"%s"}' % (
            bid.encode(),
            last.encode(),
            volume.encode(),
            ts.encode(),
        )
        return encode_elements("ticker", False, [el])

    m.feed(a, tick("2026-01-01T00:00:01.000000Z", "1.0", "1.1", "5"), 0)
    m.feed(a, tick("2026-01-01T00:00:02.000000Z", "1.05", "1.1", "5"), 0)  # quote moved, no trade
    m.feed(a, tick("2026-01-01T00:00:03.000000Z", "1.05", "1.2", "6"), 0)  # a trade
    keys = [p.key for p in m.take() if p.channel == "ticker"]
    assert keys == [1, 0, 1, 1, 0]
    assert b'"last":1.2' in (m.ticker_snapshot("BTC/USD", 0) or b"")
    assert b'"last":1.2' in (m.ticker_snapshot("BTC/USD", 1) or b"")


def test_depth_views_are_valid_kraken_streams() -> None:
    s = book_stream(400, depth=100, seed=11, deep=150)
    m, (a,) = new_merge(1, book_depth=100)
    clients = {d: VerifyingClient(depth=d) for d in (10, 25, 100)}
    for d in (10, 25):
        m.want_book_depth("BTC/USD", d)
    m.feed(a, s.snapshot, 0)
    for c in clients.values():
        snap = m.book_snapshot("BTC/USD", c.depth)
        c.on_book(snap)
    m.take()
    for i, raw in enumerate(s.updates):
        m.feed(a, raw, i * 0.001)
        pubs = m.take()
        for c in clients.values():
            c.receive(pubs)
    for d, c in clients.items():
        assert c.mismatches == 0, d
        full = s.books[-1]
        assert [lv for lv in c.book.bids] == full.bids.best(d)
        assert [lv for lv in c.book.asks] == full.asks.best(d)
    assert clients[10].book_frames < clients[100].book_frames  # shallow views skip deep changes


def test_an_older_snapshot_never_moves_clients_backwards_after_the_only_valid_line_fails() -> None:
    """Found by the property test: the leader fails its checksum while the other line's first
    (older) snapshot is still in flight; that snapshot must wait until it overtakes."""
    s = book_stream(20, depth=10, seed=4)
    m, (a, b) = new_merge()
    client = VerifyingClient()
    m.feed(a, s.snapshot, 0)
    for raw in s.updates[:5]:
        m.feed(a, raw, 0.1)
    m.feed(a, s.updates[6], 0.2)  # a lost update 5: checksum fails, a is invalid, no line is valid
    client.receive(m.take())
    m.feed(b, s.snapshot, 0.3)  # b's snapshot is older than what clients hold
    for raw in s.updates[:5]:
        m.feed(b, raw, 0.3)
        client.receive(m.take())
    assert client.timestamps == sorted(client.timestamps) and client.book.same_levels(s.books[5])
    for raw in s.updates[5:]:
        m.feed(b, raw, 0.4)
        client.receive(m.take())
    assert client.timestamps == sorted(client.timestamps)
    assert client.mismatches == 0 and client.book.same_levels(s.books[20])


def test_ohlc_newest_candle_wins_and_snapshots_are_reframed_as_updates() -> None:
    m, (a, b) = new_merge()

    def candle(begin: str, trades: int, snapshot: bool = False) -> bytes:
        el = b'{"symbol":"BTC/USD","open":1.0,"close":2.0,"trades":%d,"interval_begin":"%s","interval":1}' % (
            trades,
            begin.encode(),
        )
        return encode_elements("ohlc", snapshot, [el], b',"timestamp":"2026-01-01T00:01:00.000000Z"')

    m.feed(a, candle("2026-01-01T00:00:00.000000Z", 3, snapshot=True), 0)
    m.feed(b, candle("2026-01-01T00:00:00.000000Z", 3, snapshot=True), 0)  # same candle: dropped
    m.feed(b, candle("2026-01-01T00:00:00.000000Z", 4), 0)
    m.feed(a, candle("2026-01-01T00:00:00.000000Z", 4), 0)  # byte-identical copy: dropped
    m.feed(a, candle("2026-01-01T00:00:00.000000Z", 2), 0)  # older restatement: dropped
    m.feed(a, candle("2026-01-01T00:01:00.000000Z", 1), 0)  # next interval
    pubs = [p for p in m.take() if p.channel == "ohlc"]
    assert [orjson.loads(p.frame)["data"][0]["trades"] for p in pubs] == [3, 4, 1]
    assert all(orjson.loads(p.frame)["type"] == "update" and p.key == 1 for p in pubs)
    assert orjson.loads(pubs[0].frame)["timestamp"] == "2026-01-01T00:01:00.000000Z"
    assert b'"trades":1' in (m.ohlc_snapshot("BTC/USD", 1) or b"")


def test_instrument_snapshot_is_served_byte_exact_until_it_changes() -> None:
    from tests.kit.paths import INSTRUMENT_SNAPSHOT, need_fixture

    need_fixture(INSTRUMENT_SNAPSHOT, "instrument fixture")
    raw = orjson.dumps(orjson.loads(INSTRUMENT_SNAPSHOT.read_bytes()))
    m, (a, b) = new_merge()
    m.feed(a, raw, 0)
    m.feed(b, raw, 0)
    assert m.instrument_snapshot() == raw
    assert [p for p in m.take() if p.channel == "instrument"] == []
    doc = orjson.loads(raw)
    pair = dict(doc["data"]["pairs"][0], status="maintenance")
    m.feed(a, orjson.dumps({"channel": "instrument", "type": "update", "data": {"assets": [], "pairs": [pair]}}), 1)
    pubs = [p for p in m.take() if p.channel == "instrument"]
    assert len(pubs) == 1 and orjson.loads(pubs[0].frame)["data"]["pairs"][0]["status"] == "maintenance"
    assert b'"maintenance"' in (m.instrument_snapshot() or b"")


def test_synthesized_diffs_list_deletes_before_sets() -> None:
    """For clients that truncate after every level (python-kraken-sdk): a new level that fills
    the room left by a delete must come after that delete."""
    from relay.core.book import Book
    from tests.core.streams import level

    full = [level(100 + i, 1.0) for i in range(10)]
    before, after = Book("BTC/USD", 10), Book("BTC/USD", 10)
    before.load_snapshot([], full, "t0")
    # 108.0 leaves, 105.5 arrives: the insert is priced better than the delete.
    after.load_snapshot([], [*full[:8], full[9], level(105.5, 2.0)], "t1")
    _, asks = before.diff_to(after)
    assert asks == [(b"108.0", b"0.00000000"), (b"105.5", b"2.00000000")]
    # Applied one level at a time with truncation after each (the sdk's way), it still lands right.
    client = before.copy()
    for p, q in asks:
        client.apply_text_levels([], [(p, q)], "t1", None)
    assert client.same_levels(after)


def _flip_frames() -> list[bytes]:
    """Snapshot, then a level inserted, deleted and inserted again with one timestamp: the third
    frame is byte-identical to the first update, yet it is a new event (Kraken can send this when
    an order is placed, cancelled and placed again within one matching timestamp)."""
    from relay.core.book import Book
    from relay.protocols.spot_v2.wire import V2Parser, encode_book

    ts = "2026-11-21T00:00:00.000001Z"
    bids = [(b"%d.0" % (100 - i), b"1.00000000") for i in range(10)]
    asks = [(b"%d.0" % (101 + i), b"1.00000000") for i in range(10)]
    parser, book = V2Parser(), Book("BTC/USD", 10)
    out = []
    for snapshot, b, a in (
        (True, bids, asks),
        (False, [(b"100.5", b"2.00000000")], []),
        (False, [(b"100.5", b"0.00000000")], []),
        (False, [(b"100.5", b"2.00000000")], []),
    ):
        ev = parser.parse(encode_book("BTC/USD", snapshot, b, a, 0, ts))
        crc = (book.load_snapshot if snapshot else lambda x, y, t: book.apply(x, y, t, None))(ev.bids, ev.asks, ts)
        out.append(encode_book("BTC/USD", snapshot, b, a, crc, ts))
    assert out[3] == out[1]
    return out


def test_a_repeated_frame_from_the_same_line_is_a_new_event_not_a_copy() -> None:
    frames = _flip_frames()
    for order in (("a",), ("a", "b"), ("b", "a")):  # one line; two lines, either one leading
        m, (a, b) = new_merge()
        line = {"a": a, "b": b}
        client = VerifyingClient()
        published = []
        for i, raw in enumerate(frames + frames[1:2]):  # ... and the level deleted again at the end
            if i == 4:
                raw = frames[2]
            for name in order:
                m.feed(line[name], raw, i * 0.01)
                pubs = m.take()
                client.receive(pubs)
                published += [p.frame for p in pubs if p.channel == "book"]
        assert published == frames + [frames[2]], order  # five events, each published once
        assert client.mismatches == 0
        assert not m.take_requests()  # and no line was resynced over it
