"""The simulator's I/O layer: one market, several Kraken-faithful v2 websocket lines, faults.

Data flow: a market task calls `MarketEngine.advance` every `tick`; each event (frames already
encoded) is queued on every line with that line's latency + jitter (delivery times stay
monotonic per line, like TCP, but differ between lines, so the copies of one event arrive in a
different order on each line). A delivery task per line pops due events and writes the *same
bytes* to every subscribed connection through websockets' Sans-I/O protocol (`send_text`), then
one transport write per connection per batch: encode once, write coalesced.

A subscription remembers the market sequence number at which its snapshot was taken; older
queued events are not sent to it, so snapshot + updates are always consistent even though the
snapshot (a reply) overtakes the line's delayed stream.

REST (`/0/public/AssetPairs`, `Assets`, `Time`, `SystemStatus`) is answered on every line's
websocket port through `process_request`, so a client needs only one base URL per line.
"""

from __future__ import annotations

import asyncio
import heapq
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import orjson
from websockets.asyncio.server import Server, ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from relay.core.spot import BOOK_DEPTHS, OHLC_INTERVALS
from relay.protocols.spot_v2.wire import (
    HEARTBEAT,
    encode_ack,
    encode_error,
    encode_instrument,
    encode_pong,
    encode_status,
    now_rfc3339,
)
from relay.sim import v1 as simv1
from relay.sim.common import CLOSE_REASONS, LineConfig, select_lines, serve_line
from relay.sim.common import json_response as _json_response
from relay.sim.control import ControlServer
from relay.sim.faults import FAULT_KINDS, FaultSpec, check_kind, run_schedule
from relay.sim.instruments import (
    Instrument,
    instrument_data,
    load_instruments,
    rest_asset_pairs,
    rest_assets,
)
from relay.sim.market import TICKER_BBO, TICKER_TRADES, MarketEngine, MarketEvent, MarketSettings
from relay.sim.replay import ReplaySource
from relay.sim.tasks import background as _background
from relay.sim.tasks import supervise

__all__ = ["LineConfig", "SimConfig", "Simulator", "corrupt_checksum"]

SubKey = tuple[str, str, int]  # (channel, symbol, key): key = depth / interval / ticker trigger / 0
MAX_REQUEST_LOG = 10_000
MAX_CONN_LOG = 10_000


@dataclass
class SimConfig:
    """Everything the simulator needs; defaults give a quiet 2-symbol market on one line."""

    symbols: list[str] = field(default_factory=lambda: ["BTC/USD", "ETH/USD"])
    rate: float = 500.0  # book updates per second, whole market (replay: frames per second)
    trade_rate: float | None = None  # trades per second, whole market (default rate / 10)
    seed: int | None = None
    lines: list[LineConfig] = field(default_factory=lambda: [LineConfig()])
    host: str = "127.0.0.1"
    control_port: int | None = None  # HTTP control endpoint (0 = any free port)
    replay: str | None = None  # path of a v2 capture (ndjson) to replay instead of generating
    # Kraken v2 `instrument` snapshot (JSON) giving every pair's real precisions; None: the built-in
    # table of major pairs (relay.sim.instruments.BUILTIN). Never looked for anywhere else.
    instruments: str | None = None
    replay_loop: bool = True
    levels: int = 1000  # levels per side of each generated book
    burst_every: float = 5.0
    burst_len: float = 0.25
    burst_factor: float = 4.0
    subscribe_rate: float = 20.0  # subscribe/unsubscribe requests per second per connection
    subscribe_burst: int = 20
    heartbeat_interval: float = 1.0
    tick: float = 0.002  # market step (seconds)
    version: str = "2.0.10"
    max_line_queue: int = 200_000  # events waiting on a line (a long stall); beyond: drop its clients
    max_conn_buffer: int = 16 * 1024 * 1024  # bytes buffered to one slow client before aborting it
    max_held: int = 100_000  # frames held for one connection while its line is stalled
    faults: list[FaultSpec] = field(default_factory=list)  # scripted faults (at = seconds after start)
    log: Callable[[str], None] | None = None


class SimConn:
    """One client connection on one line."""

    __slots__ = ("ws", "line", "proto", "subs", "held", "last_sent", "tokens", "token_at", "peer", "cid", "v1")

    def __init__(self, ws: ServerConnection, line: Line, cid: int) -> None:
        self.ws = ws
        self.line = line
        self.proto = ws.protocol
        self.subs: dict[SubKey, int] = {}
        self.held: list[bytes] = []
        self.last_sent = time.monotonic()
        self.tokens = float(line.sim.config.subscribe_burst)
        self.token_at = time.monotonic()
        self.peer = str(ws.remote_address[0]) if ws.remote_address else ""
        self.cid = cid
        self.v1: simv1.V1Conn | None = None  # set for connections on `/` (Spot v1 framing)

    def put(self, frame: bytes) -> None:
        """Queue a frame in the websocket protocol (written by `flush`)."""
        if self.line.stalled:
            if len(self.held) >= self.line.sim.config.max_held:
                self.abort()
                return
            self.held.append(frame)
            return
        if self.proto.state is State.OPEN:
            self.proto.send_text(frame)
            tap = self.line.sim.sent_tap
            if tap is not None:
                tap(self.line.idx, self.cid, frame)

    def flush(self) -> None:
        ws = self.ws
        transport = ws.transport
        if transport is None or transport.is_closing():
            return
        if self.held and not self.line.stalled:
            held, self.held = self.held, []
            for f in held:
                self.put(f)
        ws.send_data()
        self.last_sent = time.monotonic()
        if transport.get_write_buffer_size() > self.line.sim.config.max_conn_buffer:
            self.line.sim._log(f"line {self.line.idx}: client {self.peer} too slow, aborting")
            self.abort()

    def send(self, frame: bytes) -> None:
        self.put(frame)
        self.flush()

    def abort(self) -> None:
        if self.ws.transport is not None:
            self.ws.transport.abort()

    # -- what a Spot v1 request needs (`simv1.V1Session`) -----------------------------------
    @property
    def requests(self) -> list[tuple[float, dict[str, Any]]]:
        return self.line.sim.requests[self.line.idx]

    def rate_ok(self) -> bool:
        return self.line.sim._rate_ok(self)

    def market_subscribe(self, key: SubKey) -> int:
        market = self.line.sim.market
        market.want(key[0], key[1], key[2], 1)
        self.line.subscribe(self, key, market.seq)
        return market.seq

    def market_unsubscribe(self, key: SubKey) -> None:
        self.line.unsubscribe(self, key)
        self.line.sim.market.want(key[0], key[1], key[2], -1)

    def market_snapshot(self, key: SubKey) -> bytes | None:
        return self.line.sim.market.snapshot(key[0], key[1], key[2], time.time())


class Line:
    """One port serving the shared market with its own latency, jitter and faults."""

    def __init__(self, sim: Simulator, idx: int, cfg: LineConfig) -> None:
        self.sim = sim
        self.idx = idx
        self.cfg = cfg
        self.port = cfg.port
        self.server: Server | None = None
        self.old_servers: list[Server] = []  # replaced by `refuse mode=tcp`; their sessions live on
        self.conns: set[SimConn] = set()
        self.index: dict[SubKey, dict[SimConn, int]] = {}
        self.queue: list[tuple[float, int, MarketEvent]] = []  # heap by delivery time
        self.last_at: dict[str, float] = {}
        self.rng = random.Random(None if sim.config.seed is None else sim.config.seed * 1000 + idx)
        self.wake = asyncio.Event()
        self.faults: dict[str, tuple[float | None, dict[str, Any]]] = {}
        self.silent: set[str] = set()
        self.corrupt: set[str] = set()
        self.attempts: deque[float] = deque()
        self.sent_frames = 0
        self.late_sum = 0.0
        self.late_max = 0.0
        # Spot v1 framing for this line's clients on `/`
        self.v1 = simv1.V1Framer([sim.instruments_all[s] for s in sim.market.symbols], idx)

    # -- fault state ------------------------------------------------------------------------
    @property
    def stalled(self) -> bool:
        return "stall" in self.faults

    @property
    def system(self) -> str:
        if "maintenance" in self.faults:
            return "maintenance"
        if "cancel_only" in self.faults:
            return "cancel_only"
        return "online"

    @property
    def url(self) -> str:
        return f"ws://{self.sim.config.host}:{self.port}/v2"

    @property
    def v1_url(self) -> str:
        return f"ws://{self.sim.config.host}:{self.port}/"

    # -- delivery ---------------------------------------------------------------------------
    def push(self, events: list[MarketEvent], now: float) -> None:
        """Schedule events with this line's latency + jitter.

        Delivery times are monotonic per symbol (a symbol's frames never overtake each other),
        not per line: frames of different symbols may swap, so each line interleaves symbols in
        its own order, and which line delivers an event first varies, as with Kraken.
        """
        if not self.index:
            return
        cfg = self.cfg
        base = now + cfg.latency
        slow = self.faults.get("slow")
        if slow is not None:
            base += float(slow[1].get("delay", 0.5))
        rnd = self.rng.random
        jitter = cfg.jitter
        last = self.last_at
        q = self.queue
        push = heapq.heappush
        for ev in events:
            at = base + rnd() * jitter if jitter else base
            prev = last.get(ev.symbol, 0.0)
            if at < prev:
                at = prev
            last[ev.symbol] = at
            push(q, (at, ev.seq, ev))
        if len(q) > self.sim.config.max_line_queue:
            self.sim._log(f"line {self.idx}: {len(q)} events queued, dropping its clients")
            q.clear()
            for c in list(self.conns):
                c.abort()
        self.wake.set()

    async def run(self) -> None:
        q = self.queue
        loop = asyncio.get_running_loop()
        while True:
            if not q:
                self.wake.clear()
                await self.wake.wait()
                continue
            if self.stalled:
                await asyncio.sleep(0.005)
                continue
            now = loop.time()
            at = q[0][0]
            if at > now:
                await asyncio.sleep(at - now)
                continue
            dirty: set[SimConn] = set()
            pop = heapq.heappop
            while q and q[0][0] <= now:
                at, _, ev = pop(q)
                late = now - at
                if late > self.late_max:
                    self.late_max = late
                self.late_sum += late
                self._dispatch(ev, dirty)
            for c in dirty:
                c.flush()
            await asyncio.sleep(0)

    def _dispatch(self, ev: MarketEvent, dirty: set[SimConn]) -> None:
        ch = ev.channel
        faults = self.faults
        if faults:
            if "maintenance" in faults:
                return
            if "cancel_only" in faults and ch in ("trade", "ohlc"):
                return
        frames = ev.frames
        sym = ev.symbol
        corrupt = False
        if ch == "book":
            if self.silent and sym in self.silent:
                return
            corrupt = sym in self.corrupt
        elif ch == "ticker" and "cancel_only" in faults:
            frames = {k: f for k, f in frames.items() if k != TICKER_TRADES}
        index = self.index
        seq = ev.seq
        sent = 0
        v1cache: dict[tuple[SubKey, tuple[str, str, str]], bytes] = {}
        for key, frame in frames.items():
            subs = index.get((ch, sym, key))
            if not subs:
                continue
            if corrupt:
                frame = corrupt_checksum(frame)
            for conn, start in subs.items():
                if seq > start:
                    if conn.v1 is None:
                        conn.put(frame)
                    else:
                        for f in simv1.translate_for(conn.v1, self.v1, (ch, sym, key), frame, v1cache):
                            conn.put(f)
                    dirty.add(conn)
                    sent += 1
        self.sent_frames += sent
        if corrupt and sent:
            self.corrupt.discard(sym)
            self.sim._log(f"line {self.idx}: sent a corrupted checksum for {sym}")

    # -- subscriptions ----------------------------------------------------------------------
    def subscribe(self, conn: SimConn, key: SubKey, start: int) -> None:
        conn.subs[key] = start
        self.index.setdefault(key, {})[conn] = start

    def unsubscribe(self, conn: SimConn, key: SubKey) -> None:
        conn.subs.pop(key, None)
        subs = self.index.get(key)
        if subs is not None:
            subs.pop(conn, None)
            if not subs:
                del self.index[key]

    def resnapshot(self, symbol: str | None = None) -> None:
        """Fresh snapshots (and sequence restart) for book/ticker/ohlc subs after a gap on this line."""
        market = self.sim.market
        wall = time.time()
        for conn in list(self.conns):
            for key in list(conn.subs):
                ch, sym, k = key
                if ch not in ("book", "ticker", "ohlc") or (symbol is not None and sym != symbol):
                    continue
                frame = market.snapshot(ch, sym, k, wall)
                self.subscribe(conn, key, market.seq)
                if frame is not None:
                    if conn.v1 is None:
                        conn.put(frame)
                    else:
                        for f in simv1.translate_for(conn.v1, self.v1, key, frame, {}):
                            conn.put(f)
            conn.flush()


def corrupt_checksum(frame: bytes) -> bytes:
    """The same frame with a wrong (but well-formed) checksum."""
    i = frame.rfind(b'"checksum":')
    if i < 0:
        return frame
    j = i + len(b'"checksum":')
    k = j
    while k < len(frame) and frame[k : k + 1].isdigit():
        k += 1
    value = int(frame[j:k])
    return frame[:j] + b"%d" % ((value + 1) & 0xFFFFFFFF) + frame[k:]


class Simulator:
    """The simulated Kraken: `await start()`, then connect to `urls`; see the module docstring."""

    def __init__(self, config: SimConfig | None = None, **kwargs: Any) -> None:
        self.config = config = config or SimConfig(**kwargs)
        self.instruments_all = load_instruments(None if config.instruments is None else Path(config.instruments))
        for spec in config.faults:
            check_kind(spec.kind, "v2")
        missing = [s for s in config.symbols if s not in self.instruments_all]
        if missing:
            raise ValueError(f"unknown symbols: {', '.join(missing)}")
        self.instruments: list[Instrument] = [self.instruments_all[s] for s in config.symbols]
        self.market: MarketEngine | ReplaySource
        if config.replay:
            self.market = ReplaySource(config.replay, self.instruments_all, config.rate, config.replay_loop)
            self.instruments = [self.market.symbols[self.market.symbol].inst]
        else:
            self.market = MarketEngine(
                self.instruments,
                MarketSettings(
                    rate=config.rate,
                    trade_rate=config.trade_rate,
                    levels=config.levels,
                    burst_every=config.burst_every,
                    burst_len=config.burst_len,
                    burst_factor=config.burst_factor,
                    seed=config.seed,
                ),
            )
        self.lines: list[Line] = []
        self.requests: list[list[tuple[float, dict[str, Any]]]] = []
        self.connection_log: list[list[tuple[float, str, str]]] = []
        self.fault_log: list[tuple[float, int, str, str]] = []  # (time, line, kind, "start"/"end")
        # every text frame handed to a connection: `sent_tap(line, connection id, frame)` (tests
        # compare it with what a capture recorded)
        self.sent_tap: Callable[[int, int, bytes], None] | None = None
        self.control: ControlServer | None = None
        self.control_port: int | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._cid = random.Random(config.seed).getrandbits(63)
        self._instrument_frame = encode_instrument(True, instrument_data(self.instruments))
        self.started_at = 0.0
        self._running = False

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self) -> Simulator:
        cfg = self.config
        for i, lc in enumerate(cfg.lines):
            line = Line(self, i, lc)
            self.lines.append(line)
            self.requests.append([])
            self.connection_log.append([])
            line.server = await self._serve(line, lc.port)
            line.port = line.server.sockets[0].getsockname()[1]
        loop = asyncio.get_running_loop()
        self.started_at = loop.time()
        self._running = True
        alive = lambda: self._running  # noqa: E731
        supervise(self._tasks, self._market_loop, "sim-market", self._log, alive)
        supervise(self._tasks, self._housekeeping, "sim-housekeeping", self._log, alive)
        for line in self.lines:
            supervise(self._tasks, line.run, f"sim-line-{line.idx}", self._log, alive)
        if cfg.faults:
            schedule = run_schedule(cfg.faults, self.started_at, self._fire, self._log)
            self._tasks.append(asyncio.create_task(schedule, name="sim-faults"))
        if cfg.control_port is not None:
            self.control = ControlServer(self, FAULT_KINDS)
            self.control_port = await self.control.start(cfg.host, cfg.control_port)
        return self

    async def stop(self) -> None:
        self._running = False
        tasks = list(self._tasks)  # done callbacks remove finished tasks from the list
        for t in tasks:
            t.cancel()
        for t in tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass
        self._tasks.clear()
        if self.control is not None:
            await self.control.stop()
        for line in self.lines:
            for c in list(line.conns):
                c.abort()
            for server in [*line.old_servers, line.server]:
                if server is None:
                    continue
                server.close()
                try:
                    await asyncio.wait_for(server.wait_closed(), 5)
                except (TimeoutError, Exception):
                    pass

    async def __aenter__(self) -> Simulator:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def urls(self) -> list[str]:
        return [line.url for line in self.lines]

    @property
    def v1_urls(self) -> list[str]:
        """Spot v1 endpoints (`/`), one per line: the same market and faults as `urls`."""
        return [line.v1_url for line in self.lines]

    @property
    def ports(self) -> list[int]:
        return [line.port for line in self.lines]

    @property
    def rest_url(self) -> str:
        """REST base (line 0's port; every line answers REST)."""
        return f"http://{self.config.host}:{self.lines[0].port}"

    def rest_urls(self) -> list[str]:
        return [f"http://{self.config.host}:{line.port}" for line in self.lines]

    def _log(self, text: str) -> None:
        if self.config.log is not None:
            self.config.log(text)

    async def _serve(self, line: Line, port: int) -> Server:
        async def handler(ws: ServerConnection) -> None:
            await self._handle(ws, line)

        def process_request(conn: ServerConnection, request: Request) -> Response | None:
            return self._process_request(conn, request, line)

        return await serve_line(handler, self.config.host, port, process_request)

    # -- tasks ------------------------------------------------------------------------------
    async def _market_loop(self) -> None:
        loop = asyncio.get_running_loop()
        tick = self.config.tick
        market = self.market
        lines = self.lines
        while True:
            now = loop.time()
            events = market.advance(now, time.time())
            if events:
                for line in lines:
                    line.push(events, now)
            await asyncio.sleep(tick)

    async def _housekeeping(self) -> None:
        loop = asyncio.get_running_loop()
        hb = self.config.heartbeat_interval
        while True:
            await asyncio.sleep(0.05)
            now = loop.time()
            for line in self.lines:
                for kind, (until, _params) in list(line.faults.items()):
                    if until is not None and now >= until:
                        self.clear(line.idx, kind)
                if line.stalled:
                    continue
                mono = time.monotonic()
                for conn in list(line.conns):
                    if conn.held:
                        conn.flush()
                    if conn.subs and mono - conn.last_sent >= hb:
                        conn.send(HEARTBEAT if conn.v1 is None else simv1.HEARTBEAT)

    def _fire(self, spec: FaultSpec) -> None:
        self.inject(spec.line, spec.kind, spec.duration, **spec.params)

    # -- handshake / REST -------------------------------------------------------------------
    def _process_request(self, conn: ServerConnection, request: Request, line: Line) -> Response | None:
        path, _, query = request.path.partition("?")
        if path.startswith("/0/public/"):
            return self._rest(path[len("/0/public/") :], line, parse_qs(query))
        now = time.monotonic()
        peer = str(conn.remote_address[0]) if conn.remote_address else ""
        log = self.connection_log[line.idx]
        if len(log) >= MAX_CONN_LOG:
            del log[: MAX_CONN_LOG // 2]
        if "refuse" in line.faults:
            log.append((time.time(), peer, "refused"))
            conn.transport.abort()
            return conn.respond(HTTPStatus.SERVICE_UNAVAILABLE, "refused\n")
        budget = line.faults.get("budget")
        if budget is not None:
            limit = int(budget[1].get("limit", 150))
            window = float(budget[1].get("window", 600.0))
            attempts = line.attempts
            attempts.append(now)
            while attempts and attempts[0] < now - window:
                attempts.popleft()
            if len(attempts) > limit:
                log.append((time.time(), peer, "429"))
                return conn.respond(HTTPStatus.TOO_MANY_REQUESTS, "error code: 1015\n")
        log.append((time.time(), peer, "accepted"))
        return None

    def _rest(self, name: str, line: Line, query: dict[str, list[str]]) -> Response:
        if name == "AssetPairs":
            body = rest_asset_pairs(self.instruments)
            wanted = [p for v in query.get("pair", []) for p in v.split(",") if p]
            if wanted:  # Kraken keys the answer by the names asked for (any of its spellings)
                by_name = {}
                for inst, (key, info) in zip(self.instruments, body["result"].items()):
                    for alias in (key, info["altname"], info["wsname"], inst.symbol):
                        by_name[alias] = info
                if any(p not in by_name for p in wanted):
                    return _json_response({"error": ["EQuery:Unknown asset pair"]})
                body = {"error": [], "result": {p: by_name[p] for p in wanted}}
            return _json_response(body)
        if name == "Assets":
            return _json_response(rest_assets(self.instruments))
        if name == "Time":
            now = time.time()
            return _json_response(
                {"error": [], "result": {"unixtime": int(now), "rfc1123": formatdate(now, usegmt=True)}}
            )
        if name == "SystemStatus":
            status = {"online": "online", "maintenance": "maintenance", "cancel_only": "cancel_only"}[line.system]
            return _json_response({"error": [], "result": {"status": status, "timestamp": now_rfc3339()[:19] + "Z"}})
        return _json_response({"error": ["EGeneral:Unknown method"]}, 404)

    # -- a websocket session ----------------------------------------------------------------
    async def _handle(self, ws: ServerConnection, line: Line) -> None:
        self._cid = (self._cid + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
        conn = SimConn(ws, line, self._cid)
        line.conns.add(conn)
        try:
            path = ws.request.path.partition("?")[0] if ws.request is not None else "/v2"
            if path == "/":  # Spot v1, as Kraken serves it (v2 is on /v2)
                conn.v1 = simv1.V1Conn()
                conn.send(simv1.hello(line.system, conn.cid))
            else:
                conn.send(encode_status(line.system, self.config.version, conn.cid))
            async for raw in ws:
                self._on_message(conn, raw if isinstance(raw, bytes) else raw.encode())
                conn.flush()
        except ConnectionClosed:
            pass
        finally:
            line.conns.discard(conn)
            for key in list(conn.subs):
                line.unsubscribe(conn, key)
                self.market.want(key[0], key[1], key[2], -1)

    def _on_message(self, conn: SimConn, raw: bytes) -> None:
        if conn.v1 is not None:
            simv1.on_message(conn, conn.v1, conn.line.v1, raw)
            return
        time_in = now_rfc3339()
        try:
            msg = orjson.loads(raw)
        except orjson.JSONDecodeError:
            msg = None
        reqs = self.requests[conn.line.idx]
        if len(reqs) >= MAX_REQUEST_LOG:
            del reqs[: MAX_REQUEST_LOG // 2]
        reqs.append((time.time(), msg if isinstance(msg, dict) else {"_raw": raw[:200].decode("utf-8", "replace")}))
        if not isinstance(msg, dict):
            conn.put(encode_error(None, "Malformed request", None, time_in, now_rfc3339()))
            return
        method = msg.get("method")
        req_id = msg.get("req_id")
        req_id = req_id if isinstance(req_id, int) and not isinstance(req_id, bool) else None
        if method == "ping":
            conn.put(encode_pong(req_id, time_in, now_rfc3339()))
        elif method in ("subscribe", "unsubscribe"):
            self._subscribe(conn, msg, method, req_id, time_in)
        else:
            conn.put(
                encode_error(
                    method if isinstance(method, str) else None, "Method not found", req_id, time_in, now_rfc3339()
                )
            )

    def _rate_ok(self, conn: SimConn) -> bool:
        cfg = self.config
        now = time.monotonic()
        conn.tokens = min(float(cfg.subscribe_burst), conn.tokens + (now - conn.token_at) * cfg.subscribe_rate)
        conn.token_at = now
        if conn.tokens < 1.0:
            return False
        conn.tokens -= 1.0
        return True

    def _subscribe(self, conn: SimConn, msg: dict[str, Any], method: str, req_id: int | None, time_in: str) -> None:
        def error(text: str, symbol: str | None = None) -> None:
            conn.put(encode_error(method, text, req_id, time_in, now_rfc3339(), symbol))

        params = msg.get("params")
        if not isinstance(params, dict):
            error("Missing field: params")
            return
        channel = params.get("channel")
        if not isinstance(channel, str):
            error("Channel not found")
            return
        symbols = params.get("symbol")
        if not self._rate_ok(conn):
            if isinstance(symbols, list) and symbols and all(isinstance(s, str) for s in symbols):
                for s in symbols:
                    error("Exceeded msg rate", s)
            else:
                error("Exceeded msg rate")
            return
        snapshot = params.get("snapshot", channel != "trade")
        if not isinstance(snapshot, bool):
            error("Field 'snapshot' must be a boolean")
            return
        if channel == "heartbeat":
            conn.put(encode_ack(method, {"channel": "heartbeat"}, req_id, time_in, now_rfc3339()))
            return
        if channel == "instrument":
            self._sub_one(
                conn,
                method,
                ("instrument", "*", 0),
                {"channel": "instrument", "snapshot": snapshot},
                snapshot,
                req_id,
                time_in,
                error,
            )
            return
        if channel == "level3":  # the public endpoint, no token
            error("Token required")
            return
        if channel not in ("book", "trade", "ticker", "ohlc"):
            error("Channel not found")
            return
        if symbols is None:
            error("Missing field: symbol")
            return
        if not isinstance(symbols, list) or not symbols or not all(isinstance(s, str) and s for s in symbols):
            error("Field 'symbol' must be a list of strings")
            return
        for symbol in symbols:
            result: dict[str, Any] = {"channel": channel}
            if channel == "book":
                depth = params.get("depth", 10)
                if depth not in BOOK_DEPTHS or isinstance(depth, bool):
                    error("Subscription depth not supported", symbol)
                    continue
                key = depth
                result["depth"] = depth
            elif channel == "ohlc":
                interval = params.get("interval", 1)
                if interval not in OHLC_INTERVALS or isinstance(interval, bool):
                    error("Subscription ohlc interval not supported", symbol)
                    continue
                key = interval
                result["interval"] = interval
            elif channel == "ticker":
                trigger = params.get("event_trigger", "trades")
                if trigger not in ("trades", "bbo"):
                    error("Subscription event_trigger not supported", symbol)
                    continue
                key = TICKER_BBO if trigger == "bbo" else TICKER_TRADES
                result["event_trigger"] = trigger
            else:
                key = 0
            if method == "subscribe":  # unsubscribe acks do not echo `snapshot`
                result["snapshot"] = snapshot
            result["symbol"] = symbol
            if symbol not in self.market.symbols:
                error(f"Currency pair not supported {symbol}", symbol)
                continue
            self._sub_one(conn, method, (channel, symbol, key), result, snapshot, req_id, time_in, error)

    def _sub_one(
        self,
        conn: SimConn,
        method: str,
        key: SubKey,
        result: dict,
        snapshot: bool,
        req_id: int | None,
        time_in: str,
        error: Callable[..., None],
    ) -> None:
        line = conn.line
        symbol = None if key[1] == "*" else key[1]
        if method == "subscribe":
            if key in conn.subs:
                error("Already subscribed", symbol)
                return
            conn.put(encode_ack(method, result, req_id, time_in, now_rfc3339()))
            self.market.want(key[0], key[1], key[2], 1)
            line.subscribe(conn, key, self.market.seq)
            if snapshot:
                if key[0] == "instrument":
                    frame: bytes | None = self._instrument_frame
                else:
                    frame = self.market.snapshot(key[0], key[1], key[2], time.time())
                if frame is not None:
                    conn.put(frame)
        else:
            if key not in conn.subs:
                error("Subscription Not Found", symbol)
                return
            line.unsubscribe(conn, key)
            self.market.want(key[0], key[1], key[2], -1)
            conn.put(encode_ack(method, result, req_id, time_in, now_rfc3339()))

    # -- faults -----------------------------------------------------------------------------
    def _lines_of(self, line: int | str | None) -> list[Line]:
        return select_lines(self.lines, line)

    def inject(self, line: int | str | None, kind: str, duration: float | None = None, **params: Any) -> None:
        """Start fault `kind` on `line` (an index, or -1/"all" for every line and the market)."""
        check_kind(kind, "v2")
        targets = self._lines_of(line)
        market_wide = len(targets) > 1 or line in (None, "all", -1)
        if kind in ("silent_symbol", "corrupt_checksum"):
            sym = params.get("symbol") or self.instruments[0].symbol
            if sym not in self.market.symbols:
                raise ValueError(f"symbol {sym!r} is not simulated")
            params["symbol"] = sym
        now = asyncio.get_running_loop().time()
        until = None if duration is None else now + float(duration)
        for ln in targets:
            self._log_fault(ln.idx, kind, "start", duration, params)
            if kind == "drop":
                for c in list(ln.conns):
                    c.abort()
            elif kind in ("close_1001", "close_1013"):
                code = int(kind[-4:])
                for c in list(ln.conns):
                    _background(_close(c.ws, code, CLOSE_REASONS[code]))
            elif kind == "corrupt_checksum":
                ln.corrupt.add(params["symbol"])
            else:
                if kind == "refuse" and params.get("mode") == "tcp" and "refuse" not in ln.faults:
                    # stop listening: new connections get ECONNREFUSED; open sessions stay up
                    if ln.server is not None:
                        ln.server.server.close()
                        ln.old_servers.append(ln.server)
                        ln.server = None
                ln.faults[kind] = (until, dict(params))
                if kind == "silent_symbol":
                    ln.silent.add(params["symbol"])
                elif kind in ("maintenance", "cancel_only"):
                    self._send_status(ln)
        if market_wide:
            if kind == "maintenance":
                self.market.frozen = True
                self.market.trading = False
            elif kind == "cancel_only":
                self.market.trading = False

    def clear(self, line: int | str | None, kind: str | None = None) -> None:
        """End a fault (all faults of that line when `kind` is None) before its duration is over."""
        for ln in self._lines_of(line):
            kinds = [kind] if kind is not None else list(ln.faults) + (["corrupt_checksum"] if ln.corrupt else [])
            for k in kinds:
                if k == "corrupt_checksum":
                    ln.corrupt.clear()
                    continue
                item = ln.faults.pop(k, None)
                if item is None:
                    continue
                self._log_fault(ln.idx, k, "end", None, item[1])
                if k == "silent_symbol":
                    sym = item[1].get("symbol")
                    ln.silent.discard(sym)
                    ln.resnapshot(sym)
                elif k == "maintenance":
                    self._send_status(ln)
                    ln.resnapshot()
                elif k == "cancel_only":
                    self._send_status(ln)
                elif k == "refuse" and ln.server is None and self._running:
                    self._tasks.append(asyncio.ensure_future(self._relisten(ln)))
                elif k == "stall":
                    for c in list(ln.conns):
                        c.flush()
        if not any("maintenance" in ln.faults for ln in self.lines):
            self.market.frozen = False
        if not any(k in ln.faults for ln in self.lines for k in ("maintenance", "cancel_only")):
            self.market.trading = True

    async def _relisten(self, line: Line) -> None:
        for _ in range(50):  # bounded: the port should be free again at once
            try:
                line.server = await self._serve(line, line.port)
                return
            except OSError:
                await asyncio.sleep(0.1)
        self._log(f"line {line.idx}: could not listen on port {line.port} again")

    def _send_status(self, line: Line) -> None:
        for c in list(line.conns):
            c.send(
                encode_status(line.system, self.config.version, c.cid)
                if c.v1 is None
                else simv1.hello(line.system, c.cid)
            )

    def _log_fault(self, idx: int, kind: str, what: str, duration: float | None, params: dict) -> None:
        self.fault_log.append((time.time(), idx, kind, what))
        if len(self.fault_log) > MAX_REQUEST_LOG:
            del self.fault_log[: MAX_REQUEST_LOG // 2]
        extra = "".join(f" {k}={v}" for k, v in params.items())
        dur = f" for {duration}s" if duration is not None and what == "start" else ""
        self._log(f"fault {what}: line {idx} {kind}{dur}{extra}")

    # -- introspection ----------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """What `GET /state` returns: lines, connections, faults, market counters."""
        loop_now = asyncio.get_running_loop().time()
        return {
            "symbols": [i.symbol for i in self.instruments],
            "seq": self.market.seq,
            "book_updates": self.market.book_updates,
            "trades": self.market.trades,
            "trade_ids": {s: self.market.trade_id(s) for s in self.market.symbols},
            "replay": bool(self.config.replay),
            "lines": [
                {
                    "line": ln.idx,
                    "url": ln.url,
                    "latency": ln.cfg.latency,
                    "jitter": ln.cfg.jitter,
                    "system": ln.system,
                    "connections": len(ln.conns),
                    "queued": len(ln.queue),
                    "sent_frames": ln.sent_frames,
                    "faults": {
                        k: {"remaining": None if u is None else round(max(0.0, u - loop_now), 3), **p}
                        for k, (u, p) in ln.faults.items()
                    },
                    "pending_corrupt": sorted(ln.corrupt),
                }
                for ln in self.lines
            ],
        }


async def _close(ws: ServerConnection, code: int, reason: str) -> None:
    try:
        await ws.close(code, reason)
    except Exception:  # the peer may already be gone
        pass
