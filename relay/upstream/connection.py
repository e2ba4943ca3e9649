"""One upstream line: its asyncio task (connect, subscribe, read, watchdog) and its counters.

Two tasks per live connection keep the hot path short:

* the reader only does `recv(decode=False)` -> `merge.feed` -> `merge.take` -> publish, plus a
  few counters; control frames (status, acks) are handled inline because they are rare;
* the housekeeper sleeps until the next deadline (frame timeout, ping due, subscription timer)
  or until woken, then checks the frame deadline, sends paced subscription frames and pings.

The deadline is checked against the time of the last frame of any kind (heartbeats included):
it proves the connection alive. Data freshness per symbol is the merge's job; it comes back as
resync requests handled by `request_resync`.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import structlog
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from relay.config import RelayConfig, UpstreamConfig
from relay.core.events import AckEvent, StatusEvent, UnknownEvent
from relay.core.keys import SubKey
from relay.protocols.interfaces import ProtocolMerge
from relay.protocols.spec import ProtocolSpec
from relay.upstream.backoff import RATE_LIMITED, ReconnectPolicy, Stagger
from relay.upstream.budget import AttemptBudget, AttemptGate, egress_of
from relay.upstream.nats_line import NatsLine
from relay.upstream.statuslog import Record, StatusLog
from relay.upstream.subscriptions import SubscriptionPlanner
from relay.upstream.transport import classify_error, close_fields, close_reason, open_connection

log = structlog.get_logger("relay.upstream")

Publish = Callable[[list[Any]], None]

# Connection states shown to operators.
DOWN = "down"
BACKOFF = "backoff"
CONNECTING = "connecting"
SUBSCRIBING = "subscribing"
LIVE = "live"
MAINTENANCE = "maintenance"


def reason_key(reason: str) -> str:
    """A bounded label for counters: the close code alone (`1001`), else the reason itself.
    The close text is server-chosen, so it stays in `last_disconnect` only."""
    return reason.split(" ", 1)[0] if reason[:1].isdigit() else reason


class UpstreamConnection:
    """Keeps one upstream connected forever and feeds every frame to the merge."""

    def __init__(
        self,
        index: int,
        up: UpstreamConfig,
        cfg: RelayConfig,
        merge: ProtocolMerge,
        publish: Publish,
        budget: AttemptBudget,
        stagger: Stagger,
        desired: list[SubKey],
        *,
        planner_options: dict[str, Any] | None = None,
        stable_after: float = 10.0,
        max_queue: int = 64,
        lag_sampler: Any = None,
        protocol: ProtocolSpec,
        on_rejected: Callable[[SubKey, str, float], None] | None = None,
        peers_live: Callable[[], bool] | None = None,
    ) -> None:
        self.protocol = protocol  # requests, pings, liveness
        # Whether another line of this protocol serves now; when none does, attempts skip the
        # stagger (the lines race back), only the budget applies.
        self.peers_live = peers_live
        self.on_rejected = on_rejected  # Kraken refused one of our subscriptions
        self.frame_timeout = self.protocol.frame_timeout(cfg)
        self.ws_ping_interval = self.protocol.ws_ping_interval(cfg)
        self.index = index
        self.lag = lag_sampler  # optional: `.due()` per frame, `.observe_rfc3339(ts)` on samples
        self.up = up
        self.name = up.name
        self.cfg = cfg
        self.merge = merge
        self.publish = publish
        self.budget = budget
        self.egress = egress_of(up)
        self.stagger = stagger
        self.gate = AttemptGate(stagger, budget)
        self.max_queue = max_queue
        self.policy = ReconnectPolicy(cfg.reconnect, stable_after=stable_after)
        sub = cfg.subscribe
        opts: dict[str, Any] = dict(
            batch_size=sub.batch_size,
            requests_per_second=sub.requests_per_second,
            retry_delay=sub.retry_delay,
            ack_timeout=max(10.0, cfg.reconnect.handshake_timeout),
        )
        opts.update(planner_options or {})
        self.planner = SubscriptionPlanner(
            desired, encode_request=self.protocol.encode_request, params_for=self.protocol.request_params, **opts
        )
        # -- operator state ----------------------------------------------------------------
        self.state = DOWN
        self.system: str | None = None  # engine status last reported on this line
        self.last_disconnect: str | None = None
        self.attempts = 0
        self.connects = 0
        self.disconnects: Counter[str] = Counter()  # live connection lost, by reason_key()
        self.failures: Counter[str] = Counter()  # attempt failed, by reason
        self.budget_waits = 0
        self.frames = 0
        self.bytes = 0
        self.last_frame_time: float | None = None
        self.connected_at: float | None = None
        self.down_since: float | None = None  # loop time the line went down (None while connected)
        self.next_attempt_at: float | None = None
        self.rejections: dict[str, str] = {}  # subscription label -> last error
        self.resyncs: Counter[str] = Counter()  # by reason
        self.unknown_frames = 0
        self.line_events: Counter[str] = Counter()  # a NATS line's gaps and snapshots (`relay.upstream.nats_line`)
        self.status_log = StatusLog()  # status changes logged, flapping summarised
        # the flight recorder's `record(line, kind, data, **fields)` (None: capture is off)
        self.capture: Callable[..., None] | None = None
        self.capture_frame: Callable[[str, bytes], None] | None = None  # its `frame(line, data)`
        # the pool's router of the merge's resync requests (None: only the pool's tick routes)
        self.route_requests: Callable[[], None] | None = None
        # -- runtime ---------------------------------------------------------------------------
        self._loop = asyncio.get_running_loop()
        self._clock = self._loop.time
        self._ws: ClientConnection | NatsLine | None = None
        self._wake = asyncio.Event()
        self._close_reason: str | None = None
        self._close: tuple[int | None, str, str | None] = (None, "", None)  # (code, text, by)
        self._status_seen = False
        self._maintenance = False
        self._was_live = False  # this session reached LIVE (decides an immediate retry)
        self._last_sent = 0.0
        self._stopping = False

    # -- main loop ---------------------------------------------------------------------------
    async def run(self) -> None:
        delay = 0.0
        self.down_since = self._clock()
        while not self._stopping:
            if delay > 0:
                self.state = MAINTENANCE if self._maintenance else BACKOFF
                self.next_attempt_at = self._clock() + delay
                await asyncio.sleep(delay)
            await self._wait_turn()
            self.next_attempt_at = None
            self.attempts += 1
            self.state = CONNECTING
            try:
                ws: ClientConnection | NatsLine
                if self.up.is_nats:
                    ws = await NatsLine.open(
                        self.up,
                        self.protocol.name,
                        handshake_timeout=self.cfg.reconnect.handshake_timeout,
                        counters=self.line_events,
                    )
                else:
                    ws = await open_connection(
                        self.up,
                        handshake_timeout=self.cfg.reconnect.handshake_timeout,
                        max_queue=self.max_queue,
                        ping_interval=self.ws_ping_interval,
                    )
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # every failure means: back off and try again, forever
                reason = classify_error(exc)
                self.failures[reason] += 1
                self.last_disconnect = reason
                now = self._clock()
                delay = self.policy.next_delay(now, reason, self._maintenance)
                if reason == RATE_LIMITED:  # per address: every line leaving from it backs off
                    self.budget.block(now + delay)
                    # ...and the line that drew the 429 retries one stagger slot after the
                    # others waiting on that address, so it cannot starve them by winning
                    # every race for the first attempt once the block ends.
                    delay += self.stagger.interval
                log.warning("upstream connect failed", upstream=self.name, reason=reason, retry_in=round(delay, 3))
                if self.capture is not None:
                    self.capture(self.name, "connect_failed", p=self.protocol.name, url=self.up.url, reason=reason)
                continue
            self.connects += 1
            now = self._clock()
            self.connected_at = now
            self.down_since = None
            self.policy.on_connected(now)
            self.merge.upstream_up(self.index, now)
            log.info("upstream connected", upstream=self.name, egress=self.egress)
            if self.capture is not None:
                self.capture(self.name, "connect", p=self.protocol.name, url=self.up.url, egress=self.egress)
            reason = await self._session(ws)
            if self.capture is not None:
                code, text, by = self._close
                self.capture(self.name, "disconnect", code=code, text=text, by=by, reason=reason)
            self.disconnects[reason_key(reason)] += 1
            self.last_disconnect = reason
            now = self._clock()
            self.down_since = now
            self.merge.upstream_down(self.index, now)
            self._drain()
            self._log(self.status_log.flush(now, force=True))
            if self._stopping:
                break
            delay = self.policy.next_delay(now, reason, self._maintenance, was_live=self._was_live)
            log.warning(
                "upstream disconnected",
                upstream=self.name,
                reason=reason,
                retry_in=round(delay, 3),
                immediate=self.policy.immediate,
            )
        self.state = DOWN

    def _urgent(self) -> bool:
        """Skip the stagger: an immediate retry, or no line of ours serves (they race back; the
        stagger only spaces reconnects while another line serves, and the lines' first connects)."""
        if self.policy.immediate:
            return True
        return self.connects > 0 and self.peers_live is not None and not self.peers_live()

    async def _wait_turn(self) -> None:
        """Respect the pool-wide stagger and this egress address's attempt budget."""
        while (wait := self.gate.poll(self._clock(), self._urgent())) > 0:
            if self.gate.budget_limited:
                self.budget_waits += 1
                self.state = BACKOFF
                self.next_attempt_at = self._clock() + wait
                log.warning(
                    "upstream attempt budget exhausted or address rate-limited",
                    upstream=self.name,
                    egress=self.egress,
                    wait=round(wait, 3),
                )
            await asyncio.sleep(wait)

    async def _session(self, ws: ClientConnection | NatsLine) -> str:
        self._ws = ws
        self._close_reason = None
        self._close = (None, "", None)
        self._status_seen = False
        self._was_live = False
        self.state = SUBSCRIBING
        now = self._clock()
        self.last_frame_time = now
        self._last_sent = now
        keeper = asyncio.create_task(self._housekeep(ws), name=f"upstream-{self.name}-keeper")
        try:
            await self._read(ws)
            reason = "closed"  # pragma: no cover - _read only ends by exception
        except ConnectionClosed as exc:
            reason = self._close_reason or close_reason(exc)
            self._close = close_fields(exc)
            if self._close_reason is not None:  # we ended it (frame timeout, no status, ...)
                self._close = (self._close[0], self._close[1], "relay")
        except asyncio.CancelledError:
            ws.transport.abort()
            raise
        except Exception as exc:  # a bug in a consumer must not kill the line forever
            reason = self._close_reason or f"error {type(exc).__name__}"
            log.exception("upstream session failed", upstream=self.name)
        finally:
            keeper.cancel()
            try:
                await keeper
            except (asyncio.CancelledError, Exception):
                pass
            self._ws = None
            self.planner.disconnected()
            self._status_seen = False
            if ws.state.name != "CLOSED":
                ws.transport.abort()
        return reason

    async def _read(self, ws: ClientConnection | NatsLine) -> None:
        recv = ws.recv
        clock = self._clock
        feed = self.merge.feed
        take = self.merge.take
        publish = self.publish
        index = self.index
        control = self._control
        due = self.lag.due if self.lag is not None else None
        capture_frame = self.capture_frame
        name = self.name

        def on_raw(raw: bytes) -> None:
            now = clock()
            self.frames += 1
            self.bytes += len(raw)
            self.last_frame_time = now
            if capture_frame is not None:
                capture_frame(name, raw)
            if due is not None and due():
                self._sample_lag(raw)
            ev = feed(index, raw, now)
            if ev is not None:
                control(ev, now)
            pubs = take()
            if pubs:
                try:
                    publish(pubs)
                except Exception:
                    log.exception("publish callback failed", upstream=self.name)

        def on_raw_safe(raw: bytes) -> None:
            try:
                on_raw(raw)
            except Exception as exc:  # inside the protocol callback: end the session as _read would
                if self._close_reason is None:
                    self._close_reason = f"error {type(exc).__name__}"
                    log.exception("upstream session failed", upstream=self.name)
                ws.transport.abort()

        # Frames are fed from the protocol callback (no per-frame recv(), see relay.upstream.sink);
        # recv() then only returns by raising ConnectionClosed when the session ends.
        attach = getattr(ws, "attach", None)
        if attach is not None and attach(on_raw_safe):
            while True:
                on_raw_safe(await recv(decode=False))  # only if something bypassed the sink
        while True:
            on_raw(await recv(decode=False))

    def _sample_lag(self, raw: bytes) -> None:
        """Exchange timestamp of a sampled data frame vs our wall clock (metrics only)."""
        i = raw.find(b'"timestamp":"')
        if i >= 0:
            j = raw.find(b'"', i + 13)
            if j > 0:
                self.lag.observe_rfc3339(raw[i + 13 : j], time.time())
            return
        i = raw.find(b'"timestamp":')  # Futures: epoch milliseconds as a JSON number
        if i >= 0:
            j = k = i + 12
            while k < len(raw) and 48 <= raw[k] <= 57:
                k += 1
            if k - j >= 12:
                self.lag.observe(time.time() - int(raw[j:k]) / 1000.0)

    def _control(self, ev: Any, now: float) -> None:
        if isinstance(ev, StatusEvent):
            self.system = ev.system
            self._maintenance = ev.system == "maintenance"
            self.merge.line_status(self.index, ev.system, now, ev.version)
            if self.route_requests is not None:
                # a line back from maintenance: its resyncs start now, not at the next tick, so
                # no update it sends before its fresh snapshot is published (and a replay of a
                # capture makes the same decision at the same frame)
                self.route_requests()
            if not self._status_seen:
                self._status_seen = True
                self.planner.reset()
                self._wake.set()
            self._log(self.status_log.observe(ev.system, now))
            self._update_state()
        elif isinstance(ev, AckEvent):
            res = self.planner.on_ack(ev, now)
            for key, error in res.rejected:
                self.rejections[key.label()] = error
                log.warning("subscription rejected", upstream=self.name, subscription=key.label(), error=error)
                if self.on_rejected is not None:
                    self.on_rejected(key, error, now)
            for key in res.accepted:
                self.rejections.pop(key.label(), None)
            warnings = ev.result.get("warnings") if ev.success and res.accepted else None
            if warnings:  # only for acks of our own requests: unsolicited ones are not logged
                log.info("subscription warnings", upstream=self.name, warnings=warnings)
            self._wake.set()  # the housekeeper sends follow-ups and updates the state, once per burst
        elif isinstance(ev, UnknownEvent):
            self.unknown_frames += 1

    def _log(self, records: list[Record]) -> None:
        for level, event, fields in records:
            getattr(log, level)(event, upstream=self.name, **fields)

    def _update_state(self) -> None:
        if self._ws is None:
            return
        if self._maintenance:
            self.state = MAINTENANCE
        elif self._status_seen and self.planner.settled():
            self.state = LIVE
            self._was_live = True
        else:
            self.state = SUBSCRIBING

    async def _housekeep(self, ws: ClientConnection | NatsLine) -> None:
        live = self.cfg.liveness
        frame_timeout = self.frame_timeout
        encode_ping = self.protocol.encode_ping  # None: RFC 6455 pings by the websocket layer
        status_timeout = self.cfg.reconnect.handshake_timeout
        clock = self._clock
        try:
            while True:
                self._wake.clear()
                now = clock()
                if now - (self.last_frame_time or now) >= frame_timeout:
                    self._close_reason = "timeout"
                    log.warning("upstream silent", upstream=self.name, timeout=frame_timeout)
                    ws.transport.abort()
                    return
                if not self._status_seen and now - (self.connected_at or now) >= status_timeout:
                    # pongs keep the socket "alive", but without a status nothing gets subscribed
                    self._close_reason = "no status"
                    log.warning("upstream sent no status", upstream=self.name, timeout=status_timeout)
                    ws.transport.abort()
                    return
                self._log(self.status_log.flush(now))
                frames = self.planner.poll(now)
                for key, error in self.planner.last_timeouts:
                    self.rejections[key.label()] = error
                    log.warning("subscription not acknowledged", upstream=self.name, subscription=key.label())
                if encode_ping is not None and now - self._last_sent >= live.ping_interval:
                    frames.append(encode_ping(self.planner.next_req_id()))
                if frames:
                    async with asyncio.timeout(live.frame_timeout):
                        for frame in frames:
                            await ws.send(frame, text=True)
                            if self.capture is not None:
                                self.capture(self.name, "subscribe", frame)
                    self._last_sent = clock()
                self._update_state()
                now = clock()
                wake_at = (self.last_frame_time or now) + frame_timeout
                if encode_ping is not None:
                    wake_at = min(wake_at, self._last_sent + live.ping_interval)
                if not self._status_seen:
                    wake_at = min(wake_at, (self.connected_at or now) + status_timeout)
                nxt = self.planner.next_wakeup(now)
                if nxt is not None:
                    wake_at = min(wake_at, nxt)
                try:
                    async with asyncio.timeout(max(0.0, wake_at - now) + 0.001):
                        await self._wake.wait()
                except TimeoutError:
                    pass
        except (ConnectionClosed, TimeoutError, OSError) as exc:
            self._close_reason = self._close_reason or (
                "timeout" if isinstance(exc, TimeoutError) else classify_error(exc)
            )
            ws.transport.abort()

    # -- control from the pool ---------------------------------------------------------------
    def request_resync(self, channel: str, symbol: str, reason: str) -> str:
        """Resubscribe one symbol on this line (paced by the planner)."""
        if self._ws is None or not self._status_seen:
            return "not connected"  # the reconnect resubscribes everything anyway
        now = self._clock()
        result = self.planner.resync(channel, symbol, now)
        if result in ("started", "deferred"):
            self.merge.symbol_resubscribing(self.index, channel, symbol, now)
            self.resyncs[reason] += 1
            self._wake.set()
            log.info("resubscribing", upstream=self.name, channel=channel, symbol=symbol, reason=reason, when=result)
        return result

    def set_desired(self, desired: list[SubKey]) -> None:
        self.planner.set_desired(desired)
        self._wake.set()

    async def stop(self) -> None:
        self._stopping = True
        ws = self._ws
        if ws is not None:
            try:
                await asyncio.wait_for(ws.close(), 2.0)
            except Exception:
                ws.transport.abort()

    def _drain(self) -> None:
        pubs = self.merge.take()
        if pubs:
            try:
                self.publish(pubs)
            except Exception:
                log.exception("publish callback failed", upstream=self.name)

    # -- operator view -----------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "url": self.up.url,
            "egress": self.egress,
            "state": self.state,
            "system": self.system,
            "last_disconnect": self.last_disconnect,
            "attempts": self.attempts,
            "connects": self.connects,
            "disconnects": dict(self.disconnects),
            "failures": dict(self.failures),
            "budget_waits": self.budget_waits,
            "frames": self.frames,
            "bytes": self.bytes,
            "last_frame_time": self.last_frame_time,
            "connected_at": self.connected_at if self.down_since is None else None,
            "down_since": self.down_since,  # down and retrying (never gives up) since then
            "next_attempt_at": self.next_attempt_at,
            "subscriptions": self.planner.states(),
            "rejections": dict(self.rejections),
            "resyncs": dict(self.resyncs),
            "subscribe_requests": self.planner.requests_sent,
            "unknown_frames": self.unknown_frames,
            "line_events": dict(self.line_events),
        }
