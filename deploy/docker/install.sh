#!/bin/sh
# Build the kraken-relay wheel from SRC and install it, with its runtime dependencies, into a new
# virtualenv VENV; then smoke-test the result. The Dockerfile's builder stage runs exactly this,
# and tests/ops/test_dockerfile_steps.py runs it in a clean virtualenv (there is no Docker engine
# in CI), so the image's install steps are tested without Docker.
#
# usage: install.sh SRC VENV      (PYTHON=python3.11 to pick the interpreter)
set -eu

SRC=${1:?usage: install.sh SRC VENV}
VENV=${2:?usage: install.sh SRC VENV}
PYTHON=${PYTHON:-python3}

"$PYTHON" -m venv "$VENV"
WHEELS=$(mktemp -d)
trap 'rm -rf "$WHEELS"' EXIT
# build our wheel alone (build isolation fetches setuptools), then install it with its deps
"$VENV/bin/python" -m pip wheel --quiet --no-deps --wheel-dir "$WHEELS" "$SRC"
"$VENV/bin/python" -m pip install --quiet "$WHEELS"/kraken_relay-*.whl

# smoke test: the console script runs, the compiled deps import, the sample config validates
"$VENV/bin/kraken-relay" --version
"$VENV/bin/python" -c "import uvloop, orjson, websockets, pydantic, prometheus_client, structlog, yaml, cryptography.x509; \
import relay.ops.http, relay.ops.metrics, relay.ops.systemd, relay.ops.logging, relay.ops.cert"
if [ -f "$SRC/config/relay.yaml" ]; then
    "$VENV/bin/kraken-relay" check-config --quiet "$SRC/config/relay.yaml"
fi
