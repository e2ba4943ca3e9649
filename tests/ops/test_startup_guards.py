"""`kraken-relay run` start-up failures and refusals: one line naming the config key, no traceback.

* A listener whose port is taken (`server.listen`, `http.listen`): exit 1 (a runtime failure, as
  the README's exit codes say), `kraken-relay: error: server.listen HOST:PORT: address already in use`.
* A TLS certificate that cannot be loaded: exit 1, naming `server.tls` and the files.
* A `server.listen` that is not loopback without `server.token`: refused (exit 2) unless
  `server.public_without_token` is `warn` (starts, logs a warning) or `allow`; `check-config`
  says the same. The Docker image's environment (0.0.0.0 inside the container) still starts.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.kit.paths import ROOT


def free_ports(n: int) -> list[int]:
    """`n` distinct ports free on every interface (bound together, then released)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("0.0.0.0", 0))
        return [int(s.getsockname()[1]) for s in socks]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KRAKEN_RELAY_")}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def write_config(tmp_path: Path, ws_listen: str, http_listen: str, **server: object) -> Path:
    cfg = {
        "upstreams": [{"name": "line0", "url": "ws://127.0.0.1:9/v2"}],  # never reached: not needed here
        "channels": {"book": {"symbols": ["BTC/USD"], "depth": 10}},
        "server": {"listen": ws_listen, **server},
        "http": {"listen": http_listen},
        "logging": {"level": "warning", "format": "json"},
    }
    path = tmp_path / "relay.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay", *args],
        cwd=ROOT,
        env=env or clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@contextlib.contextmanager
def port_taken() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


@contextlib.contextmanager
def running(config: Path, http_port: int, env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    """`kraken-relay run` until its /healthz answers; SIGTERM at the end."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay", "run", "--config", str(config)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, f"exited with {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}"
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz", timeout=1) as r:
                    if r.status == 200:
                        break
            assert time.monotonic() < deadline, "the relay never answered /healthz"
            time.sleep(0.1)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


@pytest.mark.parametrize("key", ["server.listen", "http.listen"])
def test_a_port_in_use_is_one_line_naming_the_key_and_address(tmp_path: Path, key: str) -> None:
    with port_taken() as busy:
        taken, other = f"127.0.0.1:{busy}", f"127.0.0.1:{free_ports(1)[0]}"
        ws, http = (taken, other) if key == "server.listen" else (other, taken)
        res = run_cli("run", "--config", str(write_config(tmp_path, ws, http)))
    assert res.returncode == 1, res.stderr
    assert res.stderr.strip().splitlines() == [f"kraken-relay: error: {key} {taken}: address already in use"]
    assert "Traceback" not in res.stderr


def test_an_unreadable_tls_certificate_is_one_line_naming_server_tls(tmp_path: Path) -> None:
    tls = {"cert": str(tmp_path / "missing.crt"), "key": str(tmp_path / "missing.key")}
    ws_port, http_port = free_ports(2)
    cfg = write_config(tmp_path, f"127.0.0.1:{ws_port}", f"127.0.0.1:{http_port}", tls=tls)
    res = run_cli("run", "--config", str(cfg))
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == [
        f"kraken-relay: error: server.tls {tls['cert']}, {tls['key']}: cannot load: no such file or directory"
    ]


def test_public_listener_without_token_is_refused_in_one_line(tmp_path: Path) -> None:
    ws_port, http_port = free_ports(2)
    cfg = write_config(tmp_path, f"0.0.0.0:{ws_port}", f"127.0.0.1:{http_port}")
    res = run_cli("run", "--config", str(cfg))
    assert res.returncode == 2
    (line,) = res.stderr.strip().splitlines()
    assert line.startswith("kraken-relay: refusing to start: server.listen 0.0.0.0:")
    assert "server.token is not set" in line and "server.public_without_token: warn" in line
    check = run_cli("check-config", str(cfg))
    assert check.returncode == 2 and check.stdout == ""
    (line,) = check.stderr.strip().splitlines()
    assert "server.listen 0.0.0.0:" in line and "server.public_without_token" in line


def test_public_listener_runs_with_a_token_or_when_warn_is_chosen(tmp_path: Path) -> None:
    ws_port, http_port = free_ports(2)
    cfg = write_config(tmp_path, f"0.0.0.0:{ws_port}", f"127.0.0.1:{http_port}", public_without_token="warn")
    check = run_cli("check-config", str(cfg))
    assert check.returncode == 0 and "warning: server.listen 0.0.0.0:" in check.stderr
    with running(cfg, http_port, clean_env()) as proc:
        pass
    assert proc.returncode == 0
    assert "public listener without a token" in (proc.stderr.read() if proc.stderr else "")
    ws_port, http_port = free_ports(2)
    cfg = write_config(tmp_path, f"0.0.0.0:{ws_port}", f"127.0.0.1:{http_port}", token="s3cret")
    assert run_cli("check-config", str(cfg)).returncode == 0
    with running(cfg, http_port, clean_env()) as proc:
        pass
    assert proc.returncode == 0 and "public listener" not in (proc.stderr.read() if proc.stderr else "")


def docker_runtime_env() -> dict[str, str]:
    """The ENV of the Dockerfile's runtime (last) stage."""
    env: dict[str, str] = {}
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    stage = text.split("\nFROM ")[-1]
    for line in stage.splitlines():
        if line.strip().startswith("ENV "):
            for tok in shlex.split(line.strip()[4:]):
                k, _, v = tok.partition("=")
                env[k] = v
    return env


def test_the_docker_images_environment_still_starts(tmp_path: Path) -> None:
    """0.0.0.0 inside the container without a token: the image chooses `warn`, so it runs."""
    image = docker_runtime_env()
    assert image["KRAKEN_RELAY_LISTEN"].startswith("0.0.0.0:") and "KRAKEN_RELAY_TOKEN" not in image
    assert image["KRAKEN_RELAY_PUBLIC_WITHOUT_TOKEN"] == "warn"
    ws_port, http_port = free_ports(2)
    ports = {"KRAKEN_RELAY_LISTEN": f"0.0.0.0:{ws_port}", "KRAKEN_RELAY_HTTP_LISTEN": f"0.0.0.0:{http_port}"}
    env = clean_env(**{**{k: v for k, v in image.items() if k.startswith("KRAKEN_RELAY_")}, **ports})
    cfg = ROOT / "config" / "relay.yaml"
    assert run_cli("check-config", "--quiet", str(cfg), env=env).returncode == 0
    without = {k: v for k, v in env.items() if k != "KRAKEN_RELAY_PUBLIC_WITHOUT_TOKEN"}
    assert run_cli("check-config", "--quiet", str(cfg), env=without).returncode == 2  # the guard is real
    with running(cfg, http_port, env) as proc:
        pass
    assert proc.returncode == 0
