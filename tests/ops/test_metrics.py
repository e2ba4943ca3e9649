"""Metrics: the stats() snapshot becomes prometheus series at scrape time, robustly."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from relay.ops.metrics import LagSampler, RelayMetrics, parse_rfc3339
from tests.ops.fakes import DegradedRelay, FakeLoop


def scrape(m: RelayMetrics) -> dict[tuple[str, frozenset], float]:
    out = {}
    for fam in text_string_to_metric_families(generate_latest(m.registry).decode()):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def val(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def test_snapshot_is_exported_with_labels_and_prefix() -> None:
    stats = DegradedRelay()
    m = RelayMetrics(stats, FakeLoop(0.8), process_metrics=False)
    s = scrape(m)
    assert stats.calls == 1  # one snapshot per scrape, not per metric
    assert val(s, "kraken_relay_upstream_up", upstream="primary") == 1
    assert val(s, "kraken_relay_upstream_up", upstream="beta") == 0
    assert val(s, "kraken_relay_upstream_state", upstream="beta", state="backoff") == 1
    assert val(s, "kraken_relay_upstream_state", upstream="beta", state="live") == 0
    assert val(s, "kraken_relay_upstream_system_status", upstream="beta", status="maintenance") == 1
    assert val(s, "kraken_relay_upstream_disconnects_total", upstream="beta", reason="close_1001") == 10
    assert val(s, "kraken_relay_upstream_checksum_mismatches_total", upstream="primary") == 10
    assert val(s, "kraken_relay_upstream_resyncs_total", upstream="primary", reason="checksum") == 10
    assert val(s, "kraken_relay_upstream_first_arrivals_total", upstream="primary") == 700
    assert val(s, "kraken_relay_upstream_connect_budget_remaining", upstream="beta") == 5
    assert val(s, "kraken_relay_symbol_state", symbol="ETH/USD", channel="book", state="stale") == 1
    assert val(s, "kraken_relay_symbol_state", symbol="ETH/USD", channel="book", state="ok") == 0
    assert val(s, "kraken_relay_symbol_upstream_valid", symbol="BTC/USD", channel="book", upstream="primary") == 1
    assert val(s, "kraken_relay_symbol_valid_upstreams", symbol="BTC/USD", channel="book") == 1
    assert val(s, "kraken_relay_trades_missing_total", symbol="BTC/USD", channel="trade") == 4
    assert val(s, "kraken_relay_published_frames_total", symbol="BTC/USD", channel="book") == 500
    assert val(s, "kraken_relay_clients_connected") == 12
    assert val(s, "kraken_relay_client_slow_closes_total") == 1
    assert val(s, "kraken_relay_client_rejected_requests_total", reason="rate_limit") == 1
    assert val(s, "kraken_relay_event_loop_lag_seconds") == 0.8
    assert val(s, "kraken_relay_ready") == 0
    assert val(s, "kraken_relay_on_demand_subscriptions", protocol="v2") == 3
    assert val(s, "kraken_relay_on_demand_added_total", protocol="v2") == 5
    assert val(s, "kraken_relay_on_demand_refused_total", protocol="v2") == 1
    assert val(s, "kraken_relay_system_status", status="online") == 1
    assert val(s, "kraken_relay_nats_connected") == 1
    assert val(s, "kraken_relay_nats_dropped_messages_total", reason="buffer_full") == 30
    assert val(s, "kraken_relay_nats_dropped_messages_total", reason="unroutable") == 0
    assert val(s, "kraken_relay_nats_jetstream_ok") == 1
    assert val(s, "kraken_relay_nats_line_events_total", upstream="eu", event="gap") == 5
    assert val(s, "kraken_relay_nats_line_events_total", upstream="eu", event="overflow") == 0
    assert val(s, "kraken_relay_upstream_up", upstream="eu") == 1  # a NATS line has the usual line metrics
    # counters move between scrapes because the snapshot is re-read every time
    assert val(scrape(m), "kraken_relay_upstream_checksum_mismatches_total", upstream="primary") == 20
    assert all(name.startswith(("kraken_relay_",)) for name, _ in s)


def test_partial_and_odd_snapshots_do_not_break_the_scrape() -> None:
    snaps = [
        {},
        {"upstreams": [{"name": "a"}], "symbols": [{"symbol": "X/Y"}], "clients": {}},
        {
            "upstreams": [
                {
                    "name": "a",
                    "up": "yes",
                    "resyncs": {},
                    "frames": None,
                    "state": "weird-new-state",
                    "system": "",
                    "last_frame_age": None,
                }
            ]
        },
    ]
    for snap in snaps:
        m = RelayMetrics(lambda snap=snap: snap, process_metrics=False)
        s = scrape(m)
        assert any(n == "kraken_relay_build_info" for n, _ in s)
        assert val(s, "kraken_relay_scrape_errors_total") == 0
    s = scrape(RelayMetrics(lambda: snaps[2], process_metrics=False))
    assert ("kraken_relay_upstream_up", frozenset({("upstream", "a")})) not in s  # "yes" is not a number
    assert val(s, "kraken_relay_upstream_state", upstream="a", state="weird-new-state") == 1
    assert not any(n == "kraken_relay_upstream_system_status" for n, _ in s)  # no status reported yet
    assert not any(n == "kraken_relay_upstream_last_frame_age_seconds" for n, _ in s)
    assert val(s, "kraken_relay_upstream_resyncs_total", upstream="a", reason="gap") == 0  # zero before the first


def test_failing_stats_still_exports_the_rest_and_counts_the_error() -> None:
    def broken() -> dict:
        raise RuntimeError("merge state mid-update")

    m = RelayMetrics(broken, FakeLoop(0.01), process_metrics=False)
    s = scrape(m)
    assert val(s, "kraken_relay_scrape_errors_total") == 1
    assert val(s, "kraken_relay_event_loop_lag_seconds") == 0.01
    assert not any(n.startswith("kraken_relay_upstream_up") for n, _ in s)


def test_lag_sampler_observes_one_frame_in_n_into_a_real_histogram() -> None:
    m = RelayMetrics(dict, process_metrics=False)
    sampler = m.lag_sampler("primary", every=10)
    sampled = 0
    for _ in range(100):
        if sampler.due():
            sampler.observe(0.02)
            sampled += 1
    assert sampled == 10
    sampler.observe(-0.5)  # clock skew: recorded as 0
    s = scrape(m)
    assert val(s, "kraken_relay_upstream_lag_seconds_count", upstream="primary") == 11
    assert val(s, "kraken_relay_upstream_lag_seconds_bucket", upstream="primary", le="0.001") == 1
    assert val(s, "kraken_relay_upstream_lag_seconds_bucket", upstream="primary", le="0.025") == 11


def test_rfc3339_lag_from_kraken_timestamps() -> None:
    ts = parse_rfc3339(b"2023-10-06T17:35:55.440295Z")
    assert ts is not None and abs(ts - 1696613755.440295) < 1e-6
    assert parse_rfc3339("not a time") is None
    seen: list[float] = []
    LagSampler(seen.append).observe_rfc3339("2023-10-06T17:35:55.440295Z", received=1696613755.540295)
    assert len(seen) == 1 and abs(seen[0] - 0.1) < 1e-6


def test_process_metrics_are_included_by_default() -> None:
    names = {n for n, _ in scrape(RelayMetrics(dict))}
    assert "process_resident_memory_bytes" in names or "python_info" in names
