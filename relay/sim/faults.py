"""Fault kinds and scripted fault schedules ("at T seconds, on line L, fault F for D seconds").

A schedule comes from the command line (`--fault T:LINE:KIND[:DURATION][:key=value,...]`, e.g.
`5:0:stall:3`, `8:1:silent_symbol:4:symbol=ETH/USD`, `2:all:maintenance:5`) or from a YAML/JSON
file holding a list of `{at, line, kind, duration, ...params}` mappings.
"""

from __future__ import annotations

import json
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


@dataclass
class FaultSpec:
    """One scripted fault."""

    at: float
    line: int | str
    kind: str
    duration: float | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r} (one of {', '.join(FAULT_KINDS)})")
        if self.at < 0:
            raise ValueError("fault time must be >= 0")
        if isinstance(self.line, str) and self.line != "all":
            self.line = int(self.line)


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_fault(text: str) -> FaultSpec:
    """`T:LINE:KIND[:DURATION][:k=v,k=v]` -> FaultSpec (symbols like `BTC/USD` are fine)."""
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
    return FaultSpec(at, line if line == "all" else int(line), kind, duration, params)


def load_schedule(path: str | Path) -> list[FaultSpec]:
    """A YAML or JSON list of `{at, line, kind, duration?, ...params}`."""
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
        duration = item.pop("duration", None)
        out.append(FaultSpec(at, line, kind, None if duration is None else float(duration), item))
    return out
