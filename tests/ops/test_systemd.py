"""sd_notify datagrams over $NOTIFY_SOCKET and the health-gated watchdog pinger."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from pathlib import Path

import pytest

from relay.ops.loopmon import LoopLagMonitor
from relay.ops.systemd import Notifier, WatchdogPinger, start_watchdog, watchdog_interval


@pytest.fixture
def notify_socket(tmp_path: Path):
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    yield path, sock
    sock.close()


def drain(sock: socket.socket) -> list[str]:
    out = []
    sock.setblocking(False)
    try:
        while True:
            out.append(sock.recv(4096).decode())
    except BlockingIOError:
        pass
    finally:
        sock.settimeout(2)
    return out


def test_notify_messages_reach_the_socket(notify_socket) -> None:
    path, sock = notify_socket
    n = Notifier(env={"NOTIFY_SOCKET": path})
    assert n.enabled
    assert n.ready("streaming 8 symbols\nfrom 2 lines")
    assert sock.recv(4096) == b"READY=1\nSTATUS=streaming 8 symbols from 2 lines"
    n.status("1 of 2 lines up")
    assert sock.recv(4096) == b"STATUS=1 of 2 lines up"
    n.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"
    n.reloading()
    msg = sock.recv(4096).decode().split("\n")
    assert msg[0] == "RELOADING=1" and msg[1].startswith("MONOTONIC_USEC=")
    n.stopping()
    assert sock.recv(4096) == b"STOPPING=1"
    n.close()


def test_abstract_socket_address() -> None:
    name = f"kraken-relay-test-{os.getpid()}-{time.monotonic_ns()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2)
    try:
        n = Notifier(env={"NOTIFY_SOCKET": "@" + name})
        assert n.ready()
        assert sock.recv(100) == b"READY=1"
    finally:
        sock.close()


def test_without_systemd_everything_is_a_quiet_no_op(tmp_path: Path) -> None:
    n = Notifier(env={})
    assert not n.enabled and not n.ready() and not n.watchdog()
    gone = Notifier(env={"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    assert not gone.ready() and gone.errors == 1  # logged, never raised


def test_watchdog_interval_is_half_of_watchdog_usec_and_only_for_us() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "20000000"}) == 10.0
    assert watchdog_interval({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": str(os.getpid())}) == 10.0
    assert watchdog_interval({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None


async def test_pinger_pings_only_while_the_loop_is_healthy(notify_socket) -> None:
    path, sock = notify_socket
    mon = LoopLagMonitor(interval=0.01, threshold=0.3, recent=0.1)
    mon.start()
    check_ok = [True]
    try:
        pinger = start_watchdog(
            Notifier(env={"NOTIFY_SOCKET": path}), mon, lambda: check_ok[0], env={"WATCHDOG_USEC": "60000"}
        )  # 30 ms pings
        assert isinstance(pinger, WatchdogPinger) and pinger.interval == pytest.approx(0.03)
        await asyncio.sleep(0.2)
        assert pinger.pings >= 3
        assert set(drain(sock)) == {"WATCHDOG=1"}
        # wedge the loop: the ping that runs right after must be skipped
        time.sleep(0.4)
        assert pinger.beat() is False
        # an extra health check can veto pings too
        await asyncio.sleep(0.05)
        check_ok[0] = False
        skipped = pinger.skipped
        drain(sock)
        await asyncio.sleep(0.15)
        assert drain(sock) == [] and pinger.skipped > skipped
        check_ok[0] = True
        got: list[str] = []
        for _ in range(100):
            await asyncio.sleep(0.02)
            got += drain(sock)
            if got:
                break
        assert "WATCHDOG=1" in got
        await pinger.stop()
    finally:
        mon.stop()


async def test_no_watchdog_requested_means_no_pinger(notify_socket) -> None:
    path, _ = notify_socket
    assert start_watchdog(Notifier(env={"NOTIFY_SOCKET": path}), env={}) is None
    assert start_watchdog(Notifier(env={}), env={"WATCHDOG_USEC": "1000000"}) is None


def test_status_text_summarises_the_stats_snapshot() -> None:
    from relay.ops.systemd import status_text
    from tests.ops.fakes import DegradedRelay

    assert status_text(DegradedRelay()()) == "2/3 lines up, 3/4 feeds ok, 12 clients, kraken online"
    assert status_text({}) == "0/0 lines up, 0/0 feeds ok"
    assert status_text({"clients": {"connected": 1}}) == "0/0 lines up, 0/0 feeds ok, 1 client"


def test_ready_gate_sends_ready_once_on_data_or_after_the_grace(notify_socket) -> None:
    from relay.ops.systemd import ReadyGate

    path, sock = notify_socket
    now = [100.0]
    gate = ReadyGate(Notifier(env={"NOTIFY_SOCKET": path}), grace=60, clock=lambda: now[0])
    assert gate.poll(False) is False
    assert gate.poll(True, "2/2 lines up") is True
    assert sock.recv(4096) == b"READY=1\nSTATUS=data flowing; 2/2 lines up"
    assert gate.poll(True) is False and drain(sock) == []  # only once

    slow = ReadyGate(Notifier(env={"NOTIFY_SOCKET": path}), grace=60, clock=lambda: now[0])
    now[0] += 59
    assert slow.poll(False) is False
    now[0] += 2
    assert slow.poll(False) is True
    assert sock.recv(4096) == b"READY=1\nSTATUS=no data after 60s, serving anyway"
