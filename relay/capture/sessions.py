"""A capture as per-line sessions, and the replay schedule (Sans-I/O): what `kraken-relay replay`
serves, decided without sockets so every rule below is unit-tested with synthetic records.

Sessions (`build`): per line, each `connect` opens a session holding every `frame` received until
its `disconnect` (code, text, by), each frame with its offset from the connect; `connect_failed`
records between sessions are kept as the line's `failures`. Records of the `published` stream and
`resync` records are not replayed. Oddities of real captures:
  * a line whose first records are frames (the file holding its `connect` was rotated away) gets
    an implicit session starting at its first frame (protocol and URL from the line's connects);
  * a `connect` while a session is still open (the relay was killed, no `disconnect` written)
    ends the open one at its last record, as an abort;
  * a session still open when the capture ends ends at the capture's last record with a 1001
    `end of capture` close (the relay reconnects and finds nothing more: the replay is over).

Capture time: every record's time is its monotonic clock anchored to its wall clock, re-anchored
when the two jump apart by more than a second or the monotonic clock goes back (another relay
run, a reboot) and never going backwards. Offsets inside a session therefore come from one
monotonic clock (exact, immune to NTP steps), and `--start`/`--end` can be given as wall times.

The replay clock (`Schedule`): capture time = start + (now - t0) * speed. `start` is `--start` (an
ISO time, or seconds after the capture's first record; default the first record), `t0` the loop
time of the first connection on any line (`begin()` maps it to server start instead:
`--no-wait`). The clock runs on once started; a relay that is slow to reconnect is not waited for.

Which session a connection gets (`Schedule.assign`): the line's next unplayed session whose end
is later than the clock. Sessions entirely in the past are skipped and counted. A session already
under way is served at once, its frames caught up (below). A session that starts in the future
means the recorded relay was reconnecting then:
  * if the capture holds a `connect_failed` of that line still to come before that session (after
    the previous one ended), the attempt is refused as recorded: `http NNN` / `429` with that HTTP
    status, other reasons (refused, reset, tls, ...) by aborting the connection before the
    handshake answer, so the replayed relay runs through its own backoff and budget as it did;
  * otherwise (and for recorded `timeout` failures) the handshake is held unanswered until the
    session's connect time, so the relay's `connect` happens when it did in the capture. A relay
    whose handshake timeout fires first retries, and the session stays unplayed for it.
Holding was chosen over refusing for plain reconnect gaps because refusing would add failures the
capture does not have (and backoff the recorded relay never did).

One session per line at a time: a connection arriving while another is being held or served on
that line is `Busy` (the server answers HTTP 503). The slot is freed as soon as the session's end
is due (before its close is sent), so the relay's reconnect never finds its own line busy. Once a
session is served it counts as played, even if the client leaves before its end: a lost socket
cannot be resumed.

Frames (`Playback`): sent in recorded order when the clock reaches their recorded time, never
earlier; when late (the relay connected late, or a session spanning `--start`) as fast as possible
until caught up, so a session's status, acks and snapshots always come first, as recorded.

Responses (`pair`, `Playback.request`): a response is never sent before its request (Kraken
cannot answer what it was not asked). A recorded response could otherwise reach the replayed
relay before that relay sent the request: the recorded relay's unsubscribe after maintenance was
acked within a millisecond, the replayed one may send its own a few ms after the recorded ack's
offset, and its planner ignores an ack of a request it has not sent (its books stop).
  * Pairing (from the recording, per session): the session's `subscribe` records are the
    requests the recorded relay sent (subscribe, unsubscribe, and v2 / v1 pings), each split
    into units (method, channel, symbol): one per symbol, one channel-wide unit when it names
    none. A response frame is paired with the units it answers: v2 acks and pongs by `req_id`,
    v1 `subscriptionStatus` / `pong` / `error` by `reqid`, then by the ack's symbol (`result` or
    top-level `symbol`, v1 `pair`; none: every unit of that request); v1 answers without
    `reqid` by (event, subscription name, pair) and Futures `subscribed` / `unsubscribed` (and
    `_failed`) by (event, feed, product), each the oldest unanswered unit recorded before it.
    With several requests holding the id, the last one recorded before the response wins (one
    recorded up to `SLACK_NS` after it still counts: the relay records a request after sending
    it). Every other frame (data, status, heartbeats, unsolicited drops) is not a response.
  * Matching (at serve time): each request the replayed relay sends is split the same way and
    each unit matched to the next not yet matched (nor given up) recorded unit with the same
    method, channel and symbol (request ids and key order ignored); a live request none of whose
    units is in the recording is counted and logged.
  * Pausing: when the next due frame is a response with a unit not matched yet, the stream
    pauses (nothing later overtakes it: order is what the relay's merge relies on) until the
    relay sends that request, or for at most `response_wait` capture seconds (wall time
    `response_wait / speed`, from when the pause began); then it is sent anyway, counted
    `unanswered`, and its requests are given up: their other responses are not waited for (also
    counted `unanswered`), and a later live request matches later recorded units.
    The frames due meanwhile then go out as fast as possible until caught up, as when late.
  * The request id: a paired response's `req_id` (v2) / `reqid` (v1) is rewritten to the id of
    the live request its unit matched (the replayed relay numbers pings and requests itself,
    they need not agree with the recording), by substituting that one number in the recorded
    bytes, every other byte kept. This is the only change the replay ever makes to a frame.

A session's end (`SessionEnd.action`): `by == "server"` with a code that can be sent -> that close
code and text (`CLOSE`); no code, 1006 or a code no close frame may carry -> abort the TCP
connection with no close frame, as Cloudflare does (`ABORT`); `by == "relay"` (the relay closed
it: frame timeout, shutdown) -> stop sending and wait for the client to close (`WAIT`). `--end`
(or the capture's end for an open session) closes with 1001 (`EOF`).

The replay is `done` when the clock reaches `--end`, or when every line has no session left to
serve (all played or in the past) and no connection is being served. Speeds other than 1 also
shrink or stretch the gaps the relay's own timers saw (a 6 s stall at speed 2 is 3 s, shorter
than a 5 s frame timeout): replay at speed 1 to reproduce timer-driven behaviour.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from relay.capture.format import CONNECT, CONNECT_FAILED, DISCONNECT, FRAME, PUBLISHED, SUBSCRIBE, Record

NS = 1_000_000_000
JUMP_NS = NS  # wall - monotonic moving by more than this: another run (or a wall-clock step)
EPS_NS = 1_000  # clock comparisons tolerate float rounding
SLACK_NS = 50_000_000  # a request recorded this long after a response may still be the one it answers
RESPONSE_WAIT = 2.0  # capture seconds a response waits for its live request (`--response-wait`)

CLOSE, ABORT, WAIT, EOF = "close", "abort", "wait", "eof"
END_OF_CAPTURE = "end of capture"
REPLAY_ENDED = "replay ended"
DEFAULT_PATHS = {"v2": "/v2", "v1": "/", "futures": "/ws/v1"}


def sendable(code: int) -> bool:
    """A close code a close frame may carry (RFC 6455 7.4; 1005 = an empty close frame)."""
    return code in (1000, 1001, 1002, 1003, 1005) or 1007 <= code <= 1014 or 3000 <= code <= 4999


@dataclass(slots=True)
class SessionEnd:
    action: str  # CLOSE, ABORT, WAIT or EOF
    code: int | None = None  # the close code to send (CLOSE, EOF); 1005 = an empty close frame
    text: str = ""
    by: str | None = None  # as recorded
    reason: str = ""  # the recorded relay's summary

    def describe(self) -> str:
        if self.action == ABORT:
            return "abort (no close frame)"
        if self.action == WAIT:
            return f"client closes ({self.reason or 'closed by the relay'})"
        return f"close {self.code} {self.text!r}".rstrip()


def end_of(code: Any, text: Any, by: Any, reason: Any) -> SessionEnd:
    """The replay's ending for a recorded `disconnect`."""
    code = code if isinstance(code, int) and not isinstance(code, bool) else None
    text, reason = str(text or ""), str(reason or "")
    by = by if by in ("server", "relay") else None
    if by == "relay":
        return SessionEnd(WAIT, code, text, by, reason)
    if code is None or not sendable(code):
        return SessionEnd(ABORT, code, text, by, reason)
    return SessionEnd(CLOSE, code, text, by, reason)


@dataclass
class Session:
    line: str
    index: int  # position among the line's sessions
    protocol: str | None
    url: str | None
    connect_ns: int  # capture time of the connect
    end_ns: int = 0  # capture time of the disconnect
    offsets: list[int] = field(default_factory=list)  # per frame: ns after connect_ns
    frames: list[bytes] = field(default_factory=list)  # the raw frames, in received order
    requests: list[bytes] = field(default_factory=list)  # what the recorded relay sent
    request_offsets: list[int] = field(default_factory=list)  # per request: ns after connect_ns
    end: SessionEnd = field(default_factory=lambda: SessionEnd(EOF, 1001, END_OF_CAPTURE))
    implicit: bool = False  # no connect record: started at its first frame
    _pairing: Pairing | None = field(default=None, repr=False, compare=False)

    @property
    def pairing(self) -> Pairing:
        """Which frames answer which recorded requests (computed once)."""
        if self._pairing is None:
            self._pairing = pair(self.protocol or "v2", self.requests, self.request_offsets, self.frames, self.offsets)
        return self._pairing

    def frame_ns(self, i: int) -> int:
        return self.connect_ns + self.offsets[i]

    @property
    def duration_ns(self) -> int:
        return self.end_ns - self.connect_ns


@dataclass(slots=True)
class Failure:
    at_ns: int
    reason: str

    @property
    def status(self) -> int | None:
        """The HTTP status the attempt got (`http 503`, `429`), else None."""
        m = re.fullmatch(r"(?:http )?(\d{3})", self.reason.strip())
        return int(m.group(1)) if m else None


@dataclass
class LineHistory:
    name: str
    sessions: list[Session] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)  # in time order
    protocol: str = "v2"
    url: str | None = None

    @property
    def path(self) -> str:
        """The recorded URL's path (and query), for the config a relay points at the replay."""
        if self.url:
            m = re.match(r"^[a-z]+://[^/?#]*(.*)$", self.url)
            rest = m.group(1) if m else ""
            return rest if rest.startswith("/") else "/" + rest
        return DEFAULT_PATHS.get(self.protocol, "/")


@dataclass
class Capture:
    lines: dict[str, LineHistory]  # in order of first appearance
    first_ns: int
    last_ns: int
    records: int


class _Timeline:
    """Capture time of each record, in reading order (see the module docstring)."""

    def __init__(self) -> None:
        self.anchor: int | None = None  # wall - mono when (re)anchored
        self.shift = 0  # added after a re-anchor that would go backwards
        self.last_mono = 0
        self.last: int | None = None

    def __call__(self, rec: Record) -> int:
        off = rec.wall_ns - rec.mono_ns
        if self.anchor is None or rec.mono_ns < self.last_mono or abs(off - self.anchor) > JUMP_NS:
            self.anchor, self.shift = off, 0
            if self.last is not None and rec.mono_ns + off < self.last:
                self.shift = self.last - (rec.mono_ns + off)
        t = rec.mono_ns + self.anchor + self.shift
        if self.last is not None and t < self.last:
            t = self.last
        self.last_mono, self.last = rec.mono_ns, t
        return t


def build(records: Iterable[Record]) -> Capture:
    """Per-line sessions and failures from records in capture order."""
    lines: dict[str, LineHistory] = {}
    open_: dict[str, Session] = {}
    last_seen: dict[str, int] = {}  # line -> capture time of its last record
    timeline = _Timeline()
    first: int | None = None
    t = 0
    count = 0

    def close(s: Session, end_ns: int, end: SessionEnd) -> None:
        s.end_ns, s.end = end_ns, end
        del open_[s.line]

    for rec in records:
        if rec.line == PUBLISHED:
            continue
        t = timeline(rec)
        count += 1
        first = t if first is None else first
        name, kind, f = rec.line, rec.kind, rec.fields
        hist = lines.get(name)
        if hist is None:
            hist = lines[name] = LineHistory(name)
        cur = open_.get(name)
        if kind == CONNECT:
            if cur is not None:  # the relay died without writing the disconnect
                close(cur, last_seen.get(name, t), SessionEnd(ABORT, reason="no disconnect recorded"))
            p, url = f.get("p"), f.get("url")
            if isinstance(p, str) and hist.url is None:
                hist.protocol = p
            if isinstance(url, str) and hist.url is None:
                hist.url = url
            open_[name] = Session(
                name,
                len(hist.sessions),
                p if isinstance(p, str) else None,
                url if isinstance(url, str) else None,
                t,
            )
            hist.sessions.append(open_[name])
        elif kind == FRAME and rec.data is not None:
            if cur is None:
                cur = open_[name] = Session(name, len(hist.sessions), None, None, t, implicit=True)
                hist.sessions.append(cur)
            cur.offsets.append(t - cur.connect_ns)
            cur.frames.append(rec.data)
        elif kind == SUBSCRIBE and rec.data is not None:
            if cur is not None:
                cur.request_offsets.append(t - cur.connect_ns)
                cur.requests.append(rec.data)
        elif kind == DISCONNECT:
            if cur is not None:
                close(cur, t, end_of(f.get("code"), f.get("text"), f.get("by"), f.get("reason")))
        elif kind == CONNECT_FAILED:
            p = f.get("p")
            if isinstance(p, str) and hist.url is None:
                hist.protocol = p
            hist.failures.append(Failure(t, str(f.get("reason") or "")))
        last_seen[name] = t
    for s in list(open_.values()):
        close(s, t, SessionEnd(EOF, 1001, END_OF_CAPTURE, reason=END_OF_CAPTURE))
    for hist in lines.values():
        for s in hist.sessions:
            s.protocol = s.protocol or hist.protocol
            s.url = s.url or hist.url
    return Capture(lines, first or 0, t, count)


def parse_when(text: str, first_ns: int) -> int:
    """`--start` / `--end`: an ISO time (naive = UTC) or seconds after the capture's first record."""
    text = text.strip()
    try:
        secs = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(secs) or secs < 0:
            raise ValueError(f"{text!r}: seconds must be >= 0")
        return first_ns + int(secs * NS)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r}: neither seconds nor an ISO time (2024-05-01T12:00:00Z)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1_000_000) * 1000


# -- what a connection gets ------------------------------------------------------------------
@dataclass(slots=True)
class Serve:
    session: Session
    late_ns: int  # how far the clock is past the session's connect (frames to catch up)
    skipped: int  # sessions skipped on the way, this decision


@dataclass(slots=True)
class Hold:
    session: Session
    until: float  # loop time of the session's connect: ask again then


@dataclass(slots=True)
class Refuse:
    status: int | None  # HTTP status; None: abort the connection before answering
    reason: str  # the recorded failure


@dataclass(slots=True)
class Busy:
    """Another connection is being held or served on this line."""


@dataclass(slots=True)
class Over:
    reason: str


Decision = Serve | Hold | Refuse | Busy | Over


@dataclass
class LineState:
    hist: LineHistory
    cursor: int = 0  # index of the next unplayed session
    active: object | None = None  # the connection holding the line's slot
    played: int = 0
    skipped: int = 0
    refused: int = 0
    busy: int = 0


class Schedule:
    """The replay clock and the per-line cursors (see the module docstring)."""

    def __init__(
        self,
        capture: Capture,
        *,
        lines: list[str] | None = None,
        start_ns: int | None = None,
        end_ns: int | None = None,
        speed: float = 1.0,
        response_wait: float = RESPONSE_WAIT,
    ) -> None:
        if not capture.lines:
            raise ValueError("the capture holds no line records")
        names = list(capture.lines) if not lines else lines
        unknown = [n for n in names if n not in capture.lines]
        if unknown:
            raise ValueError(f"no line {', '.join(unknown)} in the capture (have {', '.join(capture.lines)})")
        if len(set(names)) != len(names):
            raise ValueError("a line is named twice")
        if not (math.isfinite(speed) and speed > 0):
            raise ValueError("speed must be > 0")
        if not (math.isfinite(response_wait) and response_wait >= 0):
            raise ValueError("the response wait must be >= 0")
        self.capture = capture
        self.speed = speed
        self.response_wait = response_wait  # capture seconds (see Playback.due)
        self.start_ns = capture.first_ns if start_ns is None else start_ns
        self.end_ns = end_ns
        if end_ns is not None and end_ns <= self.start_ns:
            raise ValueError("the end is not after the start")
        self.lines: dict[str, LineState] = {n: LineState(capture.lines[n]) for n in names}
        self.t0: float | None = None

    # -- the clock ------------------------------------------------------------------------
    def begin(self, now: float) -> None:
        """Map the start to loop time `now` (the first call wins)."""
        if self.t0 is None:
            self.t0 = now

    @property
    def started(self) -> bool:
        return self.t0 is not None

    def clock(self, now: float) -> int:
        """Capture time at loop time `now` (the start until the clock is started)."""
        if self.t0 is None:
            return self.start_ns
        return self.start_ns + int((now - self.t0) * self.speed * NS)

    def at(self, t_ns: int) -> float:
        """Loop time at which the clock reaches capture time `t_ns`."""
        assert self.t0 is not None, "the clock is not started"
        return self.t0 + (t_ns - self.start_ns) / (self.speed * NS)

    def ended(self, now: float) -> bool:
        return self.end_ns is not None and self.t0 is not None and self.clock(now) >= self.end_ns

    def stop_ns(self, session: Session) -> int:
        """Where a session's playback stops: its end, or `--end` if earlier."""
        return session.end_ns if self.end_ns is None else min(session.end_ns, self.end_ns)

    # -- connections ----------------------------------------------------------------------
    def assign(self, line: str, now: float, token: object) -> Decision:
        """What connection `token`, arriving on `line` at loop time `now`, gets. `Serve` and
        `Hold` give it the line's slot (until `release`); ask again after a `Hold`. The first
        call starts the clock unless `begin` did."""
        st = self.lines[line]
        if st.active is not None and st.active is not token:
            st.busy += 1
            return Busy()
        self.begin(now)
        if self.ended(now):
            self._free(st, token)
            return Over(REPLAY_ENDED)
        t = self.clock(now)
        sessions = st.hist.sessions
        skipped = 0
        while st.cursor < len(sessions) and sessions[st.cursor].end_ns <= t + EPS_NS:
            st.cursor += 1
            skipped += 1
        st.skipped += skipped
        if st.cursor >= len(sessions) or (self.end_ns is not None and sessions[st.cursor].connect_ns >= self.end_ns):
            self._free(st, token)
            return Over(END_OF_CAPTURE)
        s = sessions[st.cursor]
        if s.connect_ns <= t + EPS_NS:
            st.active = token
            return Serve(s, max(0, t - s.connect_ns), skipped)
        failure = self._failure_ahead(st, t, s)
        if failure is not None and failure.reason != "timeout":
            self._free(st, token)
            st.refused += 1
            return Refuse(failure.status, failure.reason)
        st.active = token
        return Hold(s, self.at(s.connect_ns))

    def _failure_ahead(self, st: LineState, t: int, s: Session) -> Failure | None:
        """The line's first recorded failed attempt at or after `t`, after the previous session
        ended and before session `s` connected."""
        prev_end = st.hist.sessions[s.index - 1].end_ns if s.index > 0 else t
        fails = st.hist.failures
        i = bisect_left([f.at_ns for f in fails], max(t, prev_end))
        if i < len(fails) and fails[i].at_ns < s.connect_ns:
            return fails[i]
        return None

    def play(self, line: str, token: object, session: Session) -> Playback:
        """Start serving `session` (from a `Serve`) to `token`: it counts as played."""
        st = self.lines[line]
        assert st.active is token, "play() without the line's slot"
        st.cursor = max(st.cursor, session.index + 1)
        st.played += 1
        return Playback(self, session)

    def release(self, line: str, token: object) -> None:
        """Connection `token` no longer holds the line (its session is over, or it left)."""
        self._free(self.lines[line], token)

    @staticmethod
    def _free(st: LineState, token: object) -> None:
        if st.active is token:
            st.active = None

    def exhausted(self, now: float) -> bool:
        """No line has a session left to serve and none is being served."""
        if self.t0 is None:
            return False
        t = self.clock(now)
        for st in self.lines.values():
            if st.active is not None:
                return False
            rest = st.hist.sessions[st.cursor :]
            if self.end_ns is not None:
                rest = [s for s in rest if s.connect_ns < self.end_ns]
            if any(s.end_ns > t for s in rest):
                return False
        return True

    def done(self, now: float) -> bool:
        return self.ended(now) or self.exhausted(now)


# -- requests and their responses -----------------------------------------------------------
Unit = tuple[str, str, str]  # (method, channel / feed / name, symbol / pair / product; "" = none)
PING_UNIT: Unit = ("ping", "", "")


@dataclass(slots=True)
class Ask:
    """A request as the pairing sees it: its units and its id."""

    units: list[Unit]
    req_id: int | None


@dataclass(slots=True)
class Answer:
    """A response as the pairing sees it: by id (`req_id`, then `symbol` among the request's
    units), or (no id) by the units it names."""

    req_id: int | None
    symbol: str | None = None  # with an id: the unit's symbol (None: the whole request)
    units: list[Unit] = field(default_factory=list)  # without an id


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _strs(v: Any) -> list[str]:
    if isinstance(v, str):
        return [v]
    return [x for x in v if isinstance(x, str)] if isinstance(v, list) else []


def _units(method: str, channel: Any, symbols: list[str]) -> list[Unit]:
    ch = channel if isinstance(channel, str) else ""
    return [(method, ch, sym) for sym in dict.fromkeys(symbols)] or [(method, ch, "")]


def _object(raw: bytes) -> dict[str, Any] | None:
    if not raw.lstrip().startswith(b"{"):
        return None
    try:
        msg = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return msg if isinstance(msg, dict) else None


def parse_request(protocol: str, raw: bytes) -> Ask | None:
    """A request the relay sent (recorded or live), or None when it is not one."""
    msg = _object(raw)
    if msg is None:
        return None
    if protocol == "v2":
        method, params = msg.get("method"), msg.get("params")
        if not isinstance(method, str):
            return None
        if method == "ping":
            return Ask([PING_UNIT], _int(msg.get("req_id")))
        params = params if isinstance(params, dict) else {}
        return Ask(_units(method, params.get("channel"), _strs(params.get("symbol"))), _int(msg.get("req_id")))
    if protocol == "v1":
        event, sub = msg.get("event"), msg.get("subscription")
        if event == "ping":
            return Ask([PING_UNIT], _int(msg.get("reqid")))
        if event not in ("subscribe", "unsubscribe"):
            return None
        name = sub.get("name") if isinstance(sub, dict) else None
        return Ask(_units(event, name, _strs(msg.get("pair"))), _int(msg.get("reqid")))
    event = msg.get("event")  # futures: requests carry no id
    if event not in ("subscribe", "unsubscribe"):
        return None
    products = [p.upper() for p in _strs(msg.get("product_ids") or msg.get("product_id"))]
    return Ask(_units(event, msg.get("feed"), products), None)


def parse_response(protocol: str, raw: bytes) -> Answer | None:
    """A response to a request, or None for every other frame (cheap for data frames)."""
    if protocol == "v2":
        if b'"method"' not in raw:
            return None
        msg = _object(raw)
        if msg is None or msg.get("method") not in ("subscribe", "unsubscribe", "pong"):
            return None
        rid = _int(msg.get("req_id"))
        if rid is None:
            return None
        result = msg.get("result")
        symbol = result.get("symbol") if isinstance(result, dict) else None
        symbol = symbol if isinstance(symbol, str) else msg.get("symbol")
        return Answer(rid, symbol if isinstance(symbol, str) else None)
    if b'"event"' not in raw:
        return None
    msg = _object(raw)
    if msg is None:
        return None
    event = msg.get("event")
    if protocol == "v1":
        if event not in ("subscriptionStatus", "pong", "error"):
            return None
        rid = _int(msg.get("reqid"))
        pairs = _strs(msg.get("pair"))
        if rid is not None:
            return Answer(rid, pairs[0] if len(pairs) == 1 else None)
        if event == "pong":
            return Answer(None, units=[PING_UNIT])
        if event == "error":
            return None  # no id, no pair: nothing to tell which request it answers
        sub = msg.get("subscription")
        name = sub.get("name") if isinstance(sub, dict) else None
        if not isinstance(name, str):  # Kraken's channelName: `book-10`, `ohlc-5`
            cname = msg.get("channelName")
            name = cname.split("-", 1)[0] if isinstance(cname, str) else None
        method = "unsubscribe" if msg.get("status") == "unsubscribed" else "subscribe"
        return Answer(None, units=_units(method, name, pairs))
    if event in ("subscribed", "subscribed_failed"):
        method = "subscribe"
    elif event in ("unsubscribed", "unsubscribed_failed"):
        method = "unsubscribe"
    else:
        return None
    products = [p.upper() for p in _strs(msg.get("product_ids") or msg.get("product_id"))]
    return Answer(None, units=_units(method, msg.get("feed"), products))


@dataclass
class Pairing:
    """A session's requests as units, and the units each response answers."""

    units: list[Unit]  # every recorded request's units, in recorded order
    unit_request: list[int]  # per unit: the request it belongs to
    request_units: list[list[int]]  # per request: its units
    request_ids: list[int | None]  # per request: its recorded id
    needs: dict[int, tuple[int, ...]]  # response frame index -> the unit indices it answers
    ids: dict[int, int]  # response frame index -> its recorded request id (rewritten when sent)


def pair(
    protocol: str, requests: list[bytes], request_offsets: list[int], frames: list[bytes], offsets: list[int]
) -> Pairing:
    """Pair the recorded responses with the recorded requests (see the module docstring)."""
    units: list[Unit] = []
    unit_request: list[int] = []
    request_ids: list[int | None] = []
    req_units: list[list[int]] = []
    by_id: dict[int, list[int]] = {}  # request id -> requests holding it, in recorded order
    idless: dict[Unit, deque[int]] = {}  # unit -> unanswered units of requests without an id
    for j, raw in enumerate(requests):
        ask = parse_request(protocol, raw)
        mine: list[int] = []
        if ask is not None:
            for u in ask.units:
                mine.append(len(units))
                units.append(u)
                unit_request.append(j)
                if ask.req_id is None:
                    idless.setdefault(u, deque()).append(mine[-1])
            if ask.req_id is not None:
                by_id.setdefault(ask.req_id, []).append(j)
        req_units.append(mine)
        request_ids.append(ask.req_id if ask is not None else None)
    needs: dict[int, tuple[int, ...]] = {}
    ids: dict[int, int] = {}
    if not units:
        return Pairing(units, unit_request, req_units, request_ids, needs, ids)
    for i, raw in enumerate(frames):
        ans = parse_response(protocol, raw)
        if ans is None:
            continue
        at = offsets[i]
        if ans.req_id is not None:
            cands = by_id.get(ans.req_id)
            if not cands:
                continue
            times = [request_offsets[j] for j in cands]
            k = bisect_right(times, at)
            if k:
                j = cands[k - 1]
            elif times[0] <= at + SLACK_NS:
                j = cands[0]
            else:
                continue
            mine = req_units[j]
            if not mine:
                continue
            hit = [u for u in mine if units[u][2] == ans.symbol] if ans.symbol is not None else []
            needs[i] = tuple(hit or mine)
            ids[i] = ans.req_id
            continue
        got: list[int] = []
        for unit in ans.units:
            q = idless.get(unit)
            if q and request_offsets[unit_request[q[0]]] <= at + SLACK_NS:
                got.append(q.popleft())
        if got:
            needs[i] = tuple(got)
    return Pairing(units, unit_request, req_units, request_ids, needs, ids)


_ID_FIELD = {"v2": rb'"req_id"\s*:\s*(-?\d+)', "v1": rb'"reqid"\s*:\s*(-?\d+)'}
_ID_RE = {p: re.compile(rx) for p, rx in _ID_FIELD.items()}


def rewrite_id(protocol: str, raw: bytes, old: int, new: int) -> bytes:
    """`raw` with its request id `old` (`"req_id":N` v2, `"reqid":N` v1) replaced by `new`, by
    substituting that one number: every other byte stays as recorded."""
    rx = _ID_RE.get(protocol)
    if rx is None or old == new:
        return raw
    for m in rx.finditer(raw):
        if int(m.group(1)) == old:
            return raw[: m.start(1)] + str(new).encode() + raw[m.end(1) :]
    return raw


PENDING, MATCHED, GIVEN_UP = 0, 1, 2


class Playback:
    """One session being served: which frames are due (a response waiting for its request), and
    when it ends. `request()` is fed every request the relay sends."""

    def __init__(self, schedule: Schedule, session: Session) -> None:
        self.schedule = schedule
        self.session = session
        self.protocol = session.protocol or "v2"
        self.stop_ns = schedule.stop_ns(session)
        n = len(session.frames)
        # frames past --end are never sent
        self.count = (
            n if self.stop_ns >= session.end_ns else bisect_left(session.offsets, self.stop_ns - session.connect_ns + 1)
        )
        self.pos = 0
        self.wait = schedule.response_wait / schedule.speed  # loop seconds a response waits at most
        self.pairing = session.pairing
        units = self.pairing.units
        self.state = [PENDING] * len(units)
        self.live_ids: list[int | None] = [None] * len(units)
        self._open: dict[Unit, deque[int]] = {}  # unit -> recorded units not matched yet, in order
        for u, unit in enumerate(units):
            self._open.setdefault(unit, deque()).append(u)
        self._paused_at: int | None = None  # frame index the stream is paused at
        self._paused_since = 0.0
        # counters
        self.requests = 0  # live requests received
        self.unexpected = 0  # live requests with no unit in the recording
        self.answered = 0  # responses sent after their live request
        self.unanswered = 0  # responses sent when the wait ran out
        self.rewritten = 0  # responses whose request id was rewritten
        self.pauses = 0  # times the stream waited for a request
        self.paused_s = 0.0  # loop seconds spent waiting

    # -- the relay's requests -------------------------------------------------------------
    def request(self, raw: bytes) -> bool:
        """A request the relay sent: match its units to the recording's. False when none of
        them is in the recording (still to come, not given up)."""
        self.requests += 1
        ask = parse_request(self.protocol, raw)
        matched = False
        if ask is not None:
            for unit in ask.units:
                q = self._open.get(unit)
                while q and self.state[q[0]] != PENDING:
                    q.popleft()
                if q:
                    u = q.popleft()
                    self.state[u] = MATCHED
                    self.live_ids[u] = ask.req_id
                    matched = True
        if not matched:
            self.unexpected += 1
        return matched

    @property
    def paused(self) -> bool:
        """The stream waits for a request (`request()` may let it go on)."""
        if self._paused_at is None or self._paused_at != self.pos:
            return False
        return any(self.state[u] == PENDING for u in self.pairing.needs[self.pos])

    def waiting_for(self) -> list[bytes]:
        """The recorded requests the paused response answers (for the log)."""
        if not self.paused:
            return []
        p = self.pairing
        reqs = dict.fromkeys(p.unit_request[u] for u in p.needs[self.pos] if self.state[u] == PENDING)
        return [self.session.requests[j] for j in reqs]

    # -- frames ---------------------------------------------------------------------------
    def due(self, now: float, limit: int = 1000) -> list[bytes]:
        """The next frames whose time has come, in order (at most `limit`); stops at a response
        whose request the relay has not sent yet, until it does or the wait runs out."""
        t = self.schedule.clock(now) + EPS_NS
        s = self.session
        needs = self.pairing.needs
        out: list[bytes] = []
        while self.pos < self.count and len(out) < limit and s.frame_ns(self.pos) <= t:
            raw = s.frames[self.pos]
            need = needs.get(self.pos)
            if need is not None:
                waiting = [u for u in need if self.state[u] == PENDING]
                if waiting:
                    if self._paused_at != self.pos:
                        self._paused_at, self._paused_since = self.pos, now
                        self.pauses += 1
                    if now + EPS_NS / NS < self._paused_since + self.wait:
                        break
                    self._give_up(waiting)
                if any(self.state[u] == GIVEN_UP for u in need):
                    self.unanswered += 1
                else:
                    self.answered += 1
                if self._paused_at == self.pos:
                    self.paused_s += max(0.0, now - self._paused_since)
                    self._paused_at = None
                raw = self._with_live_id(raw, need)
            out.append(raw)
            self.pos += 1
        return out

    def _give_up(self, units: list[int]) -> None:
        """The wait for these units ran out: their requests are not waited for any more."""
        p = self.pairing
        for j in dict.fromkeys(p.unit_request[u] for u in units):
            for u in p.request_units[j]:
                if self.state[u] == PENDING:
                    self.state[u] = GIVEN_UP

    def _with_live_id(self, raw: bytes, need: tuple[int, ...]) -> bytes:
        old = self.pairing.ids.get(self.pos)
        if old is None:
            return raw
        for u in need:
            new = self.live_ids[u]
            if self.state[u] == MATCHED and new is not None:
                if new != old:
                    out = rewrite_id(self.protocol, raw, old, new)
                    if out != raw:
                        self.rewritten += 1
                    return out
                return raw
        return raw

    def next_at(self) -> float:
        """Loop time of the next frame (while paused: when the wait runs out), or of the
        session's end once every frame is sent."""
        if self.pos < self.count:
            at = self.schedule.at(self.session.frame_ns(self.pos))
            if self.paused:
                return max(at, self._paused_since + self.wait)
            return at
        return self.schedule.at(self.stop_ns)

    def over(self, now: float) -> bool:
        """Every frame sent and the clock at the session's (or the replay's) end."""
        return self.pos >= self.count and self.schedule.clock(now) + EPS_NS >= self.stop_ns

    @property
    def end(self) -> SessionEnd:
        """What ends this playback: the recorded end, or 1001 when `--end` comes first."""
        if self.stop_ns < self.session.end_ns:
            return SessionEnd(EOF, 1001, REPLAY_ENDED, reason=REPLAY_ENDED)
        return self.session.end
