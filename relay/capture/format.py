"""The capture format (issue 16): what a flight-recorder file holds, readable without the relay.

A capture file is a sequence of independent zstd frames (one per written batch), each holding
UTF-8 NDJSON: one JSON object per line, one record per object. Independent frames are what make
a file safe to read after a crash: every complete frame decodes on its own, so a SIGKILL loses
at most the batch being written. `zstd -dc FILE` (or any zstd library) gives the NDJSON.

Every record has:
  `w`  wall-clock receive time, integer nanoseconds since the epoch
  `m`  monotonic time, integer nanoseconds (orders records across lines of one relay run)
  `l`  the line's name (`published` for the stream as clients received it)
  `k`  the kind: `frame`, `connect`, `connect_failed`, `subscribe`, `disconnect`, `resync`
and, by kind:
  `frame`, `subscribe`: `d` the frame's text; a frame that is not valid UTF-8 has `x` instead
                          (its bytes in base64), so hostile input is kept exactly. `frame` is a
                          frame received on the line, `subscribe` a request the relay sent on it
  `connect`:            `p` the line's protocol (`v2`, `v1`, `futures`), `url`, `egress`
                          (source address, or null)
  `connect_failed`:     `p`, `url`, `reason` (`http 503`, `refused`, `timeout`, `429`, ...)
  `disconnect`:         `code` the close code (null: no close frame, i.e. 1006), `text` the
                          close reason text, `by` who closed (`server`, `relay`, or null for an
                          abnormal end), `reason` the relay's summary (`1001 CloudFlare ...`,
                          `1006`, `frame timeout`, ...)
  `resync`:             `channel`, `symbol`, `reason` (why the merge asked), `result`
                          (`started`, `deferred`, or why nothing was sent)
A published record (`l` = `published`, `k` = `frame`) also has `p` (the protocol), `channel`,
`symbol` and `key` (the book depth, ohlc interval, ...; null when the channel has none): `d` is
the frame as every client subscribed to that stream received it.
Readers ignore keys they do not know.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

import orjson

FRAME, CONNECT, SUBSCRIBE, DISCONNECT, RESYNC = "frame", "connect", "subscribe", "disconnect", "resync"
CONNECT_FAILED = "connect_failed"
PUBLISHED = "published"  # the line name of the published stream
SUFFIX = ".ndjson.zst"


@dataclass(slots=True)
class Record:
    wall_ns: int
    mono_ns: int
    line: str
    kind: str
    data: bytes | None = None  # frame / subscribe: the raw bytes
    fields: dict[str, Any] = field(default_factory=dict)  # the kind's other keys


def encode(rec: Record) -> bytes:
    """One NDJSON line (with its newline)."""
    obj: dict[str, Any] = {"w": rec.wall_ns, "m": rec.mono_ns, "l": rec.line, "k": rec.kind}
    if rec.data is not None:
        try:
            obj["d"] = rec.data.decode()
        except UnicodeDecodeError:
            obj["x"] = base64.b64encode(rec.data).decode()
    obj.update(rec.fields)
    return orjson.dumps(obj) + b"\n"


def decode(line: bytes) -> Record:
    """A record from one NDJSON line; `ValueError` when it is not one."""
    obj = orjson.loads(line)
    if not isinstance(obj, dict):
        raise ValueError("a capture record is a JSON object")
    try:
        wall, mono, name, kind = obj.pop("w"), obj.pop("m"), obj.pop("l"), obj.pop("k")
    except KeyError as exc:
        raise ValueError(f"capture record without {exc}") from None
    text, b64 = obj.pop("d", None), obj.pop("x", None)
    data = text.encode() if isinstance(text, str) else base64.b64decode(b64) if isinstance(b64, str) else None
    return Record(int(wall), int(mono), str(name), str(kind), data, obj)
