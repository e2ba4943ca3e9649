"""The recorder under the failures a flight recorder must survive, on the whole relay:

* `kraken-relay run` killed with SIGKILL while capturing: every file but the last is complete,
  the last reads up to its last complete batch;
* a tiny size limit: old files are deleted and the directory stays within the bound;
* a writer stalled on its disk: records are dropped and counted, clients keep their feed and the
  event loop never waits (capture is best effort: `/readyz` unaffected).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from relay.capture.format import SUFFIX
from relay.capture.reader import Reader
from relay.sim import LineConfig, SimConfig, Simulator
from tests.kit.daemon import Daemon
from tests.kit.feed import FeedRecorder
from tests.kit.inprocess import relay_on_sim, wait_for
from tests.kit.net import free_port
from tests.kit.paths import ROOT

SYMBOLS = ["BTC/USD", "ETH/USD"]
CHANNELS = {"book": {"symbols": SYMBOLS, "depth": 10}, "trade": {"symbols": SYMBOLS}}


async def test_sigkill_leaves_every_file_but_the_last_complete(tmp_path: Path) -> None:
    cap = tmp_path / "capture"
    sim = Simulator(SimConfig(symbols=SYMBOLS, rate=400.0, seed=5, lines=[LineConfig(), LineConfig(latency=0.001)]))
    await sim.start()
    ws_port, http_port = free_port(), free_port()
    cfg = {
        "upstreams": [{"name": f"line{i}", "url": u} for i, u in enumerate(sim.urls)],
        "channels": CHANNELS,
        "server": {"listen": f"127.0.0.1:{ws_port}"},
        "http": {"listen": f"127.0.0.1:{http_port}"},
        "reconnect": {"initial_delay": 0.1, "max_delay": 1.0, "stagger": 0.05},
        "logging": {"level": "warning", "format": "json"},
        "capture": {"dir": str(cap), "max_file_bytes": 16384, "published": True},
    }
    path = tmp_path / "relay.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay", "run", "--config", str(path)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    daemon = Daemon(proc, path, f"ws://127.0.0.1:{ws_port}/v2", f"http://127.0.0.1:{http_port}")
    try:
        await daemon.wait_ready()
        await wait_for(lambda: len(list(cap.glob(f"*{SUFFIX}"))) >= 4, 30, "four capture files")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)
        await sim.stop()
    files = sorted(cap.glob(f"*{SUFFIX}"))
    complete = Reader(files[:-1])
    records = list(complete)
    assert not complete.truncated and not complete.bad_lines
    assert {r.line for r in records if r.kind == "frame"} >= {"line0", "line1", "published"}
    last = Reader(files[-1:])
    tail = list(last)  # no exception: read up to its last complete batch
    mono = [r.mono_ns for r in records + tail]
    assert mono == sorted(mono)


async def test_a_tiny_size_limit_keeps_the_directory_within_it(tmp_path: Path) -> None:
    limit = 64 * 1024
    sim_cfg = SimConfig(symbols=SYMBOLS, rate=800.0, seed=6, lines=[LineConfig(), LineConfig()])
    cfg = {"channels": CHANNELS, "capture": {"dir": str(tmp_path), "max_file_bytes": 8192, "max_total_bytes": limit}}
    async with relay_on_sim(sim_cfg, cfg, ready=lambda r: r.ready()[0]) as (relay, _sim):
        writer = relay.capture
        assert writer is not None
        await wait_for(lambda: writer.files_deleted >= 5, 30, "old capture files deleted")
        sizes = sum(p.stat().st_size for p in tmp_path.glob(f"*{SUFFIX}"))
        # the bound, plus the file being written and the one batch that may overshoot it
        assert sizes <= limit + 8192 + 64 * 1024
        assert writer.records_dropped == 0
    assert not Reader([tmp_path]).truncated  # what is kept is whole


async def test_a_stalled_writer_drops_and_counts_while_clients_keep_their_feed(tmp_path: Path) -> None:
    sim_cfg = SimConfig(symbols=SYMBOLS, rate=400.0, seed=7, lines=[LineConfig(), LineConfig()])
    cfg = {"channels": CHANNELS, "capture": {"dir": str(tmp_path), "published": True, "max_pending_bytes": 1 << 18}}
    release = threading.Event()
    async with relay_on_sim(sim_cfg, cfg, ready=lambda r: r.ready()[0]) as (relay, _sim):
        writer = relay.capture
        assert writer is not None
        real = writer._write_batch

        def stuck(*args: Any) -> None:  # a disk that stops answering
            release.wait(30)
            real(*args)

        writer._write_batch = stuck  # type: ignore[method-assign]
        url = f"ws://127.0.0.1:{relay.server.port}/v2"
        async with FeedRecorder(url, SYMBOLS) as client:
            await wait_for(lambda: all(client.states[s] for s in SYMBOLS), 10, "the client's books")
            dropped0, frames0, t0 = writer.records_dropped, len(client.arrivals), time.monotonic()
            await wait_for(lambda: writer.records_dropped > dropped0 + 2000, 20, "records dropped")
            await asyncio.sleep(1.0)
            elapsed = time.monotonic() - t0
            arrivals = client.arrivals[frames0:]
        body = (await asyncio.to_thread(_get, relay.http.port, "/metrics")).decode()
        dropped_metric = [ln for ln in body.splitlines() if ln.startswith("kraken_relay_capture_dropped_records_total")]
        assert dropped_metric and float(dropped_metric[0].split()[-1]) > 2000
        assert writer.lag() > 0.5  # the writer's lag shows the stuck disk
        assert relay.ready()[0]  # best effort: readiness does not depend on the recorder
        release.set()
    assert client.bad == 0 and client.disconnects == 0
    # the feed never paused while the recorder was stuck
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
    assert len(arrivals) > 100 * elapsed and max(gaps) < 0.5, (len(arrivals), max(gaps))


def _get(port: int, path: str) -> bytes:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        return bytes(r.read())
