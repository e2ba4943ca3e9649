"""Randomised streams through FuturesMerge: several lines with independent losses and
interleavings, resyncs answered like Kraken would (a fresh snapshot, then the following deltas).

Invariants at the client: seq contiguous between snapshots, a book always equal to the market's
at the client's seq, the final book equal to the market's; exactly one snapshot when no delta
was lost on every line (gaps filled across lines, never a re-base)."""

from __future__ import annotations

import random

import orjson
import pytest

from relay.core.outputs import MergeSettings
from relay.protocols.futures.merge import FuturesMerge
from tests.protocols.futures.capture import ClientView

P = "PF_XBTUSD"


def _market(rnd: random.Random, n: int) -> tuple[list[bytes], list[dict[float, float]], list[dict[float, float]]]:
    """n deltas (seq 101..100+n) and the book after each (index 0 = the initial book, seq 100)."""
    bids = {100.0 - i: 1.0 for i in range(1, 6)}
    asks = {100.0 + i: 1.0 for i in range(1, 6)}
    states_b, states_a = [dict(bids)], [dict(asks)]
    deltas = []
    for k in range(n):
        buy = rnd.random() < 0.5
        side = bids if buy else asks
        price = (100.0 - rnd.randint(1, 8)) if buy else (100.0 + rnd.randint(1, 8))
        qty = 0.0 if (price in side and rnd.random() < 0.3) else float(rnd.randint(1, 9))
        if qty == 0:
            side.pop(price, None)
        else:
            side[price] = qty
        deltas.append(
            orjson.dumps(
                {
                    "feed": "book",
                    "product_id": P,
                    "side": "buy" if buy else "sell",
                    "seq": 101 + k,
                    "price": price,
                    "qty": qty,
                    "timestamp": k,
                }
            )
        )
        states_b.append(dict(bids))
        states_a.append(dict(asks))
    return deltas, states_b, states_a


def _snapshot(i: int, states_b, states_a) -> bytes:
    return orjson.dumps(
        {
            "feed": "book_snapshot",
            "product_id": P,
            "timestamp": 0,
            "seq": 100 + i,
            "tickSize": None,
            "bids": [{"price": p, "qty": q} for p, q in sorted(states_b[i].items(), reverse=True)],
            "asks": [{"price": p, "qty": q} for p, q in sorted(states_a[i].items())],
        }
    )


def _run(seed: int, lines: int, loss: float, all_lost: bool) -> tuple[ClientView, FuturesMerge, list, list, int]:
    rnd = random.Random(seed)
    n = 400
    deltas, states_b, states_a = _market(rnd, n)
    merge = FuturesMerge()
    for i in range(lines):
        merge.add_upstream(f"l{i}")
        merge.upstream_up(i, 0.0)
    lost_everywhere = {rnd.randrange(50, n - 50)} if all_lost else set()
    # which lines lose each delta: a random subset, never all of them (except `lost_everywhere`)
    lost: list[set[int]] = []
    for c in range(n):
        if c in lost_everywhere:
            lost.append(set(range(lines)))
        elif c >= 20 and rnd.random() < loss:  # after every line's first snapshot (cursor < 20)
            lost.append(set(rnd.sample(range(lines), rnd.randint(1, lines - 1))))
        else:
            lost.append(set())
    # each line starts with a snapshot at a random early point, then the deltas after it
    cursors = [rnd.randrange(0, 20) for _ in range(lines)]
    queues: list[list[bytes]] = [[_snapshot(c, states_b, states_a)] for c in cursors]
    view = ClientView()
    now = 0.0
    for _ in range(100_000):
        if all(c >= n and not q for c, q in zip(cursors, queues)):
            break
        up = rnd.randrange(lines)  # lines interleave at random; each line keeps its own order
        if cursors[up] - min(cursors) > 30:  # bounded lag between lines (well within the gap wait)
            up = cursors.index(min(cursors))
        while not queues[up] and cursors[up] < n:
            c = cursors[up]
            cursors[up] += 1
            if up not in lost[c]:
                queues[up].append(deltas[c])
        if not queues[up]:
            continue
        now += 0.001
        merge.feed(up, queues[up].pop(0), now)
        merge.tick(now)
        for req in merge.take_requests():  # answered as Kraken does: snapshot now, deltas after it
            merge.symbol_resubscribing(req.upstream, req.channel, req.symbol, now)
            at = max(cursors)
            cursors[req.upstream] = at
            queues[req.upstream] = [_snapshot(at, states_b, states_a)]
        for pub in merge.take():
            if pub.channel == "book":
                view.feed(pub.frame)
                seq = view.books[P]["seq"]
                assert view.books[P]["bids"] == states_b[seq - 100] and view.books[P]["asks"] == states_a[seq - 100]
    for _ in range(20):  # let timers finish
        now += 0.2
        merge.tick(now)
        for pub in merge.take():
            if pub.channel == "book":
                view.feed(pub.frame)
    return view, merge, states_b, states_a, n


@pytest.mark.parametrize("seed", range(25))
def test_losses_on_some_lines_never_cost_a_snapshot(seed):
    lines = 2 + seed % 3
    view, merge, states_b, states_a, n = _run(seed, lines, loss=0.05, all_lost=False)
    assert view.seq_errors == []
    assert view.snapshots == {P: 1}
    assert view.books[P]["seq"] == 100 + n


@pytest.mark.parametrize("seed", range(25))
def test_a_delta_lost_on_every_line_rebases_with_a_correct_book(seed):
    view, merge, states_b, states_a, n = _run(seed, 2 + seed % 3, loss=0.03, all_lost=True)
    assert view.seq_errors == []
    assert view.snapshots[P] >= 2  # the gap could only be closed by a fresh snapshot
    assert merge.counters.gaps_reported >= 1


def _offset(raw: bytes, off: int) -> bytes:
    """The same event as numbered on a connection whose seq space is shifted by `off`."""
    msg = orjson.loads(raw)
    msg["seq"] += off
    return orjson.dumps(msg)


@pytest.mark.parametrize("seed", range(15))
def test_per_connection_seq_spaces_never_publish_a_wrong_book(seed):
    """If every connection numbered events its own way, copies are never mixed into the published
    stream: every published book equals the market's at that seq; failovers cost one snapshot."""
    rnd = random.Random(1000 + seed)
    n, lines = 300, 2 + seed % 2
    deltas, states_b, states_a = _market(rnd, n)
    offsets = [i * 1_000_000 for i in range(lines)]
    merge = FuturesMerge(MergeSettings(trade_gap_wait=0.02))  # 20 frames of this test's clock
    for i in range(lines):
        merge.add_upstream(f"l{i}")
        merge.upstream_up(i, 0.0)
    cursors = [rnd.randrange(0, 10) for _ in range(lines)]
    queues = [[_offset(_snapshot(c, states_b, states_a), offsets[i])] for i, c in enumerate(cursors)]
    view = ClientView()
    now = 0.0
    down_at = rnd.randrange(100, 200)  # the first line drops once, then comes back
    for _ in range(50_000):
        if all(c >= n and not q for c, q in zip(cursors, queues)):
            break
        up = rnd.randrange(lines)
        if cursors[up] - min(cursors) > 20:
            up = cursors.index(min(cursors))
        if up == 0 and cursors[0] == down_at:
            merge.upstream_down(0, now)
            merge.upstream_up(0, now)
            down_at = -1
            queues[0] = [_offset(_snapshot(cursors[0], states_b, states_a), offsets[0] + 500_000)]  # new numbering
            offsets[0] += 500_000
        while not queues[up] and cursors[up] < n:
            c = cursors[up]
            cursors[up] += 1
            if c < 10 or rnd.random() > 0.03:  # independent losses per line
                queues[up].append(_offset(deltas[c], offsets[up]))
        if not queues[up]:
            continue
        now += 0.001
        merge.feed(up, queues[up].pop(0), now)
        merge.tick(now)
        for req in merge.take_requests():
            merge.symbol_resubscribing(req.upstream, req.channel, req.symbol, now)
            cursors[req.upstream] = at = max(cursors)
            queues[req.upstream] = [_offset(_snapshot(at, states_b, states_a), offsets[req.upstream])]
        for pub in merge.take():
            if pub.channel != "book":
                continue
            view.feed(pub.frame)
            seq = view.books[P]["seq"]
            idx = (seq - 100) % 500_000  # every numbering is the market index shifted by its offset
            assert view.books[P]["bids"] == states_b[idx] and view.books[P]["asks"] == states_a[idx]
    assert view.seq_errors == []
    assert view.deltas > 100
