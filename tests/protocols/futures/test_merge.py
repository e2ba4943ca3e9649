"""FuturesMerge: seq arbitration, gap filling, per-product resync, divergent seq spaces, trades."""

from __future__ import annotations

import random

import orjson

from relay.core.events import AckEvent, HeartbeatEvent, StatusEvent
from relay.protocols.futures.merge import FuturesMerge
from relay.protocols.futures.wire import FuturesParser, encode_request
from tests.protocols.futures.capture import ClientView, data_frames, frames, rebuild


def _pair() -> tuple[FuturesMerge, int, int]:
    merge = FuturesMerge()
    a, b = merge.add_upstream("a"), merge.add_upstream("b")
    merge.upstream_up(a, 0.0), merge.upstream_up(b, 0.0)
    return merge, a, b


def _run(merge: FuturesMerge, schedule, view: ClientView) -> None:
    """schedule: iterable of (now, up, raw); publications drained after every frame."""
    for now, up, raw in schedule:
        ev = merge.feed(up, raw, now)
        if isinstance(ev, StatusEvent):
            merge.line_status(up, ev.system, now)
        merge.tick(now)
        for p in merge.take():
            if p.channel in ("book", "trade"):
                view.feed(p.frame)


def _two_lines(drop_a: float, drop_b: float, seed: int):
    """The capture on two lines with independent losses and per-line latency (interleaved)."""
    rnd = random.Random(seed)
    events = []
    last = [0.0, 0.0]  # a line delivers in order (TCP); lines overtake each other
    for i, raw in enumerate(frames()):
        t = i * 0.001
        is_delta = raw.startswith(b'{"feed":"book",')
        lost = None  # at most one line loses a given delta (a loss on both is a resync)
        if is_delta:
            r = rnd.random()
            lost = 0 if r < drop_a else 1 if r < drop_a + drop_b else None
        for up in (0, 1):
            if up == lost:
                continue
            last[up] = max(last[up], t + rnd.uniform(0, 0.004))
            events.append((last[up], up, raw))
    events.sort(key=lambda e: e[0])
    return events


def test_capture_replay_two_lossy_lines_contiguous_and_exact():
    merge = FuturesMerge()
    merge.add_upstream("a"), merge.add_upstream("b")
    view = ClientView()
    _run(merge, _two_lines(0.03, 0.03, seed=7), view)
    ref = rebuild(data_frames())
    assert view.seq_errors == []
    assert view.snapshots == {p: 1 for p in ref}  # no re-base: every gap was filled by the other line
    assert view.deltas == 7014
    assert {p: view.books[p] for p in ref} == ref
    assert merge.counters.gaps_filled > 0
    assert merge.take_requests() == []
    for p in ref:  # late joiner: snapshot at the current seq equals the rebuilt book
        snap = orjson.loads(merge.book_snapshot(p, 0))
        assert snap["seq"] == ref[p]["seq"]
        assert {lv["price"]: lv["qty"] for lv in snap["asks"]} == ref[p]["asks"]
        assert {lv["price"]: lv["qty"] for lv in snap["bids"]} == ref[p]["bids"]


def test_published_bytes_are_the_upstream_bytes():
    merge = FuturesMerge()
    merge.add_upstream("a")
    wire = set(data_frames())
    out = []
    for i, raw in enumerate(frames()):
        merge.feed(0, raw, i * 0.001)
        out += [p.frame for p in merge.take() if p.channel in ("book", "trade", "ticker_lite")]
    assert out and all(f in wire for f in out)
    # trades are unique by uid
    uids = [orjson.loads(f)["uid"] for f in out if f.startswith(b'{"feed":"trade",')]
    assert len(uids) == len(set(uids))


def _delta(product: str, seq: int, price: float, qty: float, side: str = "buy") -> bytes:
    return orjson.dumps(
        {
            "feed": "book",
            "product_id": product,
            "side": side,
            "seq": seq,
            "price": price,
            "qty": qty,
            "timestamp": 1000 + seq,
        }
    )


def _snap(product: str, seq: int, bids, asks) -> bytes:
    return orjson.dumps(
        {
            "feed": "book_snapshot",
            "product_id": product,
            "timestamp": 1,
            "seq": seq,
            "tickSize": None,
            "bids": [{"price": p, "qty": q} for p, q in bids],
            "asks": [{"price": p, "qty": q} for p, q in asks],
        }
    )


def test_gap_on_every_line_resyncs_that_product_alone():
    merge, a, b = _pair()
    for up in (a, b):
        merge.feed(up, _snap("PF_XBTUSD", 10, [(100.0, 1.0)], [(101.0, 1.0)]), 0.0)
        merge.feed(up, _snap("PF_ETHUSD", 50, [(10.0, 1.0)], [(11.0, 1.0)]), 0.0)
    merge.take()
    # seq 11 lost on both lines; 12 arrives on both
    for up in (a, b):
        merge.feed(up, _delta("PF_XBTUSD", 12, 99.5, 2.0), 0.1)
    reqs = merge.take_requests()
    assert sorted((r.upstream, r.symbol, r.reason) for r in reqs) == [(a, "PF_XBTUSD", "gap"), (b, "PF_XBTUSD", "gap")]
    assert merge.symbol_state("PF_XBTUSD")["book"] == "resyncing"
    assert merge.symbol_state("PF_ETHUSD")["book"] == "ok"  # the other product is untouched
    merge.feed(a, _delta("PF_ETHUSD", 51, 10.5, 1.0), 0.2)
    assert [p.frame for p in merge.take() if p.channel == "book"] == [_delta("PF_ETHUSD", 51, 10.5, 1.0)]
    # the resubscription's snapshot re-bases the product: one new book_snapshot
    merge.feed(a, _snap("PF_XBTUSD", 20, [(99.0, 3.0)], [(101.0, 1.0)]), 0.3)
    pubs = [p for p in merge.take() if p.channel == "book"]
    assert len(pubs) == 1 and pubs[0].snapshot and orjson.loads(pubs[0].frame)["seq"] == 20
    assert merge.symbol_state("PF_XBTUSD")["book"] == "ok"


def test_gap_on_one_line_waits_for_the_other():
    merge, a, b = _pair()
    for up in (a, b):
        merge.feed(up, _snap("PF_XBTUSD", 10, [(100.0, 1.0)], [(101.0, 1.0)]), 0.0)
    merge.take()
    merge.feed(a, _delta("PF_XBTUSD", 11, 99.0, 1.0), 0.0)
    merge.feed(a, _delta("PF_XBTUSD", 13, 98.0, 1.0), 0.0)  # a lost 12
    assert [orjson.loads(p.frame)["seq"] for p in merge.take()] == [11]
    merge.feed(b, _delta("PF_XBTUSD", 11, 99.0, 1.0), 0.01)
    merge.feed(b, _delta("PF_XBTUSD", 12, 97.0, 1.0), 0.01)  # b fills it; 13 was waiting
    assert [orjson.loads(p.frame)["seq"] for p in merge.take() if p.channel == "book"] == [12, 13]
    merge.feed(b, _delta("PF_XBTUSD", 13, 98.0, 1.0), 0.02)
    assert [p for p in merge.take() if p.channel == "book"] == []
    assert merge.take_requests() == []
    assert merge.counters.gaps_filled == 1


def test_gap_wait_expires_then_rebase_from_a_line_book():
    merge, a, b = _pair()
    merge.feed(a, _snap("PF_XBTUSD", 10, [(100.0, 1.0)], [(101.0, 1.0)]), 0.0)
    merge.feed(a, _delta("PF_XBTUSD", 11, 99.0, 1.0), 0.0)
    # b joins later: its own snapshot (seq 11) equals the published book -> aligned
    merge.feed(b, _snap("PF_XBTUSD", 11, [(100.0, 1.0), (99.0, 1.0)], [(101.0, 1.0)]), 0.0)
    merge.take()
    merge.feed(a, _delta("PF_XBTUSD", 13, 98.0, 1.0), 0.1)  # 12 missing, b still behind (could fill)
    merge.tick(0.2)
    assert merge.take_requests() == []
    merge.tick(0.7)  # waited trade_gap_wait (0.5 s): nobody filled it -> resync both lines
    assert {r.upstream for r in merge.take_requests()} == {a, b}


def test_divergent_seq_spaces_fail_over_with_one_snapshot_never_a_wrong_book():
    """If two connections number events differently, line b is never mixed into a's stream."""
    merge, a, b = _pair()
    merge.feed(a, _snap("PF_XBTUSD", 10, [(100.0, 1.0)], [(101.0, 1.0)]), 0.0)
    merge.feed(b, _snap("PF_XBTUSD", 900, [(100.0, 1.0)], [(101.0, 1.0)]), 0.0)
    merge.take()
    # the same market changes, numbered differently on each line
    changes = [(99.0, 2.0), (100.0, 0.0), (98.0, 1.5)]
    for i, (price, qty) in enumerate(changes):
        merge.feed(a, _delta("PF_XBTUSD", 11 + i, price, qty), 0.1 + i)
        merge.feed(b, _delta("PF_XBTUSD", 901 + i, price, qty), 0.1 + i)
    pubs = merge.take()
    assert [orjson.loads(p.frame)["seq"] for p in pubs if p.channel == "book"] == [11, 12, 13]
    assert merge.lines and merge.books["PF_XBTUSD"].lines[b].aligned is not True
    merge.upstream_down(a, 5.0)  # a gone: b takes over with a snapshot in its own numbering
    pubs = [p for p in merge.take() if p.channel == "book"]
    assert len(pubs) == 1 and pubs[0].snapshot
    snap = orjson.loads(pubs[0].frame)
    assert snap["seq"] == 903 and snap["bids"] == [{"price": 99.0, "qty": 2.0}, {"price": 98.0, "qty": 1.5}]
    merge.feed(b, _delta("PF_XBTUSD", 904, 97.0, 1.0), 6.0)
    assert [orjson.loads(p.frame)["seq"] for p in merge.take() if p.channel == "book"] == [904]


def test_copy_with_other_content_marks_line_divergent_and_resyncs_it():
    merge, a, b = _pair()
    for up in (a, b):
        merge.feed(up, _snap("PF_XBTUSD", 10, [(100.0, 1.0)], [(101.0, 1.0)]), 0.0)
    merge.feed(a, _delta("PF_XBTUSD", 11, 99.0, 1.0), 0.0)
    merge.feed(b, _delta("PF_XBTUSD", 11, 99.0, 1.0), 0.0)
    merge.feed(a, _delta("PF_XBTUSD", 12, 98.0, 1.0), 0.0)
    merge.feed(b, _delta("PF_XBTUSD", 12, 42.0, 7.0), 0.0)  # same seq, other content
    assert [(r.upstream, r.symbol) for r in merge.take_requests()] == [(b, "PF_XBTUSD")]
    assert merge.counters.divergent == 1


def test_trades_deduplicated_by_uid_and_missed_ones_recovered_from_snapshot():
    merge, a, b = _pair()

    def trade(uid: str, seq: int) -> dict:
        return {
            "feed": "trade",
            "product_id": "PF_XBTUSD",
            "uid": uid,
            "side": "buy",
            "type": "fill",
            "seq": seq,
            "time": 1000 + seq,
            "qty": 1.0,
            "price": 100.5,
        }

    snap = orjson.dumps(
        {"feed": "trade_snapshot", "product_id": "PF_XBTUSD", "trades": [trade("u2", 2), trade("u1", 1)]}
    )
    merge.feed(a, snap, 0.0)
    merge.feed(b, snap, 0.0)
    out = merge.take()
    assert [p.snapshot for p in out if p.channel == "trade"] == [True]
    for up in (a, b):
        merge.feed(up, orjson.dumps(trade("u3", 3)), 0.1)
    assert len([p for p in merge.take() if p.channel == "trade"]) == 1
    # both lines missed u4; a reconnects and its trade_snapshot brings u4 and u5
    snap2 = orjson.dumps(
        {
            "feed": "trade_snapshot",
            "product_id": "PF_XBTUSD",
            "trades": [trade("u5", 5), trade("u4", 4), trade("u3", 3), trade("u2", 2)],
        }
    )
    merge.feed(a, snap2, 0.2)
    got = [orjson.loads(p.frame)["uid"] for p in merge.take() if p.channel == "trade"]
    assert got == ["u4", "u5"]
    last = orjson.loads(merge.trade_snapshot("PF_XBTUSD", 3))
    assert [t["uid"] for t in last["trades"]] == ["u5", "u4", "u3"]


def test_parser_control_frames():
    p = FuturesParser()
    assert isinstance(p.parse(b'{"event":"info","version":1}'), StatusEvent)
    ack = p.parse(b'{"event":"subscribed ","feed":"book","product_ids":["pf_xbtusd"]}')
    assert isinstance(ack, AckEvent) and ack.success and ack.channel == "book" and ack.symbol == "PF_XBTUSD"
    assert ack.req_id is None and ack.method == "subscribe"
    bad = p.parse(
        b'{"event":"subscribed_failed","feed":"book","product_ids":["PF_NOPE"],"message":"Invalid product id"}'
    )
    assert isinstance(bad, AckEvent) and not bad.success and bad.error == "Invalid product id"
    assert isinstance(p.parse(b'{"feed":"heartbeat","time":1}'), HeartbeatEvent)
    assert type(p.parse(b'{"event":"alert","message":"x"}')).__name__ == "UnknownEvent"
    assert type(p.parse(b"nope")).__name__ == "UnknownEvent"
    assert (
        encode_request("book", ["PF_XBTUSD"], 7) == b'{"event":"subscribe","feed":"book","product_ids":["PF_XBTUSD"]}'
    )
    assert encode_request("heartbeat", None, 8) == b'{"event":"subscribe","feed":"heartbeat"}'
    # lexemes are kept for synthesized snapshots
    snap = p.parse(
        b'{"feed":"book_snapshot","product_id":"PF_X","timestamp":1,"seq":5,"tickSize":null,'
        b'"bids":[{"price":1.10,"qty":5e-1}],"asks":[]}'
    )
    assert snap.bids[0].price_text == b"1.10" and snap.bids[0].qty_text == b"5e-1"


def test_unproven_line_with_a_broken_book_is_refreshed_after_stale_after():
    merge, a, b = _pair()
    merge.feed(a, _snap("PF_XBTUSD", 10, [(100.0, 1.0)], [(101.0, 1.0)]), 0.0)
    merge.feed(b, _snap("PF_XBTUSD", 900, [(100.0, 1.0)], [(101.0, 1.0)]), 0.0)  # another numbering
    merge.feed(b, _delta("PF_XBTUSD", 901, 99.0, 1.0), 0.1)
    merge.feed(b, _delta("PF_XBTUSD", 903, 98.0, 1.0), 0.2)  # b lost 902: its own book is broken
    merge.tick(5.0)
    assert merge.take_requests() == []
    merge.tick(10.3)  # stale_after (10 s) later it is resubscribed, to be a usable backup again
    assert [(r.upstream, r.reason) for r in merge.take_requests()] == [(b, "gap")]


def test_parser_on_third_party_fixtures_pretty_printed_and_zero_qty():
    """nautilus_trader's futures messages (pretty-printed: lexemes still cut from the bytes) and
    a snapshot with zero-qty levels (dropped from the book)."""
    from tests.kit.paths import FIXTURES

    base = FIXTURES / "nautilus_trader" / "crates" / "adapters" / "kraken" / "test_data"
    p = FuturesParser()
    snap = p.parse((base / "ws_futures_book_snapshot_with_zero_qty.json").read_bytes())
    assert snap.product == "PI_XBTUSD" and snap.seq == 326072249
    assert [lv.price_text for lv in snap.bids] == [b"34892.5", b"34892", b"34891.5"]
    merge, a, _ = _pair()
    merge.feed(a, (base / "ws_futures_book_snapshot_with_zero_qty.json").read_bytes(), 0.0)
    out = orjson.loads(merge.book_snapshot("PI_XBTUSD", 0))
    assert all(lv["qty"] != 0 for lv in out["bids"] + out["asks"]) and len(out["bids"]) == 2
    delta = p.parse((base / "ws_futures_book_delta.json").read_bytes())
    assert delta.seq == 326094134 and delta.level.qty == 0 and delta.level.price_text == b"34981"
    trades = p.parse((base / "ws_futures_trade_snapshot.json").read_bytes())
    assert trades.snapshot and all(orjson.loads(t.element)["uid"] == t.uid for t in trades.trades)
    ticker = p.parse((base / "ws_futures_ticker.json").read_bytes())
    assert ticker.feed == "ticker" and ticker.time == 1676393235406


def test_products_nobody_subscribed_to_hold_no_state():
    merge, a, b = _pair()
    merge.expect([("book", "PF_XBTUSD")], 0.0)
    for i in range(2000):
        merge.feed(b, _snap(f"PF_X{i:04d}USD", 1, [(100.0, 1.0)], [(101.0, 1.0)]), 0.1)
        merge.feed(b, _delta(f"PF_X{i:04d}USD", 2, 100.0, 2.0), 0.1)
    merge.feed(a, _snap("PF_XBTUSD", 1, [(100.0, 1.0)], [(101.0, 1.0)]), 0.2)
    assert set(merge.books) == {"PF_XBTUSD"}
    assert merge.upstream_stats[b].unsolicited == 4000
