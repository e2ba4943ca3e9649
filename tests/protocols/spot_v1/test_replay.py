"""The real v1 captures replayed through the v1 merge and the v1 endpoint: every checksum a client
verifies must match, with one or two lines (each with its own upstream channel ids), at the
upstream depth and through shallower depth views, and with a corrupted line."""

from __future__ import annotations

import re

import orjson

from relay.core.outputs import MergeSettings
from relay.protocols.spot_v1.endpoint import V1Endpoint
from relay.protocols.spot_v1.merge import V1Merge
from tests.protocols.spot_v1.helpers import FakeSession, V1Checker, cryptofeed_frames, sdk_frames

_ID = re.compile(rb"^\[(\d+),")


def reid(raw: bytes, up: int) -> bytes:
    """Line `up`'s copy: each connection gets its own channel ids, as on Kraken."""
    return _ID.sub(lambda m: b"[%d," % (int(m.group(1)) * 7 + up), raw) if up else raw


def pairs_of(frames: list[bytes]) -> list[str]:
    out = []
    for raw in frames:
        if raw.startswith(b"{") and b'"subscriptionStatus"' in raw:
            out.append(orjson.loads(raw)["pair"])
    return out


def run(frames, depth, client_depths, lines=2, corrupt_line=None):
    pairs = pairs_of(frames)
    merge = V1Merge(MergeSettings(book_depth=depth))
    ups = [merge.add_upstream(f"line{i}") for i in range(lines)]
    ep = V1Endpoint(merge, {"book": pairs}, depth)
    clients = []
    for d in client_depths:
        s = FakeSession(ep.source)
        ep.add_client(s)
        ep.handle_message(
            s,
            orjson.dumps(
                {"event": "subscribe", "reqid": d, "pair": pairs, "subscription": {"name": "book", "depth": d}}
            ),
        )
        clients.append(s)
    now = 0.0
    n_updates = 0
    for i, raw in enumerate(frames):
        now += 0.001
        if raw.startswith(b"[") and b'"c":' in raw:
            n_updates += 1
        for up in ups:
            data = reid(raw, up)
            if up == corrupt_line and i % 97 == 0 and b'"c":"' in data:
                data = re.sub(rb'"c":"(\d+)"', lambda m: b'"c":"%d"' % (int(m.group(1)) ^ 1), data)
            merge.feed(up, data, now)
            ep.publish(merge.take(), now)
            merge.take_requests()
    checkers = []
    for s in clients:
        c = V1Checker()
        for f in s.frames:
            c.feed(f)
        checkers.append(c)
    return merge, n_updates, checkers


def test_cryptofeed_capture_depth_1000_two_lines_every_checksum_valid():
    frames = cryptofeed_frames()
    merge, n_updates, (full, ten) = run(frames, 1000, (1000, 10))
    assert n_updates == 4269
    assert full.bad == [] and ten.bad == []
    assert full.verified == 4269  # each update forwarded once, the copy from the other line dropped
    assert full.snapshots == 10
    assert ten.verified > 1000
    assert merge.upstream_stats[1].duplicates + merge.upstream_stats[0].duplicates >= 4269
    # channel ids are the relay's own, the same for every client, and named for the client's depth
    assert {n for n, _ in full.channels.values()} == {"book-1000"}
    assert {n for n, _ in ten.channels.values()} == {"book-10"}


def test_sdk_capture_depth_10_with_republish_levels():
    frames = sdk_frames()
    assert sum(1 for f in frames if b'"r"]' in f) > 200
    merge, n_updates, (c,) = run(frames, 10, (10,), lines=2)
    assert n_updates == 979
    assert c.bad == []
    assert c.verified == 979


def test_corrupted_line_never_reaches_the_client():
    frames = cryptofeed_frames()
    merge, _, (full,) = run(frames, 1000, (1000,), corrupt_line=1)
    assert full.bad == []
    assert full.verified >= 4269 - 5
    assert merge.upstream_stats[1].checksum_mismatches > 0
    assert merge.upstream_stats[0].checksum_mismatches == 0


def test_late_joiner_snapshot_keeps_level_times_and_verifies():
    frames = sdk_frames()
    merge = V1Merge(MergeSettings(book_depth=10))
    up = merge.add_upstream("a")
    for raw in frames[:500]:
        merge.feed(up, raw, 0.0)
    merge.take()
    ep = V1Endpoint(merge, {"book": ["XBT/USD"]}, 10)
    s = FakeSession(ep.source)
    ep.add_client(s)
    ep.handle_message(s, b'{"event":"subscribe","pair":["XBT/USD"],"subscription":{"name":"book","depth":10}}')
    for raw in frames[500:]:
        merge.feed(up, raw, 0.0)
        ep.publish(merge.take())
    c = V1Checker()
    for f in s.frames:
        c.feed(f)
    assert c.snapshots == 1 and c.bad == [] and c.verified > 400
    snap = orjson.loads(s.frames[1])
    # per-level times are the exchange's (epoch with µs), not a placeholder
    assert all(re.fullmatch(r"\d{10}\.\d{6}", lv[2]) for lv in snap[1]["as"] + snap[1]["bs"])
    assert len({lv[2] for lv in snap[1]["as"]}) > 1
