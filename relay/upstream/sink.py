"""A websockets client connection that hands each complete data message to a callback.

Why: `await ws.recv()` per frame costs an Assembler put/get, a future and a task wake-up per
message (~10 % of the relay's CPU while draining a burst, py-spy). Upstream frames need none of
that: they are fed to the merge in arrival order, synchronously, from the protocol callback.
With no sink attached the connection behaves exactly like websockets' `ClientConnection`.
Control frames (ping/pong/close), flow control and `max_size` stay websockets' business.
"""

from __future__ import annotations

from collections.abc import Callable

from websockets.asyncio.client import ClientConnection
from websockets.frames import Frame, Opcode

Sink = Callable[[bytes], None]


class SinkClientConnection(ClientConnection):
    """`ClientConnection` + `attach(sink)`: data messages go to `sink(raw)` instead of `recv()`."""

    sink: Sink | None = None
    _frag: list[bytes] | None = None

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

    def process_event(self, event: object) -> None:
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
            data = frame.data
            sink(data if type(data) is bytes else bytes(data))
        else:
            self._frag = [bytes(frame.data)]
