"""Issue 15, Sans-I/O: one line's claim never reaches clients when the clock or the other lines
contradict it, and nothing a line sends makes the merge hold state it did not subscribe to."""

from __future__ import annotations

from datetime import datetime

from relay.core.book import Book
from relay.core.events import BookEvent, UnknownEvent
from relay.protocols.spot_v2.wire import V2Parser, encode_book, encode_elements
from tests.core.harness import VerifyingClient, new_merge
from tests.core.streams import book_stream, level, trade_frames, ts

WALL = datetime.fromisoformat("2026-01-01T00:00:10+00:00").timestamp()  # streams' ts(1e6..) ~ 00:00:01


def fake_snapshot(when: str, mid: float = 45000.0, symbol: str = "BTC/USD") -> bytes:
    """A valid snapshot (its checksum matches) at a fake price and timestamp."""
    book = Book(symbol, 10)
    bids = [level(mid - 0.1 * (i + 1), 1.0) for i in range(10)]
    asks = [level(mid + 0.1 * (i + 1), 1.0) for i in range(10)]
    book.load_snapshot(bids, asks, when)
    return encode_book(symbol, True, book.bids.best(), book.asks.best(), book.checksum, when)


def merge_at_wall(n: int = 2, **settings):
    m, ups = new_merge(n, **settings)
    m.wall_clock = lambda: WALL
    m.tick(0.0)
    return m, ups


def test_a_far_future_snapshot_with_a_valid_checksum_never_reaches_clients() -> None:
    s = book_stream(60)
    m, (a, b) = merge_at_wall()
    client = VerifyingClient()
    m.feed(a, s.snapshot, 0.1)
    client.receive(m.take())
    for i, raw in enumerate(s.updates[:30]):
        m.feed(a, raw, 0.2 + i * 0.01)
        m.feed(b, raw, 0.2 + i * 0.01)
        client.receive(m.take())
    m.feed(b, fake_snapshot("9999-12-31T23:59:59.999999Z"), 0.6)
    client.receive(m.take())
    for i, raw in enumerate(s.updates[30:]):
        m.feed(a, raw, 0.7 + i * 0.01)
        client.receive(m.take())
        m.tick(0.7 + i * 0.01)
    assert client.mismatches == 0
    assert client.book.checksum == s.books[-1].checksum  # the real book, still advancing
    assert "9999" not in "".join(client.timestamps)
    assert m.upstream_stats[b].suspect == {"timestamp": 1}
    assert m.upstream_stats[b].resyncs.get("timestamp") == 1


def test_a_single_line_is_still_bounded_by_the_clock() -> None:
    m, (a,) = merge_at_wall(n=1)
    m.feed(a, fake_snapshot("2026-01-01T00:05:00.000000Z"), 0.1)  # 5 min ahead of the clock
    assert [p for p in m.take() if p.channel == "book"] == []
    m.feed(a, fake_snapshot("2026-01-01T00:00:09.000000Z"), 0.2)  # plausible: published
    assert [p for p in m.take() if p.channel == "book"]


def test_a_line_far_ahead_of_the_other_lines_clock_is_not_believed() -> None:
    """Within the clock's tolerance, but 30 s ahead of the other live line's exchange clock."""
    s = book_stream(20)
    m, (a, b) = merge_at_wall()
    m.feed(a, s.snapshot, 0.1)
    for i, raw in enumerate(s.updates[:10]):
        m.feed(a, raw, 0.2 + i * 0.01)
    m.tick(0.5)
    client = VerifyingClient()
    client.receive(m.take())
    newest = client.timestamps[-1]
    ahead = datetime.fromisoformat(newest).timestamp() + 30
    m.feed(b, fake_snapshot(datetime.fromtimestamp(ahead).astimezone().strftime("%Y-%m-%dT%H:%M:%S.%fZ")), 0.6)
    assert [p for p in m.take() if p.channel == "book"] == []
    assert m.upstream_stats[b].suspect.get("timestamp") == 1


def test_a_line_that_keeps_contradicting_the_others_is_quarantined_and_shown() -> None:
    s = book_stream(40)
    m, (a, b) = merge_at_wall(quarantine_after=3, quarantine_for=5.0)
    m.feed(a, s.snapshot, 0.1)
    m.feed(b, s.snapshot, 0.1)
    for k in range(3):
        m.feed(b, fake_snapshot("9999-12-31T23:59:59.999999Z"), 0.2 + k * 0.1)
    assert m.upstream_stats[b].quarantined and m.upstream_stats[b].quarantines == 1
    assert m.symbol_state("BTC/USD")["upstreams"]["line1"] == "quarantined"
    client = VerifyingClient()
    client.receive(m.take())
    for i, raw in enumerate(s.updates):  # its data is ignored meanwhile; line a carries on
        m.feed(a, raw, 1.0 + i * 0.01)
        m.feed(b, raw, 1.0 + i * 0.01)
    assert m.books["BTC/USD"].pub.checksum == s.books[-1].checksum
    m.take_requests()
    m.tick(6.0)  # the quarantine ends: its books and trades are resynced
    assert not m.upstream_stats[b].quarantined
    assert any(r.upstream == b and r.reason == "quarantine" for r in m.take_requests())


def test_the_only_live_line_is_never_quarantined() -> None:
    m, (a, b) = merge_at_wall(quarantine_after=2)
    m.upstream_down(a, 0.1)
    for k in range(5):
        m.feed(b, fake_snapshot("9999-12-31T23:59:59.999999Z"), 0.2 + k * 0.1)
    assert not m.upstream_stats[b].quarantined


def trade_frame(ids: list[int]) -> bytes:
    elems = [
        b'{"symbol":"BTC/USD","side":"buy","price":30000.10,"qty":0.00100000,"ord_type":"market","trade_id":%d,"timestamp":"%s"}'
        % (tid, ts(tid).encode())
        for tid in ids
    ]
    return encode_elements("trade", False, elems)


def test_a_trade_id_jump_during_a_healthy_line_hiccup_is_held_then_dropped() -> None:
    """Line b jumps by 9 999 while line a is silent for 1.5 s; a resumes below the jump: b's
    claim is dropped, and every real trade reaches the client exactly once (no blackout)."""
    tf = trade_frames(60, start=1000)
    m, (a, b) = new_merge(trade_gap_wait=0.5)
    client = VerifyingClient()
    t = 0.0
    for _, raw in tf[:20]:
        t += 0.01
        m.feed(a, raw, t)
        m.feed(b, raw, t)
    client.receive(m.take())
    last = client.trade_ids[-1]
    m.feed(b, trade_frame([last + 9999]), t + 0.01)
    for k in range(15):  # a hiccups for 1.5 s
        m.tick(t + 0.1 * (k + 1))
    client.receive(m.take())
    assert last + 9999 not in client.trade_ids
    t += 1.6
    for _, raw in tf[20:]:
        t += 0.01
        m.feed(a, raw, t)
        m.tick(t)
    client.receive(m.take())
    assert client.trade_ids == list(range(1000, 1000 + sum(len(ids) for ids, _ in tf)))
    arb = m.trades["BTC/USD"]
    assert arb.suspect_dropped == 1 and m.upstream_stats[b].suspect == {"trade_id": 1}
    assert any(r.upstream == b and r.channel == "trade" for r in m.take_requests())


def test_a_jump_two_lines_agree_on_is_real_and_published() -> None:
    m, (a, b) = new_merge(trade_gap_wait=0.2)
    client = VerifyingClient()
    m.feed(a, trade_frame([1000, 1001]), 0.1)
    m.feed(a, trade_frame([20000, 20001]), 0.2)
    m.feed(b, trade_frame([20000, 20001]), 0.25)  # the other line confirms it
    m.tick(0.3)
    m.tick(0.5)
    client.receive(m.take())
    assert client.trade_ids == [1000, 1001, 20000, 20001]
    assert m.gaps and m.gaps[-1] == ("BTC/USD", 1002, 19999)


def test_a_jump_on_the_only_live_line_is_believed_after_the_hold() -> None:
    m, (a,) = new_merge(n=1, trade_gap_wait=0.2)
    client = VerifyingClient()
    m.feed(a, trade_frame([1000]), 0.1)
    m.feed(a, trade_frame([50000]), 0.2)
    m.tick(0.5)
    client.receive(m.take())
    assert client.trade_ids == [1000]  # held
    m.tick(1.3)
    m.tick(1.6)
    client.receive(m.take())
    assert client.trade_ids == [1000, 50000]


def test_many_large_gaps_cost_linear_time_and_bounded_memory() -> None:
    m, (a,) = new_merge(n=1, trade_gap_wait=0.0)
    arb_ids = 1000
    t = 0.0
    for _ in range(200):  # 200 gaps of 150 ids each (within the allowance)
        m.feed(a, trade_frame([arb_ids]), t)
        arb_ids += 150
        t += 0.01
        m.tick(t)
    arb = m.trades["BTC/USD"]
    assert arb.gaps >= 150 and len(arb.missing_ranges) <= 64


def test_state_is_held_only_for_subscribed_streams() -> None:
    s = book_stream(5)
    m, (a, b) = new_merge()
    m.set_subscribed([("book", "BTC/USD", 10), ("trade", "BTC/USD", 0)])
    for i in range(2000):
        sym = f"X{i:05d}/USD"
        m.feed(b, fake_snapshot("2026-01-01T00:00:01.000000Z", symbol=sym), 0.1)
        m.feed(b, trade_frame([i]).replace(b"BTC/USD", sym.encode()), 0.1)
    m.feed(a, s.snapshot, 0.2)
    assert set(m.books) == {"BTC/USD"} and m.trades == {} and m.symbols() == ["BTC/USD"]
    assert m.upstream_stats[b].unsolicited == 4000


def test_bad_data_for_a_subscribed_book_resyncs_that_line_alone() -> None:
    s = book_stream(5)
    m, (a, b) = new_merge()
    m.feed(a, s.snapshot, 0.1)
    m.feed(b, s.snapshot, 0.1)
    m.take_requests()
    bad = s.updates[0].replace(b'"qty":', b'"qty":-', 1)
    m.feed(b, bad, 0.2)
    reqs = m.take_requests()
    assert [(r.upstream, r.channel, r.reason) for r in reqs] == [(b, "book", "invalid")]
    assert m.books["BTC/USD"].line_state(a) == "valid"


BOOK = b'{"channel":"book","type":"update","data":[{"symbol":"BTC/USD","bids":[{"price":%s,"qty":%s}],"asks":[],"checksum":1,"timestamp":"2026-01-01T00:00:01.000000Z"}]}'


def test_the_parser_refuses_numbers_kraken_never_sends() -> None:
    p = V2Parser()
    assert isinstance(p.parse(BOOK % (b"30000.1", b"1.00000000")), BookEvent)
    for price, qty in [(b"1e400", b"1.0"), (b"NaN", b"1.0"), (b"30000.1", b"-1.0"), (b"1" + b"0" * 400, b"1.0")]:
        ev = p.parse(BOOK % (price, qty))
        assert isinstance(ev, UnknownEvent), (price, qty)
    p.precisions.learn([{"symbol": "BTC/USD", "price_precision": 1, "qty_precision": 8}])
    assert isinstance(p.parse(BOOK % (b"30000.1", b"1.00000000")), BookEvent)
    ev = p.parse(BOOK % (b"30000.12", b"1.00000000"))
    assert isinstance(ev, UnknownEvent) and ev.symbol == "BTC/USD"


def test_the_parser_refuses_invalid_utf8_and_non_string_symbols() -> None:
    p = V2Parser()
    good = BOOK % (b"30000.1", b"1.00000000")
    assert isinstance(p.parse(good), BookEvent)
    assert isinstance(p.parse(good.replace(b"BTC/USD", b"BTC/\xffUSD")), UnknownEvent)
    assert isinstance(p.parse(good.replace(b"01.000000Z", b"01.00000\xffZ")), UnknownEvent)
    assert isinstance(p.parse(good.replace(b'"BTC/USD"', b"123")), UnknownEvent)
    trade = trade_frame([5])
    assert isinstance(p.parse(trade.replace(b'"BTC/USD"', b"null")), UnknownEvent)
    assert isinstance(p.parse(trade.replace(b'"BTC/USD"', b"[1]")), UnknownEvent)
    assert isinstance(p.parse(trade.replace(b'"price":30000.10', b'"price":-1')), UnknownEvent)


def test_a_huge_snapshot_is_dropped_before_parsing_and_a_deep_one_loads_sorted_once() -> None:
    levels = b",".join(b'{"price":%d.0,"qty":1.0}' % i for i in range(300_000))
    raw = (
        b'{"channel":"book","type":"snapshot","data":[{"symbol":"BTC/USD","bids":[' + levels + b'],"asks":[],'
        b'"checksum":1,"timestamp":"2026-01-01T00:00:01.000000Z"}]}'
    )
    ev = V2Parser().parse(raw)
    assert isinstance(ev, UnknownEvent) and "too large" in ev.reason
    # 1000 levels in reverse order into a depth-10 book: the same book as applying them in order
    items = [level(30000.0 - i * 0.1, 1.0 + i) for i in range(1000)][::-1]
    bulk, slow = Book("BTC/USD", 10), Book("BTC/USD", 10)
    bulk.load_snapshot(items, items and [level(40000.0, 1.0)], "t")
    slow.apply(items, [level(40000.0, 1.0)], "t", None)
    assert bulk.checksum == slow.checksum and bulk.same_levels(slow)
