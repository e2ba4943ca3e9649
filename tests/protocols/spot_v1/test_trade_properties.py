"""Property: v1 trades from redundant lines (any batching, any interleaving, one line possibly cut
short) are published exactly once each and in exchange order, even when several trades have
identical content, as long as every line stays within the dedupe window."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.core.outputs import MergeSettings
from relay.protocols.spot_v1.merge import V1Merge
from tests.kit.props import capped


def _frame(cid: int, trades: list[bytes]) -> bytes:
    return b"[%d,[" % cid + b",".join(trades) + b'],"trade","XBT/USD"]'


@st.composite
def scenario(draw):
    # a small alphabet of contents, so identical trades (same price, volume, time) happen often
    n = draw(st.integers(1, 60))
    trades = [f'["{100 + draw(st.integers(0, 2))}.0","1.0","{i // 3}.000001","b","l",""]'.encode() for i in range(n)]
    lines = []
    for cid in (3, 9):
        cut = draw(st.integers(0, n)) if cid == 9 and draw(st.booleans()) else n  # line 2 may stop early
        sizes, i = [], 0
        while i < cut:
            k = draw(st.integers(1, 5))
            sizes.append(trades[i : min(cut, i + k)])
            i += k
        lines.append([_frame(cid, b) for b in sizes])
    order = draw(st.permutations([0] * len(lines[0]) + [1] * len(lines[1])))
    return trades, lines, order


@settings(max_examples=capped(2000))  # ~3 ms an example
@given(scenario())
def test_each_trade_once_in_order(sc):
    trades, lines, order = sc
    m = V1Merge(MergeSettings())
    ups = [m.add_upstream("a"), m.add_upstream("b")]
    pos = [0, 0]
    published: list[bytes] = []
    for which in order:
        m.feed(ups[which], lines[which][pos[which]], 0.0)
        pos[which] += 1
        for p in m.take():
            if p.channel == "trade":
                published += [orjson.dumps(t) for t in orjson.loads(p.frame)[1]]
    assert published == [orjson.dumps(orjson.loads(t)) for t in trades]
