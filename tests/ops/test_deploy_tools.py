"""Deployment files checked by their own tools: promtool, systemd-analyze, hadolint.

Each test skips, naming the tool, only when that tool is not installed (.ci/install-tools
installs them).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.kit.paths import ROOT

PROM = ROOT / "deploy" / "prometheus"
UNIT = ROOT / "deploy" / "systemd" / "kraken-relay.service"
VENV_BIN = "/opt/kraken-relay/bin/kraken-relay"


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed (run .ci/install-tools)")
    return path


def run(*argv: str, cwd: Path = ROOT, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, cwd=cwd, timeout=timeout)


# -- Prometheus ---------------------------------------------------------------------------
def test_promtool_check_config() -> None:
    res = run(tool("promtool"), "check", "config", str(PROM / "prometheus.yml"))
    assert res.returncode == 0, res.stdout + res.stderr


def test_promtool_check_rules() -> None:
    res = run(tool("promtool"), "check", "rules", str(PROM / "alerts.yml"))
    assert res.returncode == 0, res.stdout + res.stderr


def test_promtool_test_rules() -> None:
    res = run(tool("promtool"), "test", "rules", str(PROM / "alerts.test.yml"))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


def test_every_alert_has_a_promtool_test() -> None:
    import yaml

    rules = {r["alert"] for g in yaml.safe_load((PROM / "alerts.yml").read_text())["groups"] for r in g["rules"]}
    tests = yaml.safe_load((PROM / "alerts.test.yml").read_text())["tests"]
    tested = {a["alertname"] for t in tests for a in t.get("alert_rule_test", []) if a.get("exp_alerts")}
    assert rules == tested


def test_deploy_readme_lists_every_alert() -> None:
    import yaml

    rules = {r["alert"] for g in yaml.safe_load((PROM / "alerts.yml").read_text())["groups"] for r in g["rules"]}
    table = {
        line.split("|")[1].strip()
        for line in (ROOT / "deploy" / "README.md").read_text().splitlines()
        if line.startswith("| Kraken")
    }
    assert rules == table


# -- systemd ------------------------------------------------------------------------------
def unit_directives() -> list[tuple[str, str, str]]:
    """(section, key, value) triples; repeated keys kept (systemd allows them)."""
    out, section = [], ""
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.append((section, key.strip(), value.strip()))
    return out


def test_unit_has_the_required_settings() -> None:
    d = {(s, k): v for s, k, v in unit_directives()}
    svc = {k: v for (s, k), v in d.items() if s == "Service"}
    assert svc["Type"] == "notify" and svc["NotifyAccess"] == "main"
    assert svc["WatchdogSec"] and svc["Restart"] == "always"
    assert svc["ExecStartPre"].startswith(VENV_BIN + " check-config")
    assert svc["ExecStartPre"].endswith("/etc/kraken-relay/relay.yaml")
    assert svc["ExecStart"] == VENV_BIN + " run --config /etc/kraken-relay/relay.yaml"
    assert svc["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert svc["LimitNOFILE"] == "65536"
    for key, value in {
        "DynamicUser": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "MemoryDenyWriteExecute": "yes",
    }.items():
        assert svc.get(key) == value, key
    filters = [v for s, k, v in unit_directives() if k == "SystemCallFilter"]
    assert "@system-service" in filters


@pytest.fixture
def unit_with_real_binary(tmp_path: Path) -> Path:
    """The unit with the venv path pointed at a working shim, since verify checks that it exists."""
    shim = tmp_path / "kraken-relay"
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} -m relay "$@"\n')
    shim.chmod(0o755)
    unit = tmp_path / "kraken-relay.service"
    unit.write_text(UNIT.read_text().replace(VENV_BIN, str(shim)))
    return unit


def test_systemd_analyze_verify(unit_with_real_binary: Path) -> None:
    res = run(tool("systemd-analyze"), "verify", str(unit_with_real_binary), cwd=unit_with_real_binary.parent)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stderr.strip() == "", res.stderr  # verify reports unknown/invalid settings as warnings


def test_systemd_security_exposure_is_low(unit_with_real_binary: Path) -> None:
    exe = tool("systemd-analyze")
    res = run(
        exe,
        "security",
        "--offline=true",
        "--threshold=20",
        str(unit_with_real_binary),
        cwd=unit_with_real_binary.parent,
    )
    if "--offline" in res.stderr or "unrecognized option" in res.stderr:
        pytest.skip("systemd-analyze security --offline needs systemd >= 250")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr  # overall exposure <= 2.0 ("OK")


def test_exec_start_pre_command_validates_the_sample_config(unit_with_real_binary: Path) -> None:
    d = {k: v for s, k, v in unit_directives() if s == "Service"}
    argv = d["ExecStartPre"].replace(VENV_BIN, str(unit_with_real_binary.parent / "kraken-relay")).split()
    argv[-1] = str(ROOT / "config" / "relay.yaml")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KRAKEN_RELAY_")}
    env["PYTHONPATH"] = str(ROOT)
    res = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
    assert res.returncode == 0 and res.stdout == "" and res.stderr == "", res.stderr  # --quiet
    bad = unit_with_real_binary.parent / "bad.yaml"
    bad.write_text("upstreams: []\nchannels: {book: {symbols: [BTC/USD]}}\n")
    argv[-1] = str(bad)
    res = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
    assert res.returncode == 2 and "upstreams: needs at least 1 item" in res.stderr


# -- Docker -------------------------------------------------------------------------------
def test_hadolint_passes_on_the_dockerfile() -> None:
    res = run(tool("hadolint"), "Dockerfile")
    assert res.returncode == 0, res.stdout + res.stderr


def test_install_tools_is_quiet_when_everything_is_present() -> None:
    for name in ("promtool", "prometheus", "systemd-analyze", "hadolint"):
        tool(name)
    script = ROOT / ".ci" / "install-tools"
    assert run("bash", "-n", str(script)).returncode == 0
    res = run(str(script))
    assert (res.returncode, res.stdout, res.stderr) == (0, "", "")
