"""A websockets client connection that hands each complete data message to a callback.

Why: `await ws.recv()` per frame costs an Assembler put/get, a future and a task wake-up per
message (~10 % of the relay's CPU while draining a burst, py-spy). Upstream frames need none of
that: they are fed to the merge in arrival order, synchronously, from the protocol callback.
With no sink attached the connection behaves exactly like websockets' `ClientConnection`.
Control frames (ping/pong/close), flow control and `max_size` stay websockets' business.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.frames import Frame, Opcode
from websockets.protocol import State

Sink = Callable[[bytes], None]


class SinkClientConnection(ClientConnection):
    """`ClientConnection` + `attach(sink)`: data messages go to `sink(raw)` instead of `recv()`."""

    sink: Sink | None = None
    _frag: list[bytes] | None = None
    _frag_size = 0
    _buf: bytearray | None = None  # unparsed bytes (a partial frame) while the fast path runs
    _need = 0  # bytes `_buf` must hold before parsing is worth trying again

    def attach(self, sink: Sink) -> bool:
        """Deliver every later data message to `sink`; messages already queued for `recv()` go
        first, in order. False (nothing changed) if this websockets version hides its queue."""
        queue = getattr(getattr(self.recv_messages, "frames", None), "queue", None)
        if queue is None or getattr(self.recv_messages, "get_in_progress", True):
            return False
        self.sink = sink
        while queue:
            self._deliver(queue.popleft(), sink)
        resume = getattr(self.recv_messages, "maybe_resume", None)
        if resume is not None:
            resume()
        return True

    def data_received(self, data: bytes) -> None:
        """Fast path while a sink is attached and the connection is open: split server frames
        here (2-10 byte headers, unmasked) and hand data messages to the sink, ~3x cheaper than
        websockets' generator parser. Control frames (ping, pong, close) are passed whole to
        websockets, and anything unusual (reserved bits, a mask, an unknown opcode, an
        oversized frame) from that byte on, so its own checks close the connection."""
        buf = self._buf
        if self.sink is None or self.protocol.state is not State.OPEN:
            if buf:  # the fast path kept a partial frame: websockets continues from it
                self._buf = None
                data = bytes(buf) + data
            super().data_received(data)
            return
        if buf:
            buf += data
            if len(buf) < self._need:
                return
            data = bytes(buf)
            self._buf = None
        n = len(data)
        pos = 0
        max_size = getattr(self.protocol, "max_message_size", None)  # websockets 15+; None: no cap here
        self._need = 2
        while n - pos >= 2:
            b0 = data[pos]
            b1 = data[pos + 1]
            op = b0 & 0x0F
            length = b1 & 0x7F
            head = 2
            if length == 126:
                if n - pos < 4:
                    self._need = 4
                    break
                length = int.from_bytes(data[pos + 2 : pos + 4], "big")
                head = 4
            elif length == 127:
                if n - pos < 10:
                    self._need = 10
                    break
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                head = 10
            if (
                b1 & 0x80
                or b0 & 0x70
                or op > 2
                and (op < 8 or op > 10 or length > 125 or not b0 & 0x80)
                or (max_size is not None and length > max_size)
            ):
                super().data_received(data[pos:])  # websockets fails the connection properly
                return
            end = pos + head + length
            if end > n:
                self._need = end - pos
                break
            if op >= 8:  # a complete control frame: websockets answers pings, acks pongs, closes
                super().data_received(data[pos:end])
                pos = end
                if self.protocol.state is not State.OPEN or self.sink is None:
                    if pos < n:
                        super().data_received(data[pos:])
                    return
                continue
            payload = data[pos + head : end]
            pos = end
            sink = self.sink
            if op == 0:
                frag = self._frag
                if frag is None:
                    self.transport.abort()  # continuation without a start: protocol error
                    return
                frag.append(payload)
                self._frag_size += length
                if max_size is not None and self._frag_size > max_size:
                    self.transport.abort()  # fragmented message over max_size
                    return
                if b0 & 0x80:
                    self._frag = None
                    sink(b"".join(frag))
            elif b0 & 0x80:
                if self._frag is not None:
                    self.transport.abort()  # a new message inside a fragmented one
                    return
                sink(payload)
            else:
                self._frag, self._frag_size = [payload], length
            if self.sink is None:  # detached by the callback: websockets takes the rest
                if pos < n:
                    super().data_received(data[pos:])
                return
            self._need = 2
        if pos < n:
            self._buf = bytearray(data[pos:])

    def process_event(self, event: Any) -> None:  # Request | Response | Frame
        sink = self.sink
        if sink is None or self.response is None or not isinstance(event, Frame):
            super().process_event(event)  # handshake, or no sink: websockets' own path
            return
        if event.opcode is Opcode.TEXT or event.opcode is Opcode.BINARY or event.opcode is Opcode.CONT:
            self._deliver(event, sink)
        else:
            super().process_event(event)  # pong acknowledgement

    def _deliver(self, frame: Frame, sink: Sink) -> None:
        if frame.opcode is Opcode.CONT:
            if self._frag is None:
                return
            self._frag.append(bytes(frame.data))
            if frame.fin:
                data, self._frag = b"".join(self._frag), None
                sink(data)
            return
        if frame.fin:
            payload = frame.data
            sink(payload if isinstance(payload, bytes) else bytes(payload))
        else:
            self._frag = [bytes(frame.data)]
