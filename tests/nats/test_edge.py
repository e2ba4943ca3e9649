"""Relays as each other's lines: two regional relays publish on a 3-node NATS cluster, an edge
relay merges them through NATS lines, and its client never notices relay A being SIGKILLed and
restarted, nor one NATS node being stopped (issue 17's first acceptance line)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml

from relay.app import Relay
from relay.config import parse_config
from relay.sim import LineConfig, SimConfig, Simulator
from tests.kit.daemon import Daemon
from tests.kit.feed import FeedRecorder
from tests.kit.inprocess import FAST_RECONNECT, wait_for
from tests.kit.nats import nats_cluster
from tests.kit.net import free_port

pytestmark = pytest.mark.timeout(240)

ROOT = Path(__file__).resolve().parents[2]
SYMBOLS = ["BTC/USD", "ETH/USD"]
CHANNELS = {"book": {"symbols": SYMBOLS, "depth": 10}, "trade": {"symbols": SYMBOLS}}


def _regional(name: str, urls: list[str], servers: str, **extra: Any) -> dict[str, Any]:
    return {
        "upstreams": [{"name": f"{name}{i}", "url": u} for i, u in enumerate(urls)],
        "channels": CHANNELS,
        "reconnect": FAST_RECONNECT,
        "nats": {"servers": servers.split(","), "subject_prefix": f"kraken.{name}", "name": f"relay-{name}"},
        **extra,
    }


def _start_daemon(cfg: dict[str, Any], tmp: Path) -> Daemon:
    ws_port, http_port = free_port(), free_port()
    cfg = {
        **cfg,
        "server": {"listen": f"127.0.0.1:{ws_port}"},
        "http": {"listen": f"127.0.0.1:{http_port}"},
        "logging": {"level": "warning", "format": "json"},
    }
    path = tmp / "relay-a.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay", "run", "--config", str(path)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    return Daemon(proc, path, f"ws://127.0.0.1:{ws_port}/v2", f"http://127.0.0.1:{http_port}")


def _trades_once(trades: list[tuple[str, int]]) -> None:
    """Every symbol's trade ids contiguous and each once (the simulator numbers them 1, 2, ...)."""
    by_symbol: dict[str, list[int]] = defaultdict(list)
    for sym, tid in trades:
        by_symbol[sym].append(tid)
    assert set(by_symbol) == set(SYMBOLS)
    for sym, ids in by_symbol.items():
        assert ids == list(range(ids[0], ids[0] + len(ids))), f"{sym}: trades not exactly once"


async def test_edge_relay_through_a_relay_kill_and_a_nats_node_stop(tmp_path: Path) -> None:
    async with nats_cluster(3) as cluster:
        sim = Simulator(
            SimConfig(symbols=SYMBOLS, rate=150.0, trade_rate=15.0, seed=1717, lines=[LineConfig() for _ in range(4)])
        )
        await sim.start()
        a = b = edge = None
        try:
            a = _start_daemon(_regional("a", sim.urls[0:2], cluster.urls), tmp_path)
            b = Relay(parse_config(_regional("b", sim.urls[2:4], cluster.urls), env={}), server_port=0, http_port=0)
            await b.start()
            edge_cfg = {
                "upstreams": [
                    {"name": "a", "url": cluster.urls, "subject_prefix": "kraken.a"},
                    {"name": "b", "url": cluster.urls, "subject_prefix": "kraken.b"},
                ],
                "channels": CHANNELS,
                "reconnect": FAST_RECONNECT,
                "liveness": {"frame_timeout": 3.0},
            }
            edge = Relay(parse_config(edge_cfg, env={}), server_port=0, http_port=0)
            await edge.start()
            await a.wait_ready(30)
            await wait_for(lambda: edge.ready()[0], 30, "the edge relay ready on its NATS lines")
            line_a = edge.stack("v2").pool.connections[0]

            async with FeedRecorder(edge.server.url, SYMBOLS) as feed:
                await wait_for(lambda: len(feed.states["BTC/USD"]) >= 60, 30, "the edge client's books moving")

                # relay A is killed: the edge serves from B; A comes back under a new epoch and its
                # line resyncs every stream from snapshots
                os.kill(a.proc.pid, signal.SIGKILL)
                a.proc.wait(5)
                n = len(feed.states["BTC/USD"])
                await wait_for(lambda: len(feed.states["BTC/USD"]) >= n + 40, 30, "books moving without relay A")
                snapshots = line_a.line_events["snapshot"]
                a = _start_daemon(_regional("a", sim.urls[0:2], cluster.urls), tmp_path)
                await a.wait_ready(30)
                await wait_for(
                    lambda: line_a.line_events["snapshot"] >= snapshots + 2 and line_a.state == "live",
                    30,
                    "line a back on the restarted relay A",
                )

                # the NATS node line a is connected to stops: the line reconnects to another node
                # (its session ends, like a dropped Kraken socket), B's line carries the books
                port = line_a._ws.nc.connected_url.port
                node = next(n for n in cluster.nodes if n.port == port)
                await node.stop()
                n = len(feed.states["BTC/USD"])
                await wait_for(lambda: len(feed.states["BTC/USD"]) >= n + 60, 40, "books moving after a node stop")
                await wait_for(
                    lambda: all(c.state == "live" for c in edge.stack("v2").pool.connections),
                    30,
                    "both NATS lines live again",
                )
                n = len(feed.states["BTC/USD"])
                await wait_for(lambda: len(feed.states["BTC/USD"]) >= n + 30, 30, "books still moving")

            assert feed.disconnects == 0
            assert feed.bad == 0, f"{feed.bad} bad checksums at the edge client"
            assert feed.verifier.frames > 300
            assert sum(line_a.disconnects.values()) == 1  # the node stop
            assert line_a.line_events["epoch"] >= 2  # relay A's restart, seen per stream
            _trades_once(feed.trades)
            merge = edge.stack("v2").merge
            assert sum(s.wins for s in merge.upstream_stats) > 0
            assert all(s.checksum_mismatches == 0 for s in merge.upstream_stats)
        finally:
            if edge is not None:
                await edge.stop()
            if b is not None:
                await b.stop()
            if a is not None and a.proc.poll() is None:
                a.proc.send_signal(signal.SIGTERM)
                try:
                    a.proc.wait(10)
                except subprocess.TimeoutExpired:
                    a.proc.kill()
            await sim.stop()
