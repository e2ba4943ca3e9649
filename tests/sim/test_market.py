"""The Sans-I/O market engine: exact depth views, wire-exact numbers, sequential trade ids."""

from __future__ import annotations

import time

import orjson
import pytest

from relay.core.book import Book
from relay.core.checksum import book_checksum
from relay.core.spot import BOOK_DEPTHS
from relay.protocols.spot_v2.wire import V2Parser
from relay.sim.faults import FaultSpec, load_schedule, parse_fault
from relay.sim.instruments import BUILTIN, load_instruments, rest_asset_pairs
from relay.sim.market import MarketEngine, MarketSettings, fmt
from relay.sim.server import corrupt_checksum


def _engine(symbols=("BTC/USD", "ETH/USD", "DOGE/USD"), **kw) -> MarketEngine:
    insts = load_instruments()
    return MarketEngine(
        [insts[s] for s in symbols], MarketSettings(rate=kw.pop("rate", 3000), seed=kw.pop("seed", 5), **kw)
    )


def test_fmt_is_exact_text() -> None:
    assert fmt(123456, 2) == b"1234.56"
    assert fmt(5, 8) == b"0.00000005"
    assert fmt(100000000, 8) == b"1.00000000"
    assert fmt(42, 0) == b"42"


def test_every_depth_view_matches_kraken_rules_and_checksums() -> None:
    """A client per depth applying only its frames (then truncating) ends with the engine's top d."""
    eng = _engine(levels=1000)
    parser = V2Parser()
    books = {}
    for s in eng.symbols:
        for d in BOOK_DEPTHS:
            eng.want("book", s, d)
            ev = parser.parse(eng.snapshot("book", s, d, time.time()))
            b = Book(s, d)
            assert b.load_snapshot(ev.bids, ev.asks, ev.timestamp) == ev.checksum
            books[s, d] = b
    frames = bad = 0
    eng.advance(0.0, time.time())
    for i in range(1, 1500):
        for ev in eng.advance(i * 0.001, time.time()):
            if ev.channel != "book":
                continue
            assert set(ev.frames) <= set(BOOK_DEPTHS)
            for d, f in ev.frames.items():
                e = parser.parse(f)
                frames += 1
                bad += books[ev.symbol, d].apply(e.bids, e.asks, e.timestamp, None) != e.checksum
    assert frames > 10_000 and bad == 0
    for (s, d), b in books.items():
        full = eng.symbols[s].book
        assert b.bids.best() == full.bids.best(d) and b.asks.best() == full.asks.best(d)
        want = book_checksum([lv[:2] for lv in full.asks.best(10)], [lv[:2] for lv in full.bids.best(10)])
        assert b.checksum == want


def test_depth_10_gets_the_level_that_moves_in_when_a_better_one_goes() -> None:
    eng = _engine(symbols=("BTC/USD",))
    sm = eng.symbols["BTC/USD"]
    sm.wanted[10] = 1
    eleventh = sm.book.bids.best(11)[10]
    top = sm.book.bids.best(1)[0]
    top_ticks = int(top[0].replace(b".", b""))
    frames = sm.apply({top_ticks: 0}, {}, "2026-01-01T00:00:00.000000Z")
    msg = orjson.loads(frames[10])
    bids = msg["data"][0]["bids"]
    assert len(bids) == 2 and bids[0]["qty"] == 0  # the delete, then the level entering the top 10
    assert frames[10].count(eleventh[0]) == 1 and frames[10].count(eleventh[1]) == 1


def test_no_frame_for_a_depth_the_change_does_not_reach() -> None:
    eng = _engine(symbols=("ETH/USD",))
    sm = eng.symbols["ETH/USD"]
    sm.wanted[10] = sm.wanted[1000] = 1
    deep = sm.book.asks.best(500)[-1]
    frames = sm.apply({}, {int(deep[0].replace(b".", b"")): 12345}, "2026-01-01T00:00:00.000000Z")
    assert 10 not in frames and 1000 in frames


def test_trade_ids_sequential_and_trade_snapshot() -> None:
    eng = _engine(trade_rate=500, rate=100)
    seen: dict[str, list[int]] = {}
    eng.advance(0.0, time.time())
    for i in range(1, 400):
        for ev in eng.advance(i * 0.005, time.time()):
            if ev.channel == "trade":
                for t in orjson.loads(ev.frames[0])["data"]:
                    seen.setdefault(t["symbol"], []).append(t["trade_id"])
    for sym, ids in seen.items():
        assert ids == list(range(1, len(ids) + 1))
        assert eng.trade_id(sym) == ids[-1]
        snap = orjson.loads(eng.snapshot("trade", sym, 0, time.time()))
        assert [t["trade_id"] for t in snap["data"]] == ids[-50:]


def test_rate_and_bursts_follow_the_schedule() -> None:
    eng = _engine(rate=1000, trade_rate=0, burst_every=1.0, burst_len=0.25, burst_factor=4.0)
    eng.advance(0.0, time.time())
    for i in range(1, 2001):
        eng.advance(i * 0.001, time.time())
    assert eng.scheduled(2.0) == pytest.approx(2 * (750 + 1000))
    assert abs(eng.book_updates - eng.scheduled(2.0)) <= 3


def test_builtin_table_works_without_fixtures(tmp_path) -> None:
    insts = load_instruments(tmp_path / "missing.json")
    assert set(BUILTIN) <= set(insts)
    assert (insts["BTC/USD"].price_precision, insts["BTC/USD"].qty_precision) == (1, 8)
    eng = MarketEngine([insts["XRP/USD"]], MarketSettings(rate=100, seed=1))
    snap = orjson.loads(eng.snapshot("book", "XRP/USD", 10, time.time()))
    assert len(snap["data"][0]["bids"]) == 10
    pairs = rest_asset_pairs([insts["BTC/USD"], insts["DOGE/USD"]])["result"]
    assert pairs["XXBTZUSD"]["wsname"] == "XBT/USD" and pairs["XDGUSD"]["wsname"] == "XDG/USD"


def test_corrupt_checksum_changes_only_the_checksum() -> None:
    f = b'{"channel":"book","type":"update","data":[{"symbol":"X","bids":[],"asks":[],"checksum":4294967295,"timestamp":"t"}]}'
    g = corrupt_checksum(f)
    assert g != f and orjson.loads(g)["data"][0]["checksum"] == 0
    assert g.replace(b":0,", b":4294967295,") == f


def test_fault_schedule_parsing(tmp_path) -> None:
    assert parse_fault("5:0:stall:3") == FaultSpec(5.0, 0, "stall", 3.0, {})
    s = parse_fault("8:1:silent_symbol:4:symbol=ETH/USD")
    assert (s.line, s.kind, s.duration, s.params) == (1, "silent_symbol", 4.0, {"symbol": "ETH/USD"})
    assert parse_fault("2:all:budget:limit=3,window=10").params == {"limit": 3, "window": 10}
    with pytest.raises(ValueError):
        parse_fault("1:0:explode")
    p = tmp_path / "f.yaml"
    p.write_text("- {at: 1, line: 0, kind: drop}\n- {at: 2.5, line: 1, kind: slow, duration: 2, delay: 0.2}\n")
    specs = load_schedule(p)
    assert [(x.at, x.line, x.kind, x.duration, x.params) for x in specs] == [
        (1.0, 0, "drop", None, {}),
        (2.5, 1, "slow", 2.0, {"delay": 0.2}),
    ]


def test_real_instrument_snapshot_gives_precisions_beyond_the_builtin_table() -> None:
    from tests.kit.paths import INSTRUMENT_SNAPSHOT, need_fixture

    need_fixture(INSTRUMENT_SNAPSHOT, "v2 instrument snapshot")
    assert len(load_instruments()) == len(BUILTIN)  # no snapshot given: the built-in table only
    insts = load_instruments(INSTRUMENT_SNAPSHOT)
    assert len(insts) > 600
    atom = insts["ATOM/USD"]
    assert atom.raw["symbol"] == "ATOM/USD" and atom.price_precision == atom.raw["price_precision"]
    eng = MarketEngine([atom], MarketSettings(rate=10, seed=1))
    price = orjson.loads(eng.snapshot("book", "ATOM/USD", 10, time.time()))
    raw = eng.snapshot("book", "ATOM/USD", 10, time.time())
    first = raw.split(b'"price":', 1)[1].split(b",", 1)[0]
    assert len(first.split(b".")[1]) == atom.price_precision
    assert price["data"][0]["symbol"] == "ATOM/USD"


def test_market_stays_sane_for_long_runs_at_high_rates() -> None:
    """10k updates/s on one cheap symbol for 100 000 updates (the spread once widened ~1 tick per
    10 updates until the bids reached zero and the market loop died mid-benchmark): the book
    never crosses, neither side empties, and the price stays within reach of where it started."""
    eng = _engine(("SOL/USD",), rate=10_000, levels=1000, burst_every=0.0)
    eng.want("book", "SOL/USD", 10)
    sm = eng.symbols["SOL/USD"]
    start = sm.anchor
    eng.advance(0.0, time.time())
    worst = 0.0
    for i in range(1, 5001):
        eng.advance(i * 0.002, time.time())
        bids, asks = sm.book.bids.levels, sm.book.asks.levels
        assert len(bids) > 100 and len(asks) > 100
        best_b, best_a = sm._ticks(bids.keys()[0]), sm._ticks(asks.keys()[0])
        assert best_b < best_a, f"crossed book after {eng.book_updates} updates"
        worst = max(worst, abs(best_b / start - 1.0))
    assert eng.book_updates >= 95_000
    assert worst < 0.9
