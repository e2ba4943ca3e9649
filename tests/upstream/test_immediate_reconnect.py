"""Immediate reconnects after a live line drops (no jitter, no stagger), bounded; on a fake clock."""

from __future__ import annotations

import pytest

from relay.config import ReconnectConfig
from relay.upstream.backoff import ReconnectPolicy, Stagger
from relay.upstream.budget import AttemptBudget, AttemptGate


def live_session(pol: ReconnectPolicy, start: float, length: float, reason: str = "1006") -> float:
    pol.on_connected(start)
    return pol.next_delay(start + length, reason, was_live=True)


def test_a_live_line_that_drops_retries_at_once_then_backs_off_if_that_fails() -> None:
    pol = ReconnectPolicy(ReconnectConfig(initial_delay=0.5), stable_after=10.0)
    assert live_session(pol, 0.0, 60.0) == 0.0 and pol.immediate
    d = pol.next_delay(60.1, "refused")  # the proxy is still restarting: ordinary backoff from here
    assert 0.0 <= d <= 0.5 and not pol.immediate and pol.failures == 1


def test_immediate_retries_are_bounded_until_a_session_is_stable() -> None:
    pol = ReconnectPolicy(ReconnectConfig(initial_delay=0.5, immediate_reconnects=3), stable_after=10.0)
    flags = []
    t = 0.0
    for _ in range(6):  # goes live, drops after 2 s, again and again
        live_session(pol, t, 2.0)
        flags.append(pol.immediate)
        t += 3.0
    assert flags == [True, True, True, False, False, False]
    assert pol.failures == 3  # the later ones back off (and keep growing)
    live_session(pol, t, 30.0)  # a stable session renews them
    assert pol.immediate and pol.failures == 0


@pytest.mark.parametrize(
    "reason,maintenance,was_live",
    [
        ("1006", False, False),  # never went live (dropped while subscribing): back off
        ("1006", True, True),  # Kraken said maintenance: maintenance_delay
        ("429", False, True),
        ("1013 Market data unavailable", False, True),  # "try again later"
        ("1008 policy violation", False, True),
    ],
)
def test_no_immediate_retry_when_the_line_or_kraken_says_wait(reason: str, maintenance: bool, was_live: bool) -> None:
    pol = ReconnectPolicy(ReconnectConfig(initial_delay=0.5, max_delay=30.0), stable_after=10.0)
    pol.on_connected(0.0)
    d = pol.next_delay(60.0, reason, maintenance, was_live=was_live)
    assert not pol.immediate
    if maintenance:
        assert d >= 5.0
    if reason == "429":
        assert d >= 30.0


def test_zero_disables_immediate_retries() -> None:
    pol = ReconnectPolicy(ReconnectConfig(immediate_reconnects=0), stable_after=10.0)
    live_session(pol, 0.0, 60.0)
    assert not pol.immediate and pol.failures == 1


def test_an_urgent_attempt_skips_the_stagger_but_not_the_budget() -> None:
    budget, stagger = AttemptBudget(2, 10.0), Stagger(1.0)
    a, b = AttemptGate(stagger, budget), AttemptGate(stagger, budget)
    assert a.poll(0.0) == 0.0
    assert b.poll(0.0) == pytest.approx(1.0)  # staggered while not urgent...
    assert b.poll(0.0, urgent=True) == 0.0  # ...at once when every line is down
    assert a.poll(0.5, urgent=True) == pytest.approx(9.5) and a.budget_limited  # the budget still applies
