"""`kraken-relay replay PATH... --ports P1,P2`: serve a capture as Kraken lines, to reproduce an
incident against a relay (issue 16).

Each captured line gets its own port (in `--lines` order, default: order of first appearance), so
a relay whose upstreams point there receives, line by line, the frames its recorded predecessor
received, at their recorded times, and loses its lines as that one did. Which session a
connection gets, when its frames are due and how it ends is `relay.capture.sessions` (Sans-I/O,
documented there); this module is the websockets I/O around it:

* one listener per line, any path accepted; one session per line at a time, a second connection
  meanwhile is answered HTTP 503 (the relay backs off as from any 503);
* holding a handshake (the recorded relay was reconnecting then) happens in `process_request`,
  before the answer, so the relay's `connect` comes when it came in the capture; refused attempts
  get the recorded HTTP status, or an aborted connection for non-HTTP failures;
* frames are sent as text frames with exactly the recorded bytes (a response's request id aside,
  below), also the ones the capture keeps in base64 (`x`, not valid UTF-8): websockets sends
  bytes as text without validating them, and Kraken only sends text frames, so the relay sees
  what it saw;
* what the relay sends (subscribe, unsubscribe, ping) is read and fed to the session's
  `Playback`: a recorded response is never sent before the relay sent the request it answers
  (the stream pauses for it, at most `--response-wait` capture seconds, then sends it anyway,
  counted `unanswered`), and its `req_id` / `reqid` is rewritten to the live request's, the one
  change ever made to a recorded frame (pairing, pausing and the rewrite are documented in
  `relay.capture.sessions`); requests the recording does not have are counted and logged at
  debug level (`--verbose`); RFC 6455 pings are answered by websockets;
* a session the recorded relay closed itself (`by: relay`) ends by waiting `--close-grace` seconds
  for the client to close, then a 1000 close.

It prints the upstream config lines for the relay, then one line per session start and end, and
exits 0 at `--end`, or once every line's sessions are played or in the past (all sockets closed
1001 first); 2 for bad arguments or an unreadable capture; 1 when a port cannot be bound.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from http import HTTPStatus
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from relay.capture.reader import Reader
from relay.capture.sessions import (
    ABORT,
    CLOSE,
    NS,
    REPLAY_ENDED,
    RESPONSE_WAIT,
    WAIT,
    Busy,
    Capture,
    Hold,
    Over,
    Playback,
    Refuse,
    Schedule,
    Serve,
    Session,
    build,
    parse_when,
)

log = logging.getLogger("relay.sim.capture_replay")

MAX_BATCH = 500  # frames sent before yielding to the loop while catching up


def _hms(t_ns: int) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(t_ns / NS)) + f".{t_ns // 1_000_000 % 1000:03d}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _stdout(text: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {text}", flush=True)


class ReplayServer:
    """Serves `schedule`'s lines on `ports` (0 = any free); `await start()`, `await wait()`."""

    def __init__(
        self,
        schedule: Schedule,
        ports: list[int] | None = None,
        *,
        host: str = "127.0.0.1",
        wait: bool = True,
        close_grace: float = 5.0,
        log: Callable[[str], None] | None = _stdout,
    ) -> None:
        self.schedule = schedule
        self.names = list(schedule.lines)
        ports = ports or [0] * len(self.names)
        if len(ports) != len(self.names):
            raise ValueError(f"{len(ports)} ports for {len(self.names)} lines ({', '.join(self.names)})")
        self.wanted_ports = ports
        self.host = host
        self.wait_first = wait
        self.close_grace = close_grace
        self._log = log
        self.ports: dict[str, int] = {}
        self.servers: list[Server] = []
        self.serving: dict[str, Playback] = {}  # line -> the session being sent now
        self.frames_sent: Counter[str] = Counter()
        self.endings: list[tuple[str, int, str]] = []  # (line, session index, how it ended)
        self.unexpected_requests: Counter[str] = Counter()
        self.unanswered: Counter[str] = Counter()  # responses sent when their wait ran out
        self.rewritten: Counter[str] = Counter()  # responses sent with the live request's id
        self.paused: Counter[str] = Counter()  # times a line's stream waited for a request
        self._wakers: dict[ServerConnection, asyncio.Future[None]] = {}  # a paused stream's wake-up
        self._conns: dict[str, set[ServerConnection]] = {n: set() for n in self.names}
        self._slot: dict[str, ServerConnection] = {}  # line -> the connection holding its slot
        self._serve: dict[ServerConnection, Session] = {}  # handshake accepted -> session to play
        self._tasks: list[asyncio.Task[Any]] = []
        self._handlers = 0  # sessions being served (a `by: relay` ending included)
        self._finished: asyncio.Future[None] | None = None

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> ReplayServer:
        loop = asyncio.get_running_loop()
        self._finished = loop.create_future()
        try:
            for name, port in zip(self.names, self.wanted_ports):
                server = await self._listen(name, port)
                self.servers.append(server)
                self.ports[name] = server.sockets[0].getsockname()[1]
        except OSError:
            await self._close_servers()
            raise
        if not self.wait_first:
            self.schedule.begin(loop.time())
        self._tasks.append(asyncio.create_task(self._watch(), name="replay-watch"))
        return self

    async def _listen(self, name: str, port: int) -> Server:
        async def handler(ws: ServerConnection) -> None:
            await self._handle(ws, name)

        async def process_request(ws: ServerConnection, request: Request) -> Response | None:
            return await self._process_request(ws, request, name)

        return await serve(
            handler,
            self.host,
            port,
            process_request=process_request,
            compression=None,  # as the relay asks; frames stay byte for byte on the wire
            ping_interval=None,  # as Kraken: no server pings
            open_timeout=None,  # a held handshake may wait longer than websockets' default 10 s
            max_size=1 << 20,
            max_queue=64,
            close_timeout=2,
        )

    async def wait(self) -> None:
        """Until the replay is over (`--end`, or every session played or past)."""
        assert self._finished is not None, "not started"
        await asyncio.shield(self._finished)

    @property
    def finished(self) -> bool:
        return self._finished is not None and self._finished.done()

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await self._close_all()
        await self._close_servers()
        if self._finished is not None and not self._finished.done():
            self._finished.set_result(None)

    async def _close_servers(self) -> None:
        for server in self.servers:
            server.close(close_connections=False)
        for server in self.servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 5)

    async def _close_all(self) -> None:
        """Close every open socket 1001; connections still in their handshake are aborted."""
        conns = [ws for s in self._conns.values() for ws in s]
        for ws in conns:
            if ws.protocol.state is State.CONNECTING and ws.transport is not None:
                ws.transport.abort()
        await asyncio.gather(*(_close(ws, 1001, REPLAY_ENDED) for ws in conns if ws.protocol.state is State.OPEN))

    async def _watch(self) -> None:
        """Ends the replay when the schedule is done."""
        loop = asyncio.get_running_loop()
        while not (self.schedule.ended(loop.time()) or (self.schedule.exhausted(loop.time()) and not self._handlers)):
            await asyncio.sleep(0.05)
        self._say(self._summary())
        await self._close_all()
        if self._finished is not None and not self._finished.done():
            self._finished.set_result(None)

    # -- what to paste into the relay's config ---------------------------------------------
    def urls(self) -> dict[str, str]:
        return {n: f"ws://{self.host}:{self.ports[n]}{self.schedule.lines[n].hist.path}" for n in self.names}

    def config_lines(self) -> list[str]:
        out = ["upstreams:"]
        for name, url in self.urls().items():
            proto = self.schedule.lines[name].hist.protocol
            extra = "" if proto == "v2" else f", protocol: {proto}"
            out.append(f"  - {{name: {name}, url: {url}{extra}}}")
        return out

    def describe(self) -> list[str]:
        cap, sch = self.schedule.capture, self.schedule
        span = (cap.last_ns - cap.first_ns) / NS
        lines = ", ".join(f"{n} ({_plural(len(sch.lines[n].hist.sessions), 'session')})" for n in self.names)
        start = (sch.start_ns - cap.first_ns) / NS
        end = "" if sch.end_ns is None else f" to +{(sch.end_ns - cap.first_ns) / NS:.3f}s"
        when = "at the first connection" if self.wait_first else "now"
        return [
            f"kraken-relay replay: {cap.records} records, {span:.3f} s from {_hms(cap.first_ns)} UTC; lines {lines}",
            f"  replaying from +{start:.3f}s{end} at speed {sch.speed:g}; the clock starts {when}",
            "  point a relay at it with:",
            *("    " + line for line in self.config_lines()),
        ]

    def _summary(self) -> str:
        parts = [
            f"{n}: {st.played} played, {st.skipped} skipped, {st.refused} refused, {self.frames_sent[n]} frames"
            + (f", {self.unanswered[n]} unanswered" if self.unanswered[n] else "")
            + (f", {self.unexpected_requests[n]} requests not in the recording" if self.unexpected_requests[n] else "")
            for n, st in self.schedule.lines.items()
        ]
        return "replay over: " + "; ".join(parts)

    def _say(self, text: str) -> None:
        if self._log is not None:
            self._log(text)

    # -- the handshake: which session, now or later ----------------------------------------
    def _reap(self, name: str) -> None:
        """Free the line's slot if the connection holding it is gone."""
        ws = self._slot.get(name)
        if ws is not None and (ws.connection_lost_waiter.done() or ws.protocol.state is State.CLOSED):
            self._free(name, ws)

    def _free(self, name: str, ws: ServerConnection) -> None:
        self.schedule.release(name, ws)
        if self._slot.get(name) is ws:
            del self._slot[name]
        self._serve.pop(ws, None)

    async def _process_request(self, ws: ServerConnection, request: Request, name: str) -> Response | None:
        loop = asyncio.get_running_loop()
        self._conns[name].add(ws)
        ws.connection_lost_waiter.add_done_callback(lambda _: self._lost(name, ws))
        peer = f"{ws.remote_address[0]}:{ws.remote_address[1]}" if ws.remote_address else "?"
        self._reap(name)
        held = False
        while True:
            if ws.connection_lost_waiter.done() or self.finished:
                self._free(name, ws)
                return ws.respond(HTTPStatus.SERVICE_UNAVAILABLE, f"{REPLAY_ENDED}\n")
            d = self.schedule.assign(name, loop.time(), ws)
            if isinstance(d, Serve):
                self._slot[name] = ws
                self._serve[ws] = d.session
                if d.skipped:
                    self._say(f"{name}: skipped {d.skipped} session(s) already over at the replay clock")
                return None
            if isinstance(d, Hold):
                self._slot[name] = ws
                wait = max(0.0, d.until - loop.time())
                if not held:
                    self._say(f"{name}: {peer} held {wait:.3f}s until session {d.session.index} connects")
                    held = True
                assert self._finished is not None
                await asyncio.wait({ws.connection_lost_waiter, self._finished}, timeout=wait)
                continue
            if isinstance(d, Refuse):
                self._say(f"{name}: {peer} refused as recorded ({d.reason})")
                if d.status is None:
                    ws.transport.abort()
                    return ws.respond(HTTPStatus.SERVICE_UNAVAILABLE, "refused\n")
                return ws.respond(d.status, f"{d.reason}\n")
            if isinstance(d, Busy):
                self._say(f"{name}: {peer} refused (503): the line is busy with another connection")
                return ws.respond(HTTPStatus.SERVICE_UNAVAILABLE, "replay line busy: one session at a time\n")
            assert isinstance(d, Over)
            self._say(f"{name}: {peer} refused (503): {d.reason}")
            return ws.respond(HTTPStatus.SERVICE_UNAVAILABLE, f"{d.reason}\n")

    def _lost(self, name: str, ws: ServerConnection) -> None:
        self._conns[name].discard(ws)
        self._free(name, ws)

    # -- a session ------------------------------------------------------------------------
    async def _handle(self, ws: ServerConnection, name: str) -> None:
        session = self._serve.pop(ws, None)
        if session is None:  # the slot was lost between the handshake and now
            await _close(ws, 1013, "replay: no session")
            return
        loop = asyncio.get_running_loop()
        pb = self.schedule.play(name, ws, session)
        self.serving[name] = pb
        late = max(0.0, (self.schedule.clock(loop.time()) - session.connect_ns) / NS)
        self._say(
            f"{name}: session {session.index} start (recorded {_hms(session.connect_ns)}, "
            f"{session.duration_ns / NS:.3f}s, {len(session.frames)} frames, ends {session.end.describe()})"
            + (f", {late:.3f}s late: catching up" if late > 0.005 else "")
        )
        reader = asyncio.create_task(self._requests(ws, name, pb), name=f"replay-{name}-reader")
        how = "?"
        self._handlers += 1
        try:
            how = await self._play(ws, name, pb, reader)
        except ConnectionClosed:
            how = "client gone"
        except asyncio.CancelledError:
            how = "replay stopped"
            raise
        finally:
            self._handlers -= 1
            self.serving.pop(name, None)
            self._free(name, ws)
            self._wakers.pop(ws, None)
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            if ws.transport is not None and ws.protocol.state is not State.CLOSED:
                ws.transport.abort()
            self.endings.append((name, session.index, how))
            self.unanswered[name] += pb.unanswered
            self.rewritten[name] += pb.rewritten
            self.paused[name] += pb.pauses
            waits = ""
            if pb.pauses:
                waits = f", waited {pb.paused_s:.3f}s for requests ({_plural(pb.pauses, 'pause')}"
                waits += f", {pb.unanswered} unanswered)" if pb.unanswered else ")"
            self._say(f"{name}: session {session.index} end: {how}, {pb.pos}/{pb.count} frames sent{waits}")

    async def _play(self, ws: ServerConnection, name: str, pb: Playback, reader: asyncio.Task[None]) -> str:
        loop = asyncio.get_running_loop()
        while not pb.over(loop.time()):
            unanswered = pb.unanswered
            frames = pb.due(loop.time(), MAX_BATCH)
            if pb.unanswered > unanswered:
                log.debug(
                    "%s session %d: %d response(s) sent unanswered", name, pb.session.index, pb.unanswered - unanswered
                )
            if frames:
                for raw in frames:
                    await ws.send(raw, text=True)  # the recorded bytes (valid UTF-8 or not), or with the live id
                self.frames_sent[name] += len(frames)
                await asyncio.sleep(0)
                continue
            if reader.done():
                return f"client closed first ({ws.close_code})"
            wake = loop.create_future()  # set by the reader when a request lets a paused stream go on
            self._wakers[ws] = wake
            if pb.paused:
                log.debug("%s session %d: waiting for %r", name, pb.session.index, pb.waiting_for()[:3])
            await asyncio.wait(
                {reader, wake}, timeout=max(0.0, pb.next_at() - loop.time()), return_when=asyncio.FIRST_COMPLETED
            )
            if not wake.done():
                wake.cancel()
        end = pb.end
        self._free(name, ws)  # the line's next session may be handed out from now on
        if reader.done():
            return f"client closed first ({ws.close_code})"
        if end.action == ABORT:
            ws.transport.abort()
            return "aborted (no close frame), as recorded"
        if end.action == WAIT:
            await asyncio.wait({reader}, timeout=self.close_grace)
            if reader.done():
                return f"client closed ({ws.close_code}), as recorded"
            await _close(ws, 1000, "replay: session over")
            return f"client did not close within {self.close_grace:g}s: closed 1000"
        assert end.code is not None
        await _close(ws, end.code, end.text)
        return f"closed {end.code} {end.text!r}" + (", as recorded" if end.action == CLOSE else "")

    async def _requests(self, ws: ServerConnection, name: str, pb: Playback) -> None:
        """Feed what the relay sends to the playback (a paused response may go on); note requests
        the recording does not have."""
        async for msg in ws:
            raw = msg.encode() if isinstance(msg, str) else bytes(msg)
            paused = pb.paused
            if pb.request(raw):
                wake = self._wakers.get(ws)
                if paused and not pb.paused and wake is not None and not wake.done():
                    wake.set_result(None)
                continue
            self.unexpected_requests[name] += 1
            log.debug("%s session %d: request not in the recording: %r", name, pb.session.index, raw[:300])


async def _close(ws: ServerConnection, code: int, text: str) -> None:
    """Close with `code` (1005: an empty close frame); never raises (the peer may be gone)."""
    try:
        if code == 1005:
            if ws.protocol.state is State.OPEN:
                ws.protocol.send_close()
                ws.send_data()
            await asyncio.wait_for(ws.wait_closed(), 2.0)
        else:
            await ws.close(code, text.encode()[:123].decode(errors="ignore"))
    except Exception:
        if ws.transport is not None:
            ws.transport.abort()


# -- the command line -----------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH", help="capture files or directories (oldest first)")
    parser.add_argument("--ports", default="0", help="comma-separated ports, one per line in --lines order (0 = any)")
    parser.add_argument("--lines", default=None, help="comma-separated line names (default: all, as they appear)")
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default loopback)")
    parser.add_argument("--speed", type=float, default=1.0, help="replay speed (2 = twice as fast)")
    parser.add_argument(
        "--start", default=None, help="capture time to start at: ISO time, or seconds after the first record"
    )
    parser.add_argument("--end", default=None, help="capture time to stop at (same forms as --start)")
    parser.add_argument(
        "--no-wait",
        action="store_true",
        help="start the clock when the server starts (default: at the first connection on any line)",
    )
    parser.add_argument(
        "--close-grace",
        type=float,
        default=5.0,
        help="seconds to wait for the relay to close a session it closed in the capture, then close 1000",
    )
    parser.add_argument(
        "--response-wait",
        type=float,
        default=RESPONSE_WAIT,
        help="a recorded response (ack, pong) is never sent before the relay sent its request: the stream "
        "pauses for it at most this many capture seconds (divided by --speed), then sends it anyway, counted "
        f"unanswered; its req_id/reqid is rewritten to the live request's (default {RESPONSE_WAIT:g}; 0: never wait)",
    )
    parser.add_argument(
        "--verbose", "-v", action="store_true", help="debug log: requests not in the recording, paused responses"
    )


def _ports(text: str, n: int) -> list[int]:
    ports = [int(p) for p in text.split(",") if p.strip()] or [0]
    if len(ports) == 1 and n > 1:
        ports = [ports[0] + i if ports[0] else 0 for i in range(n)]
    if len(ports) != n:
        raise ValueError(f"--ports: give one port per line ({n}), or one to count up from")
    if any(not 0 <= p < 65536 for p in ports):
        raise ValueError("--ports: a port is out of range")
    return ports


def load_schedule(args: argparse.Namespace) -> tuple[Schedule, list[int]]:
    """The schedule and ports from the arguments; `ValueError` / `OSError` for bad input."""
    reader = Reader(args.paths)
    if not reader.files:
        raise ValueError("no capture files in " + ", ".join(map(str, args.paths)))
    missing = [str(p) for p in reader.files if not p.is_file()]
    if missing:
        raise ValueError("no such file: " + ", ".join(missing))
    capture: Capture = build(reader)
    if reader.truncated:
        print(f"kraken-relay replay: read up to the last complete batch of {len(reader.truncated)} file(s)")
    if not capture.lines:
        raise ValueError("the capture holds no line records")
    lines = [s.strip() for s in args.lines.split(",") if s.strip()] if args.lines else None
    start = None if args.start is None else parse_when(args.start, capture.first_ns)
    end = None if args.end is None else parse_when(args.end, capture.first_ns)
    schedule = Schedule(
        capture, lines=lines, start_ns=start, end_ns=end, speed=args.speed, response_wait=args.response_wait
    )
    return schedule, _ports(args.ports, len(schedule.lines))


async def _run(server: ReplayServer) -> None:
    await server.start()
    print("\n".join(server.describe()), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({stopper, asyncio.ensure_future(server.wait())}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        await server.stop()


def _run_loop(coro: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a hard dependency
        asyncio.run(coro)
        return
    uvloop.run(coro)


def main(args: argparse.Namespace) -> int:
    if args.verbose:
        logging.basicConfig(level=logging.DEBUG, format="%(asctime)s %(levelname)s %(message)s")
    try:
        schedule, ports = load_schedule(args)
        server = ReplayServer(schedule, ports, host=args.host, wait=not args.no_wait, close_grace=args.close_grace)
    except (ValueError, OSError) as exc:
        print(f"kraken-relay replay: {exc}", file=sys.stderr)
        return 2
    try:
        _run_loop(_run(server))
    except OSError as exc:
        print(f"kraken-relay replay: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


__all__ = ["ReplayServer", "add_arguments", "load_schedule", "main"]
