"""The Dockerfile's build steps, replayed without Docker (no engine in CI).

A small interpreter walks the Dockerfile: builder-stage COPYs are mirrored from the repo into a
temporary root, the builder's RUN lines are executed with their absolute paths moved under that
root (they only call deploy/docker/install.sh, which builds the wheel into a clean virtualenv),
then the runtime stage's checks run with the image's ENV: the bundled config validates and the
HEALTHCHECK one-liner reports a live /healthz as healthy and a 503 as unhealthy.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from relay.ops.http import HttpServer
from relay.ops.metrics import RelayMetrics
from tests.kit.paths import ROOT

DOCKERFILE = ROOT / "Dockerfile"


def instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, argument) pairs with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        line = buf + line
        buf = ""
        key, _, arg = line.partition(" ")
        out.append((key.upper(), arg.strip()))
    return out


def stages(text: str) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for key, arg in instructions(text):
        if key == "FROM":
            result.append([])
        if result:
            result[-1].append((key, arg))
    return result


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for key, arg in stage:
        if key == "ENV":
            for tok in shlex.split(arg):
                k, _, v = tok.partition("=")
                env[k] = v
    return env


def test_dockerfile_shape() -> None:
    text = DOCKERFILE.read_text()
    st = stages(text)
    assert len(st) == 2, "multi-stage: builder + runtime"
    assert st[0][0] == ("FROM", "python:3.11-slim AS builder")
    assert st[1][0] == ("FROM", "python:3.11-slim")
    runtime = dict((k, a) for k, a in st[1])  # last value per keyword
    assert runtime["USER"].split(":")[0] not in ("", "0", "root")
    assert "/healthz" in runtime["HEALTHCHECK"]
    env = env_of(st[1])
    assert env["KRAKEN_RELAY_LISTEN"].startswith("0.0.0.0:") and env["KRAKEN_RELAY_HTTP_LISTEN"].startswith("0.0.0.0:")
    # every builder RUN goes through the install script, so replaying the script replays the build
    runs = [a for k, a in st[0] if k == "RUN"]
    assert runs and all("kraken-relay-install" in r for r in runs)


def test_dockerignore_lets_every_copied_source_through() -> None:
    allowed = [ln[1:].rstrip("/") for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln.startswith("!")]
    for stage in stages(DOCKERFILE.read_text()):
        for key, arg in stage:
            if key == "COPY" and not arg.startswith("--from"):
                for src in shlex.split(arg)[:-1]:
                    src = src.rstrip("*")
                    assert any(src == a or src.startswith(a + "/") for a in allowed), (
                        f"{src} is COPY'd but excluded by .dockerignore"
                    )


def _replay_builder(root: Path) -> tuple[Path, dict[str, str]]:
    st = stages(DOCKERFILE.read_text())[0]
    workdir = "/"
    env = {**os.environ, **env_of(st)}
    env.pop("PIP_NO_CACHE_DIR", None)  # reuse the local pip cache: same steps, faster test
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")

    def at(path: str) -> Path:
        p = path if path.startswith("/") else os.path.join(workdir, path)
        return root / p.lstrip("/")

    for key, arg in st[1:]:
        if key == "WORKDIR":
            workdir = arg
            at(arg).mkdir(parents=True, exist_ok=True)
        elif key == "COPY":
            *srcs, dest = shlex.split(arg)
            for pattern in srcs:
                for src in sorted(ROOT.glob(pattern)):
                    target = at(dest)
                    if dest.endswith("/") or len(srcs) > 1 or target.is_dir():
                        target = target / src.name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    if src.is_dir():
                        shutil.copytree(src, target, ignore=ignore, dirs_exist_ok=True)
                    else:
                        shutil.copy2(src, target)
        elif key == "RUN":
            words = [str(root / w.lstrip("/")) if w.startswith("/") else w for w in shlex.split(arg)]
            res = subprocess.run(
                words,
                cwd=at(workdir),
                env={**env, "PYTHON": sys.executable},
                capture_output=True,
                text=True,
                timeout=240,
            )
            assert res.returncode == 0, f"RUN {arg} failed:\n{res.stdout}\n{res.stderr}"
    return root / "opt" / "kraken-relay", env_of(stages(DOCKERFILE.read_text())[1])


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    if shutil.which("sh") is None:
        pytest.skip("no /bin/sh")
    return _replay_builder(tmp_path_factory.mktemp("image"))


@pytest.mark.slow
def test_builder_stage_installs_a_working_relay_into_a_clean_venv(image: tuple[Path, dict[str, str]]) -> None:
    venv, runtime_env = image
    exe = venv / "bin" / "kraken-relay"
    assert exe.exists()
    # a clean venv: only our wheel and its declared dependencies, not this checkout
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import relay, sys; print(relay.__file__)"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    assert out.returncode == 0 and str(venv) in out.stdout, out.stderr
    # the runtime stage's build-time check, with the runtime stage's ENV (0.0.0.0 overrides)
    res = subprocess.run(
        [str(exe), "check-config", str(ROOT / "config" / "relay.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **runtime_env},
        cwd="/",
    )
    assert res.returncode == 0, res.stderr
    assert "serving ws://0.0.0.0:8765/v2; on demand: up to 200 per protocol" in res.stdout
    assert res.stdout.rstrip().endswith("; http 0.0.0.0:9100")


def _healthcheck_argv() -> list[str]:
    runtime = stages(DOCKERFILE.read_text())[1]
    arg = next(a for k, a in runtime if k == "HEALTHCHECK")
    cmd = arg[arg.index("CMD") + 3 :].strip()
    argv = json.loads(cmd)  # exec form
    assert argv[0] == "python"
    return [sys.executable, *argv[1:]]


@pytest.mark.parametrize("healthy", [True, False])
async def test_healthcheck_one_liner_probes_healthz(healthy: bool) -> None:
    class Mon:  # a loop monitor stand-in: lagging or not
        running = True
        threshold = 1.0

        def lag(self) -> float:
            return 0.0 if healthy else 5.0

    srv = HttpServer("127.0.0.1", 0, RelayMetrics(dict, process_metrics=False).registry, None, Mon())  # type: ignore[arg-type]
    await srv.start()
    try:
        proc = await asyncio.create_subprocess_exec(
            *_healthcheck_argv(),
            env={**os.environ, "KRAKEN_RELAY_HTTP_LISTEN": f"0.0.0.0:{srv.port}"},
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        rc = await asyncio.wait_for(proc.wait(), 30)
    finally:
        await srv.stop()
    assert (rc == 0) is healthy
