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
from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from relay.capture.format import CONNECT, CONNECT_FAILED, DISCONNECT, FRAME, PUBLISHED, SUBSCRIBE, Record

NS = 1_000_000_000
JUMP_NS = NS  # wall - monotonic moving by more than this: another run (or a wall-clock step)
EPS_NS = 1_000  # clock comparisons tolerate float rounding

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
    end: SessionEnd = field(default_factory=lambda: SessionEnd(EOF, 1001, END_OF_CAPTURE))
    implicit: bool = False  # no connect record: started at its first frame

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
        self.capture = capture
        self.speed = speed
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


class Playback:
    """One session being served: which frames are due, and when it ends."""

    def __init__(self, schedule: Schedule, session: Session) -> None:
        self.schedule = schedule
        self.session = session
        self.stop_ns = schedule.stop_ns(session)
        n = len(session.frames)
        # frames past --end are never sent
        self.count = (
            n if self.stop_ns >= session.end_ns else bisect_left(session.offsets, self.stop_ns - session.connect_ns + 1)
        )
        self.pos = 0

    def due(self, now: float, limit: int = 1000) -> list[bytes]:
        """The next frames whose time has come, in order (at most `limit`)."""
        t = self.schedule.clock(now) + EPS_NS
        s = self.session
        out: list[bytes] = []
        while self.pos < self.count and len(out) < limit and s.frame_ns(self.pos) <= t:
            out.append(s.frames[self.pos])
            self.pos += 1
        return out

    def next_at(self) -> float:
        """Loop time of the next frame, or of the session's end once every frame is sent."""
        if self.pos < self.count:
            return self.schedule.at(self.session.frame_ns(self.pos))
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
