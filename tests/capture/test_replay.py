"""`kraken-relay replay` (issue 16): the schedule's rules on synthetic records, and end to end: a
relay recorded on the simulator (with lines dropped and closed), the capture served back by the
replay server to a second relay, which must receive the same frames per session, lose its lines
the same way and publish a feed that verifies."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from relay.app import Relay
from relay.capture.format import Record
from relay.capture.reader import Reader
from relay.capture.sessions import (
    ABORT,
    CLOSE,
    EOF,
    NS,
    WAIT,
    Busy,
    Capture,
    Hold,
    Over,
    Refuse,
    Schedule,
    Serve,
    build,
    parse_request,
    parse_when,
    rewrite_id,
)
from relay.capture.writer import CaptureWriter
from relay.config import parse_config
from relay.sim import LineConfig, SimConfig, Simulator
from relay.sim.capture_replay import ReplayServer, add_arguments, load_schedule
from relay.sim.capture_replay import main as replay_main
from relay.sim.futures import FuturesSimConfig, FuturesSimulator
from relay.verify.client import Verifier, VerifyingClient
from relay.verify.futures import FuturesVerifier
from relay.verify.spot_v1 import V1Verifier
from relay.verify.spot_v2 import V2Verifier
from tests.kit.inprocess import FAST_RECONNECT, relay_on_sim, wait_for
from tests.kit.net import free_port

BASE = 1_700_000_000 * NS  # wall time of the synthetic captures' first record
MS = 1_000_000


def rec(ms: float, line: str, kind: str, data: bytes | None = None, **fields: Any) -> Record:
    t = int(ms * MS)
    return Record(BASE + t, 5 * NS + t, line, kind, data, fields)


def connect(ms: float, line: str = "a", p: str = "v2") -> Record:
    return rec(ms, line, "connect", p=p, url=f"wss://ws.kraken.com/{p}", egress=None)


def frame(ms: float, line: str = "a", text: str = "f") -> Record:
    return rec(ms, line, "frame", text.encode())


def disconnect(ms: float, line: str = "a", code: int | None = 1001, by: str | None = "server") -> Record:
    return rec(ms, line, "disconnect", code=code, text="CloudFlare WebSocket proxy restarting", by=by, reason="")


def three_sessions() -> Capture:
    """Line a: [0, 1000] close 1001, failures at 1100 (503) and 1300 (timeout), [1500, 2500]
    aborted, [3000, 4000] closed by the relay. Frames every 100 ms, named by their time."""
    recs: list[Record] = []
    for lo, hi, end in ((0, 1000, disconnect(1000)), (1500, 2500, disconnect(2500, code=None, by=None))):
        recs += [connect(lo)] + [frame(t, text=str(t)) for t in range(lo + 10, hi, 100)] + [end]
        if lo == 0:
            recs += [rec(1100, "a", "connect_failed", p="v2", url="", reason="http 503")]
            recs += [rec(1300, "a", "connect_failed", p="v2", url="", reason="timeout")]
    recs += [connect(3000)] + [frame(t, text=str(t)) for t in range(3010, 4000, 100)]
    recs += [disconnect(4000, code=None, by="relay")]
    return build(recs)


# -- sessions ---------------------------------------------------------------------------------
def test_sessions_are_cut_at_connects_and_disconnects_with_frame_offsets() -> None:
    cap = three_sessions()
    a = cap.lines["a"]
    assert [(s.connect_ns, s.end_ns) for s in a.sessions] == [
        (BASE, BASE + 1000 * MS),
        (BASE + 1500 * MS, BASE + 2500 * MS),
        (BASE + 3000 * MS, BASE + 4000 * MS),
    ]
    s0 = a.sessions[0]
    assert s0.offsets[:2] == [10 * MS, 110 * MS] and s0.frames[:2] == [b"10", b"110"]
    assert (s0.end.action, s0.end.code, s0.end.by) == (CLOSE, 1001, "server")
    assert a.sessions[1].end.action == ABORT and a.sessions[2].end.action == WAIT
    assert [(f.at_ns - BASE, f.status) for f in a.failures] == [(1100 * MS, 503), (1300 * MS, None)]
    assert a.protocol == "v2" and a.path == "/v2" and cap.first_ns == BASE and cap.last_ns == BASE + 4000 * MS


def test_odd_captures_rotated_connect_killed_relay_open_end_and_published() -> None:
    cap = build(
        [
            frame(0, "b"),  # its connect was in a file rotated away
            frame(50, "b"),
            rec(60, "published", "frame", b"pub", p="v2", channel="book", symbol="BTC/USD", key=10),
            connect(100, "b", p="v1"),  # relay killed: no disconnect before the next connect
            frame(200, "b"),
            frame(300, "b"),  # still open when the capture ends
        ]
    )
    assert list(cap.lines) == ["b"]
    s = cap.lines["b"].sessions
    assert s[0].implicit and s[0].frames == [b"f", b"f"] and s[0].protocol == "v1"
    assert s[0].end.action == ABORT and s[0].end_ns == BASE + 50 * MS
    assert s[1].end.action == EOF and s[1].end.code == 1001 and s[1].end_ns == BASE + 300 * MS
    assert cap.lines["b"].path == "/v1"


def test_a_second_relay_run_with_another_monotonic_clock_continues_the_timeline() -> None:
    first = [connect(0), frame(10), disconnect(20)]
    # the next run: wall 5 s later, monotonic restarted near 0 (a reboot)
    second = [Record(BASE + 5 * NS + t * MS, t * MS, "a", k, d, f) for t, k, d, f in _run2()]
    cap = build(first + second)
    s = cap.lines["a"].sessions
    assert s[1].connect_ns == BASE + 5 * NS and s[1].offsets == [10 * MS]


def _run2() -> list[tuple[int, str, bytes | None, dict[str, Any]]]:
    return [
        (0, "connect", None, {"p": "v2", "url": "ws://x/v2"}),
        (10, "frame", b"g", {}),
        (20, "disconnect", None, {}),
    ]


def test_start_and_end_parse_as_offsets_or_iso_times() -> None:
    assert parse_when("1.5", BASE) == BASE + 1500 * MS
    assert parse_when("2023-11-14T22:13:21Z", BASE) == BASE + 1 * NS
    assert parse_when("2023-11-14T22:13:20.250", BASE) == BASE + 250 * MS  # naive: UTC
    for bad in ("-1", "soon", "nan"):
        with pytest.raises(ValueError):
            parse_when(bad, BASE)


# -- the schedule -----------------------------------------------------------------------------
def test_first_connection_starts_the_clock_and_gets_the_first_session() -> None:
    sch = Schedule(three_sessions())
    assert not sch.started and sch.clock(100.0) == BASE
    d = sch.assign("a", 100.0, "c1")
    assert isinstance(d, Serve) and d.session.index == 0 and d.late_ns == 0
    assert isinstance(sch.assign("a", 100.0, "c2"), Busy)  # one session per line at a time
    pb = sch.play("a", "c1", d.session)
    assert pb.due(100.0) == []  # first frame at +10 ms: never early
    assert pb.next_at() == pytest.approx(100.010)
    assert pb.due(100.0105) == [b"10"] and pb.due(100.3) == [b"110", b"210"]
    assert not pb.over(100.95)
    assert pb.due(101.0) == [b"310", b"410", b"510", b"610", b"710", b"810", b"910"]
    assert pb.over(101.0) and pb.end.action == CLOSE and pb.end.code == 1001


def test_reconnect_gap_refuses_as_recorded_then_holds_until_the_next_connect() -> None:
    sch = Schedule(three_sessions())
    d = sch.assign("a", 0.0, "c1")
    assert isinstance(d, Serve)
    sch.play("a", "c1", d.session)
    sch.release("a", "c1")
    # at +1.05 s a 503 is still to come (recorded at 1.1 s): refused with it, slot stays free
    d = sch.assign("a", 1.05, "c2")
    assert isinstance(d, Refuse) and d.status == 503 and sch.lines["a"].active is None
    # at +1.2 s only the recorded timeout is ahead: the handshake is held until the connect at 1.5 s
    d = sch.assign("a", 1.2, "c3")
    assert isinstance(d, Hold) and d.session.index == 1 and d.until == pytest.approx(1.5)
    assert isinstance(sch.assign("a", 1.3, "c4"), Busy)
    d = sch.assign("a", 1.5, "c3")  # asked again when the hold is over
    assert isinstance(d, Serve) and d.session.index == 1


def test_non_http_failures_abort_the_handshake() -> None:
    cap = build([connect(0), disconnect(10), rec(20, "a", "connect_failed", reason="refused"), connect(50)])
    sch = Schedule(cap)
    sch.begin(0.0)
    d = sch.assign("a", 0.015, "c")
    assert isinstance(d, Refuse) and d.status is None and d.reason == "refused"


def test_sessions_entirely_in_the_past_are_skipped_and_counted() -> None:
    sch = Schedule(three_sessions())
    sch.begin(0.0)
    d = sch.assign("a", 2.0, "late")  # session 0 is over, session 1 under way
    assert isinstance(d, Serve) and d.session.index == 1 and d.skipped == 1
    assert d.late_ns == 500 * MS and sch.lines["a"].skipped == 1
    pb = sch.play("a", "late", d.session)
    caught_up = pb.due(2.0)  # everything recorded up to now, at once, in order
    assert caught_up == [str(t).encode() for t in range(1510, 2000, 100)]
    assert pb.due(2.0) == [] and pb.next_at() == pytest.approx(2.01)
    sch.release("a", "late")
    d = sch.assign("a", 3.9, "later")
    assert isinstance(d, Serve) and d.session.index == 2 and d.skipped == 0
    assert isinstance(sch.assign("a", 4.0, "later"), Over)


def test_speed_scales_the_clock() -> None:
    sch = Schedule(three_sessions(), speed=4.0)
    d = sch.assign("a", 10.0, "c")
    assert isinstance(d, Serve)
    pb = sch.play("a", "c", d.session)
    assert pb.next_at() == pytest.approx(10.0025)  # +10 ms of capture is 2.5 ms
    assert sch.clock(10.25) == BASE + 1000 * MS and sch.at(BASE + 1000 * MS) == pytest.approx(10.25)
    assert len(pb.due(10.25)) == 10 and pb.over(10.25)


def test_start_mid_session_catches_up_from_its_connect_and_end_cuts_with_1001() -> None:
    cap = three_sessions()
    sch = Schedule(cap, start_ns=parse_when("0.5", cap.first_ns), end_ns=parse_when("2.0", cap.first_ns))
    d = sch.assign("a", 0.0, "c")
    assert isinstance(d, Serve) and d.session.index == 0 and d.late_ns == 500 * MS
    pb = sch.play("a", "c", d.session)
    assert pb.due(0.0) == [b"10", b"110", b"210", b"310", b"410"]  # the session's start is never lost
    sch.release("a", "c")
    d = sch.assign("a", 1.2, "c2")  # capture time 1.7 s: session 1 under way
    assert isinstance(d, Serve) and d.session.index == 1
    pb = sch.play("a", "c2", d.session)
    assert pb.count == 5  # frames 1510..1910; none after --end
    assert pb.due(1.5) == [str(t).encode() for t in range(1510, 2000, 100)]
    assert pb.over(1.5) and pb.end.action == EOF and pb.end.code == 1001
    sch.release("a", "c2")
    assert sch.ended(1.5) and isinstance(sch.assign("a", 1.6, "c3"), Over)


def test_the_replay_is_done_when_every_line_is_played_or_past() -> None:
    recs = [connect(0, "a"), frame(10, "a"), disconnect(100, "a"), connect(0, "b"), disconnect(300, "b")]
    sch = Schedule(build(sorted(recs, key=lambda r: r.mono_ns)))
    assert not sch.done(0.0)  # the clock waits for the first connection
    d = sch.assign("a", 0.0, "c")
    assert isinstance(d, Serve)
    assert not sch.done(0.2)  # line a is being served
    sch.release("a", "c")
    assert not sch.done(0.2)  # line b's session is not over (nobody took it)
    assert sch.done(0.31)


def test_bad_schedules_are_refused() -> None:
    cap = three_sessions()
    for kwargs in ({"lines": ["zz"]}, {"speed": 0.0}, {"start_ns": BASE + NS, "end_ns": BASE + NS}):
        with pytest.raises(ValueError):
            Schedule(cap, **kwargs)  # type: ignore[arg-type]


# -- responses wait for their requests ----------------------------------------------------------
def sub(ms: float, text: str, line: str = "a") -> Record:
    """A request the recorded relay sent (`subscribe` record)."""
    return rec(ms, line, "subscribe", text.encode())


V2_SUB = '{"method":"subscribe","params":{"channel":"book","symbol":["BTC/USD","ETH/USD"],"depth":10},"req_id":%d}'
V2_ACK = (
    '{"method":"subscribe","result":{"channel":"book","depth":10,"symbol":"%s"},"success":true,'
    '"time_in":"2024-05-01T12:00:00.000001Z","time_out":"2024-05-01T12:00:00.000002Z","req_id":%d}'
)
V2_STATUS = '{"channel":"status","type":"update","data":[{"system":"online"}]}'


def v2_session() -> Capture:
    """Status at 1 ms, the book request (req_id 1) at 2 ms acked per symbol at 3 and 4 ms, data at
    5 ms, a ping (req_id 2) at 10 ms and its pong at 11 ms, an unsubscribe at 20 ms acked at 21 ms."""
    return build(
        [
            connect(0),
            frame(1, text=V2_STATUS),
            sub(2, V2_SUB % 1),
            frame(3, text=V2_ACK % ("BTC/USD", 1)),
            frame(4, text=V2_ACK % ("ETH/USD", 1)),
            frame(5, text='{"channel":"book","type":"update","data":[{"symbol":"BTC/USD"}]}'),
            sub(10, '{"method":"ping","req_id":2}'),
            frame(11, text='{"method":"pong","req_id":2,"time_in":"x","time_out":"y"}'),
            sub(20, '{"method":"unsubscribe","params":{"channel":"book","symbol":["BTC/USD"],"depth":10},"req_id":3}'),
            frame(
                21,
                text='{"method":"unsubscribe","result":{"channel":"book","symbol":"BTC/USD"},"success":true,"req_id":3}',
            ),
            frame(22, text='{"method":"subscribe","success":false,"error":"nope","req_id":99}'),  # no such request
            disconnect(100),
        ]
    )


def units_of(cap: Capture, frame_index: int) -> list[tuple[str, str, str]]:
    s = cap.lines["a"].sessions[0]
    return [s.pairing.units[u] for u in s.pairing.needs.get(frame_index, ())]


def test_v2_acks_and_pongs_pair_with_their_requests_by_req_id_and_symbol() -> None:
    cap = v2_session()
    s = cap.lines["a"].sessions[0]
    assert s.request_offsets == [2 * MS, 10 * MS, 20 * MS]
    assert units_of(cap, 1) == [("subscribe", "book", "BTC/USD")]  # each ack: its symbol's unit
    assert units_of(cap, 2) == [("subscribe", "book", "ETH/USD")]
    assert units_of(cap, 4) == [("ping", "", "")]
    assert units_of(cap, 5) == [("unsubscribe", "book", "BTC/USD")]
    assert sorted(s.pairing.needs) == [1, 2, 4, 5]  # status, data and the unknown id: not responses
    assert s.pairing.ids == {1: 1, 2: 1, 4: 2, 5: 3}


def test_a_reused_id_pairs_with_the_last_request_before_the_response() -> None:
    cap = build(
        [
            connect(0),
            sub(1, V2_SUB % 5),
            frame(2, text=V2_ACK % ("BTC/USD", 5)),
            sub(10, V2_SUB.replace("subscribe", "unsubscribe") % 5),
            frame(11, text=V2_ACK.replace("subscribe", "unsubscribe") % ("BTC/USD", 5)),
            frame(12, text=V2_ACK % ("ETH/USD", 6)),  # its request is recorded 70 ms later: not its answer
            sub(13, V2_SUB % 7),
            sub(82, V2_SUB % 6),
            frame(90, text=V2_ACK % ("ETH/USD", 7)),
            frame(92, text=V2_ACK % ("BTC/USD", 8)),
            sub(93, V2_SUB % 8),  # recorded 1 ms after its ack (under write back-pressure): still its answer
        ]
    )
    s = cap.lines["a"].sessions[0]
    p = s.pairing
    assert [p.unit_request[p.needs[0][0]], p.unit_request[p.needs[1][0]]] == [0, 1]
    assert 2 not in p.needs and p.unit_request[p.needs[3][0]] == 2 and p.unit_request[p.needs[4][0]] == 4


V1_SUB = '{"event":"%s","pair":["XBT/USD","ETH/USD"],"subscription":{"name":"book","depth":10}%s}'


def v1_status(status: str, pair: str, reqid: int | None = None) -> str:
    rid = "" if reqid is None else f',"reqid":{reqid}'
    head = '{"channelID":42,"channelName":"book-10","event":"subscriptionStatus","pair":"' + pair + '"'
    return head + rid + ',"status":"' + status + '","subscription":{"depth":10,"name":"book"}}'


def test_v1_pairs_by_reqid_else_by_event_name_and_pair_in_order() -> None:
    cap = build(
        [
            connect(0, p="v1"),
            frame(1, text='{"connectionID":1,"event":"systemStatus","status":"online","version":"1.9.1"}'),
            sub(2, V1_SUB % ("subscribe", ',"reqid":4')),
            frame(3, text=v1_status("subscribed", "ETH/USD", 4)),
            frame(4, text=v1_status("subscribed", "XBT/USD", 4)),
            frame(5, text='[42,{"a":[["1.0","2.0","3.0"]]},"book-10","XBT/USD"]'),
            frame(6, text=v1_status("unsubscribed", "XBT/USD")),  # Kraken dropped it: nobody asked
            sub(100, V1_SUB % ("unsubscribe", "")),  # no reqid: answered by (event, name, pair), in order
            frame(101, text=v1_status("unsubscribed", "XBT/USD")),
            frame(102, text=v1_status("unsubscribed", "ETH/USD")),
            frame(103, text=v1_status("unsubscribed", "ETH/USD")),  # a second one: nothing left to answer
            sub(104, '{"event":"ping","reqid":9}'),
            frame(105, text='{"event":"pong","reqid":9}'),
            frame(106, text='{"errorMessage":"Malformed request","event":"error","reqid":4}'),
        ]
    )
    s = cap.lines["a"].sessions[0]
    assert units_of(cap, 1) == [("subscribe", "book", "ETH/USD")]
    assert units_of(cap, 2) == [("subscribe", "book", "XBT/USD")]
    assert units_of(cap, 5) == [("unsubscribe", "book", "XBT/USD")]
    assert units_of(cap, 6) == [("unsubscribe", "book", "ETH/USD")]
    assert units_of(cap, 8) == [("ping", "", "")]
    assert units_of(cap, 9) == [("subscribe", "book", "XBT/USD"), ("subscribe", "book", "ETH/USD")]  # whole request
    assert sorted(s.pairing.needs) == [1, 2, 5, 6, 8, 9]  # not the drop (4) nor the second ETH/USD (7)
    assert s.pairing.ids == {1: 4, 2: 4, 8: 9, 9: 4}  # the id-less answers have no id to rewrite


def test_futures_pairs_by_event_feed_and_product_in_order() -> None:
    cap = build(
        [
            connect(0, p="futures"),
            frame(1, text='{"event":"info","version":1}'),
            sub(2, '{"event":"subscribe","feed":"heartbeat"}'),
            sub(3, '{"event":"subscribe","feed":"book","product_ids":["PF_XBTUSD","PF_ETHUSD"]}'),
            frame(4, text='{"event":"subscribed","feed":"heartbeat"}'),
            frame(5, text='{"event":"subscribed","feed":"book","product_ids":["PF_XBTUSD","PF_ETHUSD"]}'),
            frame(6, text='{"feed":"book_snapshot","product_id":"PF_XBTUSD","seq":1,"bids":[],"asks":[]}'),
            sub(7, '{"event":"unsubscribe","feed":"book","product_ids":["PF_XBTUSD"]}'),
            frame(8, text='{"event":"unsubscribed","feed":"book","product_id":"pf_xbtusd"}'),
            frame(9, text='{"event":"subscribed_failed","feed":"trade","product_ids":["PF_XBTUSD"]}'),  # not asked
            frame(10, text='{"event":"alert","message":"Already subscribed to feed, re-requesting"}'),
        ]
    )
    s = cap.lines["a"].sessions[0]
    assert units_of(cap, 1) == [("subscribe", "heartbeat", "")]
    assert units_of(cap, 2) == [("subscribe", "book", "PF_XBTUSD"), ("subscribe", "book", "PF_ETHUSD")]
    assert units_of(cap, 4) == [("unsubscribe", "book", "PF_XBTUSD")]
    assert sorted(s.pairing.needs) == [1, 2, 4] and s.pairing.ids == {}


def test_a_response_waits_for_its_request_and_nothing_overtakes_it() -> None:
    cap = v2_session()
    sch = Schedule(cap)
    d = sch.assign("a", 0.0, "c")
    assert isinstance(d, Serve)
    pb = sch.play("a", "c", d.session)
    assert pb.due(0.0035) == [V2_STATUS.encode()]  # the ack at 3 ms waits: no request yet
    assert pb.paused and pb.waiting_for() == [(V2_SUB % 1).encode()]
    assert pb.due(0.006) == []  # the data frame at 5 ms does not overtake it
    assert pb.next_at() == pytest.approx(0.0035 + 2.0)  # the bound
    assert not pb.request(b'{"method":"subscribe","params":{"channel":"ticker","symbol":["BTC/USD"]},"req_id":1}')
    assert pb.paused and pb.unexpected == 1
    # the live request: another req_id, other key order, other symbol order
    live = b'{"req_id":1,"params":{"symbol":["ETH/USD","BTC/USD"],"depth":10,"channel":"book"},"method":"subscribe"}'
    assert pb.request(live) and not pb.paused
    assert pb.next_at() == pytest.approx(0.003)  # due at once
    assert pb.due(0.007) == [
        (V2_ACK % ("BTC/USD", 1)).encode(),
        (V2_ACK % ("ETH/USD", 1)).encode(),
        b'{"channel":"book","type":"update","data":[{"symbol":"BTC/USD"}]}',
    ]  # caught up at once, in recorded order
    assert (pb.pauses, pb.answered, pb.unanswered, pb.rewritten) == (1, 2, 0, 0)
    assert pb.paused_s == pytest.approx(0.0035)
    # a request sent before its response is due: no pause
    assert pb.request(b'{"method":"ping","req_id":2}')
    assert pb.due(0.0111) == [b'{"method":"pong","req_id":2,"time_in":"x","time_out":"y"}'] and pb.pauses == 1


def test_the_wait_is_bounded_then_the_response_goes_unanswered_and_its_request_is_given_up() -> None:
    cap = v2_session()
    sch = Schedule(cap, speed=2.0, response_wait=1.0)  # 1 capture second = 0.5 s at speed 2
    d = sch.assign("a", 0.0, "c")
    assert isinstance(d, Serve)
    pb = sch.play("a", "c", d.session)
    assert pb.due(0.002) == [V2_STATUS.encode()] and pb.paused
    assert pb.next_at() == pytest.approx(0.502)
    assert pb.due(0.5) == []
    # the wait ran out: the ack goes out, the other ack of that request without waiting again,
    # then the data frame; the pong (its ping never came) waits in turn
    got = pb.due(0.502)
    assert got == [(V2_ACK % ("BTC/USD", 1)).encode(), (V2_ACK % ("ETH/USD", 1)).encode(), got[2]]
    assert pb.paused and pb.unanswered == 2 and pb.pauses == 2
    assert pb.due(0.502 + 0.5)[0].startswith(b'{"method":"pong"')
    assert pb.unanswered == 3 and pb.paused  # and the unsubscribe ack after it
    # the given-up request is skipped: a late book request matches nothing, the unsubscribe does
    assert not pb.request((V2_SUB % 7).encode()) and pb.paused
    assert pb.request(b'{"method":"unsubscribe","params":{"channel":"book","symbol":["BTC/USD"]},"req_id":8}')
    assert not pb.paused and len(pb.due(1.1)) == 2 and pb.over(1.1)
    assert (pb.answered, pb.unanswered, pb.rewritten) == (1, 3, 1)


def test_no_wait_with_a_zero_response_wait() -> None:
    sch = Schedule(v2_session(), response_wait=0.0)
    d = sch.assign("a", 0.0, "c")
    assert isinstance(d, Serve)
    pb = sch.play("a", "c", d.session)
    assert len(pb.due(0.0225)) == 7 and pb.unanswered == 4  # as before pairing (the ack of id 99 is no response)
    with pytest.raises(ValueError):
        Schedule(v2_session(), response_wait=-1.0)


def test_a_paired_response_carries_the_live_request_id_and_every_other_byte() -> None:
    sch = Schedule(v2_session())
    d = sch.assign("a", 0.0, "c")
    assert isinstance(d, Serve)
    pb = sch.play("a", "c", d.session)
    # the live relay numbers its own requests: the book request is its 12, its ping its 11
    assert pb.request(b'{"method":"ping","req_id":11}')
    assert pb.request(b'{"method":"subscribe","params":{"channel":"book","symbol":["BTC/USD"],"depth":10},"req_id":12}')
    assert pb.request(b'{"method":"subscribe","params":{"channel":"book","symbol":["ETH/USD"],"depth":10},"req_id":13}')
    got = pb.due(0.012)
    assert got[1:3] == [(V2_ACK % ("BTC/USD", 12)).encode(), (V2_ACK % ("ETH/USD", 13)).encode()]
    assert got[4] == b'{"method":"pong","req_id":11,"time_in":"x","time_out":"y"}'
    assert pb.rewritten == 3


def test_the_id_rewrite_substitutes_that_one_number() -> None:
    raw = b'{"method":"subscribe","result":{"n":1},"req_id" : 1,"time_in":"2024-01-01T00:00:01Z"}'
    assert rewrite_id("v2", raw, 1, 1234) == raw.replace(b'"req_id" : 1,', b'"req_id" : 1234,')
    assert rewrite_id("v2", raw, 2, 5) == raw  # not its id: unchanged
    assert rewrite_id("v1", b'{"event":"pong","reqid":10}', 10, 3) == b'{"event":"pong","reqid":3}'
    assert rewrite_id("v1", b'{"event":"pong","reqid":101,"x":10}', 10, 3) == b'{"event":"pong","reqid":101,"x":10}'
    assert rewrite_id("futures", b'{"event":"subscribed"}', 1, 2) == b'{"event":"subscribed"}'


def test_live_requests_are_split_into_units_like_the_recorded_ones() -> None:
    ask = parse_request("v1", b'{"event":"subscribe","reqid":3,"subscription":{"name":"trade"},"pair":["B/C","A/C"]}')
    assert (
        ask is not None
        and ask.req_id == 3
        and ask.units == [("subscribe", "trade", "B/C"), ("subscribe", "trade", "A/C")]
    )
    ask = parse_request("futures", b'{"event":"subscribe","feed":"book","product_ids":["pf_xbtusd"]}')
    assert ask is not None and ask.req_id is None and ask.units == [("subscribe", "book", "PF_XBTUSD")]
    assert parse_request("v2", b'{"method":"ping"}') is not None
    assert parse_request("v2", b"[1,2]") is None and parse_request("v1", b'{"event":"heartbeat"}') is None
    assert parse_request("v2", b"not json") is None


# -- the server ---------------------------------------------------------------------------------
def _args(paths: list[str], **kw: Any) -> argparse.Namespace:
    base: dict[str, Any] = dict(ports="0", lines=None, host="127.0.0.1", speed=1.0, start=None, end=None, no_wait=False)
    base.update(response_wait=2.0)
    return argparse.Namespace(paths=paths, close_grace=5.0, verbose=False, **{**base, **kw})


def test_cli_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert replay_main(_args([str(tmp_path)])) == 2  # no capture files
    w = CaptureWriter(tmp_path)
    w.record("a", "connect", p="v2", url="ws://x/v2", egress=None)
    w.record("a", "frame", b"{}")
    w.close()
    assert replay_main(_args([str(tmp_path)], lines="nope")) == 2
    assert replay_main(_args([str(tmp_path)], ports="1,2")) == 2
    assert replay_main(_args([str(tmp_path)], start="later")) == 2
    assert replay_main(_args([str(tmp_path)], response_wait=-1.0)) == 2
    assert "kraken-relay replay:" in capsys.readouterr().err
    schedule, ports = load_schedule(_args([str(tmp_path)], ports="18000"))
    assert list(schedule.lines) == ["a"] and ports == [18000] and schedule.response_wait == 2.0
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    schedule, _ = load_schedule(parser.parse_args([str(tmp_path), "--response-wait", "0.5"]))
    assert schedule.response_wait == 0.5


async def test_server_holds_refuses_busy_and_sends_invalid_utf8_as_recorded(tmp_path: Path) -> None:
    """Raw websockets client against the server: 503 as recorded, a held handshake, the frames
    byte for byte (one not valid UTF-8) and the recorded 1001."""
    from websockets.asyncio.client import connect as ws_connect
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    cap = build(
        [
            rec(0, "a", "connect_failed", reason="http 503"),
            connect(300),
            rec(310, "a", "frame", b'{"x":"\xff"}'),
            frame(320, text='{"y":1}'),
            disconnect(400),
        ]
    )
    said: list[str] = []
    server = ReplayServer(Schedule(cap), [0], close_grace=1.0, log=said.append)
    await server.start()
    try:
        url = server.urls()["a"]
        assert url.endswith("/v2") and server.config_lines()[1] == f"  - {{name: a, url: {url}}}"
        with pytest.raises(InvalidStatus) as err:
            await ws_connect(url)
        assert err.value.response.status_code == 503  # the clock started at 0: the 503 is ahead
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        async with ws_connect(url, open_timeout=5) as ws:
            held = loop.time() - t0
            with pytest.raises(InvalidStatus):  # one session per line
                await ws_connect(url)
            got = [await ws.recv(decode=False), await ws.recv(decode=False)]
            with pytest.raises(ConnectionClosed):
                await ws.recv()
            assert ws.close_code == 1001 and ws.close_reason == "CloudFlare WebSocket proxy restarting"
        assert got == [b'{"x":"\xff"}', b'{"y":1}']
        assert 0.2 < held < 1.0
        await asyncio.wait_for(server.wait(), 5)
    finally:
        await server.stop()
    assert any("session 0 end: closed 1001" in s for s in said), said


async def test_server_end_closes_1001_and_a_relay_closed_session_waits_for_the_client() -> None:
    from websockets.asyncio.client import connect as ws_connect
    from websockets.exceptions import ConnectionClosed

    async def frames_then_close(url: str) -> tuple[list[bytes], int | None, str | None]:
        got: list[bytes] = []
        async with ws_connect(url, open_timeout=5) as ws:
            with contextlib.suppress(ConnectionClosed):
                while True:
                    got.append(await asyncio.wait_for(ws.recv(decode=False), 5))
            return got, ws.close_code, ws.close_reason

    cap = three_sessions()
    # --no-wait and --end 0.25 s: the clock runs from the start, the socket is closed 1001 at the end
    server = ReplayServer(Schedule(cap, end_ns=parse_when("0.25", cap.first_ns)), [0], wait=False, log=None)
    await server.start()
    try:
        got, code, reason = await frames_then_close(server.urls()["a"])
        assert got == [b"10", b"110", b"210"] and (code, reason) == (1001, "replay ended")
        await asyncio.wait_for(server.wait(), 5)
    finally:
        await server.stop()
    # recorded as closed by the relay: after the last frame, wait for the client, then close 1000
    cap = build([connect(0), frame(10), disconnect(50, code=None, by="relay")])
    server = ReplayServer(Schedule(cap), [0], close_grace=0.2, log=None)
    await server.start()
    try:
        got, code, _ = await frames_then_close(server.urls()["a"])
        assert got == [b"f"] and code == 1000
        await asyncio.wait_for(server.wait(), 5)
    finally:
        await server.stop()
    assert server.endings == [("a", 0, "client did not close within 0.2s: closed 1000")]


async def test_server_sends_an_ack_only_after_its_request_and_with_the_live_id() -> None:
    """Raw websockets client: the ack is withheld until the client sends the request, then comes
    with the client's req_id; unasked, it comes when the wait runs out."""
    from websockets.asyncio.client import connect as ws_connect
    from websockets.exceptions import ConnectionClosed

    data = b'{"channel":"book","type":"update","data":[{"symbol":"BTC/USD"}]}'
    recs = [connect(0), frame(1, text=V2_STATUS), sub(2, V2_SUB % 1)]
    recs += [frame(3, text=V2_ACK % ("BTC/USD", 1)), frame(4, text=V2_ACK % ("ETH/USD", 1))]
    recs += [frame(5, text=data.decode()), disconnect(100)]
    live = b'{"method":"subscribe","params":{"channel":"book","symbol":["BTC/USD","ETH/USD"],"depth":10},"req_id":41}'

    async def rest(ws: Any) -> list[bytes]:
        got: list[bytes] = []
        with contextlib.suppress(ConnectionClosed):
            while True:
                got.append(await asyncio.wait_for(ws.recv(decode=False), 5))
        return got

    server = ReplayServer(Schedule(build(recs), response_wait=10.0), [0], log=None)
    await server.start()
    try:
        async with ws_connect(server.urls()["a"], open_timeout=5) as ws:
            assert await ws.recv(decode=False) == V2_STATUS.encode()
            with pytest.raises(TimeoutError):  # the ack was due at 3 ms: withheld, and the data after it
                await asyncio.wait_for(ws.recv(decode=False), 0.3)
            await ws.send(live, text=True)
            got = await rest(ws)
            assert ws.close_code == 1001
        assert got == [(V2_ACK % ("BTC/USD", 41)).encode(), (V2_ACK % ("ETH/USD", 41)).encode(), data]
        await asyncio.wait_for(server.wait(), 5)
    finally:
        await server.stop()
    assert (server.rewritten["a"], server.unanswered["a"], server.unexpected_requests["a"]) == (2, 0, 0)

    server = ReplayServer(Schedule(build(recs), response_wait=0.3), [0], log=None)
    await server.start()
    try:
        loop = asyncio.get_running_loop()
        async with ws_connect(server.urls()["a"], open_timeout=5) as ws:
            t0 = loop.time()
            await ws.send(b'{"method":"ping","req_id":1}', text=True)  # not in the recording
            got = [await asyncio.wait_for(ws.recv(decode=False), 5) for _ in range(2)]
            waited = loop.time() - t0
            got += await rest(ws)
        assert got == [V2_STATUS.encode(), (V2_ACK % ("BTC/USD", 1)).encode(), (V2_ACK % ("ETH/USD", 1)).encode(), data]
        assert 0.25 < waited < 1.5
        await asyncio.wait_for(server.wait(), 5)
    finally:
        await server.stop()
    assert (server.rewritten["a"], server.unanswered["a"], server.unexpected_requests["a"]) == (0, 2, 1)


# -- end to end: record on the simulator, replay into a second relay -----------------------------
SYMBOLS = ["BTC/USD", "ETH/USD"]
V2_CHANNELS = {"book": {"symbols": SYMBOLS, "depth": 10}, "trade": {"symbols": SYMBOLS}, "instrument": False}


def frames_by_session(cap: Capture) -> dict[str, list[list[bytes]]]:
    return {n: [s.frames for s in h.sessions] for n, h in cap.lines.items()}


def endings(cap: Capture) -> dict[str, list[tuple[int | None, str | None]]]:
    return {n: [(s.end.code, s.end.by) for s in h.sessions] for n, h in cap.lines.items()}


async def replay_into_relay(
    recorded: Path,
    out: Path,
    config: Callable[[dict[str, str], dict[str, str]], dict[str, Any]],
    verifier: Verifier,
    endpoint: str,
    *,
    speed: float = 1.0,
) -> tuple[Capture, Capture, ReplayServer, dict[str, Any]]:
    """Serve `recorded` to a relay built from `config(urls, protocols)` (capturing to `out`), with a
    verifying client on its `endpoint` stack; stop the relay once its lines received every
    recorded frame. Returns (recorded, replayed, server, the client's report)."""
    capture = build(Reader([recorded]))
    server = ReplayServer(Schedule(capture, speed=speed), [free_port() for _ in capture.lines], close_grace=20.0)
    await server.start()
    protocols = {n: h.protocol for n, h in capture.lines.items()}
    relay = Relay(parse_config(config(server.urls(), protocols), env={}), server_port=0, http_port=0)
    expected = {n: sum(len(s.frames) for s in h.sessions) for n, h in capture.lines.items()}
    task: asyncio.Task[None] | None = None
    try:
        await relay.start()
        stack = relay.stack(endpoint)
        client = VerifyingClient(relay.server.url_for(stack.endpoint.path), verifier)
        task = asyncio.create_task(client.run())
        conns = {c.name: c for c in stack.pool.connections}
        await wait_for(lambda: all(conns[n].frames >= k for n, k in expected.items()), 20.0, "every recorded frame")
        await wait_for(lambda: verifier.book_frames > 20, 5.0, "the verifying client's books")
    finally:
        failed: list[BaseException] = []
        if task is not None:
            task.cancel()
            failed = [r for r in await asyncio.gather(task, return_exceptions=True) if isinstance(r, Exception)]
        await relay.stop()
        await asyncio.wait_for(server.wait(), 10.0)
        await server.stop()
    if failed:  # the verifying client crashed: after the cleanup above
        raise failed[0]
    return capture, build(Reader([out])), server, client.report()


def assert_reproduced(capture: Capture, replayed: Capture, server: ReplayServer) -> None:
    assert list(replayed.lines) == list(capture.lines)
    assert frames_by_session(replayed) == frames_by_session(capture)
    assert endings(replayed) == endings(capture)
    assert all(st.skipped == 0 for st in server.schedule.lines.values())


async def until_live_again(relay: Relay, line: str, connects: int) -> None:
    conn = next(c for s in relay.stacks for c in s.pool.connections if c.name == line)
    await wait_for(lambda: conn.connects >= connects and conn.state == "live", 10.0, f"{line} back")


@pytest.mark.slow
async def test_a_v2_incident_replays_frame_for_frame_with_its_disconnects(tmp_path: Path) -> None:
    recorded, out = tmp_path / "recorded", tmp_path / "replayed"
    sim_cfg = SimConfig(
        symbols=SYMBOLS, rate=150.0, trade_rate=15.0, seed=16, levels=50, lines=[LineConfig(), LineConfig()]
    )
    cfg = {"channels": V2_CHANNELS, "capture": {"dir": str(recorded)}}
    async with relay_on_sim(sim_cfg, cfg, ready=lambda r: r.ready()[0]) as (relay, sim):
        await asyncio.sleep(0.5)
        sim.inject(1, "close_1001")  # Cloudflare's proxy restart
        await until_live_again(relay, "line1", 2)
        await asyncio.sleep(0.5)
        sim.inject(0, "drop")  # the TCP connection lost, no close frame
        await until_live_again(relay, "line0", 2)
        await asyncio.sleep(0.5)

    def config(urls: dict[str, str], _protocols: dict[str, str]) -> dict[str, Any]:
        return {
            "upstreams": [{"name": n, "url": u} for n, u in urls.items()],
            "reconnect": FAST_RECONNECT,
            "channels": V2_CHANNELS,
            "capture": {"dir": str(out)},
        }

    capture, replayed, server, report = await replay_into_relay(recorded, out, config, V2Verifier(SYMBOLS), "v2")
    assert endings(capture) == {
        "line0": [(None, None), (1000, "relay")],
        "line1": [(1001, "server"), (1000, "relay")],
    }
    assert_reproduced(capture, replayed, server)
    how = {(n, i): h for n, i, h in server.endings}
    assert how[("line1", 0)] == "closed 1001 'CloudFlare WebSocket proxy restarting', as recorded"
    assert how[("line0", 0)] == "aborted (no close frame), as recorded"
    assert report["ok"] and not report["checksum_bad"] and not report["trade_gaps"], report


@pytest.mark.slow
async def test_a_v1_capture_replays_with_its_channel_ids(tmp_path: Path) -> None:
    recorded, out = tmp_path / "recorded", tmp_path / "replayed"
    pairs = ["XBT/USD", "ETH/USD"]

    def config(urls: list[str], capture_dir: Path) -> dict[str, Any]:
        return {
            "upstreams": [{"name": f"v1line{i}", "url": u, "protocol": "v1"} for i, u in enumerate(urls)],
            "v1": {"channels": {"book": {"symbols": pairs, "depth": 10}, "trade": {"symbols": pairs}}},
            "reconnect": FAST_RECONNECT,
            "capture": {"dir": str(capture_dir)},
        }

    async with Simulator(SimConfig(symbols=SYMBOLS, rate=150.0, seed=7, lines=[LineConfig(), LineConfig()])) as sim:
        relay = Relay(parse_config(config(sim.v1_urls, recorded), env={}), server_port=0, http_port=0)
        await relay.start()
        try:
            await wait_for(lambda: relay.ready()[0], 10.0, "the v1 relay")
            await asyncio.sleep(0.4)
            sim.inject(1, "drop")
            await until_live_again(relay, "v1line1", 2)
            await asyncio.sleep(0.4)
        finally:
            await relay.stop()

    capture, replayed, server, report = await replay_into_relay(
        recorded, out, lambda urls, _p: config(list(urls.values()), out), V1Verifier(pairs), "v1"
    )
    assert capture.lines["v1line0"].path == "/" and capture.lines["v1line0"].protocol == "v1"
    assert endings(capture)["v1line1"][0] == (None, None)
    assert_reproduced(capture, replayed, server)
    assert report["ok"] and report["checksums_ok"] > 10, report


@pytest.mark.slow
async def test_a_futures_capture_replays_at_twice_the_speed(tmp_path: Path) -> None:
    recorded, out = tmp_path / "recorded", tmp_path / "replayed"
    products = ["PF_XBTUSD"]

    def config(urls: list[str], capture_dir: Path) -> dict[str, Any]:
        return {
            "upstreams": [{"name": f"fut{i}", "url": u, "protocol": "futures"} for i, u in enumerate(urls)],
            "futures": {"channels": {"book": {"products": products}, "trade": {"products": products}}},
            "reconnect": FAST_RECONNECT,
            "capture": {"dir": str(capture_dir)},
        }

    fsim = FuturesSimulator(
        FuturesSimConfig(
            products=products, rate=150.0, seed=9, heartbeat_interval=0.2, lines=[LineConfig(), LineConfig()]
        )
    )
    await fsim.start()
    try:
        relay = Relay(parse_config(config(fsim.urls, recorded), env={}), server_port=0, http_port=0)
        await relay.start()
        try:
            await wait_for(lambda: relay.ready()[0], 10.0, "the futures relay")
            await asyncio.sleep(0.6)
            fsim.inject(0, "close_1001")
            await until_live_again(relay, "fut0", 2)
            await asyncio.sleep(0.6)
        finally:
            await relay.stop()
    finally:
        await fsim.stop()

    capture, replayed, server, report = await replay_into_relay(
        recorded,
        out,
        lambda urls, _p: config(list(urls.values()), out),
        FuturesVerifier(products),
        "futures",
        speed=2.0,
    )
    assert capture.lines["fut0"].path == "/ws/v1" and endings(capture)["fut0"][0] == (1001, "server")
    assert_reproduced(capture, replayed, server)
    assert report["ok"] and not report["seq_errors"], report
