"""Every public v2 frame shape parses; oddities are tolerated and counted, never fatal."""

from __future__ import annotations

import json

import orjson
import pytest

from relay.core.book import Book
from relay.core.events import (
    AckEvent,
    BookEvent,
    HeartbeatEvent,
    InstrumentEvent,
    OhlcEvent,
    PongEvent,
    StatusEvent,
    TickerEvent,
    TradeEvent,
    UnknownEvent,
)
from relay.protocols.spot_v2.wire import Precisions, V2Parser, encode_book
from tests.kit.paths import FIXTURES, INSTRUMENT_SNAPSHOT, need_fixture

NAUTILUS = FIXTURES / "nautilus_trader" / "crates" / "adapters" / "kraken" / "test_data"


def compact(path) -> bytes:
    need_fixture(path)
    return orjson.dumps(json.loads(path.read_text()))


def test_status_heartbeat_pong() -> None:
    p = V2Parser()
    st = p.parse(
        b'{"channel":"status","type":"update","data":[{"api_version":"v2","connection_id":18446744073709551615,'
        b'"system":"online","version":"2.0.9","upcoming_maintenance":{"x":1}}]}'
    )
    assert isinstance(st, StatusEvent) and st.system == "online" and st.connection_id == 2**64 - 1
    assert isinstance(p.parse(b'{"channel":"heartbeat"}'), HeartbeatEvent)
    pong = p.parse(compact(NAUTILUS / "ws_pong.json"))
    assert isinstance(pong, PongEvent)


def test_ack_shapes_success_and_both_rejection_shapes() -> None:
    p = V2Parser()
    ok = p.parse(compact(NAUTILUS / "ws_subscribe_response.json"))
    assert (
        isinstance(ok, AckEvent) and ok.success and ok.channel == "ticker" and ok.symbol == "BTC/USD" and ok.req_id == 1
    )
    top = p.parse(
        b'{"method":"subscribe","success":false,"error":"Currency pair not supported XBT/USD","symbol":"XBT/USD",'
        b'"time_in":"a","time_out":"b"}'
    )
    assert isinstance(top, AckEvent) and not top.success and top.symbol == "XBT/USD" and "not supported" in top.error
    partial = p.parse(
        b'{"method":"subscribe","req_id":3,"result":{"channel":"book","depth":7,"symbol":"BTC/USD"},'
        b'"success":false,"error":"Subscription depth not supported"}'
    )
    assert isinstance(partial, AckEvent) and partial.symbol == "BTC/USD" and partial.channel == "book"
    bare = p.parse(b'{"method":"subscribe","success":false,"error":"Exceeded msg rate"}')
    assert isinstance(bare, AckEvent) and bare.symbol is None and bare.error == "Exceeded msg rate"


def test_data_channels_from_third_party_shapes() -> None:
    p = V2Parser()
    assert isinstance(p.parse(compact(NAUTILUS / "ws_book_snapshot.json")), BookEvent)
    assert isinstance(p.parse(compact(NAUTILUS / "ws_book_update.json")), BookEvent)
    tr = p.parse(compact(NAUTILUS / "ws_trade_update.json"))
    assert isinstance(tr, TradeEvent) and tr.trades and all(t.element.startswith(b"{") for t in tr.trades)
    assert isinstance(p.parse(compact(NAUTILUS / "ws_ticker_snapshot.json")), TickerEvent)
    assert isinstance(p.parse(compact(NAUTILUS / "ws_ohlc_update.json")), OhlcEvent)


def test_trade_elements_keep_their_exact_text() -> None:
    raw = (
        b'{"channel":"trade","type":"update","data":[{"symbol":"BTC/USD","side":"sell","price":29000.0,'
        b'"qty":0.10000000,"ord_type":"limit","trade_id":7,"timestamp":"t"},{"symbol":"BTC/USD","side":"buy",'
        b'"price":29000.1,"qty":1.00000000,"ord_type":"market","trade_id":8,"timestamp":"t"}]}'
    )
    ev = V2Parser().parse(raw)
    assert [t.trade_id for t in ev.trades] == [7, 8]
    assert b'"qty":0.10000000' in ev.trades[0].element


def test_instrument_snapshot_teaches_precisions() -> None:
    need_fixture(INSTRUMENT_SNAPSHOT, "instrument fixture")
    p = V2Parser()
    ev = p.parse(INSTRUMENT_SNAPSHOT.read_bytes())
    assert isinstance(ev, InstrumentEvent) and len(ev.data["pairs"]) == 683
    assert p.precisions.get("BTC/USD") == (1, 8)


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[1,2,3]",
        b'{"channel":"level3","type":"update","data":[]}',
        b'{"channel":"book","type":"update"}',
        b'{"channel":"trade","type":"update","data":[{"symbol":"BTC/USD"}]}',
        b'{"method":"whatever"}',
        b'{"channel":"book","type":"update","data":[{"symbol":"X/Y","bids":[{"price":"abc","qty":1}],"asks":[]}]}',
    ],
)
def test_unknown_and_malformed_frames_are_counted_not_fatal(raw: bytes) -> None:
    p = V2Parser()
    ev = p.parse(raw)
    assert isinstance(ev, UnknownEvent)
    assert p.unknown == 1


def test_unknown_keys_are_ignored() -> None:
    raw = (
        b'{"channel":"book","type":"update","extra":1,"data":[{"symbol":"BTC/USD","bids":[{"price":1.0,"qty":2.00000000}],'
        b'"asks":[],"checksum":5,"timestamp":"t","new_field":[1,{"a":2}]}]}'
    )
    ev = V2Parser().parse(raw)
    assert isinstance(ev, BookEvent) and ev.bids[0][2] == b"2.00000000"


def test_reserialized_capture_replays_with_instrument_precision() -> None:
    """The python-kraken-sdk file lost its lexemes (4.0, 0.001): 0/510 as is, 510/510 re-formatted."""
    path = FIXTURES / "python-kraken-sdk" / "tests" / "spot" / "fixture" / "orderbook-v2.json"
    need_fixture(path)
    doc = json.loads(path.read_text())
    frames = [orjson.dumps(doc["init"])] + [orjson.dumps(u) for u in doc["updates"]]
    prec = Precisions()
    prec.learn([{"symbol": "BTC/USD", "price_precision": 1, "qty_precision": 8}])

    def replay(parser: V2Parser) -> int:
        book, ok = Book("BTC/USD", 10), 0
        for raw in frames:
            ev = parser.parse(raw)
            crc = (
                book.load_snapshot(ev.bids, ev.asks, ev.timestamp)
                if ev.snapshot
                else book.apply(ev.bids, ev.asks, ev.timestamp, None)
            )
            ok += crc == ev.checksum
        return ok

    assert replay(V2Parser(prec, force_precision=True)) == 510
    assert replay(V2Parser()) < 510  # the float text really is wrong: the test would notice a regression


def test_encode_book_round_trips_exact_text() -> None:
    raw = encode_book("ETH/USD", True, [(b"3001.42", b"1.25000000")], [(b"3001.43", b"0.75000000")], 12, "t")
    ev = V2Parser().parse(raw)
    assert isinstance(ev, BookEvent) and ev.snapshot and ev.checksum == 12
    assert ev.bids[0][1:] == (b"3001.42", b"1.25000000")
    assert orjson.loads(raw)["data"][0]["asks"][0]["qty"] == 0.75
