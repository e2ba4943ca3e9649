"""The package's verifying clients (relay.verify): they pass a valid feed and catch what a
strategy must never receive (a wrong checksum, an update before its snapshot, a skipped or
repeated trade, a seq gap)."""

from __future__ import annotations

import json

from relay.core.outputs import MergeSettings
from relay.protocols.spot_v1.endpoint import V1Endpoint
from relay.protocols.spot_v1.merge import V1Merge
from relay.verify import FuturesVerifier, V1Verifier, V2Verifier
from tests.kit.paths import v2_wire_frames


def test_v2_real_capture_verifies_and_a_changed_quantity_is_caught():
    frames = v2_wire_frames()
    v = V2Verifier(["BTC/USD"], depth=10)
    for raw in frames:
        v.feed(raw)
    assert v.ok and v.checksums_ok == len(frames) and v.book_frames == len(frames)
    bad = V2Verifier(["BTC/USD"], depth=10)
    msg = json.loads(frames[5])
    level = (msg["data"][0].get("bids") or msg["data"][0]["asks"])[0]
    level["qty"] = level["qty"] + 1.0 if level["qty"] else 1.0
    for raw in [*frames[:5], json.dumps(msg).encode()]:
        bad.feed(raw)
    assert not bad.ok and len(bad.checksum_bad) == 1


def test_v2_update_before_snapshot_is_an_error():
    frames = v2_wire_frames()
    v = V2Verifier(["BTC/USD"], depth=10)
    v.feed(frames[1])
    assert not v.ok and v.updates_before_snapshot == 1


def _trades(ids: list[int], snapshot: bool = False) -> bytes:
    data = [{"symbol": "BTC/USD", "trade_id": i, "price": 1.0, "qty": 1.0} for i in ids]
    return json.dumps({"channel": "trade", "type": "snapshot" if snapshot else "update", "data": data}).encode()


def test_v2_trades_gaps_and_duplicates_are_caught_but_a_snapshot_overlap_is_not():
    v = V2Verifier(["BTC/USD"])
    for raw in (_trades([1, 2, 3], snapshot=True), _trades([4]), _trades([2, 3, 4], snapshot=True), _trades([5])):
        v.feed(raw)
    assert v.trade_count == 5 and v.trade_dups == 0 and v.trade_gaps == []
    v.feed(_trades([5]))
    v.feed(_trades([8]))
    assert v.trade_dups == 1 and v.trade_gaps == [("BTC/USD", 6, 7)] and not v.ok


def test_v1_endpoint_frames_verify_and_a_corrupted_checksum_is_caught():
    """Frames from the relay's own v1 endpoint (a merge fed a real capture) pass the verifier."""
    from tests.protocols.spot_v1.helpers import FakeSession, sdk_frames

    merge = V1Merge(MergeSettings(book_depth=10))
    up = merge.add_upstream("a")
    merge.upstream_up(up, 0.0)
    ep = V1Endpoint(merge, {"book": ["XBT/USD"]}, 10)
    client = FakeSession(ep.source)
    ep.add_client(client)
    v = V1Verifier(["XBT/USD"], depth=10, trades=False)
    frames = sdk_frames()
    merge.feed(up, frames[0], 0.0)
    ep.publish(merge.take())
    for req in v.requests():
        ep.handle_message(client, req)
    for raw in frames[1:300]:
        merge.feed(up, raw, 0.0)
        ep.publish(merge.take())
    for out in client.frames:
        v.feed(out)
    assert v.ok and v.snapshots == 1 and v.checksums_ok > 50, v.report()
    update = next(f for f in reversed(client.frames) if b'"c"' in f)
    msg = json.loads(update)
    for part in msg[1:-2]:
        if "c" in part:
            part["c"] = str((int(part["c"]) + 1) % 2**32)
    v.feed(json.dumps(msg).encode())
    assert not v.ok and len(v.checksum_bad) == 1


def test_futures_seq_gap_and_duplicate_trade_are_caught():
    v = FuturesVerifier(["PF_XBTUSD"])
    snap = {
        "feed": "book_snapshot",
        "product_id": "PF_XBTUSD",
        "seq": 10,
        "bids": [{"price": 1.0, "qty": 2.0}],
        "asks": [],
    }
    v.feed(json.dumps(snap))
    v.feed(json.dumps({"feed": "book", "product_id": "PF_XBTUSD", "side": "buy", "seq": 11, "price": 1.0, "qty": 0}))
    v.feed(json.dumps({"feed": "trade_snapshot", "product_id": "PF_XBTUSD", "trades": [{"uid": "a"}, {"uid": "b"}]}))
    v.feed(json.dumps({"feed": "trade", "product_id": "PF_XBTUSD", "uid": "c"}))
    assert v.ok and v.deltas == 1 and v.trade_count == 3 and v.books["PF_XBTUSD"]["bids"] == {}
    v.feed(json.dumps({"feed": "book", "product_id": "PF_XBTUSD", "side": "sell", "seq": 13, "price": 2.0, "qty": 1}))
    v.feed(json.dumps({"feed": "trade", "product_id": "PF_XBTUSD", "uid": "c"}))
    assert v.seq_errors == [("PF_XBTUSD", 11, 13)] and v.trade_dups == 1 and not v.ok
