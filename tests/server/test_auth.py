"""Auth that holds: one guess per connection attempt, failures logged (at most a line per address
every few seconds) and limited per address (then HTTP 429 without a check, for a cool-down)."""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
import time

from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

TOKEN = "s3cret"


async def attempt(relay, query: str = "", header: str | None = None, source: str = "127.0.0.1") -> int:
    """The HTTP status of one handshake (101 when it opened)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.bind((source, 0))
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", relay.server.port))
    headers = {"Authorization": header} if header is not None else None
    try:
        ws = await connect(relay.url + query, sock=sock, open_timeout=5, additional_headers=headers)
    except InvalidStatus as exc:
        return exc.response.status_code
    await ws.close()
    return 101


async def test_one_guess_per_attempt(make_relay):
    relay = await make_relay({"token": TOKEN})
    assert await attempt(relay, f"?token=wrong&token={TOKEN}") == 401  # several values: refused
    assert await attempt(relay, "?token=wrong", header=f"Bearer {TOKEN}") == 401  # header and query disagree
    assert relay.server.stats()["refused"]["token"] == 2  # each attempt counted once
    assert await attempt(relay, f"?token={TOKEN}", header=f"Bearer {TOKEN}") == 101  # the same guess twice
    assert await attempt(relay, f"?token={TOKEN}&token={TOKEN}") == 101
    assert await attempt(relay, f"?token={TOKEN}", header="Basic dXNlcjpwdw==") == 101  # other schemes are no guess
    assert relay.server.stats()["refused"]["token"] == 2


async def test_repeated_failures_lock_the_address_out_for_a_while(make_relay):
    relay = await make_relay({"token": TOKEN, "token_max_failures": 3, "token_failure_window": 1.0})
    for i in range(3):
        assert await attempt(relay, f"?token=guess{i}") == 401
    t_locked = time.monotonic()
    assert await attempt(relay, f"?token={TOKEN}") == 429  # refused without looking at the token
    if sys.platform.startswith("linux"):  # all of 127.0.0.0/8 is loopback there
        assert await attempt(relay, f"?token={TOKEN}", source="127.0.0.3") == 101  # another address is not locked
    while await attempt(relay, f"?token={TOKEN}") == 429:  # after the cool-down it may try again
        assert time.monotonic() - t_locked < 5
        await asyncio.sleep(0.05)
    assert time.monotonic() - t_locked >= 0.5
    refused = relay.server.stats()["refused"]
    assert refused["token"] == 3 and refused["token_locked"] >= 1


async def test_failures_are_logged_once_per_address_per_interval(make_relay, caplog, monkeypatch):
    monkeypatch.setattr("relay.server.peers.LOG_EVERY", 0.5)
    relay = await make_relay({"token": TOKEN, "token_max_failures": 100})
    caplog.set_level(logging.WARNING, logger="relay.server")
    t0 = time.monotonic()
    for _ in range(5):
        assert await attempt(relay, "?token=nope") == 401
    lines = [r.getMessage() for r in caplog.records if "token refused" in r.getMessage()]
    if time.monotonic() - t0 < 0.5:
        assert len(lines) == 1
    assert "127.0.0.1" in lines[0] and "wrong" in lines[0]
    while time.monotonic() - t0 < 0.6:
        await asyncio.sleep(0.05)
    assert await attempt(relay) == 401  # no token at all
    lines = [r.getMessage() for r in caplog.records if "token refused" in r.getMessage()]
    assert "(4 more attempts since the last line)" in lines[-1] and "missing" in lines[-1]
    assert len(lines) <= 3
