"""Fault kinds and scripted fault schedules ("at T seconds, on line L, fault F for D seconds").

A schedule comes from the command line (`--fault T:LINE:KIND[:DURATION][:key=value,...]`, e.g.
`5:0:stall:3`, `8:1:silent_symbol:4:symbol=ETH/USD`, `2:all:maintenance:5`) or from a YAML/JSON
file holding a list of `{at, line, kind, duration, ...params}` mappings.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# kind -> what a client sees (for --help and docs)
FAULT_KINDS: dict[str, str] = {
    "drop": "TCP connection aborted, no close frame (client sees 1006)",
    "close_1001": 'close 1001 "CloudFlare WebSocket proxy restarting"',
    "close_1013": 'close 1013 "Market data unavailable"',
    "stall": "socket open, nothing sent (not even heartbeats) for the duration; backlog sent after",
    "silent_symbol": "one symbol's book stops on that line (symbol=), heartbeats go on; snapshot at the end",
    "corrupt_checksum": "the next book frame of symbol= carries a wrong checksum",
    "maintenance": "status maintenance, book frozen, no trades; then status online and fresh snapshots",
    "cancel_only": "status cancel_only, no trades/ohlc (book keeps moving); then online",
    "refuse": "new connections aborted at the handshake (mode=tcp: port closed, ECONNREFUSED)",
    "slow": "extra latency delay= seconds for events sent during the fault",
    "budget": "handshake answered HTTP 429 once more than limit= attempts in window= seconds",
}

# The Futures simulator's kinds: the Spot ones that have a futures equivalent, plus `skip` (futures
# has no engine status frame and no book checksum: no maintenance, cancel_only, corrupt_checksum).
FUTURES_FAULT_KINDS: dict[str, str] = {
    "drop": FAULT_KINDS["drop"],
    "close_1001": FAULT_KINDS["close_1001"],
    "close_1013": FAULT_KINDS["close_1013"],
    "stall": FAULT_KINDS["stall"],
    "silent_symbol": "one product's book stops on that line (symbol=), heartbeats go on; snapshot at the end",
    "skip": "that line loses the next count= book deltas of product symbol= (a seq gap on one line)",
    "refuse": "new connections aborted at the handshake (client sees an invalid HTTP response)",
    "slow": FAULT_KINDS["slow"],
    "budget": FAULT_KINDS["budget"],
}
# simulator protocol (`kraken-relay sim --protocol`) -> its fault kinds
PROTOCOL_KINDS: dict[str, dict[str, str]] = {"v2": FAULT_KINDS, "futures": FUTURES_FAULT_KINDS}
KNOWN_KINDS: dict[str, str] = {**FAULT_KINDS, **FUTURES_FAULT_KINDS}


@dataclass
class FaultSpec:
    """One scripted fault."""

    at: float
    line: int | str
    kind: str
    duration: float | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_kind(self.kind, None)
        if self.at < 0:
            raise ValueError("fault time must be >= 0")
        if isinstance(self.line, str) and self.line != "all":
            self.line = int(self.line)


def check_kind(kind: str, protocol: str | None = "v2") -> None:
    """ValueError unless `kind` is a fault kind of the `protocol` simulator (None: of any)."""
    kinds = KNOWN_KINDS if protocol is None else PROTOCOL_KINDS[protocol]
    if kind in kinds:
        return
    if kind in KNOWN_KINDS:
        raise ValueError(f"fault {kind!r} is not simulated for {protocol} ({', '.join(kinds)})")
    raise ValueError(f"unknown fault kind {kind!r} (one of {', '.join(kinds)})")


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_fault(text: str, protocol: str = "v2") -> FaultSpec:
    """`T:LINE:KIND[:DURATION][:k=v,k=v]` -> FaultSpec (symbols like `BTC/USD` are fine); `protocol`:
    the simulator whose fault kinds are accepted ("v2" or "futures")."""
    parts = text.split(":")
    if len(parts) < 3:
        raise ValueError(f"fault {text!r}: expected T:LINE:KIND[:DURATION][:key=value,...]")
    at, line, kind = float(parts[0]), parts[1], parts[2]
    duration = None
    params: dict[str, Any] = {}
    for extra in parts[3:]:
        if "=" in extra:
            for kv in extra.split(","):
                k, _, v = kv.partition("=")
                params[k.strip()] = _value(v.strip())
        elif extra:
            duration = float(extra)
    check_kind(kind, protocol)
    return FaultSpec(at, line if line == "all" else int(line), kind, duration, params)


def load_schedule(path: str | Path, protocol: str = "v2") -> list[FaultSpec]:
    """A YAML or JSON list of `{at, line, kind, duration?, ...params}` (`kinds`: as `parse_fault`)."""
    data = yaml.safe_load(Path(path).read_text())
    if isinstance(data, dict):
        data = data.get("faults", [])
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of faults")
    out = []
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise ValueError(f"{path}: fault {i} is not a mapping")
        item = dict(item)
        try:
            at = float(item.pop("at"))
            line = item.pop("line", 0)
            kind = str(item.pop("kind"))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: fault {i}: needs at, line, kind ({exc})") from None
        check_kind(kind, protocol)
        duration = item.pop("duration", None)
        out.append(FaultSpec(at, line, kind, None if duration is None else float(duration), item))
    return out


async def run_schedule(
    specs: list[FaultSpec],
    started_at: float,
    fire: Callable[[FaultSpec], None],
    log: Callable[[str], None],
) -> None:
    """Fire each fault `at` seconds after `started_at` (loop time); a rejected one is logged."""
    loop = asyncio.get_running_loop()
    for spec in sorted(specs, key=lambda s: s.at):
        delay = started_at + spec.at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        try:
            fire(spec)
        except ValueError as exc:
            log(f"fault {spec}: {exc}")
