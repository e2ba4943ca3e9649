"""The relay's NATS subjects and headers (README "NATS"), and a consumer's sequence check.

Sans-I/O: the publisher (`relay.nats.publisher`), the NATS line (`relay.upstream.nats_line`) and
any consumer name subjects and read headers the same way from here.

    <prefix>.<protocol>.<stream>.<SYMBOL>            data: the frames a websocket client receives
    <prefix>.<protocol>.snapshot.<stream>.<SYMBOL>   request/reply: the current snapshot frame
    <prefix>.<protocol>.keyframe.<stream>.<SYMBOL>   JetStream on: the snapshot every few seconds
    <prefix>.<protocol>.state                        the relay's state (lines, per-symbol validity)

`<stream>` is the channel, with the publication key when it is not the default: `book` is the
book at the relay's configured depth, `book_25` another depth, `ohlc_5` an interval, `ticker_1`
the v2 `bbo` ticker. `<SYMBOL>` is the symbol with `/` as `-` (`BTC-USD`, `PF_XBTUSD`); a
channel-wide stream (v2 `instrument`, `status`) has `_`. So every data subject has exactly two
tokens after the protocol, snapshot and keyframe subjects three, and a JetStream stream retains
`<prefix>.<protocol>.*.*` and `<prefix>.<protocol>.keyframe.*.*` without capturing requests.

Every data message and snapshot reply carries `Kraken-Relay-Seq` (per subject, contiguous from 1;
a snapshot reply: the sequence number of the last data message it includes), `Kraken-Relay-Id`
(the relay's name) and `Kraken-Relay-Epoch` (the publishing process's start, in ns: sequences
restart at 1 under a new epoch).
"""

from __future__ import annotations

import re
from typing import NamedTuple

DEFAULT_PREFIX = "kraken"
SEQ = "Kraken-Relay-Seq"
RELAY = "Kraken-Relay-Id"
EPOCH = "Kraken-Relay-Epoch"
ERROR = "Kraken-Relay-Error"  # a snapshot request that cannot be answered: why (`unavailable`)

SNAPSHOT = "snapshot"
KEYFRAME = "keyframe"
STATE = "state"
ALL = "_"  # the symbol token of a channel-wide stream
_TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")
PREFIX_RE = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")


def symbol_token(symbol: str) -> str | None:
    """`BTC/USD` -> `BTC-USD`, `` -> `_`; None for a symbol no subject token can carry (`.`, `*`)."""
    if not symbol:
        return ALL
    token = symbol.replace("/", "-")
    return token if _TOKEN.match(token) else None


def symbol_of(token: str) -> str:
    """`BTC-USD` -> `BTC/USD` (spot), `_` -> ``; futures products have no `-` and come back unchanged."""
    return "" if token == ALL else token.replace("-", "/")


def stream_token(channel: str, key: int, default_depth: int) -> str:
    """The `<stream>` token of (channel, key): `book` at `default_depth`, else `book_<depth>`."""
    if key == 0 or (channel == "book" and key == default_depth):
        return channel
    return f"{channel}_{key}"


def parse_stream(token: str, default_depth: int) -> tuple[str, int]:
    """`book` -> (book, default_depth); `book_25` -> (book, 25); `ticker_lite` -> (ticker_lite, 0)."""
    channel, _, key = token.rpartition("_")
    if channel and key.isdigit():
        return channel, int(key)
    return token, default_depth if token == "book" else 0


def data_subject(prefix: str, protocol: str, stream: str, symbol_tok: str) -> str:
    return f"{prefix}.{protocol}.{stream}.{symbol_tok}"


def snapshot_subject(prefix: str, protocol: str, stream: str, symbol_tok: str) -> str:
    return f"{prefix}.{protocol}.{SNAPSHOT}.{stream}.{symbol_tok}"


def keyframe_subject(prefix: str, protocol: str, stream: str, symbol_tok: str) -> str:
    return f"{prefix}.{protocol}.{KEYFRAME}.{stream}.{symbol_tok}"


def retained_subjects(prefix: str, protocols: list[str]) -> list[str]:
    """What a JetStream stream of this relay's publications holds: data and keyframes."""
    return [s for p in protocols for s in (f"{prefix}.{p}.*.*", f"{prefix}.{p}.{KEYFRAME}.*.*")]


def state_subject(prefix: str, protocol: str) -> str:
    return f"{prefix}.{protocol}.{STATE}"


class Verdict(NamedTuple):
    ok: bool  # apply the message
    reason: str  # "" | "duplicate" | "gap" | "epoch"


class SeqCheck:
    """One subject's sequence as a consumer sees it: after `reset(epoch, seq)` (a snapshot's
    header), each message must be the next one. A gap, or a message of another epoch (the
    publisher restarted), means: fetch a snapshot again; an old number is a duplicate."""

    __slots__ = ("epoch", "last")

    def __init__(self) -> None:
        self.epoch: str | None = None
        self.last = -1  # -1: no snapshot yet

    def reset(self, epoch: str, seq: int) -> None:
        self.epoch, self.last = epoch, seq

    def check(self, epoch: str, seq: int) -> Verdict:
        if self.last < 0:
            return Verdict(False, "gap")
        if epoch != self.epoch:
            return Verdict(False, "epoch")
        if seq <= self.last:
            return Verdict(False, "duplicate")
        if seq != self.last + 1:
            return Verdict(False, "gap")
        self.last = seq
        return Verdict(True, "")
