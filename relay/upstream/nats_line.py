"""A NATS line: another relay's NATS publications read as one upstream line (README "NATS").

`{name: eu, url: "nats://host:4222", protocol: v2, subject_prefix: kraken.eu}` in `upstreams`.
`NatsLine` looks to `UpstreamConnection` like the websocket of a Kraken line, so everything a
line has (backoff, attempt budget, subscription planner, liveness, resyncs, the flight
recorder, metrics) is the same, and the merge treats it like any Kraken line, checksums and all:

* the line's requests (`send`) become NATS subscriptions to the data subjects, each answered
  with the ack Kraken would send; pings get pongs;
* each stream starts from a snapshot fetched by request/reply, then applies the data messages
  that follow it by their `Kraken-Relay-Seq` header; a gap, or a new `Kraken-Relay-Epoch` (the
  publishing relay restarted), fetches a new snapshot for that stream alone;
* the publishing relay's state subject (every second) becomes Kraken's `status` frame (first,
  and when its engine status changes) and a `heartbeat`: when the publisher dies, the heartbeats
  stop and the line's frame timeout ends the session like a silent Kraken socket;
* a lost NATS connection ends the session; the connection's backoff connects again (to any of
  the comma-separated servers).

Frames are delivered straight into the connection's frame callback (`attach`), as the websocket
sink does. Everything is bounded: frames buffered per stream while its snapshot is fetched, and
the frames a stream may hold waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import nats
import orjson
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from websockets.exceptions import ConnectionClosed

from relay.config import UpstreamConfig, nats_servers
from relay.core import bus
from relay.protocols.futures import wire as futures_wire
from relay.protocols.spot_v1 import wire as v1_wire
from relay.protocols.spot_v2.wire import encode_ack, encode_pong, encode_status, now_rfc3339

MAX_BUFFERED = 10_000  # frames held per stream while its snapshot is fetched; beyond: fetched again
MAX_BUFFERED_BYTES = 8 * 1024 * 1024  # ... and their bytes (a hostile publisher's 1 MB messages)
SNAPSHOT_TIMEOUT = 2.0  # seconds a snapshot request waits for its reply
SNAPSHOT_RETRY = 0.5  # seconds before asking again when the publisher has none yet
HEARTBEAT = b'{"channel":"heartbeat"}'


class LineClosed(ConnectionClosed):
    """The NATS line's session ended; `line_reason` is what the line's stats show."""

    def __init__(self, reason: str) -> None:
        super().__init__(None, None)
        self.line_reason = reason


@dataclass(slots=True)
class Request:
    """One Kraken request, as a line sends it."""

    method: str  # subscribe | unsubscribe | ping
    channel: str = ""
    symbols: list[str] = field(default_factory=list)
    key: int = 0  # book depth, ohlc interval, ticker trigger (1: bbo)
    snapshot: bool = True
    req_id: int | None = None
    params: dict[str, Any] = field(default_factory=dict)


class V2Codec:
    """Spot v2's requests, acks, status and heartbeat, as Kraken words them."""

    name = "v2"

    @staticmethod
    def parse(frame: bytes) -> Request | None:
        msg = _json_object(frame)
        if msg is None:
            return None
        method, req_id = msg.get("method"), _int_or_none(msg.get("req_id"))
        if method == "ping":
            return Request("ping", req_id=req_id)
        if method not in ("subscribe", "unsubscribe"):
            return None
        params = msg.get("params") or {}
        channel = str(params.get("channel", ""))
        symbols = params.get("symbol") or [""]
        if channel == "book":
            key = int(params.get("depth", 10))
        elif channel == "ohlc":
            key = int(params.get("interval", 1))
        elif channel == "ticker":
            key = 1 if params.get("event_trigger") == "bbo" else 0
        else:
            key = 0
        result = {k: v for k, v in params.items() if k not in ("symbol", "token")}
        return Request(
            method, channel, [str(s) for s in symbols], key, bool(params.get("snapshot", True)), req_id, result
        )

    @staticmethod
    def ack(req: Request, symbol: str) -> bytes:
        result = dict(req.params)
        if symbol:
            result["symbol"] = symbol
        now = now_rfc3339()
        return encode_ack(req.method, result, req.req_id, now, now)

    @staticmethod
    def pong(req: Request) -> bytes:
        now = now_rfc3339()
        return encode_pong(req.req_id, now, now)

    @staticmethod
    def status(system: str, version: str) -> bytes:
        return encode_status(system, version, 0)

    @staticmethod
    def heartbeat() -> bytes:
        return HEARTBEAT


class V1Codec:
    """Spot v1's requests (`event`/`pair`/`subscription`), `subscriptionStatus`, `systemStatus`."""

    name = "v1"

    @staticmethod
    def parse(frame: bytes) -> Request | None:
        msg = _json_object(frame)
        if msg is None:
            return None
        event, req_id = msg.get("event"), _int_or_none(msg.get("reqid"))
        if event == "ping":
            return Request("ping", req_id=req_id)
        if event not in ("subscribe", "unsubscribe"):
            return None
        sub = msg.get("subscription") or {}
        channel = str(sub.get("name", ""))
        key = (
            int(sub.get("depth", 10)) if channel == "book" else int(sub.get("interval", 1)) if channel == "ohlc" else 0
        )
        pairs = [str(p) for p in msg.get("pair") or []]
        return Request(event, channel, pairs, key, bool(sub.get("snapshot", True)), req_id, dict(sub))

    @staticmethod
    def ack(req: Request, symbol: str) -> bytes:
        name = f"{req.channel}-{req.key}" if req.channel in ("book", "ohlc") else req.channel
        status = "subscribed" if req.method == "subscribe" else "unsubscribed"
        return v1_wire.encode_subscription_status(status, symbol, req.params, req.req_id, name, 0)

    @staticmethod
    def pong(req: Request) -> bytes:
        return v1_wire.encode_pong(req.req_id)

    @staticmethod
    def status(system: str, version: str) -> bytes:
        return v1_wire.encode_system_status(system, 0, version or v1_wire.V1_VERSION)

    @staticmethod
    def heartbeat() -> bytes:
        return v1_wire.HEARTBEAT


class FuturesCodec:
    """Kraken Futures' requests (`event`/`feed`/`product_ids`, no ids), acks, `info` and heartbeat."""

    name = "futures"

    @staticmethod
    def parse(frame: bytes) -> Request | None:
        msg = _json_object(frame)
        if msg is None or msg.get("event") not in ("subscribe", "unsubscribe"):
            return None
        feed = str(msg.get("feed", ""))
        products = [str(p) for p in msg.get("product_ids") or [""]]
        return Request(str(msg["event"]), feed, products, 0, True, None, {})

    @staticmethod
    def ack(req: Request, symbol: str) -> bytes:
        event = "subscribed" if req.method == "subscribe" else "unsubscribed"
        return futures_wire.encode_event(event, req.channel, [symbol] if symbol else None)

    @staticmethod
    def pong(req: Request) -> bytes:  # futures lines rely on websocket pings: never asked
        return b""

    @staticmethod
    def status(system: str, version: str) -> bytes:
        return futures_wire.INFO

    @staticmethod
    def heartbeat() -> bytes:
        return futures_wire.encode_heartbeat()


CODECS: dict[str, Any] = {"v2": V2Codec, "v1": V1Codec, "futures": FuturesCodec}


class _Stream:
    """One subscribed stream: its NATS subscription, sequence check and snapshot state."""

    __slots__ = (
        "key",
        "subject",
        "snapshot_subject",
        "sub",
        "check",
        "waiting",
        "buffer",
        "held_bytes",
        "task",
        "snapshot",
    )

    def __init__(self, key: tuple[str, str, int], subject: str, snapshot_subject: str, snapshot: bool) -> None:
        self.key = key
        self.subject = subject
        self.snapshot_subject = snapshot_subject
        self.sub: Subscription | None = None
        self.check = bus.SeqCheck()
        self.waiting = True  # for a snapshot (or, without one, for the first message)
        self.buffer: list[tuple[str, int, bytes]] = []
        self.held_bytes = 0
        self.task: asyncio.Task[None] | None = None
        self.snapshot = snapshot


class _Transport:
    def __init__(self, line: NatsLine) -> None:
        self._line = line

    def abort(self) -> None:
        self._line.end("aborted")


class _State:
    def __init__(self) -> None:
        self.name = "OPEN"


class NatsLine:
    """What `UpstreamConnection` uses of a websocket: `attach`, `recv`, `send`, `close`,
    `transport.abort()`, `state.name`."""

    def __init__(self, nc: NatsClient, prefix: str, protocol: str, counters: Counter[str]) -> None:
        self.nc = nc
        self.prefix = prefix
        self.protocol = protocol
        self.codec = CODECS[protocol]
        self.counters = counters  # gap | epoch | snapshot | snapshot_unavailable | overflow
        self.state = _State()
        self.transport = _Transport(self)
        self.streams: dict[tuple[str, str, int], _Stream] = {}
        self.remote: dict[str, Any] | None = None  # the publisher's last state message
        self._deliver: Callable[[bytes], None] | None = None
        self._early: list[bytes] = []  # frames before `attach`
        self._ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._state_sub: Subscription | None = None

    @classmethod
    async def open(
        cls, up: UpstreamConfig, protocol: str, *, handshake_timeout: float, counters: Counter[str]
    ) -> NatsLine:
        """Connect to NATS and follow the publisher's state subject (its status comes within a
        second); raises like a failed websocket handshake."""
        if protocol not in CODECS:
            raise ValueError(f"NATS lines speak {', '.join(CODECS)}, not {protocol}")
        holder: list[NatsLine] = []

        async def closed() -> None:
            if holder:
                holder[0].end("nats connection lost")

        nc = await nats.connect(
            servers=nats_servers(up.url),
            name=f"kraken-relay line {up.name}",
            connect_timeout=handshake_timeout,
            allow_reconnect=False,  # the line's own backoff reconnects, and resubscribes
            max_reconnect_attempts=0,
            disconnected_cb=closed,
            closed_cb=closed,
            error_cb=_ignore,
            **(up.nats.client_options() if up.nats is not None else {}),
        )
        line = cls(nc, up.subject_prefix or bus.DEFAULT_PREFIX, protocol, counters)
        holder.append(line)
        line._state_sub = await nc.subscribe(bus.state_subject(line.prefix, protocol), cb=line._on_state)
        return line

    # -- the websocket surface ------------------------------------------------------------------
    def attach(self, deliver: Callable[[bytes], None]) -> bool:
        self._deliver = deliver
        early, self._early = self._early, []
        for frame in early:
            deliver(frame)
        return True

    async def recv(self, decode: bool = False) -> bytes:
        """Only returns by raising, when the session ends (frames go to the attached callback)."""
        reason = await asyncio.shield(self._ended)
        raise LineClosed(reason)

    async def send(self, frame: bytes | str, text: bool = True) -> None:
        req = self.codec.parse(frame.encode() if isinstance(frame, str) else frame)
        if req is None:
            return
        if req.method == "ping":
            self._emit(self.codec.pong(req))
            return
        for symbol in req.symbols:
            key = (req.channel, symbol, req.key)
            if req.method == "subscribe":
                await self._subscribe(key, req.snapshot)
            else:
                await self._unsubscribe(key)
            self._emit(self.codec.ack(req, symbol))

    async def close(self) -> None:
        self.end("closed by relay")
        with contextlib.suppress(Exception):
            await self.nc.close()

    def end(self, reason: str) -> None:
        """The session is over: streams stop, `recv` raises `LineClosed(reason)`."""
        if self._ended.done():
            return
        self.state.name = "CLOSED"
        self._ended.set_result(reason)
        for st in self.streams.values():
            if st.task is not None:
                st.task.cancel()
        self.streams.clear()
        if not self.nc.is_closed:
            asyncio.get_running_loop().create_task(_close_quietly(self.nc))

    # -- streams --------------------------------------------------------------------------------
    def _emit(self, frame: bytes) -> None:
        if self._ended.done() or not frame:
            return
        if self._deliver is not None:
            self._deliver(frame)
        else:
            self._early.append(frame)

    def _stream_token(self, channel: str, key: int) -> str:
        depth = int((self.remote or {}).get("book_depth") or 0)
        return bus.stream_token(channel, key, depth)

    async def _subscribe(self, key: tuple[str, str, int], snapshot: bool) -> None:
        channel, symbol, param = key
        old = self.streams.pop(key, None)
        if old is not None:
            await self._drop(old)
        token = bus.symbol_token(symbol)
        if token is None:
            return
        stream = self._stream_token(channel, param)
        st = _Stream(
            key,
            bus.data_subject(self.prefix, self.protocol, stream, token),
            bus.snapshot_subject(self.prefix, self.protocol, stream, token),
            snapshot or channel == "book",
        )
        self.streams[key] = st
        st.sub = await self.nc.subscribe(st.subject, cb=functools.partial(self._on_data, st))
        if st.snapshot:
            self._fetch(st)

    async def _unsubscribe(self, key: tuple[str, str, int]) -> None:
        st = self.streams.pop(key, None)
        if st is not None:
            await self._drop(st)

    @staticmethod
    async def _drop(st: _Stream) -> None:
        if st.task is not None:
            st.task.cancel()
        if st.sub is not None:
            with contextlib.suppress(Exception):
                await st.sub.unsubscribe()

    async def _on_data(self, st: _Stream, msg: Msg) -> None:
        if self.streams.get(st.key) is not st:
            return  # unsubscribed meanwhile
        hdr = msg.headers or {}
        epoch, seq = hdr.get(bus.EPOCH, ""), _int(hdr.get(bus.SEQ))
        if st.waiting:
            if not st.snapshot:  # no snapshot asked for: start from the first message
                st.check.reset(epoch, seq - 1)
                st.waiting = False
            else:
                self._hold(st, epoch, seq, msg.data)
                return
        verdict = st.check.check(epoch, seq)
        if verdict.ok:
            self._emit(msg.data)
        elif verdict.reason != "duplicate":  # a gap, or a restarted publisher: this stream resyncs
            self.counters[verdict.reason] += 1
            st.waiting, st.snapshot, st.buffer = True, True, []
            self._hold(st, epoch, seq, msg.data)
            self._fetch(st)

    def _hold(self, st: _Stream, epoch: str, seq: int, data: bytes) -> None:
        if not st.buffer:
            st.held_bytes = 0
        if len(st.buffer) >= MAX_BUFFERED or st.held_bytes + len(data) > MAX_BUFFERED_BYTES:
            self.counters["overflow"] += 1  # the snapshot, when it comes, is older: a gap, fetched again
            st.buffer.clear()
            st.held_bytes = 0
        st.buffer.append((epoch, seq, data))
        st.held_bytes += len(data)

    def _fetch(self, st: _Stream) -> None:
        if st.task is None or st.task.done():
            st.task = asyncio.get_running_loop().create_task(self._snapshot(st))

    async def _snapshot(self, st: _Stream) -> None:
        """Request the stream's snapshot until there is one, then apply what followed it."""
        while self.streams.get(st.key) is st:
            try:
                reply = await self.nc.request(st.snapshot_subject, b"", timeout=SNAPSHOT_TIMEOUT)
            except asyncio.CancelledError:
                raise
            except Exception:  # no responder yet, a timeout: ask again
                self.counters["snapshot_unavailable"] += 1
                await asyncio.sleep(SNAPSHOT_RETRY)
                continue
            hdr = reply.headers or {}
            if self.streams.get(st.key) is not st:
                return
            if hdr.get(bus.ERROR):
                self.counters["snapshot_unavailable"] += 1
                if st.key[0] != "book":  # none to give (a v1 trade, no trade yet): start from the updates
                    self._start_unsnapshotted(st)
                    return
                await asyncio.sleep(SNAPSHOT_RETRY)
                continue
            self.counters["snapshot"] += 1
            st.check.reset(hdr.get(bus.EPOCH, ""), _int(hdr.get(bus.SEQ)))
            self._emit(reply.data)
            held, st.buffer = st.buffer, []
            for epoch, seq, data in held:
                verdict = st.check.check(epoch, seq)
                if verdict.ok:
                    self._emit(data)
                elif verdict.reason != "duplicate":
                    self.counters[verdict.reason] += 1
                    st.buffer = [(epoch, seq, data)]
                    break
            else:
                st.waiting = False
                return

    def _start_unsnapshotted(self, st: _Stream) -> None:
        """A stream with no snapshot: from its first held message on, or from the next one."""
        st.snapshot = False
        held, st.buffer = st.buffer, []
        if not held:
            return  # still waiting: `_on_data` starts from the next message
        epoch, seq, _ = held[0]
        st.check.reset(epoch, seq - 1)
        st.waiting = False
        for epoch, seq, data in held:
            if st.check.check(epoch, seq).ok:
                self._emit(data)

    # -- the publisher's state: status and heartbeat -------------------------------------------
    async def _on_state(self, msg: Msg) -> None:
        try:
            body = orjson.loads(msg.data)
        except orjson.JSONDecodeError:
            return
        if not isinstance(body, dict):
            return
        prev, self.remote = self.remote, body
        system = str(body.get("system") or "online")
        if prev is None or prev.get("system") != body.get("system"):
            self._emit(self.codec.status(system, str(body.get("upstream_version") or "")))
        self._emit(self.codec.heartbeat())


def _json_object(frame: bytes) -> dict[str, Any] | None:
    """A request frame as a JSON object, or None (not JSON, or not an object)."""
    try:
        msg = orjson.loads(frame)
    except orjson.JSONDecodeError:
        return None
    return msg if isinstance(msg, dict) else None


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) else None


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


async def _ignore(exc: Exception) -> None:
    return None


async def _close_quietly(nc: NatsClient) -> None:
    with contextlib.suppress(Exception):
        await nc.close()
