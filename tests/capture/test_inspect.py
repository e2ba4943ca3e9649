"""`capture inspect` (relay.ops.capture_inspect): per-line counts, gaps, downtime, disconnects and
book frames re-verified per session, on small captures written with the real writer, plus one
capture of a relay running against the simulator (lines and published stream)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from relay.capture.format import PUBLISHED
from relay.capture.reader import Reader
from relay.capture.writer import CaptureWriter
from relay.cli import main as cli
from relay.ops.capture_inspect import LISTED, Inspector, inspect, text_report
from relay.protocols.spot_v1.wire import V1Codec, encode_subscription_status
from relay.sim import LineConfig, SimConfig
from tests.kit.hostile import book_crc, book_frame
from tests.kit.inprocess import relay_on_sim, wait_for

S = 10**9  # ns per second
T0 = 1_700_000_000 * S


class Book:
    """A v2 book kept as {price text: qty text}, producing frames with a correct checksum."""

    def __init__(self, symbol: str = "BTC/USD", depth: int = 10) -> None:
        self.symbol, self.depth = symbol, depth
        self.bids = {f"{100 - i}.0": "1.00000000" for i in range(1, depth + 1)}
        self.asks = {f"{100 + i}.0": "2.00000000" for i in range(depth)}

    def crc(self) -> int:
        return book_crc(self.bids.items(), self.asks.items())

    def snapshot(self) -> bytes:
        return book_frame(self.symbol, True, list(self.bids.items()), list(self.asks.items()), self.crc(), "t")

    def update(self, price: str, qty: str, *, crc: int | None = None) -> bytes:
        side = self.bids if float(price) < 100 else self.asks
        if float(qty):
            side[price] = qty
        else:
            side.pop(price, None)
        levels = [(price, qty)]
        bids, asks = (levels, []) if side is self.bids else ([], levels)
        return book_frame(self.symbol, False, bids, asks, self.crc() if crc is None else crc, "t")


def trade(*ids: int) -> bytes:
    data = [{"symbol": "BTC/USD", "side": "buy", "price": 1.0, "qty": 1.0, "trade_id": i} for i in ids]
    return orjson.dumps({"channel": "trade", "type": "update", "data": data})


class Clock:
    """Records at chosen times: wall and monotonic advance together (seconds from T0)."""

    def __init__(self, writer: CaptureWriter, line: str = "line0") -> None:
        self.w, self.line, self.t = writer, line, 0.0

    def at(self, t: float, kind: str, data: bytes | None = None, **fields: Any) -> None:
        self.t = t
        ns = int(t * S)
        self.w.record(self.line, kind, data, T0 + ns, 5 * S + ns, **fields)


def v2_capture(tmp_path: Path) -> None:
    w = CaptureWriter(tmp_path, batch_records=5)
    c = Clock(w)
    book = Book()
    sub = b'{"method":"subscribe","params":{"channel":"book","symbol":["BTC/USD"],"depth":10},"req_id":1}'
    c.at(0.0, "connect", p="v2", url="wss://ws.kraken.com/v2", egress=None)
    c.at(0.01, "subscribe", sub)
    c.at(
        0.05,
        "frame",
        b'{"method":"subscribe","result":{"channel":"book","depth":10,"symbol":"BTC/USD"},"success":true}',
    )
    c.at(0.1, "frame", book.snapshot())
    c.at(0.2, "frame", book.update("99.5", "3.00000000"))
    c.at(0.3, "frame", book.update("100.5", "1.50000000", crc=12345))  # the one bad checksum
    c.at(0.4, "frame", book.update("98.5", "0.50000000"))  # the book itself was right: verifies again
    c.at(0.5, "frame", trade(1, 2))
    c.at(7.5, "frame", trade(2, 3))  # 7 s of silence, and trade 2 again
    c.at(8.0, "frame", b'{"channel":"heartbeat"}')
    c.at(8.5, "resync", channel="book", symbol="BTC/USD", reason="checksum", result="started")
    c.at(9.0, "disconnect", code=None, text="", by=None, reason="1006")
    c.at(10.0, "connect_failed", p="v2", url="wss://ws.kraken.com/v2", reason="refused")
    c.at(11.0, "connect_failed", p="v2", url="wss://ws.kraken.com/v2", reason="refused")
    c.at(12.0, "connect", p="v2", url="wss://ws.kraken.com/v2", egress=None)  # down 3 s
    c.at(12.1, "subscribe", sub)
    c.at(12.2, "frame", book.update("97.5", "1.00000000"))  # a fresh session: no book yet
    fresh = Book()
    c.at(12.3, "frame", fresh.snapshot())
    c.at(12.4, "frame", fresh.update("99.5", "0.00000000"))
    c.at(
        13.0,
        "disconnect",
        code=1001,
        text="CloudFlare WebSocket proxy restarting",
        by="server",
        reason="1001 CloudFlare WebSocket proxy restarting",
    )
    w.close()


def test_a_v2_line_counts_gaps_downtime_disconnects_and_the_one_bad_checksum(tmp_path: Path) -> None:
    v2_capture(tmp_path)
    r = inspect(Reader([tmp_path]), gap_seconds=5.0)
    ln = r["lines"]["line0"]
    assert r["records"] == 20 and not r["ok"]
    assert ln["protocol"] == "v2" and ln["urls"] == ["wss://ws.kraken.com/v2"]
    assert ln["first"] == "2023-11-14T22:13:20.000000Z" and ln["duration_seconds"] == 13.0
    assert (ln["connects"], ln["sessions"], ln["subscribes"], ln["frames"]) == (2, 2, 2, 11)
    assert ln["channels"]["book"] == {"frames": 7, "symbols": {"BTC/USD": 7}}
    assert ln["channels"]["subscribe"]["frames"] == 1 and ln["channels"]["heartbeat"]["frames"] == 1
    assert ln["disconnects"] == {
        "total": 2,
        "by_reason": {"1006": 1, "1001 CloudFlare WebSocket proxy restarting": 1},
        "by_code": {"1006": 1, "1001": 1},
        "by": {"none": 1, "server": 1},
    }
    assert ln["connect_failures"] == {"total": 2, "by_reason": {"refused": 2}}
    assert ln["resyncs"] == {"total": 1, "by_reason": {"checksum": 1}, "by_result": {"started": 1}}
    gaps = ln["gaps"]
    assert gaps["count"] == 1 and gaps["longest_seconds"] == 7.0
    assert gaps["listed"] == [
        {"start": "2023-11-14T22:13:20.500000Z", "end": "2023-11-14T22:13:27.500000Z", "seconds": 7.0}
    ]
    down = ln["downtime"]
    assert down["count"] == 1 and down["total_seconds"] == 3.0 and down["listed"][0]["reason"] == "1006"
    assert down["down_at_end"] and down["failed_connects_at_end"] == 0
    b = ln["books"]
    assert (b["frames"], b["snapshots"], b["verified"], b["checksum_mismatches"]) == (7, 2, 5, 1)
    assert (b["mismatch_runs"], b["before_snapshot"], b["seq_errors"]) == (1, 1, 0)
    (bad,) = b["listed"]
    assert bad["session"] == 1 and bad["symbol"] == "BTC/USD" and bad["expected"] == 12345
    assert bad["at"] == "2023-11-14T22:13:20.300000Z" and bad["computed"] != 12345
    assert ln["trades"] == {"trades": 3, "duplicates": 1, "id_gaps": 0}
    text = text_report(r)
    assert "1 checksum mismatches in 1 runs" in text and "1 silent periods" in text and "PROBLEMS" in text


def test_the_gap_threshold_and_the_listed_gaps_are_bounded(tmp_path: Path) -> None:
    w = CaptureWriter(tmp_path)
    c = Clock(w)
    c.at(0.0, "connect", p="v2", url="u", egress=None)
    t = 0.0
    for i in range(50):  # silences of 1.05, 1.15, ... 5.95 s
        t += 1.05 + i / 10
        c.at(t, "frame", b'{"channel":"heartbeat"}')
    w.close()
    gaps = inspect(Reader([tmp_path]), gap_seconds=2.0)["lines"]["line0"]["gaps"]
    assert gaps["count"] == 40 and gaps["longest_seconds"] == 5.95
    assert len(gaps["listed"]) == LISTED and min(g["seconds"] for g in gaps["listed"]) == 4.05
    assert [g["start"] for g in gaps["listed"]] == sorted(g["start"] for g in gaps["listed"])
    assert inspect(Reader([tmp_path]), gap_seconds=10.0)["lines"]["line0"]["gaps"]["count"] == 0


def test_v1_line_without_its_subscription_status_and_a_futures_seq_gap(tmp_path: Path) -> None:
    """A capture starting mid-session (the older files deleted) still verifies: the v1 frame
    names its channel; a futures seq step and a repeated trade uid are found."""
    w = CaptureWriter(tmp_path)
    v1, fut = Clock(w, "v1line"), Clock(w, "fline")
    asks = {"101.00000": "1.00000000", "102.00000": "1.00000000"}
    bids = {"99.00000": "1.00000000"}
    v1.at(
        0.0,
        "frame",
        b'[42,{"as":[["101.00000","1.00000000","1.0"],["102.00000","1.00000000","1.0"]],"bs":[["99.00000","1.00000000","1.0"]]},"book-10","XBT/USD"]',
    )
    bids["98.00000"] = "2.00000000"
    v1.at(
        0.1,
        "frame",
        b'[42,{"b":[["98.00000","2.00000000","1.1"]],"c":"%d"},"book-10","XBT/USD"]'
        % book_crc(bids.items(), asks.items()),
    )
    v1.at(0.2, "frame", b'[42,{"a":[["101.00000","0.00000000","1.2"]],"c":"7"},"book-10","XBT/USD"]')  # bad
    v1.at(0.3, "frame", b'[7,[["5.0","1.0","1.3","b","l",""],["5.0","1.0","1.3","b","l",""]],"trade","XBT/USD"]')
    fut.at(0.0, "connect", p="futures", url="wss://futures.kraken.com/ws/v1", egress=None)
    fut.at(
        0.1,
        "frame",
        b'{"feed":"book_snapshot","product_id":"PF_XBTUSD","seq":10,"bids":[{"price":1.0,"qty":1.0}],"asks":[]}',
    )
    for t, seq in ((0.2, 11), (0.3, 12), (0.4, 14), (0.5, 15)):
        delta = {"feed": "book", "product_id": "PF_XBTUSD", "side": "buy", "seq": seq, "price": 1.0, "qty": 2.0}
        fut.at(t, "frame", orjson.dumps(delta))
    for t in (0.6, 0.7):
        fut.at(
            t,
            "frame",
            b'{"feed":"trade","product_id":"PF_XBTUSD","uid":"u1","side":"buy","seq":1,"time":1,"qty":1,"price":1}',
        )
    fut.at(0.8, "frame", b"not json")
    w.close()
    r = inspect(Reader([tmp_path]))
    a = r["lines"]["v1line"]
    assert a["protocol"] == "v1" and a["sessions"] == 1 and a["connects"] == 0 and a["unterminated_sessions"] == 1
    assert a["channels"]["book-10"]["symbols"] == {"XBT/USD": 3}
    assert (a["books"]["snapshots"], a["books"]["verified"], a["books"]["checksum_mismatches"]) == (1, 1, 1)
    assert a["trades"]["trades"] == 1 and a["trades"]["duplicates"] == 1  # the same array twice
    f = r["lines"]["fline"]
    assert (f["books"]["verified"], f["books"]["seq_errors"], f["books"]["checksum_mismatches"]) == (3, 1, 0)
    assert f["books"]["listed"][0] | {"at": None} == {
        "at": None,
        "session": 1,
        "symbol": "PF_XBTUSD",
        "last_seq": 12,
        "seq": 14,
    }
    assert f["trades"]["duplicates"] == 1 and f["unparsed_frames"] == 1
    assert f["channels"]["(invalid json)"]["frames"] == 1


def test_a_reconnect_starts_fresh_verifiers(tmp_path: Path) -> None:
    """A book the previous session built must not carry over: the new session's update before
    its snapshot is counted as such (not checked against the stale book)."""
    w = CaptureWriter(tmp_path)
    c = Clock(w)
    book = Book()
    c.at(0.0, "connect", p="v2", url="u", egress=None)
    c.at(0.1, "frame", book.snapshot())
    c.at(0.2, "connect", p="v2", url="u", egress=None)  # the relay died without a disconnect record
    c.at(0.3, "frame", book.update("99.5", "1.00000000"))
    w.close()
    ln = inspect(Reader([tmp_path]))["lines"]["line0"]
    assert ln["sessions"] == 2 and ln["unterminated_sessions"] == 2
    assert ln["books"]["before_snapshot"] == 1 and ln["books"]["verified"] == 1


def test_published_books_verify_per_symbol_and_depth_v2_and_v1(tmp_path: Path) -> None:
    w = CaptureWriter(tmp_path)
    deep = Book(depth=25)
    top10 = Book(depth=10)
    top10.bids = dict(list(deep.bids.items())[:10])
    top10.asks = dict(list(deep.asks.items())[:10])
    pub = Clock(w, PUBLISHED)
    v2 = {"p": "v2", "channel": "book", "symbol": "BTC/USD"}
    pub.at(0.0, "frame", deep.snapshot(), **v2, key=25)
    pub.at(0.0, "frame", top10.snapshot(), **v2, key=10)
    pub.at(0.1, "frame", deep.update("99.5", "5.00000000"), **v2, key=25)
    pub.at(0.1, "frame", top10.update("99.5", "5.00000000"), **v2, key=10)
    pub.at(0.2, "frame", deep.update("80.0", "5.00000000", crc=1), **v2, key=25)  # bad, depth 25 only
    pub.at(0.3, "frame", trade(1), p="v2", channel="trade", symbol="BTC/USD", key=None)
    pub.at(0.3, "frame", trade(1), p="v2", channel="trade", symbol="BTC/USD", key=None)
    # v1: the merge's frames (channelID 0, bare `book`), as the endpoint stamps them for clients
    codec = V1Codec()
    bids, asks = [(b"99.0", b"1.0")], [(b"101.0", b"1.0")]
    v1 = {"p": "v1", "channel": "book", "symbol": "XBT/USD", "key": 10}
    pub.at(0.4, "frame", codec.book("XBT/USD", True, bids, asks, 0, "1.0"), **v1)
    new_bids = [(b"98.0", b"2.0")]
    crc = book_crc(bids + new_bids, asks)
    pub.at(0.5, "frame", codec.book("XBT/USD", False, new_bids, [], crc, "1.1"), **v1)
    pub.at(0.6, "frame", b'{"channel":"status"}', p="v1", channel="status", symbol="", key=None)
    w.close()
    r = inspect(Reader([tmp_path]))
    assert r["lines"] == {} and not r["ok"]
    p2 = r["published"]["v2"]
    assert p2["channels"]["book"] == {"frames": 5, "symbols": {"BTC/USD": 5}}
    assert p2["books"]["by_symbol"] == {
        "BTC/USD@10": {"frames": 2, "snapshots": 1, "verified": 2, "bad": 0},
        "BTC/USD@25": {"frames": 3, "snapshots": 1, "verified": 2, "bad": 1},
    }
    assert p2["books"]["listed"][0]["depth"] == 25 and p2["trades"]["duplicates"] == 1
    p1 = r["published"]["v1"]
    assert (p1["frames"], p1["books"]["snapshots"], p1["books"]["verified"], p1["books"]["checksum_mismatches"]) == (
        3,
        1,
        1,
        0,
    )
    assert "published v1" in text_report(r)


def test_unknown_kinds_and_a_v1_status_are_tolerated() -> None:
    from relay.capture.format import Record

    ins = Inspector()
    status = encode_subscription_status("subscribed", "XBT/USD", {"name": "trade"}, None, "trade", 3)
    ins.feed(Record(T0, 1, "l", "connect", None, {"p": "v1", "url": "u"}))
    ins.feed(Record(T0 + 1, 2, "l", "frame", status))
    ins.feed(Record(T0 + 2, 3, "l", "frame", b'[3,[["1.0","1.0","1.0","s","m",""]]]'))  # no name: by channelID
    ins.feed(Record(T0 + 3, 4, "l", "gossip", None, {}))
    ln = ins.result()["lines"]["l"]
    assert ln["unknown_kinds"] == {"gossip": 1}
    assert ln["channels"]["trade"]["symbols"] == {"XBT/USD": 1}


def test_cli_inspect_json_text_and_a_truncated_file(tmp_path: Path, capsys) -> None:
    v2_capture(tmp_path)
    (path,) = tmp_path.glob("*.zst")
    with path.open("ab") as f:
        f.write(b"\x28\xb5\x2f\xfd garbage")  # a batch cut short by a crash
    assert cli(["capture", "inspect", str(tmp_path), "--json"]) == 0
    r = orjson.loads(capsys.readouterr().out)
    assert r["truncated_files"] == [str(path)] and r["lines"]["line0"]["books"]["checksum_mismatches"] == 1
    assert cli(["capture", "inspect", str(path), "--gap", "1", "--check"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("20 records; gap threshold 1 s") and "line line0  v2" in out and "truncated" in out
    assert cli(["capture", "inspect", str(tmp_path / "missing")]) == 2
    assert cli(["capture", "inspect", str(tmp_path), "--gap", "0"]) == 2


async def test_a_relay_capture_of_lines_and_published_stream_verifies(tmp_path: Path) -> None:
    sim_cfg = SimConfig(symbols=["BTC/USD", "ETH/USD"], rate=200.0, seed=16, lines=[LineConfig(), LineConfig()])
    cfg = {
        "channels": {"book": {"symbols": ["BTC/USD", "ETH/USD"], "depth": 10}, "trade": {"symbols": ["BTC/USD"]}},
        "capture": {"dir": str(tmp_path), "published": True},
    }
    async with relay_on_sim(sim_cfg, cfg, ready=lambda r: r.ready()[0]) as (relay, _sim):
        conns = [c for stack in relay.stacks for c in stack.pool.connections]
        await wait_for(lambda: all(c.frames > 150 for c in conns), 15.0, "frames on every line")
    frames = {c.name: c.frames for c in conns}
    r = inspect(Reader([tmp_path]))
    assert r["ok"]
    for name, n in frames.items():
        ln = r["lines"][name]
        assert ln["frames"] == n and ln["connects"] == 1 and ln["disconnects"]["total"] == 1
        assert ln["books"]["verified"] == ln["books"]["frames"] > 100
        assert set(ln["channels"]["book"]["symbols"]) == {"BTC/USD", "ETH/USD"}
    pub = r["published"]["v2"]["books"]
    assert pub["checksum_mismatches"] == 0 and pub["verified"] == pub["frames"] > 100
