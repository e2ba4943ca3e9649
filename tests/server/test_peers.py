"""The listener's per-address bookkeeping (Sans-I/O): handshake table with eviction, addresses
as limits see them, failed token attempts, the global budget's water level."""

from __future__ import annotations

from relay.server.listener import water_level
from relay.server.peers import Handshakes, TokenFailures, peer_key


def test_peer_key_groups_ipv6_by_64_and_unmaps_ipv4():
    assert peer_key("192.0.2.7") == "192.0.2.7"
    assert peer_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert peer_key("2001:db8:1:2:aaaa::1") == peer_key("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::/64"
    assert peer_key("2001:db8:1:3::1") != peer_key("2001:db8:1:2::1")
    assert peer_key(None) == ""


def test_full_table_evicts_the_largest_holder_not_the_small_ones():
    table = Handshakes(capacity=10, per_peer=2)
    for i in range(9):
        assert table.admit("a", f"a{i}") == (True, None)
    assert table.admit("b", "b0") == (True, None)  # room left: no eviction
    assert table.admit("b", "b1") == (True, "a0")  # full: a's oldest goes
    assert table.admit("b", "b2") == (False, None)  # b holds its share
    assert table.admit("a", "a9") == (False, None)  # the largest holder cannot grow
    assert table.admit("c", "c0") == (True, "a1")
    assert table.count == 10 and table.held("a") == 7 and table.held("b") == 2
    table.remove("a", "a1")  # idempotent: a1 is gone already
    assert table.count == 10
    table.remove("b", "b0")
    assert table.admit("a", "a10") == (True, None)


def test_full_table_of_fair_holders_refuses_newcomers():
    table = Handshakes(capacity=4, per_peer=2)
    for k in ("a", "b"):
        for i in range(2):
            table.admit(k, f"{k}{i}")
    assert table.admit("c", "c0") == (False, None)


def test_token_failures_lock_after_the_limit_and_expire():
    tf = TokenFailures(limit=3, window=10.0)
    for t in (0.0, 1.0, 2.0):
        assert tf.locked("a", t) == 0.0
        tf.failed("a", "a", "wrong", t)
    assert tf.locked("a", 2.5) == 7.5  # until the oldest counted failure is 10 s old
    assert tf.locked("b", 2.5) == 0.0
    assert tf.locked("a", 10.0) == 0.0
    tf.failed("a", "a", "wrong", 10.0)  # one more guess, then locked again until 11 s
    assert tf.locked("a", 10.5) == 0.5
    tf.prune(100.0)
    assert tf.locked("a", 100.0) == 0.0 and not tf._fails


def test_water_level():
    assert water_level([100, 10, 10], 60) == 40  # 40 + 10 + 10
    assert water_level([30, 30, 30], 60) == 20
    assert water_level([50, 0], 10) == 10
