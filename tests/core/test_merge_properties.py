"""Property tests: random delays, duplicates and drops of one stream over 2-3 upstreams.

With at least one upstream delivering everything, the published trades are exactly the full
trade_id sequence once each, and the published book is checksum-valid after every frame, only
ever shows states the exchange actually had, in order, and ends equal to the exchange's book.
"""

from __future__ import annotations

import heapq
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from relay.protocols.spot_v2.wire import encode_book, encode_elements
from tests.core.harness import VerifyingClient, new_merge
from tests.core.streams import book_stream, trade_frames
from tests.kit.props import capped

N_UPDATES = 40
STREAMS = {seed: book_stream(N_UPDATES, depth=10, seed=seed) for seed in range(8)}
TRADES = {seed: trade_frames(60, seed=seed) for seed in range(4)}

line_plan = st.fixed_dictionaries(
    {
        "delay": st.floats(0.0, 0.05),
        "jitter": st.floats(0.0, 0.02),
        "drop": st.sampled_from([0.0, 0.0, 0.05, 0.2]),
        "dup": st.sampled_from([0.0, 0.1]),
        "seed": st.integers(0, 2**16),
    }
)


def deliveries(n: int, plan: dict, complete: bool, dt: float = 0.01) -> list[tuple[float, int]]:
    """(time, frame index) for one line: ordered like TCP, with drops and duplicates."""
    rng = random.Random(plan["seed"])
    out: list[tuple[float, int]] = []
    t_last = 0.0
    for i in range(n):
        if not complete and rng.random() < plan["drop"]:
            continue
        t = max(t_last, i * dt + plan["delay"] + rng.random() * plan["jitter"])
        out.append((t, i))
        if rng.random() < plan["dup"]:
            out.append((t, i))
        t_last = t
    return out


@settings(max_examples=capped(1500))  # ~6 ms an example
@given(
    stream_seed=st.integers(0, 7),
    plans=st.lists(line_plan, min_size=2, max_size=3),
    complete=st.integers(0, 2),
)
def test_published_book_is_always_valid_and_never_regresses(stream_seed: int, plans: list[dict], complete: int) -> None:
    s = STREAMS[stream_seed]
    frames = [s.snapshot, *s.updates]
    books = s.books
    ts_index = {b.timestamp: i for i, b in enumerate(books)}
    m, ups = new_merge(len(plans))
    complete %= len(plans)
    queue: list[tuple[float, int, int, int]] = []  # (time, order, line, frame index; -1-j = snapshot of state j)
    order = 0
    for up, plan in zip(ups, plans):
        for t, i in deliveries(len(frames), plan, up == complete):
            queue.append((t, order, up, i))
            order += 1
    heapq.heapify(queue)
    pos = [-1] * len(ups)  # last canonical state index each line has delivered
    client = VerifyingClient()
    states_seen: list[int] = []
    while queue:
        t, _, up, i = heapq.heappop(queue)
        if i >= 0:
            raw, state = frames[i], i
        else:
            state = -1 - i
            b = books[state]
            raw = encode_book("BTC/USD", True, b.bids.best(), b.asks.best(), b.checksum, b.timestamp)
        m.feed(up, raw, t)
        pos[up] = max(pos[up], state)
        client.receive(pubs := m.take())
        for p in pubs:
            if p.channel == "book":
                j = ts_index[client.book.timestamp]
                assert client.book.same_levels(books[j]), "published a state the exchange never had"
                states_seen.append(j)
        for req in m.take_requests():  # the session resubscribes: Kraken answers with a snapshot
            m.symbol_resubscribing(req.upstream, req.channel, req.symbol, t)
            heapq.heappush(queue, (t + 0.001, order, req.upstream, -1 - max(pos[req.upstream], 0)))
            order += 1
    assert client.mismatches == 0
    assert states_seen == sorted(states_seen), "published book went backwards"
    assert client.book.same_levels(books[-1])


@given(
    trade_seed=st.integers(0, 3),
    plans=st.lists(line_plan, min_size=2, max_size=3),
    complete=st.integers(0, 2),
)
def test_published_trades_are_the_full_sequence_once_each(trade_seed: int, plans: list[dict], complete: int) -> None:
    tf = TRADES[trade_seed]
    m, ups = new_merge(len(plans), trade_gap_wait=10.0)
    complete %= len(plans)
    queue = []
    order = 0
    for up, plan in zip(ups, plans):
        for t, i in deliveries(len(tf), plan, up == complete):
            queue.append((t, order, up, i))
            order += 1
    queue.sort()
    client = VerifyingClient()
    # Every line subscribes with snapshot=true, as the upstream session does: Kraken opens the
    # stream with the last trades, which gives the merge its baseline whichever line is first.
    history = [
        b'{"symbol":"BTC/USD","side":"buy","price":1.0,"qty":1.00000000,"trade_id":%d}' % i for i in range(950, 1000)
    ]
    for up in ups:
        m.feed(up, encode_elements("trade", True, history), 0.0)
    assert m.take() == []  # history is for late joiners' snapshots, not republished
    for t, _, up, i in queue:
        m.feed(up, tf[i][1], t)
        m.tick(t)
        client.receive(m.take())
    expected = [tid for ids, _ in tf for tid in ids]
    assert client.trade_ids == expected
    assert m.counters.gaps_reported == 0


@settings(max_examples=capped(600))  # ~22 ms an example: a depth-100 stream built for each
@given(seed=st.integers(0, 10_000), depths=st.sets(st.sampled_from([10, 25]), min_size=1), late=st.integers(0, 60))
def test_depth_views_are_valid_for_clients_joining_at_any_time(seed: int, depths: set[int], late: int) -> None:
    """A client at depth 10 or 25 of a depth-100 book, joining with a snapshot at any point, holds
    exactly the top of the full book after every frame, and every checksum verifies."""
    s = book_stream(80, depth=100, seed=seed, deep=120)
    m, (a,) = new_merge(1, book_depth=100)
    m.feed(a, s.snapshot, 0.0)
    clients = {}
    for i, raw in enumerate(s.updates):
        if i == late:
            for d in depths:
                m.want_book_depth("BTC/USD", d)
                clients[d] = VerifyingClient(depth=d)
                clients[d].on_book(m.book_snapshot("BTC/USD", d))
        m.feed(a, raw, 0.001 * i)
        pubs = m.take()
        for d, c in clients.items():
            c.receive(pubs)
            full = s.books[i + 1]
            assert list(c.book.bids) == full.bids.best(d) and list(c.book.asks) == full.asks.best(d)
    assert all(c.mismatches == 0 for c in clients.values())
