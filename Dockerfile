# syntax=docker/dockerfile:1
# kraken-relay image: build a virtualenv in a builder stage, copy it into a slim non-root runtime.
#   docker build -t kraken-relay .
#   docker run --rm -p 127.0.0.1:8765:8765 -p 127.0.0.1:9100:9100 kraken-relay
# Mount your own config at /etc/kraken-relay/relay.yaml. Inside the container the relay listens on
# 0.0.0.0 (KRAKEN_RELAY_LISTEN / KRAKEN_RELAY_HTTP_LISTEN override the config's loopback default);
# publish the ports on 127.0.0.1 as above unless you set server.token or TLS.
# `run` refuses a non-loopback listener without server.token; here 0.0.0.0 is only the container's
# own interface and the host-side `-p 127.0.0.1:...` is the access control, so the image sets
# KRAKEN_RELAY_PUBLIC_WITHOUT_TOKEN=warn (logged at start). Publishing beyond loopback: set
# KRAKEN_RELAY_TOKEN, and KRAKEN_RELAY_PUBLIC_WITHOUT_TOKEN=refuse to keep the guard.

FROM python:3.11-slim AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md* ./
COPY relay ./relay
COPY config ./config
COPY deploy/docker/install.sh /usr/local/bin/kraken-relay-install
RUN sh /usr/local/bin/kraken-relay-install /src /opt/kraken-relay

FROM python:3.11-slim
LABEL org.opencontainers.image.title="kraken-relay" \
      org.opencontainers.image.description="Redundant, checksum-verified Kraken Spot v2 websocket relay"
ENV PATH=/opt/kraken-relay/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    KRAKEN_RELAY_LISTEN=0.0.0.0:8765 \
    KRAKEN_RELAY_HTTP_LISTEN=0.0.0.0:9100 \
    KRAKEN_RELAY_LOG_FORMAT=json
# a policy, not a secret (hadolint flags any name containing TOKEN); see the comment at the top
# hadolint ignore=DL3064
ENV KRAKEN_RELAY_PUBLIC_WITHOUT_TOKEN=warn
RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin relay
COPY --from=builder /opt/kraken-relay /opt/kraken-relay
COPY config/relay.yaml /etc/kraken-relay/relay.yaml
# fail the build, not the container start, if the bundled config does not validate
RUN kraken-relay check-config --quiet /etc/kraken-relay/relay.yaml
USER 10001:10001
EXPOSE 8765 9100
# slim has no curl: probe /healthz (event loop alive) with the interpreter we already have
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('KRAKEN_RELAY_HTTP_LISTEN', '127.0.0.1:9100').rpartition(':')[2]; sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4).status == 200 else 1)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["kraken-relay"]
CMD ["run", "--config", "/etc/kraken-relay/relay.yaml"]
