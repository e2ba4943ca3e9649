"""Reconnect delays, stagger and the per-egress attempt budget, on a fake clock."""

from __future__ import annotations

import heapq

import pytest

from relay.config import BudgetConfig, ReconnectConfig, UpstreamConfig
from relay.upstream.backoff import ReconnectPolicy, Stagger
from relay.upstream.budget import AttemptBudget, AttemptGate, BudgetRegistry, egress_of


def test_delays_grow_with_full_jitter_and_stay_capped() -> None:
    pol = ReconnectPolicy(ReconnectConfig(initial_delay=0.5, max_delay=8.0))
    delays = [pol.next_delay(float(i), "refused") for i in range(200)]
    assert all(0 <= d <= 8.0 for d in delays)
    assert all(d <= 0.5 for d in delays[:1])  # first retry is quick (after a random drop)
    assert max(delays[10:]) > 4.0  # grew towards the cap
    assert len({round(d, 6) for d in delays}) > 150  # jittered, so lines do not sync up


def test_429_backs_off_to_at_least_max_delay() -> None:
    pol = ReconnectPolicy(ReconnectConfig(initial_delay=0.1, max_delay=3.0))
    assert pol.next_delay(0.0, "429") >= 3.0


def test_maintenance_spaces_attempts_at_least_maintenance_delay() -> None:
    pol = ReconnectPolicy(ReconnectConfig(initial_delay=0.1, max_delay=30.0, maintenance_delay=7.0))
    assert all(pol.next_delay(float(i), "1013 Market data unavailable", maintenance=True) >= 7.0 for i in range(20))


def test_counter_resets_only_after_a_stable_connection() -> None:
    pol = ReconnectPolicy(ReconnectConfig(initial_delay=1.0, max_delay=1000.0), stable_after=10.0)
    for i in range(8):
        pol.next_delay(float(i), "refused")
    assert pol.failures == 8
    pol.on_connected(100.0)
    pol.next_delay(101.0, "1006")  # dropped after 1 s: still backing off
    assert pol.failures == 9
    pol.on_connected(200.0)
    assert pol.next_delay(260.0, "1006") <= 1.0  # was up a minute: start again from the bottom
    assert pol.failures == 1


def test_stagger_keeps_attempts_apart() -> None:
    st = Stagger(1.0)
    assert st.reserve(10.0) == 0.0
    assert st.reserve(10.0) == pytest.approx(1.0)
    assert st.reserve(10.5) == pytest.approx(1.5)
    assert st.reserve(20.0) == 0.0


def test_budget_sliding_window() -> None:
    b = AttemptBudget(3, 10.0)
    assert [b.try_acquire(t) for t in (0.0, 1.0, 2.0)] == [0.0, 0.0, 0.0]
    assert b.try_acquire(3.0) == pytest.approx(7.0)
    assert b.try_acquire(10.0) == 0.0  # the attempt at t=0 left the window
    assert b.used(10.0) == 3


def test_gate_staggers_lines_then_takes_from_the_budget() -> None:
    budget, stagger = AttemptBudget(2, 10.0), Stagger(1.0)
    a, b, c = (AttemptGate(stagger, budget) for _ in range(3))
    assert a.poll(0.0) == 0.0  # go
    assert b.poll(0.0) == pytest.approx(1.0) and not b.budget_limited  # staggered
    assert b.poll(1.0) == 0.0
    assert c.poll(1.0) == pytest.approx(1.0)
    assert c.poll(2.0) == pytest.approx(8.0) and c.budget_limited  # budget spent: wait for the window
    assert budget.used(2.0) == 2


def test_429_blocks_the_whole_address() -> None:
    b = AttemptBudget(100, 600.0)
    b.block(30.0)
    assert b.try_acquire(10.0) == pytest.approx(20.0)
    assert b.try_acquire(30.0) == 0.0


def test_egress_shared_by_source_address_and_proxy() -> None:
    reg = BudgetRegistry(BudgetConfig(attempts=5, window=60))
    a = UpstreamConfig(name="a", url="wss://ws.kraken.com/v2")
    b = UpstreamConfig(name="b", url="wss://beta-ws.kraken.com/v2")
    c = UpstreamConfig(name="c", url="wss://ws.kraken.com/v2", source_address="10.0.0.2")
    d = UpstreamConfig(name="d", url="wss://ws.kraken.com/v2", proxy="http://10.9.9.9:3128", source_address="10.0.0.2")
    assert reg.for_upstream(a) is reg.for_upstream(b)
    assert reg.for_upstream(c) is not reg.for_upstream(a)
    assert egress_of(d) == "proxy:10.9.9.9:3128"
    assert reg.for_upstream(d) is not reg.for_upstream(c)


def _storm(n_lines: int, seconds: float, budget_cfg: BudgetConfig, rc: ReconnectConfig) -> list[float]:
    """Every attempt of every line is refused for `seconds`. Each line runs the same loop as
    UpstreamConnection.run (policy delay, then AttemptGate.poll until it says go) on a
    discrete-event clock. Returns the attempt times."""
    budget = AttemptBudget(budget_cfg.attempts, budget_cfg.window)
    stagger = Stagger(rc.stagger)
    gates = [AttemptGate(stagger, budget) for _ in range(n_lines)]
    policies = [ReconnectPolicy(rc) for _ in range(n_lines)]
    events = [(0.0, i) for i in range(n_lines)]
    heapq.heapify(events)
    attempts: list[float] = []
    while events:
        now, i = heapq.heappop(events)
        if now > seconds:
            break
        wait = gates[i].poll(now)
        if wait > 0:
            heapq.heappush(events, (now + wait, i))
            continue
        attempts.append(now)
        heapq.heappush(events, (now + policies[i].next_delay(now, "refused"), i))
    return attempts


def test_refusal_storm_of_five_minutes_stays_within_the_budget() -> None:
    budget = BudgetConfig(attempts=20, window=60.0)
    rc = ReconnectConfig(initial_delay=0.1, max_delay=2.0, stagger=0.2)
    attempts = _storm(3, 300.0, budget, rc)
    assert _max_in_window(attempts, budget.window) <= budget.attempts  # all 3 lines together
    assert len(attempts) >= 5 * budget.attempts * 0.9  # it never gave up
    assert all(b - a >= rc.stagger - 1e-9 for a, b in zip(attempts, attempts[1:]))  # never together


def test_default_budget_is_under_cloudflare_limit_in_a_storm() -> None:
    attempts = _storm(4, 1800.0, BudgetConfig(), ReconnectConfig(initial_delay=0.01, max_delay=0.5, stagger=0.0))
    assert _max_in_window(attempts, 600.0) == 100  # default 100 per 600 s; Cloudflare blocks at ~150


def _max_in_window(times: list[float], window: float) -> int:
    """Most attempts in any half-open window (t - window, t]."""
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - window + 1e-6:  # float noise of the fake clock
            j += 1
        best = max(best, i - j + 1)
    return best
