"""Per-address bookkeeping for the listener: pending handshakes, failed token attempts.

A limit keyed by address only holds if one host cannot spread over many addresses: IPv4
addresses count one by one, IPv6 addresses by /64 (what one host or site usually gets).
"""

from __future__ import annotations

import ipaddress
import logging
import math
from collections import deque
from typing import Any

log = logging.getLogger("relay.server")

LOG_EVERY = 10.0  # s between log lines about one address's failed token attempts
MAX_TRACKED = 10_000  # addresses with recent token failures kept (oldest forgotten first)


def peer_key(host: str | None) -> str:
    """The address a per-peer limit applies to."""
    if not host:
        return ""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return str(ip)


class Handshakes:
    """Sockets accepted but not yet answered, by address (oldest first).

    The table is bounded (`capacity`). While it has room anyone gets in, so one host running
    a thousand bots that connect at once is not refused. When it is full, an address holding
    fewer than `per_peer` evicts the oldest handshake of the address holding the most (if that
    one holds more than `per_peer`): one host filling the table cannot lock the others out.
    """

    def __init__(self, capacity: int, per_peer: int) -> None:
        self.capacity = capacity
        self.per_peer = per_peer
        self.count = 0
        self._by_peer: dict[str, dict[Any, None]] = {}

    def admit(self, key: str, conn: Any) -> tuple[bool, Any]:
        """Register `conn`: (admitted, the connection evicted for it or None)."""
        mine = self._by_peer.get(key)
        victim = None
        if self.count >= self.capacity:
            if mine is not None and len(mine) >= self.per_peer:
                return False, None
            big_key, big = max(self._by_peer.items(), key=lambda kv: len(kv[1]))
            if len(big) <= self.per_peer:
                return False, None
            victim = next(iter(big))
            self.remove(big_key, victim)
            mine = self._by_peer.get(key)
        if mine is None:
            mine = self._by_peer[key] = {}
        mine[conn] = None
        self.count += 1
        return True, victim

    def remove(self, key: str, conn: Any) -> None:
        """Idempotent."""
        mine = self._by_peer.get(key)
        if mine is None or conn not in mine:
            return
        del mine[conn]
        self.count -= 1
        if not mine:
            del self._by_peer[key]

    def held(self, key: str) -> int:
        mine = self._by_peer.get(key)
        return len(mine) if mine else 0

    @property
    def under_pressure(self) -> bool:
        return self.count >= self.capacity // 2


class TokenFailures:
    """Failed token attempts per address. After `limit` failures within `window` seconds an
    address is refused without a check until its oldest counted failure is `window` old (so a
    guesser gets at most `limit` guesses per window). Logged at most once per address every
    `LOG_EVERY` seconds, with the number of attempts not logged since."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self._fails: dict[str, deque[float]] = {}
        self._logged: dict[str, tuple[float, int]] = {}  # key -> (last line, attempts since)

    def locked(self, key: str, now: float) -> float:
        """Seconds until `key` may try again (0: it may)."""
        fails = self._fails.get(key)
        if fails is None or len(fails) < self.limit:
            return 0.0
        return max(0.0, fails[0] + self.window - now)

    def failed(self, key: str, peer: str | None, why: str, now: float) -> None:
        fails = self._fails.get(key)
        if fails is None:
            if len(self._fails) >= MAX_TRACKED:
                self.prune(now)
                while len(self._fails) >= MAX_TRACKED:
                    del self._fails[next(iter(self._fails))]
            fails = self._fails[key] = deque(maxlen=self.limit)
        fails.append(now)
        if len(fails) >= self.limit:
            why += f"; refused for {self.window:g} s after {self.limit} failures"
        self._log(key, peer, f"token refused ({why})", now)

    def refused_locked(self, key: str, peer: str | None, now: float) -> None:
        self._log(key, peer, "refused without a token check (too many failed attempts)", now)

    def _log(self, key: str, peer: str | None, what: str, now: float) -> None:
        last, since = self._logged.get(key, (-math.inf, 0))
        if now - last < LOG_EVERY:
            self._logged[key] = (last, since + 1)
            return
        more = f" ({since} more attempts since the last line)" if since else ""
        log.warning("client %s: %s%s", peer, what, more)
        self._logged[key] = (now, 0)

    def prune(self, now: float) -> None:
        """Forget addresses whose failures and log line are old (called from the server tick)."""
        horizon = max(self.window, LOG_EVERY)
        for key in [k for k, f in self._fails.items() if not f or now - f[-1] > self.window]:
            del self._fails[key]
        for key in [k for k, (t, _) in self._logged.items() if now - t > horizon]:
            del self._logged[key]
        while len(self._logged) > MAX_TRACKED:
            del self._logged[next(iter(self._logged))]
