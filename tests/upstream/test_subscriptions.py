"""The Sans-I/O subscription planner: batching, pacing, per-symbol acks, retries, resyncs."""

from __future__ import annotations

import orjson

from relay.config import parse_config
from relay.core.events import AckEvent
from relay.core.keys import SubKey
from relay.protocols.spot_v2.plan import desired_from_channels
from relay.protocols.spot_v2.spec import SPOT_V2
from relay.upstream.subscriptions import ACTIVE, SubscriptionPlanner

SYMS = [f"S{i}/USD" for i in range(5)]

V2_REQUESTS = {"encode_request": SPOT_V2.encode_request, "params_for": SPOT_V2.request_params}


def _planner(**kw) -> SubscriptionPlanner:
    keys = [SubKey("book", s, 10) for s in SYMS] + [SubKey("trade", s, 0) for s in SYMS]
    opts = dict(batch_size=2, requests_per_second=10.0, burst=1.0, retry_delay=1.0, resync_min_interval=1.0)
    opts.update(kw)
    p = SubscriptionPlanner(keys, **{**V2_REQUESTS, **opts})
    p.reset()
    return p


def _msgs(frames: list[bytes]) -> list[dict]:
    return [orjson.loads(f) for f in frames]


def _ack_all(p: SubscriptionPlanner, frames: list[bytes], now: float, reject: set[str] = frozenset()) -> None:
    for m in _msgs(frames):
        ch = m["params"]["channel"]
        for s in m["params"].get("symbol", [None]):
            ok = s not in reject
            p.on_ack(AckEvent(m["method"], ok, ch if ok else None, s, m["req_id"], None if ok else f"bad {s}"), now)


def _run(p: SubscriptionPlanner, t0: float, t1: float, reject: set[str] = frozenset()) -> list[dict]:
    """Poll every 10 ms, ack everything immediately; returns every request sent."""
    sent: list[dict] = []
    t = t0
    while t <= t1:
        frames = p.poll(t)
        _ack_all(p, frames, t, reject)
        sent += _msgs(frames)
        t = round(t + 0.01, 6)
    return sent


def test_desired_from_config() -> None:
    cfg = parse_config(
        {
            "upstreams": [{"name": "a", "url": "wss://ws.kraken.com/v2"}],
            "channels": {
                "book": {"symbols": ["BTC/USD"], "depth": 25},
                "trade": {"symbols": ["BTC/USD", "ETH/USD"]},
                "ohlc": {"symbols": ["BTC/USD"], "intervals": [1, 5]},
            },
        }
    )
    keys = desired_from_channels(cfg.channels)
    assert SubKey("instrument", "", 0) in keys
    assert SubKey("book", "BTC/USD", 25) in keys
    assert {k for k in keys if k.channel == "ohlc"} == {SubKey("ohlc", "BTC/USD", 1), SubKey("ohlc", "BTC/USD", 5)}


def test_batches_and_paces_requests() -> None:
    p = _planner()
    frames = p.poll(0.0)
    _ack_all(p, frames, 0.0)
    first = _msgs(frames)
    assert len(first) == 1  # burst of 1: the token bucket paces the rest
    sent = first + _run(p, 0.01, 1.0)
    assert len(sent) == 6  # 5 book symbols in batches of 2 -> 3 requests, same for trade
    assert all(len(m["params"]["symbol"]) <= 2 for m in sent)
    books = [m for m in sent if m["params"]["channel"] == "book"]
    assert all(m["params"]["depth"] == 10 and m["params"]["snapshot"] is True for m in books)
    trades = [m for m in sent if m["params"]["channel"] == "trade"]
    assert all(m["params"]["snapshot"] is True for m in trades)  # trades missed while down come back
    assert p.settled() and set(p.states().values()) == {ACTIVE}


def test_pacing_rate_is_respected() -> None:
    p = _planner(batch_size=1, requests_per_second=5.0)
    sent = _run(p, 0.0, 1.0)
    assert 5 <= len(sent) <= 6  # 1 token at start + 5/s


def test_rejected_symbol_retried_with_growing_delay_without_blocking_others() -> None:
    p = _planner(batch_size=5)
    sent = _run(p, 0.0, 0.5, reject={"S2/USD"})
    assert p.states()["book:S2/USD:10"] == "retry"
    assert p.states()["book:S0/USD:10"] == ACTIVE and p.states()["trade:S4/USD"] == ACTIVE
    assert p.rejected()["book:S2/USD:10"] == "bad S2/USD"
    times = []
    t = 0.5
    while t < 8.0:
        for m in _msgs(p.poll(t)):
            if m["params"]["channel"] == "book":
                times.append(t)
            assert m["params"]["symbol"] == ["S2/USD"]  # only the rejected symbol is retried
            _ack_all(p, [orjson.dumps(m)], t, reject={"S2/USD"})
        t = round(t + 0.01, 6)
    # retry_delay 1 s, growing: 1, 2, 4 ...
    assert len(times) == 3
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert gaps[1] > gaps[0] * 1.5
    assert sent  # sanity


def test_missing_ack_counts_as_rejection() -> None:
    p = _planner(ack_timeout=0.3, batch_size=10)
    p.poll(0.0)  # sent, never acknowledged
    p.poll(0.31)
    assert p.last_timeouts and all(err == "no acknowledgement" for _, err in p.last_timeouts)
    assert p.states()["book:S0/USD:10"] == "retry"


def test_reset_restores_exactly_the_same_subscriptions() -> None:
    p = _planner()
    first = _run(p, 0.0, 1.0)
    p.disconnected()
    p.reset()
    second = _run(p, 2.0, 3.0)

    def norm(ms: list[dict]) -> set:
        return {(m["params"]["channel"], s, m["params"].get("depth")) for m in ms for s in m["params"]["symbol"]}

    assert norm(first) == norm(second) and len(norm(first)) == 10


def test_resync_unsubscribes_and_resubscribes_only_that_symbol() -> None:
    p = _planner()
    _run(p, 0.0, 1.0)
    assert p.resync("book", "S3/USD", 2.0) == "started"
    sent = _run(p, 2.0, 2.5)
    assert [(m["method"], m["params"]["symbol"]) for m in sent] == [
        ("unsubscribe", ["S3/USD"]),
        ("subscribe", ["S3/USD"]),
    ]
    assert sent[0]["params"]["depth"] == 10  # unsubscribe repeats the depth
    assert p.states()["book:S3/USD:10"] == ACTIVE


def test_repeated_resyncs_are_spaced_with_backoff() -> None:
    p = _planner(resync_min_interval=1.0, requests_per_second=100.0)
    _run(p, 0.0, 0.5)
    starts = []
    t = 1.0
    while t < 12.0:
        r = p.resync("book", "S1/USD", t)  # a mismatch on every frame
        if r == "started":
            starts.append(t)
        for m in _msgs(p.poll(t)):
            _ack_all(p, [orjson.dumps(m)], t)
            if m["method"] == "unsubscribe" and (not starts or starts[-1] != t):
                starts.append(t)  # a deferred resync started from poll
        t = round(t + 0.05, 6)
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert len(starts) >= 3
    assert all(g >= 0.99 for g in gaps)
    assert gaps[-1] >= 3.9  # 1, 2, 4 ... doubles
    assert len(starts) <= 5  # not one per bad frame: never trips Exceeded msg rate


def test_resync_unknown_and_in_progress() -> None:
    p = _planner()
    assert p.resync("book", "NOPE/USD", 0.0) == "unknown"
    p.poll(0.0)
    assert p.resync("book", "S0/USD", 0.0) == "in_progress"  # its subscribe is still in flight


def test_already_subscribed_error_unsubscribes_first() -> None:
    p = _planner(batch_size=10)
    frames = p.poll(0.0)
    m = _msgs(frames)[0]
    for s in m["params"]["symbol"]:
        p.on_ack(AckEvent("subscribe", s != "S0/USD", "book", s, m["req_id"], "Already subscribed"), 0.0)
    sent = _run(p, 1.5, 3.0)
    s0 = [(x["method"]) for x in sent if x["params"]["channel"] == "book"]
    assert s0 == ["unsubscribe", "subscribe"]


def test_set_desired_adds_and_removes() -> None:
    p = _planner()
    _run(p, 0.0, 1.0)
    keep = [k for k in p.entries if k.symbol != "S4/USD"] + [SubKey("book", "NEW/USD", 10)]
    p.set_desired(keep)
    sent = _run(p, 2.0, 3.0)
    assert {(m["method"], tuple(m["params"]["symbol"])) for m in sent} == {
        ("unsubscribe", ("S4/USD",)),
        ("subscribe", ("NEW/USD",)),
    }
    assert "book:S4/USD:10" not in p.states() and p.states()["book:NEW/USD:10"] == ACTIVE


def test_instrument_has_no_symbol_list() -> None:
    p = SubscriptionPlanner([SubKey("instrument", "", 0)], **V2_REQUESTS)
    p.reset()
    (m,) = _msgs(p.poll(0.0))
    assert m["params"] == {"channel": "instrument", "snapshot": True}
    p.on_ack(AckEvent("subscribe", True, "instrument", None, m["req_id"]), 0.0)
    assert p.settled() and p.states() == {"instrument": ACTIVE}


def test_exceeded_msg_rate_slows_the_connection_down() -> None:
    p = _planner(batch_size=1, requests_per_second=10.0, burst=2.0)
    frames = p.poll(0.0)
    assert len(frames) == 2
    m = _msgs(frames)[0]
    p.on_ack(AckEvent("subscribe", False, None, m["params"]["symbol"][0], m["req_id"], "Exceeded msg rate"), 0.0)
    assert p.poll(0.25) == []  # normally 2 more requests by now
    assert p.next_wakeup(0.25) >= 0.29
    assert len(p.poll(0.31)) == 1
