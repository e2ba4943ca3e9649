"""No lockouts: idle sockets from one address cannot keep other addresses out (pending handshakes
are shared per address), and open connections can be capped per address.

On Linux all of 127.0.0.0/8 is loopback: binding client sockets to 127.0.0.2 and 127.0.0.3 makes
them two distinct peers of a relay listening on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
import sys
import time

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.kit.net import need_fds

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs 127.0.0.0/8 as loopback")

ATTACKER, VISITOR = "127.0.0.2", "127.0.0.3"


async def open_from(source: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.bind((source, 0))
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return sock


async def ws_from(source: str, url: str, port: int, timeout: float = 2.0):
    """A websocket from `source`, open and greeted (status frame) within `timeout` seconds."""
    sock = await asyncio.wait_for(open_from(source, port), timeout)
    ws = await connect(url, sock=sock, open_timeout=timeout, compression=None)
    await asyncio.wait_for(ws.recv(), timeout)
    return ws


async def test_idle_sockets_from_one_address_do_not_lock_out_another(make_relay):
    need_fds(2 * 2200 + 500)
    relay = await make_relay()  # defaults: max_clients 1000, a table of 2 x 1000 + 64 handshakes
    server, port = relay.server, relay.server.port
    idle: list[socket.socket] = []
    try:
        for _ in range(2200):  # connected, sending nothing
            try:
                idle.append(await open_from(ATTACKER, port))
            except OSError:
                break
        deadline = time.monotonic() + 10
        while len(server.connections) + server.refusals["handshake_backlog"] < len(idle) - 50:
            assert time.monotonic() < deadline, "the relay did not take the idle sockets"
            await asyncio.sleep(0.01)
        assert len(idle) >= 2100
        assert len(server.connections) >= 2000  # the handshake table is full of them

        async def visit():
            t0 = time.monotonic()
            try:
                ws = await ws_from(VISITOR, relay.url, port)
            except (OSError, TimeoutError, InvalidStatus, Exception):
                return None
            elapsed = time.monotonic() - t0
            await ws.close()
            return elapsed

        results = await asyncio.gather(*(visit() for _ in range(25)))
        ok = [r for r in results if r is not None and r < 2.0]
        print(f"legitimate connects within 2 s: {len(ok)}/25 ({100 * len(ok) / 25:.0f} %)")
        assert len(ok) >= 23  # >= 90 %
        assert server.stats()["refused"]["handshake_evicted"] >= len(ok)
    finally:
        for s in idle:
            s.close()


async def test_one_address_cannot_take_every_connection(make_relay):
    relay = await make_relay({"max_connections_per_peer": 3})
    port = relay.server.port
    opened = [await ws_from(ATTACKER, relay.url, port) for _ in range(3)]
    with pytest.raises(InvalidStatus) as exc:
        await ws_from(ATTACKER, relay.url, port)
    assert exc.value.response.status_code == 429
    other = await ws_from(VISITOR, relay.url, port)  # another address still gets in
    await opened[0].close()
    for _ in range(100):  # a slot of its own address is free again once one closes
        if relay.server.stats()["clients"] < 4:
            break
        await asyncio.sleep(0.01)
    again = await ws_from(ATTACKER, relay.url, port)
    for ws in (*opened[1:], other, again):
        await ws.close()
    assert relay.server.stats()["refused"]["max_connections_per_peer"] == 1


async def test_one_host_with_many_bots_is_not_refused(make_relay):
    """The per-address share applies only while the table is full: 300 bots on one host
    connecting at once all get in (a single-host deployment connects from loopback)."""
    need_fds(2000)
    relay = await make_relay({"pending_handshakes_per_peer": 4})
    results = await asyncio.gather(
        *(connect(relay.url, open_timeout=30, compression=None) for _ in range(300)), return_exceptions=True
    )
    opened = [r for r in results if not isinstance(r, BaseException)]
    assert len(opened) == 300, [r for r in results if isinstance(r, BaseException)][:3]
    await asyncio.gather(*(ws.close() for ws in opened))
    assert "handshake_evicted" not in relay.server.stats()["refused"]
