"""The NATS publisher: every frame served to local websocket clients, also published once on NATS.

Subjects and headers are `relay.core.bus`'s (README "NATS"). The hot path is the `tap` around
each stack's publish callback: local clients are served first, then each publication gets its
subject's next sequence number and one pre-encoded `HPUB` command appended to a batch (one `%`
format: the subject and the headers' fixed part are encoded once per subject). The batch goes
onto nats-py's socket with one `writelines` at the end of the loop pass that filled it (or after
`flush_interval`, when set), and at once when it reaches 64 KiB, so a released backlog that keeps
the loop busy for a second cannot hold it back. nats-py owns the connection: reconnection,
authentication, TLS, its own commands (subscriptions, the snapshot replies, the state).

Never blocking the hot path: the batch and the socket's write buffer are bounded by `max_pending_bytes`;
beyond it, or while NATS is unreachable, messages are dropped and counted by reason. A sequence
number is taken before a message can be dropped, so a consumer sees every loss as a gap and
fetches a snapshot (`<prefix>.<protocol>.snapshot.<stream>.<SYMBOL>`, answered here from the
same state the local clients' snapshots come from, with the sequence number of the last message
it includes). Local clients never wait for NATS.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import nats
import orjson
import structlog
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from relay.config import NatsConfig
from relay.core import bus
from relay.protocols.interfaces import BusSource

log = structlog.get_logger("relay.nats")

Publish = Callable[[list[Any]], None]
WRITE_BYTES = 64 * 1024  # a batch this big is written at once, whatever the loop is doing
JETSTREAM_RETRY = 10.0  # seconds between attempts to set up a JetStream stream that failed
RECONNECT_WAIT = 1.0  # seconds between nats-py's reconnect attempts (and ours before the first connect)


class _Stream:
    """One subject: its `HPUB` template and its last sequence number."""

    __slots__ = ("subject", "seq", "template", "hdr_base", "stream")

    def __init__(self, subject: str, fixed_headers: bytes, stream: str) -> None:
        self.subject = subject
        self.seq = 0
        self.stream = stream
        head = b"NATS/1.0\r\n" + bus.SEQ.encode() + b": "
        tail = b"\r\n" + fixed_headers + b"\r\n"
        self.hdr_base = len(head) + len(tail)  # + the digits of the sequence number
        # HPUB <subject> <header bytes> <total bytes>\r\n<headers><payload>\r\n
        self.template = b"HPUB " + subject.encode() + b" %d %d\r\n" + head + b"%b" + tail + b"%b\r\n"


@dataclass(slots=True)
class _Source:
    """What the publisher needs of one protocol stack."""

    protocol: str
    endpoint: BusSource
    default_depth: int
    state: Callable[[], dict[str, Any]]  # the state subject's payload (lines, symbols)


class NatsPublisher:
    """`tap(...)` each stack's publish callback, then `await start()`; `await stop()` at the end."""

    def __init__(self, cfg: NatsConfig, version: str) -> None:
        self.cfg = cfg
        self.prefix = cfg.subject_prefix
        self.name = cfg.name or socket.gethostname()
        self.version = version
        self.epoch = str(time.time_ns())
        self._fixed = (f"{bus.RELAY}: {self.name}\r\n{bus.EPOCH}: {self.epoch}\r\n").encode()
        self._headers = {bus.RELAY: self.name, bus.EPOCH: self.epoch}
        self.sources: dict[str, _Source] = {}
        self._streams: dict[tuple[str, str, str, int], _Stream | None] = {}
        self._batch: list[bytes] = []
        self._batch_bytes = 0
        self._batch_payload = 0
        self._scheduled = False  # a write of the batch is scheduled (end of loop pass / flush_interval)
        self._out: Any = None  # nats-py's transport while connected (`writelines`)
        self._buffered: Callable[[], int] = _zero  # its socket's write-buffer size
        self.nc: NatsClient | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._stopping = False
        self._wanted: set[tuple[str, str, int]] = set()  # book depths asked for by snapshot requests
        # -- counters (metrics) --------------------------------------------------------------
        self.messages = 0
        self.bytes = 0
        self.dropped: Counter[str] = Counter()  # by reason: disconnected | buffer_full | unroutable
        self.snapshot_requests: Counter[str] = Counter()  # by result: ok | unavailable | bad_subject
        self.connects = 0
        self.disconnects = 0
        self.connected_since: float | None = None
        self.down_since: float | None = time.time()
        self.last_error: str | None = None
        self.jetstream_ok: bool | None = None  # None: JetStream not configured
        self.keyframes = 0

    # -- wiring ---------------------------------------------------------------------------------
    def tap(
        self,
        protocol: str,
        publish: Publish,
        endpoint: BusSource,
        default_depth: int,
        state: Callable[[], dict[str, Any]],
    ) -> Publish:
        """`publish` (the local clients) first, then the same frames onto NATS."""
        self.sources[protocol] = _Source(protocol, endpoint, default_depth, state)
        # channel -> symbol -> key -> stream: no tuple built per publication
        table: dict[str, dict[str, dict[int, _Stream | None]]] = {}
        bus_frame = None if getattr(endpoint, "bus_frames_as_is", False) else endpoint.bus_frame
        stream_for = self._stream
        dropped = self.dropped

        def run(pubs: list[Any]) -> None:
            pubs = pubs if isinstance(pubs, list) else list(pubs)
            publish(pubs)
            out = self._out
            batch = self._batch
            size = payload = 0
            for pub in pubs:
                try:
                    st = table[pub.channel][pub.symbol][pub.key]
                except KeyError:
                    st = stream_for(protocol, pub.channel, pub.symbol, pub.key)
                    table.setdefault(pub.channel, {}).setdefault(pub.symbol, {})[pub.key] = st
                if st is None:
                    continue
                st.seq += 1  # taken even when the message is dropped: a consumer sees the gap
                if out is None:
                    dropped["disconnected"] += 1
                    continue
                frame = pub.frame if bus_frame is None else bus_frame(pub)
                if frame is None:
                    continue
                seq = b"%d" % st.seq
                hdr = st.hdr_base + len(seq)
                cmd = st.template % (hdr, hdr + len(frame), seq, frame)
                batch.append(cmd)
                size += len(cmd)
                payload += len(frame)
            if size:
                self._batch_bytes += size
                self._batch_payload += payload
                self._queued()

        return run

    def _stream(self, protocol: str, channel: str, symbol: str, key: int) -> _Stream | None:
        """A subject for (channel, symbol, key), or None: not client data (the merge's internal
        publications) or a symbol no subject can carry (counted once)."""
        src = self.sources[protocol]
        st: _Stream | None = None
        token = bus.symbol_token(symbol)
        if not src.endpoint.bus_channel(channel):
            pass
        elif token is None:
            self.dropped["unroutable"] += 1
            log.warning("symbol cannot be a NATS subject token; not published", protocol=protocol, symbol=symbol)
        else:
            if channel == "book" and (protocol, symbol, src.default_depth) not in self._wanted:
                # the configured depth stays published even when local clients hold another
                src.endpoint.bus_want_book(symbol, src.default_depth)
                self._wanted.add((protocol, symbol, src.default_depth))
            stream = bus.stream_token(channel, key, src.default_depth)
            st = _Stream(bus.data_subject(self.prefix, protocol, stream, token), self._fixed, stream)
        self._streams[(protocol, channel, symbol, key)] = st
        return st

    def _queued(self) -> None:
        """After a publication's commands joined the batch: written at the end of this loop pass
        (or after `flush_interval`), or at once when it reaches WRITE_BYTES, so a long burst (a
        released backlog keeping the loop busy) cannot hold it back."""
        if self._batch_bytes >= WRITE_BYTES:
            self._write()
        elif not self._scheduled:
            self._scheduled = True
            loop = asyncio.get_running_loop()
            if self.cfg.flush_interval > 0:
                loop.call_later(self.cfg.flush_interval, self._write)
            else:
                loop.call_soon(self._write)

    def _write(self) -> None:
        """The batch onto nats-py's socket in one `writelines` (nats-py owns the connection, its
        reconnection and its own commands); dropped and counted when the socket's buffer and the
        batch would exceed `max_pending_bytes`, or when NATS is not connected."""
        self._scheduled = False
        batch, n, payload = self._batch, self._batch_bytes, self._batch_payload
        if not batch:
            return
        self._batch, self._batch_bytes, self._batch_payload = [], 0, 0
        out = self._out
        if out is None:
            self.dropped["disconnected"] += len(batch)
            return
        if self._buffered() + n > self.cfg.max_pending_bytes:
            self.dropped["buffer_full"] += len(batch)
            return
        try:
            out.writelines(batch)
        except Exception as exc:  # the connection went away under us: nats-py reconnects
            self.dropped["disconnected"] += len(batch)
            self.last_error = _reason(exc)
            return
        self.messages += len(batch)
        self.bytes += payload

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        """Connect in the background (NATS down at start: retried; local clients unaffected)."""
        self._tasks.append(asyncio.create_task(self._connect_loop(), name="nats-connect"))

    async def stop(self) -> None:
        self._stopping = True
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        nc, self.nc = self.nc, None
        if nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), 2.0)

    def _options(self) -> dict[str, Any]:
        c = self.cfg
        opts: dict[str, Any] = dict(
            servers=c.servers,
            name=f"kraken-relay {self.name}",
            connect_timeout=c.connect_timeout,
            allow_reconnect=True,
            max_reconnect_attempts=-1,  # once connected, nats-py reconnects forever
            reconnect_time_wait=RECONNECT_WAIT,
            pending_size=c.max_pending_bytes,
            flush_timeout=None,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
            error_cb=self._on_error,
        )
        opts.update(c.client_options())
        return opts

    async def _connect_loop(self) -> None:
        """The first connection (nats-py reconnects on its own after that), then the flusher,
        the state and keyframe publishers, and the snapshot service."""
        delay = RECONNECT_WAIT
        while self.nc is None:
            try:
                self.nc = await nats.connect(**self._options())
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # NATS down at start: the relay serves locally meanwhile
                self.last_error = _reason(exc)
                log.warning("nats connect failed", servers=self.cfg.servers, reason=self.last_error, retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        self._connected()
        nc = self.nc
        for protocol in self.sources:
            await nc.subscribe(f"{self.prefix}.{protocol}.{bus.SNAPSHOT}.*.*", cb=self._on_snapshot)
        await self._setup_jetstream()
        self._tasks.append(asyncio.create_task(self._state_loop(), name="nats-state"))
        if self.cfg.jetstream is not None:
            self._tasks.append(asyncio.create_task(self._keyframe_loop(), name="nats-keyframes"))

    def _connected(self) -> None:
        nc = self.nc
        out = getattr(nc, "_transport", None)
        if out is None or not hasattr(out, "writelines"):  # a nats-py without it: say so, publish nothing
            self.last_error = "nats-py transport has no writelines()"
            log.error("nats: cannot write batches with this nats-py version; not publishing")
            return
        writer = getattr(getattr(out, "_io_writer", None), "transport", None)
        self._buffered = getattr(writer, "get_write_buffer_size", _zero)
        self._out = out
        self.connects += 1
        self.connected_since, self.down_since = time.time(), None
        log.info(
            "nats connected", server=str(self.nc.connected_url.netloc) if self.nc and self.nc.connected_url else ""
        )

    async def _on_disconnected(self) -> None:
        self._out, self._buffered = None, _zero
        if self.connected_since is not None:
            self.disconnects += 1
            self.connected_since, self.down_since = None, time.time()
            log.warning("nats disconnected; publishing paused (messages dropped and counted)")

    async def _on_reconnected(self) -> None:
        self._connected()
        await self._setup_jetstream()

    async def _on_error(self, exc: Exception) -> None:
        self.last_error = _reason(exc)
        log.warning("nats error", reason=self.last_error)

    # -- snapshots, state, keyframes ------------------------------------------------------------
    def snapshot(self, protocol: str, stream: str, token: str) -> tuple[bytes | None, int]:
        """The snapshot frame of (stream, symbol) and the sequence number of the last data message
        it includes; (None, seq) when there is none yet. Synchronous: no publication can fall
        between reading the frame and the number."""
        src = self.sources[protocol]
        channel, key = bus.parse_stream(stream, src.default_depth)
        symbol = bus.symbol_of(token)
        st = self._streams.get((protocol, channel, symbol, key))
        frame = src.endpoint.bus_snapshot(channel, symbol, key)
        if frame is None and channel == "book" and (protocol, symbol, key) not in self._wanted:
            if src.endpoint.bus_want_book(symbol, key):  # a depth nobody here serves yet: from now on
                self._wanted.add((protocol, symbol, key))
        return frame, st.seq if st is not None else 0

    async def _on_snapshot(self, msg: Msg) -> None:
        parts = msg.subject.split(".")
        n = len(self.prefix.split("."))
        nc = self.nc
        if nc is None or not msg.reply:
            return
        if len(parts) != n + 4 or parts[n] not in self.sources:
            self.snapshot_requests["bad_subject"] += 1
            return
        protocol, stream, token = parts[n], parts[n + 2], parts[n + 3]
        frame, seq = self.snapshot(protocol, stream, token)
        headers = {**self._headers, bus.SEQ: str(seq)}
        if frame is None:
            self.snapshot_requests["unavailable"] += 1
            headers[bus.ERROR] = "unavailable"
            frame = b""
        else:
            self.snapshot_requests["ok"] += 1
        with contextlib.suppress(Exception):
            await nc.publish(msg.reply, frame, headers=headers)

    def state_payload(self, protocol: str) -> bytes:
        src = self.sources[protocol]
        body: dict[str, Any] = {"relay": self.name, "epoch": self.epoch, "version": self.version, "protocol": protocol}
        body["book_depth"] = src.default_depth
        body.update(src.state())
        return orjson.dumps(body)

    async def _state_loop(self) -> None:
        """The state subject of each protocol, every `state_interval` (a NATS line's heartbeat);
        a JetStream stream that could not be set up (no quorum yet) is tried again every 10 s."""
        retry_at = time.monotonic() + JETSTREAM_RETRY
        while True:
            nc = self.nc
            if self.jetstream_ok is False and time.monotonic() >= retry_at and nc is not None and nc.is_connected:
                retry_at = time.monotonic() + JETSTREAM_RETRY
                await self._setup_jetstream()
            if nc is not None and nc.is_connected:
                for protocol in self.sources:
                    with contextlib.suppress(Exception):
                        await nc.publish(
                            bus.state_subject(self.prefix, protocol),
                            self.state_payload(protocol),
                            headers=self._headers,
                        )
            await asyncio.sleep(self.cfg.state_interval)

    async def _keyframe_loop(self) -> None:
        """JetStream on: each book subject's snapshot every `keyframe_interval`, retained beside the
        updates, so a replay of the last N minutes has a book to start from."""
        assert self.cfg.jetstream is not None
        interval = self.cfg.jetstream.keyframe_interval
        while True:
            await asyncio.sleep(interval)
            nc = self.nc
            if nc is None or not nc.is_connected:
                continue
            for (protocol, channel, symbol, key), st in list(self._streams.items()):
                if st is None or channel != "book" or st.seq == 0:
                    continue
                frame = self.sources[protocol].endpoint.bus_snapshot(channel, symbol, key)
                if frame is None:
                    continue
                subject = bus.keyframe_subject(self.prefix, protocol, st.stream, bus.symbol_token(symbol) or "")
                with contextlib.suppress(Exception):
                    await nc.publish(subject, frame, headers={**self._headers, bus.SEQ: str(st.seq)})
                    self.keyframes += 1

    def stream_name(self) -> str:
        js = self.cfg.jetstream
        return js.stream if js is not None and js.stream else self.prefix.replace(".", "_").upper()

    async def _setup_jetstream(self) -> None:
        """Create or update the stream retaining this relay's subjects (JetStream configured)."""
        js_cfg, nc = self.cfg.jetstream, self.nc
        if js_cfg is None or nc is None:
            return
        from nats.js.api import StorageType, StreamConfig

        config = StreamConfig(
            name=self.stream_name(),
            subjects=bus.retained_subjects(self.prefix, list(self.sources)),
            max_age=js_cfg.max_age_seconds,
            max_bytes=js_cfg.max_bytes,
            storage=StorageType.FILE if js_cfg.storage == "file" else StorageType.MEMORY,
            num_replicas=js_cfg.replicas,
        )
        js = nc.jetstream(timeout=5.0)
        try:
            try:
                await js.add_stream(config)
            except nats.js.errors.BadRequestError:  # it exists with other settings: ours win
                await js.update_stream(config)
            self.jetstream_ok = True
        except Exception as exc:
            self.jetstream_ok = False
            self.last_error = _reason(exc)
            log.warning("jetstream stream setup failed", stream=config.name, reason=self.last_error)

    # -- operator view --------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        nc = self.nc
        connected = nc is not None and nc.is_connected
        return {
            "connected": int(connected),
            "server": (nc.connected_url.netloc if connected and nc and nc.connected_url else None),
            "messages": self.messages,
            "bytes": self.bytes,
            "dropped": dict(self.dropped),
            "pending_bytes": self._batch_bytes + self._buffered(),
            "snapshot_requests": dict(self.snapshot_requests),
            "connects": self.connects,
            "disconnects": self.disconnects,
            "down_since": self.down_since,
            "subjects": sum(1 for s in self._streams.values() if s is not None),
            "jetstream_ok": self.jetstream_ok,
            "keyframes": self.keyframes,
            "last_error": self.last_error,
        }


_MISSING: Any = object()


def _zero() -> int:
    return 0


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text[:200]
