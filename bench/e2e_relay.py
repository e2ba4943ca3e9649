"""Run the relay daemon in its own process for the benchmarks, on ports chosen by the OS.

Same code path as `kraken-relay run --config FILE` (`relay.app.Relay` on uvloop, logging at
warning), except that the server and HTTP ports are 0 so concurrent runs never collide; prints
one JSON line `{"port": .., "http_port": .., "pid": ..}` once started, stops on SIGTERM/SIGINT.
Usage: python bench/e2e_relay.py CONFIG.yaml
A/B switches (environment, set to 1): RELAY_BENCH_NO_SINK (upstream frames via recv()),
RELAY_BENCH_NO_EARLY_FLUSH (client writes once per loop pass), RELAY_BENCH_NO_WRITE_THROUGH (client writes via uvloop's deferred
transport.write).
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson

from relay.app import Relay, run_loop
from relay.config import load_config
from relay.ops.logging import configure_logging

GC = {"passes": [0, 0, 0], "max_ms": [0.0, 0.0, 0.0], "total_ms": 0.0}
_gc_t0 = [0.0]


def _gc_cb(phase: str, info: dict) -> None:
    """Cyclic-GC passes and their pauses (tail latency suspects), reported at exit."""
    if phase == "start":
        _gc_t0[0] = time.perf_counter()
        return
    ms = (time.perf_counter() - _gc_t0[0]) * 1e3
    g = info["generation"]
    GC["passes"][g] += 1
    GC["max_ms"][g] = max(GC["max_ms"][g], round(ms, 2))
    GC["total_ms"] += ms


async def serve(path: str) -> int:
    cfg = load_config(path)
    relay = Relay(cfg, server_port=0, http_port=0)
    await relay.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(
        orjson.dumps({"port": relay.server.port, "http_port": relay.http.port, "pid": os.getpid()}).decode(), flush=True
    )
    gc.callbacks.append(_gc_cb)
    await stop.wait()
    print(orjson.dumps({"gc": GC}).decode(), file=sys.stderr, flush=True)
    await relay.stop()
    return 0


def main() -> int:
    if os.environ.get("RELAY_BENCH_NO_SINK"):  # A/B figure: per-frame recv() as before the sink
        from relay.upstream.sink import SinkClientConnection

        SinkClientConnection.attach = lambda self, sink: False  # type: ignore[method-assign]
    if os.environ.get("RELAY_BENCH_NO_EARLY_FLUSH"):  # A/B: client writes only once per loop pass
        from relay.server.listener import LocalServer

        LocalServer.FLUSH_AFTER = float("inf")
    if os.environ.get("RELAY_BENCH_NO_WRITE_THROUGH"):  # A/B: every client write via the transport
        from relay.server.client import ClientConnection

        ClientConnection._write = lambda self, data: self.transport.write(data)  # type: ignore[method-assign]
    cfg = load_config(sys.argv[1])
    configure_logging(cfg.logging.level, "json")
    return run_loop(serve(sys.argv[1]))


if __name__ == "__main__":
    sys.exit(main())
