"""systemd integration: sd_notify over $NOTIFY_SOCKET and a watchdog that pings only when healthy.

Hand-written (a dozen lines of datagram sending) instead of a dependency: the protocol is one
AF_UNIX datagram of `KEY=value` lines. Outside systemd ($NOTIFY_SOCKET unset) every call is a
no-op, so the daemon code calls these unconditionally.

The watchdog pinger is the point: systemd restarts the service when pings stop, so they must
stop when the relay is wedged, not only when the process is dead. It pings only while the
event loop lag is under its threshold (and an optional extra check passes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any

from relay.ops.loopmon import LoopLagMonitor

log = logging.getLogger(__name__)


class Notifier:
    """Sends sd_notify messages. `Notifier()` reads $NOTIFY_SOCKET; no socket means no-op."""

    def __init__(self, address: str | None = None, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        addr = address if address is not None else env.get("NOTIFY_SOCKET", "")
        if addr.startswith("@"):  # abstract namespace socket
            addr = "\0" + addr[1:]
        self.address = addr or None
        self.sent = 0
        self.errors = 0
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *lines: str) -> bool:
        """Send `KEY=value` lines in one datagram; True if sent. Never raises."""
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto("\n".join(lines).encode("utf-8", "replace"), self.address)
            self.sent += 1
            return True
        except OSError as exc:
            self.errors += 1
            if self.errors == 1 or self.errors % 100 == 0:
                log.warning("sd_notify to %r failed: %s", self.address, exc)
            return False

    def ready(self, status: str | None = None) -> bool:
        return self.notify("READY=1", *([f"STATUS={_one_line(status)}"] if status else []))

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={_one_line(text)}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def reloading(self) -> bool:
        """Before applying a SIGHUP reload; follow with `ready()` when done."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _one_line(text: str) -> str:
    return " ".join(str(text).split())[:200]


class ReadyGate:
    """Sends READY=1 once the relay is ready, or after `grace` seconds anyway.

    Why the grace: with Type=notify, `systemctl start` waits for READY=1 and systemd kills the
    service after TimeoutStartSec. During a Kraken outage or maintenance at boot the relay is
    healthy and serving (clients get status frames) but has no data; failing the start would
    restart it in a loop, dropping clients and burning the connection budget each time.
    Call `poll(ready)` periodically (e.g. from the housekeeping loop).
    """

    def __init__(self, notifier: Notifier, grace: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.notifier = notifier
        self.grace = grace
        self._clock = clock
        self._started = clock()
        self.sent = False
        self.reason = ""

    def poll(self, ready: bool, status: str = "") -> bool:
        """True on the call that sent READY=1."""
        if self.sent:
            return False
        if ready:
            self.reason = "data flowing"
        elif self._clock() - self._started >= self.grace:
            self.reason = f"no data after {self.grace:g}s, serving anyway"
        else:
            return False
        self.sent = True
        self.notifier.ready(f"{self.reason}; {status}" if status else self.reason)
        return True


def status_text(stats: Mapping[str, Any]) -> str:
    """A one-line STATUS= for `systemctl status`, from the metrics snapshot (relay/ops/metrics.py).

    e.g. "2/2 lines up, 24/24 feeds ok, 3 clients, kraken online"
    """
    ups = list(stats.get("upstreams") or ())
    syms = list(stats.get("symbols") or ())
    up = sum(1 for u in ups if u.get("up"))
    ok = sum(1 for s in syms if s.get("state") == "ok")
    parts = [f"{up}/{len(ups)} lines up", f"{ok}/{len(syms)} feeds ok"]
    clients = (stats.get("clients") or {}).get("connected")
    if clients is not None:
        parts.append(f"{clients} client{'s' if clients != 1 else ''}")
    if stats.get("system_status"):
        parts.append(f"kraken {stats['system_status']}")
    return ", ".join(parts)


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Ping interval in seconds (half of $WATCHDOG_USEC), or None when no watchdog is set for us."""
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) <= 0:
        return None
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None  # the watchdog is meant for another process (e.g. our parent)
    return int(usec) / 2e6


class WatchdogPinger:
    """Pings WATCHDOG=1 every `interval` s while `monitor` (and `check`, if given) say healthy.

    A missed ping is deliberate: if the loop is lagging past the threshold for a whole
    WatchdogSec, systemd kills and restarts us, which is the right cure for a wedged relay.
    """

    def __init__(
        self,
        notifier: Notifier,
        interval: float,
        monitor: LoopLagMonitor | None = None,
        check: Callable[[], bool] | None = None,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be > 0")
        self.notifier = notifier
        self.interval = interval
        self.monitor = monitor
        self.check = check
        self.pings = 0
        self.skipped = 0
        self._task: asyncio.Task[None] | None = None

    def healthy(self) -> bool:
        if self.monitor is not None and not self.monitor.healthy():
            return False
        if self.check is not None:
            try:
                return bool(self.check())
            except Exception:
                log.exception("watchdog health check failed")
                return False
        return True

    def beat(self) -> bool:
        """One watchdog decision: ping if healthy. Returns whether a ping was sent."""
        if self.healthy():
            self.pings += 1
            self.notifier.watchdog()
            return True
        self.skipped += 1
        log.warning(
            "watchdog ping skipped: relay unhealthy (event loop lag %.3fs)",
            self.monitor.lag() if self.monitor else -1.0,
        )
        return False

    async def run(self) -> None:
        while True:
            self.beat()
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.run(), name="systemd-watchdog")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


def start_watchdog(
    notifier: Notifier,
    monitor: LoopLagMonitor | None = None,
    check: Callable[[], bool] | None = None,
    env: Mapping[str, str] | None = None,
) -> WatchdogPinger | None:
    """Start pinging if systemd asked for a watchdog ($WATCHDOG_USEC); else None. Needs a running loop."""
    interval = watchdog_interval(env)
    if interval is None or not notifier.enabled:
        return None
    pinger = WatchdogPinger(notifier, interval, monitor, check)
    pinger.start()
    return pinger
