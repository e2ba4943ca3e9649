"""PromQL helpers: extract every expression from the Grafana dashboard and the alert rules, and
run a throw-away Prometheus on loopback to evaluate them against a live scrape target.

Used today against a fake relay (tests/ops/test_promql.py) to prove every metric name the
dashboard and alerts use is really exported; later against the running relay.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.kit.net import free_port
from tests.kit.paths import ROOT

DASHBOARD = ROOT / "deploy" / "grafana" / "kraken-relay.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"

# Grafana template variables -> values that select everything in a test Prometheus
DEFAULT_VARS = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "1h",
    "instance": ".+",
    "symbol": ".+",
    "upstream": ".+",
}


@dataclass(frozen=True)
class Expr:
    source: str  # where it came from, for failure messages
    expr: str  # PromQL, template variables already substituted


def substitute(expr: str, variables: dict[str, str] | None = None) -> str:
    """Replace Grafana's $var / ${var} / [[var]] with concrete values (longest names first)."""
    values = {**DEFAULT_VARS, **(variables or {})}

    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        name = name.split(":")[0]  # ${var:regex} formatting options
        if name not in values:
            raise KeyError(f"unknown template variable ${name} in {expr!r}")
        return values[name]

    return re.sub(r"\$\{([^}]+)\}|\[\[(\w+)\]\]|\$(\w+)", repl, expr)


def _walk_panels(panels: list[dict[str, Any]]):
    for p in panels:
        yield p
        yield from _walk_panels(p.get("panels") or [])


def dashboard_exprs(path: Path = DASHBOARD, variables: dict[str, str] | None = None) -> list[Expr]:
    """Every panel target's expr (rows' nested panels included)."""
    dash = json.loads(path.read_text())
    out = []
    for p in _walk_panels(dash.get("panels", [])):
        for t in p.get("targets") or []:
            if t.get("expr"):
                out.append(Expr(f"panel {p.get('title')!r} target {t.get('refId')}", substitute(t["expr"], variables)))
    return out


def dashboard_variable_exprs(path: Path = DASHBOARD, variables: dict[str, str] | None = None) -> list[Expr]:
    """Template variable queries, label_values(selector, label) rewritten as `count by (label) (selector)`."""
    dash = json.loads(path.read_text())
    out = []
    for v in dash.get("templating", {}).get("list", []):
        if v.get("type") != "query":
            continue
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        m = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*", q or "")
        if m:
            out.append(Expr(f"variable ${v['name']}", substitute(f"count by ({m.group(2)}) ({m.group(1)})", variables)))
        elif q:
            out.append(Expr(f"variable ${v['name']}", substitute(q, variables)))
    return out


def alert_exprs(path: Path = ALERTS) -> list[Expr]:
    """Every alerting and recording rule expression."""
    doc = yaml.safe_load(path.read_text())
    out = []
    for group in doc.get("groups", []):
        for rule in group.get("rules", []):
            name = rule.get("alert") or rule.get("record")
            out.append(Expr(f"rule {name}", str(rule["expr"])))
    return out


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b(kraken_relay_[a-z0-9_]+)", expr))


# ---------------------------------------------------------------------------------------------
class Prometheus:
    """A throw-away Prometheus on 127.0.0.1 scraping `targets` every `scrape_interval` seconds."""

    def __init__(
        self, targets: list[str], job: str = "kraken-relay", scrape_interval: float = 1.0, binary: str | None = None
    ) -> None:
        self.binary = binary or shutil.which("prometheus") or ""
        self.targets = targets
        self.job = job
        self.scrape_interval = scrape_interval
        self.port = 0
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> Prometheus:
        if not self.binary:
            raise FileNotFoundError("prometheus binary not found")
        self._dir = tempfile.TemporaryDirectory(prefix="kraken-relay-prom-")
        d = Path(self._dir.name)
        iv = f"{int(self.scrape_interval * 1000)}ms"
        cfg = {
            "global": {"scrape_interval": iv, "evaluation_interval": iv, "scrape_timeout": iv},
            "scrape_configs": [{"job_name": self.job, "static_configs": [{"targets": self.targets}]}],
        }
        (d / "prometheus.yml").write_text(yaml.safe_dump(cfg))
        last_err = ""
        for _ in range(3):  # the free port may be taken between probe and bind: retry
            self.port = free_port()
            log = open(d / "prometheus.log", "wb")
            self._proc = subprocess.Popen(
                [
                    self.binary,
                    f"--config.file={d / 'prometheus.yml'}",
                    f"--storage.tsdb.path={d / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                    "--storage.tsdb.retention.time=1h",
                    "--query.lookback-delta=30s",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=d,
            )
            log.close()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self._proc.poll() is None:
                try:
                    with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                        if r.status == 200:
                            return self
                except (urllib.error.URLError, OSError):
                    time.sleep(0.1)
            last_err = (d / "prometheus.log").read_text(errors="replace")[-2000:]
            self.stop(keep_dir=True)
        self.stop()
        raise RuntimeError(f"prometheus did not start:\n{last_err}")

    def stop(self, keep_dir: bool = False) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
            self._proc = None
        if self._dir is not None and not keep_dir:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> Prometheus:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                doc = json.loads(r.read())
        except urllib.error.HTTPError as exc:  # 400 on a bad expression: surface Prometheus' error
            doc = json.loads(exc.read() or b"{}")
            raise ValueError(f"{params}: {doc.get('errorType')}: {doc.get('error')}") from None
        if doc.get("status") != "success":
            raise ValueError(f"{params}: {doc}")
        return doc["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query; returns the result vector (a scalar result becomes one pseudo-sample)."""
        data = self.api("query", query=expr)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def wait_for_samples(self, expr: str, count: int = 1, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Poll until `expr` returns at least `count` samples (e.g. `up == 1` for all targets)."""
        deadline = time.monotonic() + timeout
        res: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            res = self.query(expr)
            if len(res) >= count:
                return res
            time.sleep(0.2)
        raise TimeoutError(f"{expr!r} returned {len(res)} samples after {timeout}s, wanted {count}")


def prometheus_available() -> bool:
    return shutil.which("prometheus") is not None


def has_real_values(samples: list[dict[str, Any]]) -> bool:
    """At least one sample that is a number (not NaN: e.g. histogram_quantile over no observations)."""
    for s in samples:
        value = s.get("value", [None, "NaN"])[1]
        if value not in ("NaN", "+Inf", "-Inf"):
            return True
    return False


__all__ = [
    "Expr",
    "Prometheus",
    "alert_exprs",
    "dashboard_exprs",
    "dashboard_variable_exprs",
    "free_port",
    "has_real_values",
    "metric_names",
    "prometheus_available",
    "substitute",
    "DEFAULT_VARS",
]

if __name__ == "__main__":  # print every expression, for a quick look
    for e in dashboard_variable_exprs() + dashboard_exprs() + alert_exprs():
        print(f"{e.source}: {e.expr}")
    print(os.environ.get("PROMETHEUS", shutil.which("prometheus")))
