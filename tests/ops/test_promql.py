"""Every PromQL expression of the Grafana dashboard and the alert rules returns data.

A real Prometheus scrapes fake relays (a degraded one, one in a full outage, and a dead address),
then each expression is evaluated: this proves the metric names, labels and PromQL are right,
and that each alert fires on the failure it describes. A static check compares the names used
with those the collector exports, so a typo is caught even where Prometheus is not installed.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from relay.ops.metrics import RelayMetrics
from tests.ops.fakes import DegradedRelay, FakeLoop, OutageRelay
from tests.ops.promql import (
    DASHBOARD,
    alert_exprs,
    dashboard_exprs,
    dashboard_variable_exprs,
    free_port,
    has_real_values,
    metric_names,
    substitute,
)


def exported_names() -> set[str]:
    names: set[str] = set()
    for stats in (DegradedRelay(), OutageRelay()):
        m = RelayMetrics(stats, FakeLoop())  # type: ignore[arg-type]
        m.lag_sampler("primary").observe(0.01)
        for fam in text_string_to_metric_families(generate_latest(m.registry).decode()):
            names.update(s.name for s in fam.samples)
    return names


def test_helpers_find_every_expression() -> None:
    dash = dashboard_exprs()
    assert len(dash) >= 30
    assert len(dashboard_variable_exprs()) == 3
    assert {e.source.split()[1] for e in alert_exprs()} >= {
        "KrakenRelayDown",
        "KrakenRelayUpstreamDown",
        "KrakenRelayAllUpstreamsDown",
        "KrakenRelaySymbolStale",
        "KrakenRelayChecksumMismatches",
        "KrakenRelayTradesMissing",
        "KrakenRelaySlowClients",
    }
    assert all("$" not in e.expr for e in dash)
    assert substitute('rate(x{symbol=~"$symbol"}[$__rate_interval])') == 'rate(x{symbol=~".+"}[1m])'
    assert substitute("${upstream:regex} [[instance]]", {"upstream": "a"}) == "a .+"
    with pytest.raises(KeyError):
        substitute("$nope")


def test_every_metric_name_used_is_exported() -> None:
    exported = exported_names()
    missing = {}
    for e in dashboard_variable_exprs() + dashboard_exprs() + alert_exprs():
        unknown = metric_names(e.expr) - exported
        if unknown:
            missing[e.source] = sorted(unknown)
    assert not missing


def test_dashboard_is_well_formed() -> None:
    dash = json.loads(DASHBOARD.read_text())
    ids = Counter(p["id"] for p in dash["panels"])
    assert all(n == 1 for n in ids.values()), "duplicate panel ids"
    for p in dash["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        if p["type"] != "row":
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
            assert p.get("description"), f"panel {p['title']!r} needs a description for operators"
    cells: dict[tuple[int, int], str] = {}  # no two panels on the same grid cell
    for p in dash["panels"]:
        g = p["gridPos"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = p["title"]
    assert dash["uid"] == "kraken-relay"


def test_dashboard_has_the_nats_row() -> None:
    dash = json.loads(DASHBOARD.read_text())
    rows = [p for p in dash["panels"] if p["type"] == "row"]
    nats = next(r for r in rows if r["title"].startswith("NATS"))
    below = [p for p in dash["panels"] if p["type"] != "row" and p["gridPos"]["y"] > nats["gridPos"]["y"]]
    used = {name for p in below for t in p["targets"] for name in metric_names(t["expr"])}
    assert used >= {
        "kraken_relay_nats_connected",
        "kraken_relay_nats_down_seconds",
        "kraken_relay_nats_published_messages_total",
        "kraken_relay_nats_published_bytes_total",
        "kraken_relay_nats_dropped_messages_total",
        "kraken_relay_nats_pending_bytes",
        "kraken_relay_nats_snapshot_requests_total",
        "kraken_relay_nats_line_events_total",
    }


@pytest.mark.slow
def test_every_dashboard_and_alert_expression_returns_data(prometheus, fake_relays) -> None:
    degraded, outage = fake_relays
    dead = f"127.0.0.1:{free_port()}"  # nothing listens: `up == 0` for KrakenRelayDown
    prom = prometheus([degraded.address, outage.address, dead], scrape_interval=0.5)
    # enough scrapes of both live targets for rate()/increase() over several samples
    prom.wait_for_samples('count_over_time(up{job="kraken-relay"}[5m] @ end()) >= 5 and up == 1', 2, timeout=30)
    prom.wait_for_samples("up == 0", 1, timeout=10)
    failures = []
    for e in dashboard_variable_exprs() + dashboard_exprs() + alert_exprs():
        try:
            res = prom.query(e.expr)
        except ValueError as exc:
            failures.append(f"{e.source}: Prometheus rejected it: {exc}")
            continue
        if not has_real_values(res):
            failures.append(f"{e.source}: no data for {e.expr}  (got {res})")
    assert not failures, "\n".join(failures)
