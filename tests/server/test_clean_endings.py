"""Clean endings: a reader closed as too slow still receives its 1008 close frame (sent ahead of
its backlog) when it reads again, then the socket is closed; invalid UTF-8 closes with 1007."""

from __future__ import annotations

import asyncio
import socket
import time

from websockets.client import ClientProtocol
from websockets.frames import Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from relay.config import ServerConfig
from relay.core.outputs import MergeSettings, Publication
from relay.protocols.spot_v2.merge import V2Merge
from tests.server.conftest import build_relay, channels

MiB = 1024 * 1024


class RawClient:
    """A websocket client on a raw socket with a tiny receive buffer, reading only when told."""

    def __init__(self, sock: socket.socket, proto: ClientProtocol) -> None:
        self.sock, self.proto = sock, proto
        self.loop = asyncio.get_running_loop()
        self.received = 0  # bytes read off the socket
        self.texts: list[bytes] = []
        self.close_code: int | None = None
        self.close_reason = ""
        self.bytes_before_close = 0

    @classmethod
    async def open(cls, relay) -> RawClient:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", relay.server.port))
        local = sock.getsockname()[1]
        for _ in range(500):  # the relay's side of it: a small kernel send buffer too
            mine = [c for c in relay.server.connections if c.transport.get_extra_info("peername")[1] == local]
            if mine:
                mine[0].transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the relay did not accept the connection")
        proto = ClientProtocol(parse_uri(relay.url), max_size=None)
        proto.send_request(proto.connect())
        c = cls(sock, proto)
        await c.send_pending()
        while not any(isinstance(e, Response) for e in await asyncio.wait_for(c.read(), 5)):
            pass
        return c

    async def send_pending(self) -> None:
        for chunk in self.proto.data_to_send():
            if chunk:
                await self.loop.sock_sendall(self.sock, chunk)

    async def send_text(self, text: bytes) -> None:
        self.proto.send_text(text)
        await self.send_pending()

    async def read(self, size: int = 65536) -> list:
        data = await self.loop.sock_recv(self.sock, size)
        if not data:
            raise EOFError
        self.received += len(data)
        self.proto.receive_data(data)
        events = self.proto.events_received()
        for e in events:
            if getattr(e, "opcode", None) is Opcode.TEXT:
                self.texts.append(e.data)
            if getattr(e, "opcode", None) is Opcode.CLOSE and self.close_code is None:
                rcvd = self.proto.close_rcvd
                self.close_code = rcvd.code if rcvd else None
                self.close_reason = rcvd.reason if rcvd else ""
                self.bytes_before_close = self.received
        return events

    async def texts_seen(self, n: int, timeout: float = 5.0) -> None:
        while len(self.texts) < n:
            await asyncio.wait_for(self.read(), timeout)


async def wait_for(pred, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not met"
        await asyncio.sleep(0.005)


CLOSE_TIMEOUT = 2.0
SLOW = {"client_buffer_bytes": MiB}


async def slow_reader_reads_again(relay) -> None:
    """A client stops reading until it is closed as slow, then reads again, slowly (~500 KB/s):
    the close frame comes right behind the little the transport still held, not behind the
    2 MiB backlog it was closed at (which it could not read before the socket is closed)."""
    c = await RawClient.open(relay)
    await c.texts_seen(1)  # status
    await c.send_text(b'{"method":"subscribe","params":{"channel":"trade","symbol":["BTC/USD"]}}')
    await c.texts_seen(2)  # ack
    big = b'{"channel":"trade","type":"update","data":[],"pad":"' + b"y" * 20_000 + b'"}'
    server = relay.server
    for _ in range(1000):  # it stops reading: trades (never dropped) pile up to twice its budget
        relay.publish([Publication("trade", "BTC/USD", 0, big, False)])
        await asyncio.sleep(0.001)
        if server.slow_closes:
            break
    assert server.slow_closes == 1
    t0 = time.monotonic()
    eof_at = None
    try:
        while time.monotonic() - t0 < CLOSE_TIMEOUT + 3:
            before = c.received
            await asyncio.wait_for(c.read(), CLOSE_TIMEOUT + 3)
            if c.close_code is None:
                await asyncio.sleep((c.received - before) / 500e3)
    except (EOFError, ConnectionResetError):
        eof_at = time.monotonic() - t0
    finally:
        c.sock.close()
    print(f"close frame after {c.bytes_before_close} bytes read; socket closed {eof_at} s after reading resumed")
    assert (c.close_code, c.close_reason) == (1008, "client too slow")
    assert c.bytes_before_close < 512 * 1024  # not behind the 2 MiB the client was closed at
    assert eof_at is not None and eof_at < CLOSE_TIMEOUT + 1.0  # then closed after the grace


async def test_slow_reader_that_reads_again_gets_1008_then_the_socket_closes(make_relay):
    relay = await make_relay(SLOW, slow_client_timeout=30, close_timeout=CLOSE_TIMEOUT)
    await slow_reader_reads_again(relay)


def test_slow_reader_gets_1008_on_uvloop() -> None:
    """The same on uvloop (production), whose transports buffer and pause differently."""
    import uvloop

    async def main() -> None:
        relay = build_relay(
            ServerConfig(**SLOW),
            V2Merge(MergeSettings(book_depth=100)),
            channels(),
            slow_client_timeout=30,
            close_timeout=CLOSE_TIMEOUT,
        )
        await relay.server.start()
        try:
            await slow_reader_reads_again(relay)
        finally:
            await relay.server.stop()

    uvloop.run(main())


async def test_invalid_utf8_closes_with_1007(make_relay, clients):
    relay = await make_relay()
    c = await clients(relay.url)
    await c.recv()
    await c.ws.send(b'{"method":"ping","req_id":1,"x":"\xff\xfe"}', text=True)
    await asyncio.wait_for(c.ws.wait_closed(), 5)
    assert c.ws.close_code == 1007
    other = await clients(relay.url)  # fragmented: the whole message is checked, not each piece
    await other.recv()
    await other.ws.send([b'{"method":"ping","req_id":3,"x":"\xe2', b'\x82\xac"}'], text=True)  # a split euro sign
    assert (await other.recv())["req_id"] == 3
    await other.ws.send([b'{"method":"ping","x":"\xe2', b'\x82"}'], text=True)
    await asyncio.wait_for(other.ws.wait_closed(), 5)
    assert other.ws.close_code == 1007
    ok = await clients(relay.url)  # valid multi-byte text is fine
    await ok.recv()
    await ok.ws.send('{"method":"ping","req_id":2,"x":"€"}')
    assert (await ok.recv())["method"] == "pong"
    assert relay.server.stats()["refused"]["invalid_utf8"] == 2
