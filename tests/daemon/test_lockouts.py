"""Issue 15 acceptance, no lockouts: one host holding 2 200 idle websocket sockets and 100 idle
(or half-sent) HTTP connections to a `kraken-relay run` process cannot keep another host out:
at least 90 % of its websocket connects and `/healthz` probes succeed within 2 s each."""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.daemon.test_lifecycle import relay_with_sim
from tests.kit.net import need_fds
from tests.server.test_lockout import open_from, ws_from

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs 127.0.0.0/8 as loopback")

ATTACKER, VISITOR = "127.0.0.2", "127.0.0.3"


async def probe_healthz(port: int, timeout: float = 2.0) -> float | None:
    """Seconds for `/healthz` to answer 200 to a client at VISITOR (None: it did not in time)."""
    t0 = time.monotonic()
    sock = None
    try:
        sock = await asyncio.wait_for(open_from(VISITOR, port), timeout)
        reader, writer = await asyncio.open_connection(sock=sock)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n")
        line = await asyncio.wait_for(reader.readline(), timeout - (time.monotonic() - t0))
        writer.close()
        return time.monotonic() - t0 if line.startswith(b"HTTP/1.1 200") else None
    except (OSError, TimeoutError):
        if sock is not None:
            sock.close()
        return None


@pytest.mark.slow
async def test_one_host_holding_idle_sockets_locks_out_neither_clients_nor_probes(tmp_path: Path) -> None:
    need_fds(2200 + 100 + 500)
    async with relay_with_sim(tmp_path, ["BTC/USD"]) as (daemon, _sim):
        ws_port = urlsplit(daemon.ws_url).port
        http_port = urlsplit(daemon.http_url).port
        assert ws_port and http_port
        idle: list[socket.socket] = []
        try:
            for _ in range(2200):  # connected to the websocket port, sending nothing
                idle.append(await open_from(ATTACKER, ws_port))
            for i in range(100):  # connected to the HTTP port: idle, or a request never finished
                s = await open_from(ATTACKER, http_port)
                if i % 2:
                    s.send(b"GET /healthz HTTP/1.1\r\nHost: relay\r\n")
                idle.append(s)
            await asyncio.sleep(0.5)  # the relay has taken them all by now

            async def visit() -> float | None:
                t0 = time.monotonic()
                try:
                    ws = await ws_from(VISITOR, daemon.ws_url, ws_port)
                except Exception:
                    return None
                await ws.close()
                return time.monotonic() - t0

            visits, probes = await asyncio.gather(
                asyncio.gather(*(visit() for _ in range(20))),
                asyncio.gather(*(probe_healthz(http_port) for _ in range(20))),
            )
        finally:
            for s in idle:
                s.close()
        ok_ws = [t for t in visits if t is not None and t < 2.0]
        ok_http = [t for t in probes if t is not None and t < 2.0]
        print(f"websocket connects within 2 s: {len(ok_ws)}/20; /healthz probes: {len(ok_http)}/20")
        assert len(ok_ws) >= 18, visits
        assert len(ok_http) >= 18, probes
        assert daemon.proc.poll() is None
