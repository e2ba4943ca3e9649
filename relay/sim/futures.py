"""A simulated Kraken Futures market (`/ws/v1`) on several redundant lines, with faults.

`FuturesSimulator(FuturesSimConfig(products=[...], lines=[LineConfig(), LineConfig()]))` has the
Spot simulator's API (`start/stop`, `async with`, `urls`, `rest_url`, `inject(line, kind, ...)`,
`clear`). Every market event is encoded once and every line sends the same bytes with the same
per-product `seq` (the relay's A/B arbitration assumes Kraken numbers events per product, not per
connection), each line with its own latency + jitter (monotonic per line, like TCP).

Generated market: per product a full-depth book (`levels` per side) moved by one-level deltas
(`qty` 0 deletes), trades with a `uid`, `ticker` / `ticker_lite` every second. Replay mode plays
the real capture (`replay=` path of a cryptofeed KRAKEN_FUTURES.ws file) byte for byte.
`instruments=` (a cryptofeed KRAKEN_FUTURES.0 file) adds the real REST instrument list; None: only
generated entries. Neither is looked for anywhere: both are explicit options.

Protocol: `info` on connect; per product `subscribed`; `book_snapshot` (current seq, full depth)
then deltas; `trade_snapshot` (Kraken's 100 latest, newest first: a generated market starts with
100 past trades) then trades; `heartbeat` feed every `heartbeat_interval` (Kraken's cadence by
default); a repeated subscribe -> `alert` "Already subscribed to feed, re-requesting", then
`subscribed` and a fresh snapshot; unknown products -> `{"event":"error","message":"Invalid
product id"}` (one per product, at once); unknown feed -> `Invalid feed`; malformed JSON, an
unknown event or missing `product_ids` -> `Json Error`; unsubscribing what is not subscribed ->
`unsubscribed_failed`; `{"event":"ping"}` -> `{"event":"pong"}`. The relay's endpoint answers
every one of these alike (`tests/protocols/futures/test_conformance.py`).
REST `GET /derivatives/api/v3/instruments` (the fixture, ids upper-cased as Kraken serves them
today, plus generated entries for simulated products not in it) on every line's port.

Faults (`inject`, a scripted `faults=` schedule, or the HTTP control endpoint on `control_port`,
all as in the Spot simulator: `relay.sim.faults`, `relay.sim.control`): drop, close_1001,
close_1013, stall, silent_symbol (`symbol=` product: its book stops on that line, a fresh snapshot
when it ends), skip (`symbol=`, `count=`: that line loses the next deltas of a product: a seq gap on
one line), refuse, slow (`delay=`), budget (`limit=` handshakes per `window=` s, then HTTP 429).
Spot-only kinds (maintenance, cancel_only, corrupt_checksum) have no futures equivalent: futures has
no engine status frame and no book checksum.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any

import orjson
from websockets.asyncio.server import Server, ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from relay.protocols.futures.wire import (
    ALERT_ALREADY,
    BUY,
    ERR_FEED,
    ERR_JSON,
    ERR_PRODUCT,
    HEARTBEAT_INTERVAL,
    TRADE_SNAPSHOT,
    FBookDelta,
    FBookSnapshot,
    FLevel,
    FTickerEvent,
    FTradeEvent,
    FuturesParser,
    encode_book_snapshot,
    encode_event,
    encode_heartbeat,
    encode_trade_snapshot,
)
from relay.sim.common import CLOSE_REASONS, LineConfig, json_response, select_lines, serve_line
from relay.sim.control import ControlServer
from relay.sim.faults import FUTURES_FAULT_KINDS, FaultSpec, check_kind, run_schedule
from relay.sim.tasks import background as _background
from relay.sim.tasks import supervise

FUTURES_FAULTS = tuple(FUTURES_FAULT_KINDS)
# The real inverse perpetuals (symbol -> tickSize, Kraken's /instruments of 2021-07): the REST
# instrument list when no `instruments=` file is given.
BUILTIN_INSTRUMENTS: dict[str, float] = {
    "PI_XBTUSD": 0.5,
    "PI_ETHUSD": 0.05,
    "PI_LTCUSD": 0.01,
    "PI_BCHUSD": 0.1,
    "PI_XRPUSD": 0.0001,
}
BASE_PRICES = {"XBT": 93000.0, "BTC": 93000.0, "ETH": 3400.0, "SOL": 180.0, "XRP": 2.1, "LTC": 110.0, "BCH": 450.0}


@dataclass
class FuturesSimConfig:
    products: list[str] = field(default_factory=lambda: ["PF_XBTUSD", "PF_ETHUSD"])
    rate: float = 200.0  # book deltas per second, whole market (replay: frames per second)
    trade_rate: float | None = None  # default rate / 10
    seed: int | None = None
    lines: list[LineConfig] = field(default_factory=lambda: [LineConfig()])
    host: str = "127.0.0.1"
    levels: int = 50
    heartbeat_interval: float = HEARTBEAT_INTERVAL
    ticker_interval: float = 1.0
    tick: float = 0.005
    replay: str | None = None  # path of a cryptofeed KRAKEN_FUTURES.ws capture to replay
    replay_loop: bool = False
    # REST instruments: path of a cryptofeed KRAKEN_FUTURES.0 file (its first `/instruments` answer);
    # None: only generated entries for the simulated products
    instruments: str | None = None
    max_line_queue: int = 200_000
    paused: bool = False  # start with the market stopped (`resume()`): tests see a replay from its start
    control_port: int | None = None  # HTTP control endpoint (0 = any free port), as the Spot simulator's
    faults: list[FaultSpec] = field(default_factory=list)  # scripted faults (at = seconds after start)
    log: Callable[[str], None] | None = None


@dataclass(slots=True)
class Ev:
    n: int  # market event index
    product: str
    kind: str  # book | trade | ticker | ticker_lite
    frame: bytes


class Book:
    def __init__(self) -> None:
        self.bids: dict[float, FLevel] = {}
        self.asks: dict[float, FLevel] = {}
        self.seq = 0
        self.ts = 0

    def apply(self, d: FBookDelta) -> None:
        side = self.bids if d.side == BUY else self.asks
        if d.level.qty == 0:
            side.pop(d.level.price, None)
        else:
            side[d.level.price] = d.level
        self.seq, self.ts = d.seq, d.timestamp

    def snapshot(self, product: str) -> bytes:
        bids = sorted(self.bids.values(), key=lambda lv: -lv.price)
        asks = sorted(self.asks.values(), key=lambda lv: lv.price)
        return encode_book_snapshot(product, self.seq, self.ts, bids, asks)


class FuturesMarket:
    """Sans-I/O market: `advance(dt)` -> new events; books, recent trades and tickers for snapshots."""

    def __init__(self, cfg: FuturesSimConfig) -> None:
        self.cfg = cfg
        self.rnd = random.Random(cfg.seed)
        self.parser = FuturesParser()
        self.books: dict[str, Book] = {}
        self.trades: dict[str, deque[bytes]] = {}
        self.tickers: dict[tuple[str, str], bytes] = {}
        self.n = 0
        self.trade_seq: dict[str, int] = {}
        self.tick_size: dict[str, float] = {}
        self.mid: dict[str, int] = {}
        self._acc = 0.0
        self._tacc = 0.0
        self._ticker_at = 0.0
        self.replay: list[bytes] | None = None
        self._rpos = 0
        self.products = list(cfg.products)
        if cfg.replay:
            self._load_replay(Path(cfg.replay))
        else:
            for p in self.products:
                self._seed_book(p)

    # -- generated market --------------------------------------------------------------------
    def _seed_book(self, p: str) -> None:
        base = next((v for k, v in BASE_PRICES.items() if k in p[3:]), 100.0)
        tick = 0.5 if base > 10000 else 0.05 if base > 100 else 0.01 if base > 10 else 0.0001
        self.tick_size[p] = tick
        mid = int(base / tick)
        self.mid[p] = mid
        book = self.books[p] = Book()
        book.seq = self.rnd.randrange(1_000_000, 50_000_000)
        book.ts = int(time.time() * 1000)
        for i in range(1, self.cfg.levels + 1):
            for side, sign in ((book.bids, -1), (book.asks, 1)):
                lv = self._level(p, mid + sign * i, self._qty())
                side[lv.price] = lv
        self.trades[p] = deque(maxlen=TRADE_SNAPSHOT)
        self.trade_seq[p] = self.rnd.randrange(1000, 100000)
        start = int(time.time() * 1000) - TRADE_SNAPSHOT * 1000
        for i in range(TRADE_SNAPSHOT):  # a history, so the first trade_snapshot is a full one
            self.trades[p].append(self._trade_frame(p, start + i * 1000))
        self._ticker_frames(p, start + TRADE_SNAPSHOT * 1000)  # a subscriber gets one at once, as on Kraken

    def _qty(self) -> float:
        return round(self.rnd.uniform(0.001, 5.0), 4)

    def _level(self, p: str, ticks: int, qty: float) -> FLevel:
        tick = self.tick_size[p]
        decimals = max(0, len(repr(tick).split(".")[1]) if "." in repr(tick) else 0)
        price = round(ticks * tick, decimals)
        return FLevel(price, orjson.dumps(price), orjson.dumps(qty), qty)

    def advance(self, dt: float, now_ms: int) -> list[Ev]:
        if self.replay is not None:
            return self._advance_replay(dt)
        out: list[Ev] = []
        self._acc += dt * self.cfg.rate
        while self._acc >= 1.0:
            self._acc -= 1.0
            out.append(self._delta(self.rnd.choice(self.products), now_ms))
        self._tacc += dt * (self.cfg.trade_rate if self.cfg.trade_rate is not None else self.cfg.rate / 10)
        while self._tacc >= 1.0:
            self._tacc -= 1.0
            out.append(self._trade(self.rnd.choice(self.products), now_ms))
        self._ticker_at += dt
        if self._ticker_at >= self.cfg.ticker_interval:
            self._ticker_at = 0.0
            for p in self.products:
                out += self._tickers(p, now_ms)
        return out

    def _ev(self, product: str, kind: str, frame: bytes) -> Ev:
        self.n += 1
        return Ev(self.n, product, kind, frame)

    def _delta(self, p: str, now_ms: int) -> Ev:
        book = self.books[p]
        buy = self.rnd.random() < 0.5
        side = book.bids if buy else book.asks
        mid = self.mid[p]
        ticks = mid - self.rnd.randint(1, self.cfg.levels) if buy else mid + self.rnd.randint(1, self.cfg.levels)
        lv = self._level(p, ticks, 0.0 if (self.rnd.random() < 0.3 and len(side) > 5) else self._qty())
        if lv.qty == 0 and lv.price not in side:
            lv = self._level(p, ticks, self._qty())
        seq = book.seq + 1
        frame = b'{"feed":"book","product_id":"%s","side":"%s","seq":%d,"price":%s,"qty":%s,"timestamp":%d}' % (
            p.encode(),
            b"buy" if buy else b"sell",
            seq,
            lv.price_text,
            lv.qty_text,
            now_ms,
        )
        book.apply(FBookDelta(p, seq, BUY if buy else 1, lv, now_ms, frame))
        return self._ev(p, "book", frame)

    def _trade(self, p: str, now_ms: int) -> Ev:
        frame = self._trade_frame(p, now_ms)
        self.trades[p].append(frame)
        return self._ev(p, "trade", frame)

    def _trade_frame(self, p: str, now_ms: int) -> bytes:
        book = self.books[p]
        buy = self.rnd.random() < 0.5
        side = book.asks if buy else book.bids
        price = (min(side) if buy else max(side)) if side else self.mid[p] * self.tick_size[p]
        self.trade_seq[p] += 1
        frame = orjson.dumps(
            {
                "feed": "trade",
                "product_id": p,
                "uid": str(uuid.UUID(int=self.rnd.getrandbits(128))),
                "side": "buy" if buy else "sell",
                "type": "fill",
                "seq": self.trade_seq[p],
                "time": now_ms,
                "qty": self._qty(),
                "price": price,
            }
        )
        return frame

    def _tickers(self, p: str, now_ms: int) -> list[Ev]:
        lite, full = self._ticker_frames(p, now_ms)
        return [self._ev(p, "ticker_lite", lite), self._ev(p, "ticker", full)]

    def _ticker_frames(self, p: str, now_ms: int) -> tuple[bytes, bytes]:
        """The current `ticker_lite` and `ticker` records of `p` (kept for new subscribers)."""
        book = self.books[p]
        bid = max(book.bids) if book.bids else 0.0
        ask = min(book.asks) if book.asks else 0.0
        lite = orjson.dumps(
            {
                "feed": "ticker_lite",
                "product_id": p,
                "bid": bid,
                "ask": ask,
                "change": 0.0,
                "premium": 0.0,
                "volume": 1000.0,
                "tag": "perpetual",
                "pair": p[3:6] + ":USD",
                "dtm": 0,
                "maturityTime": 0,
            }
        )
        full = orjson.dumps(
            {
                "time": now_ms,
                "feed": "ticker",
                "product_id": p,
                "bid": bid,
                "ask": ask,
                "bid_size": 1.0,
                "ask_size": 1.0,
                "volume": 1000.0,
                "dtm": 0,
                "leverage": "50x",
                "index": (bid + ask) / 2,
                "premium": 0.0,
                "last": bid,
                "change": 0.0,
                "suspended": False,
                "tag": "perpetual",
                "pair": p[3:6] + ":USD",
                "openInterest": 1.0,
                "markPrice": (bid + ask) / 2,
                "maturityTime": 0,
                "post_only": False,
            }
        )
        self.tickers[(p, "ticker_lite")] = lite
        self.tickers[(p, "ticker")] = full
        return lite, full

    # -- replay ----------------------------------------------------------------------------------
    def _load_replay(self, path: Path) -> None:
        frames = []
        for line in path.read_bytes().splitlines():
            if line.startswith(b"wss://") or not line.strip():
                continue
            body = line.partition(b": ")[2]
            if body.startswith(b'{"feed"'):
                frames.append(body)
        self.replay = frames
        seen: dict[str, None] = {}
        for f in frames:
            ev = self.parser.parse(f)
            p = getattr(ev, "product", None)
            if p:
                seen[p] = None
        self.products = list(seen)
        # state before the first frame: the capture's snapshots are applied as they come
        for p in self.products:
            self.books[p] = Book()
            self.trades[p] = deque(maxlen=TRADE_SNAPSHOT)
        self._rpos = 0
        self._take_snapshots()

    def _take_snapshots(self) -> None:
        """Apply every frame before the first book delta (snapshots, first tickers): the initial state."""
        frames = self.replay or []
        while self._rpos < len(frames) and not frames[self._rpos].startswith(b'{"feed":"book",'):
            self._apply_replay(frames[self._rpos])
            self._rpos += 1

    def _apply_replay(self, f: bytes) -> str | None:
        ev = self.parser.parse(f)
        if isinstance(ev, FBookSnapshot):
            b = self.books[ev.product]
            b.bids = {lv.price: lv for lv in ev.bids if lv.qty}
            b.asks = {lv.price: lv for lv in ev.asks if lv.qty}
            b.seq, b.ts = ev.seq, ev.timestamp
            return None
        if isinstance(ev, FBookDelta):
            self.books[ev.product].apply(ev)
            return ev.product
        if isinstance(ev, FTradeEvent):
            items = ev.trades if not ev.snapshot else list(reversed(ev.trades))
            self.trades[ev.product].extend(t.element for t in items)
            return None if ev.snapshot else ev.product
        if isinstance(ev, FTickerEvent):
            self.tickers[(ev.product, ev.feed)] = f
            return ev.product
        return None

    def _advance_replay(self, dt: float) -> list[Ev]:
        frames = self.replay or []
        out: list[Ev] = []
        self._acc += dt * self.cfg.rate
        while self._acc >= 1.0:
            self._acc -= 1.0
            if self._rpos >= len(frames):
                if not self.cfg.replay_loop:
                    break
                self._rpos = 0  # looping restarts seqs: only for demos
            f = frames[self._rpos]
            self._rpos += 1
            p = self._apply_replay(f)
            if p is not None:
                kind = orjson.loads(f)["feed"]
                out.append(self._ev(p, kind, f))
        return out

    @property
    def finished(self) -> bool:
        return self.replay is not None and self._rpos >= len(self.replay)


class FConn:
    __slots__ = ("ws", "subs", "heartbeat", "hb_at")

    def __init__(self, ws: ServerConnection) -> None:
        self.ws = ws
        self.subs: dict[tuple[str, str], int] = {}  # (feed, product) -> market index at snapshot
        self.heartbeat = False
        self.hb_at = 0.0


class FLine:
    def __init__(self, sim: FuturesSimulator, idx: int, cfg: LineConfig) -> None:
        self.sim = sim
        self.idx = idx
        self.cfg = cfg
        self.port = cfg.port
        self.server: Server | None = None
        self.conns: set[FConn] = set()
        self.queue: deque[tuple[float, Ev]] = deque()
        self.last_due = 0.0
        self.faults: dict[str, tuple[float | None, dict[str, Any]]] = {}
        self.skip: dict[str, int] = {}
        self.attempts: deque[float] = deque()  # handshake times, for the `budget` fault
        self.handshakes = 0
        self.rejected = 0
        self.rnd = random.Random((sim.config.seed or 0) * 31 + idx)

    @property
    def url(self) -> str:
        return f"ws://{self.sim.config.host}:{self.port}/ws/v1"

    def push(self, events: list[Ev], now: float) -> None:
        lat = self.cfg.latency + (float(self.faults["slow"][1].get("delay", 0.1)) if "slow" in self.faults else 0.0)
        for ev in events:
            due = max(self.last_due, now + lat + self.rnd.uniform(0, self.cfg.jitter))
            self.last_due = due
            self.queue.append((due, ev))
        if len(self.queue) > self.sim.config.max_line_queue:
            self.queue.clear()
            for c in list(self.conns):
                c.ws.transport.abort()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            if "stall" not in self.faults:
                while self.queue and self.queue[0][0] <= now:
                    _, ev = self.queue.popleft()
                    self._dispatch(ev)
                for c in list(self.conns):
                    if c.heartbeat and now - c.hb_at >= self.sim.config.heartbeat_interval:
                        c.hb_at = now
                        self._send(c, encode_heartbeat())
            await asyncio.sleep(0.001 if self.queue else 0.01)

    def _dispatch(self, ev: Ev) -> None:
        if ev.kind == "book":
            if "silent_symbol" in self.faults and self.faults["silent_symbol"][1].get("symbol") == ev.product:
                return
            left = self.skip.get(ev.product, 0)
            if left > 0:
                self.skip[ev.product] = left - 1
                return
        key = (ev.kind, ev.product)
        for c in list(self.conns):
            start = c.subs.get(key)
            if start is not None and ev.n > start:
                self._send(c, ev.frame)

    def _send(self, c: FConn, frame: bytes) -> None:
        try:
            c.ws.protocol.send_text(frame)
            c.ws.send_data()
        except Exception:
            c.ws.transport.abort()

    def resnapshot(self, product: str) -> None:
        m = self.sim.market
        for c in list(self.conns):
            if ("book", product) in c.subs:
                c.subs[("book", product)] = m.n
                self._send(c, m.books[product].snapshot(product))


class FuturesSimulator:
    def __init__(self, config: FuturesSimConfig | None = None, **kwargs: Any) -> None:
        self.config = config = config or FuturesSimConfig(**kwargs)
        for spec in config.faults:
            check_kind(spec.kind, "futures")
        self.market = FuturesMarket(config)
        self.lines: list[FLine] = []
        self.requests: list[list[dict[str, Any]]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._running = False
        self._instruments = _instruments(
            self.market.products, None if config.instruments is None else Path(config.instruments)
        )
        self.paused = config.paused
        self.control: ControlServer | None = None
        self.control_port: int | None = None
        self.started_at = 0.0

    def resume(self) -> None:
        self.paused = False

    async def start(self) -> FuturesSimulator:
        for i, lc in enumerate(self.config.lines):
            line = FLine(self, i, lc)
            self.lines.append(line)
            self.requests.append([])
            line.server = await self._serve(line, lc.port)
            line.port = line.server.sockets[0].getsockname()[1]
        self._running = True
        alive = lambda: self._running  # noqa: E731
        supervise(self._tasks, self._market_loop, "fsim-market", self.config.log, alive)
        for line in self.lines:
            supervise(self._tasks, line.run, f"fsim-line-{line.idx}", self.config.log, alive)
        self.started_at = asyncio.get_running_loop().time()
        if self.config.faults:
            schedule = run_schedule(self.config.faults, self.started_at, self._fire, self._log)
            self._tasks.append(asyncio.create_task(schedule, name="fsim-faults"))
        if self.config.control_port is not None:
            self.control = ControlServer(self, FUTURES_FAULT_KINDS)
            self.control_port = await self.control.start(self.config.host, self.config.control_port)
        return self

    def _log(self, text: str) -> None:
        if self.config.log is not None:
            self.config.log(text)

    def _fire(self, spec: FaultSpec) -> None:
        self.inject(spec.line, spec.kind, spec.duration, **spec.params)

    async def stop(self) -> None:
        self._running = False
        tasks = list(self._tasks)  # done callbacks remove finished tasks from the list
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        if self.control is not None:
            await self.control.stop()
        for line in self.lines:
            for c in list(line.conns):
                c.ws.transport.abort()
            if line.server is not None:
                line.server.close()
                try:
                    await asyncio.wait_for(line.server.wait_closed(), 5)
                except Exception:
                    pass

    async def __aenter__(self) -> FuturesSimulator:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def urls(self) -> list[str]:
        return [line.url for line in self.lines]

    @property
    def rest_url(self) -> str:
        return f"http://{self.config.host}:{self.lines[0].port}"

    async def _serve(self, line: FLine, port: int) -> Server:
        async def handler(ws: ServerConnection) -> None:
            await self._handle(ws, line)

        def process_request(conn: ServerConnection, request: Request) -> Response | None:
            path = request.path.partition("?")[0]
            if path.startswith("/derivatives/api/v3/"):
                return self._rest(conn, path[len("/derivatives/api/v3/") :])
            line.handshakes += 1
            if "refuse" in line.faults:
                line.rejected += 1
                conn.transport.abort()
                return conn.respond(HTTPStatus.SERVICE_UNAVAILABLE, "refused\n")
            budget = line.faults.get("budget")
            if budget is not None:
                now = time.monotonic()
                window = float(budget[1].get("window", 600.0))
                line.attempts.append(now)
                while line.attempts and line.attempts[0] < now - window:
                    line.attempts.popleft()
                if len(line.attempts) > int(budget[1].get("limit", 150)):
                    line.rejected += 1
                    return conn.respond(HTTPStatus.TOO_MANY_REQUESTS, "error code: 1015\n")
            return None

        return await serve_line(handler, self.config.host, port, process_request)

    def _rest(self, conn: ServerConnection, name: str) -> Response:
        if name == "instruments":
            body = self._instruments
        elif name == "tickers":
            body = {
                "result": "success",
                "tickers": [],
                "serverTime": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
            }
        else:
            return json_response({"result": "error", "error": "Unavailable"}, 404)
        return json_response(body)

    async def _market_loop(self) -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            await asyncio.sleep(self.config.tick)
            now = loop.time()
            if self.paused:
                last = now
                continue
            events = self.market.advance(now - last, int(time.time() * 1000))
            last = now
            if events:
                for line in self.lines:
                    line.push(events, now)

    async def _handle(self, ws: ServerConnection, line: FLine) -> None:
        conn = FConn(ws)
        line.conns.add(conn)
        try:
            await ws.send(b'{"event":"info","version":1}', text=True)
            async for raw in ws:
                self._on_message(line, conn, raw if isinstance(raw, bytes) else raw.encode())
        except ConnectionClosed:
            pass
        finally:
            line.conns.discard(conn)

    def _on_message(self, line: FLine, conn: FConn, raw: bytes) -> None:
        send = line._send
        try:
            msg = orjson.loads(raw)
        except orjson.JSONDecodeError:
            msg = None
        if not isinstance(msg, dict):
            send(conn, encode_event("error", message=ERR_JSON))
            return
        log = self.requests[line.idx]
        if len(log) < 10_000:
            log.append(msg)
        event, feed = msg.get("event"), msg.get("feed")
        if event == "ping":
            send(conn, b'{"event":"pong"}')
            return
        if event not in ("subscribe", "unsubscribe"):
            send(conn, encode_event("error", message=ERR_JSON))
            return
        if feed == "heartbeat":
            conn.heartbeat = event == "subscribe"
            conn.hb_at = asyncio.get_running_loop().time()
            send(conn, encode_event("subscribed" if conn.heartbeat else "unsubscribed", "heartbeat"))
            return
        if feed not in ("book", "trade", "ticker", "ticker_lite"):
            send(conn, encode_event("error", message=ERR_FEED))
            return
        ids = msg.get("product_ids")
        if not isinstance(ids, list) or not ids or not all(isinstance(p, str) for p in ids):
            send(conn, encode_event("error", message=ERR_JSON))
            return
        m = self.market
        for pid in ids:
            p = pid.upper()
            key = (feed, p)
            if event == "unsubscribe":
                if conn.subs.pop(key, None) is None:
                    send(conn, encode_event("unsubscribed_failed", feed, [p]))
                else:
                    send(conn, encode_event("unsubscribed", feed, [p]))
                continue
            if p not in m.books:
                send(conn, encode_event("error", message=ERR_PRODUCT))
                continue
            if key in conn.subs:
                send(conn, encode_event("alert", message=ALERT_ALREADY))
            conn.subs[key] = m.n
            send(conn, encode_event("subscribed", feed, [p]))
            if feed == "book":
                send(conn, m.books[p].snapshot(p))
            elif feed == "trade":
                send(conn, encode_trade_snapshot(p, list(m.trades[p])[::-1]))
            elif (p, feed) in m.tickers:
                send(conn, m.tickers[(p, feed)])

    # -- faults ------------------------------------------------------------------------------
    def inject(self, line: int | str | None, kind: str, duration: float | None = None, **params: Any) -> None:
        """Start fault `kind` on `line` (an index, or None / -1 / "all" for every line)."""
        check_kind(kind, "futures")
        targets = select_lines(self.lines, line)
        if kind in ("silent_symbol", "skip"):
            params["symbol"] = str(params.get("symbol") or self.market.products[0]).upper()
        loop = asyncio.get_running_loop()
        for ln in targets:
            extra = "".join(f" {k}={v}" for k, v in params.items())
            self._log(f"fault line {ln.idx}: {kind}{'' if duration is None else f' for {duration}s'}{extra}")
            if kind == "drop":
                for c in list(ln.conns):
                    c.ws.transport.abort()
            elif kind in ("close_1001", "close_1013"):
                code = int(kind[-4:])
                for c in list(ln.conns):
                    _background(c.ws.close(code, CLOSE_REASONS[code]))
            elif kind == "skip":
                ln.skip[params["symbol"]] = ln.skip.get(params["symbol"], 0) + int(params.get("count", 1))
            else:
                ln.faults[kind] = (None if duration is None else loop.time() + duration, dict(params))
                if duration is not None:
                    loop.call_later(duration, self.clear, ln.idx, kind)

    def clear(self, line: int | str | None, kind: str | None = None) -> None:
        """End a fault (all faults of that line when `kind` is None) before its duration is over."""
        for ln in select_lines(self.lines, line):
            for k in [kind] if kind else list(ln.faults):
                item = ln.faults.pop(k, None)
                if item is None:
                    continue
                self._log(f"fault line {ln.idx}: {k} ended")
                if k == "silent_symbol":
                    ln.resnapshot(item[1]["symbol"])

    # -- introspection -----------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """What the control endpoint's `GET /state` returns: lines, connections, faults, market."""
        loop_now = asyncio.get_running_loop().time()
        return {
            "products": list(self.market.products),
            "events": self.market.n,
            "seq": {p: b.seq for p, b in self.market.books.items()},
            "replay": bool(self.config.replay),
            "paused": self.paused,
            "lines": [
                {
                    "line": ln.idx,
                    "url": ln.url,
                    "latency": ln.cfg.latency,
                    "jitter": ln.cfg.jitter,
                    "connections": len(ln.conns),
                    "queued": len(ln.queue),
                    "handshakes": ln.handshakes,
                    "rejected": ln.rejected,
                    "faults": {
                        k: {"remaining": None if u is None else round(max(0.0, u - loop_now), 3), **p}
                        for k, (u, p) in ln.faults.items()
                    },
                    "pending_skip": {p: n for p, n in ln.skip.items() if n},
                }
                for ln in self.lines
            ],
        }


def _builtin_instruments() -> list[dict[str, Any]]:
    return [
        {
            "symbol": symbol,
            "type": "futures_inverse",
            "underlying": "rr_" + symbol[3:].lower(),
            "tickSize": tick,
            "contractSize": 1,
            "tradeable": True,
            "fundingRateCoefficient": 8,
            "maxRelativeFundingRate": 0.001,
            "contractValueTradePrecision": 0,
            "marginLevels": [],
        }
        for symbol, tick in BUILTIN_INSTRUMENTS.items()
    ]


def _instruments(products: list[str], path: Path | None = None) -> dict[str, Any]:
    """The instruments of `path` (a cryptofeed KRAKEN_FUTURES.0 file; ids upper-cased), else the
    built-in inverse perpetuals, plus generated perpetuals for the other products."""
    body: dict[str, Any] = {"result": "success", "instruments": _builtin_instruments()}
    if path is not None:
        try:
            body = orjson.loads(path.read_bytes().splitlines()[0].split(b": ", 1)[1])
        except (OSError, IndexError, ValueError):
            pass
    have = set()
    for inst in body.get("instruments", []):
        inst["symbol"] = str(inst["symbol"]).upper()
        have.add(inst["symbol"])
    for p in products:
        if p not in have:
            linear = p.startswith("PF_")
            body["instruments"].append(
                {
                    "symbol": p,
                    "type": "flexible_futures" if linear else "futures_inverse",
                    "underlying": "rr_" + p[3:].lower(),
                    "tickSize": 0.5,
                    "contractSize": 1,
                    "tradeable": True,
                    "contractValueTradePrecision": 4 if linear else 0,
                    "marginLevels": [],
                }
            )
    return body
