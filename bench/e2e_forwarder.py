"""A do-nothing forwarder: the latency floor of any extra process hop on this machine.

Connects to one simulator line as a websocket client (raw socket, subscribes like a client),
accepts websocket clients itself, and writes every byte it receives from the line to every
client unchanged (server frames are unmasked, so the simulator's frames are valid frames from us
too). No parsing, no merge, one `transport.write` per client per read: what remains of the
relay's added latency after subtracting this is the relay's own work.
Usage: python bench/e2e_forwarder.py UPSTREAM_PORT SUBSCRIBE_JSON_LIST; prints {"port": ...}.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson

from bench.e2e_client import _masked

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC11CA5"


class Down(asyncio.Protocol):
    def __init__(self, clients: set) -> None:
        self.clients = clients
        self.head = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self in self.clients:
            return  # client frames (subscriptions) are ignored
        self.head += data
        if b"\r\n\r\n" not in self.head:
            return
        key = next(
            ln.split(b":", 1)[1].strip()
            for ln in self.head.split(b"\r\n")
            if ln.lower().startswith(b"sec-websocket-key:")
        )
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
        self.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"  # type: ignore[union-attr]
            b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        self.clients.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.clients.discard(self)


class Up(asyncio.Protocol):
    def __init__(self, clients: set, sub: list) -> None:
        self.clients = clients
        self.sub = sub
        self.upgraded = False
        self.head = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(
            f"GET /v2 HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"  # type: ignore[attr-defined]
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )

    def data_received(self, data: bytes) -> None:
        if not self.upgraded:
            self.head += data
            i = self.head.find(b"\r\n\r\n")
            if i < 0:
                return
            self.upgraded = True
            data = self.head[i + 4 :]
            for s in self.sub:
                self.transport.write(_masked(orjson.dumps(s)))  # type: ignore[attr-defined]
            if not data:
                return
        for c in self.clients:
            c.transport.write(data)


async def main(port: int, sub: list) -> None:
    loop = asyncio.get_running_loop()
    clients: set = set()
    server = await loop.create_server(lambda: Down(clients), "127.0.0.1", 0)
    await loop.create_connection(lambda: Up(clients, sub), "127.0.0.1", port)
    print(orjson.dumps({"port": server.sockets[0].getsockname()[1], "pid": os.getpid()}).decode(), flush=True)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()


if __name__ == "__main__":
    import uvloop

    uvloop.run(main(int(sys.argv[1]), orjson.loads(sys.argv[2])))
