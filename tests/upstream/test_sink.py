"""SinkClientConnection: data messages reach the sink in order (queued ones first, fragmented ones
reassembled), control frames keep working, and the session still ends with the close code."""

from __future__ import annotations

import asyncio

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

from relay.upstream.sink import SinkClientConnection


async def test_sink_gets_every_message_in_order_then_close_code() -> None:
    go = asyncio.Event()

    async def handler(ws) -> None:
        await ws.send("early-1")
        await ws.send("early-2")
        await go.wait()
        await ws.send("live-1")
        await ws.send(["frag-", "mented"])  # a fragmented text message
        await ws.send(b"binary")
        await ws.close(1001, "restarting")

    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        ws = await connect(f"ws://127.0.0.1:{port}", compression=None, create_connection=SinkClientConnection)
        assert isinstance(ws, SinkClientConnection)
        await asyncio.sleep(0.2)  # the early messages are now queued for recv()
        got: list[bytes] = []
        assert ws.attach(got.append)
        assert got == [b"early-1", b"early-2"]
        await ws.ping()  # pong handling still goes through websockets
        go.set()
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(ws.recv(decode=False), 5)
        assert got == [b"early-1", b"early-2", b"live-1", b"frag-mented", b"binary"]
        assert info.value.rcvd is not None and info.value.rcvd.code == 1001


async def test_without_sink_it_is_a_plain_client_connection() -> None:
    async def handler(ws) -> None:
        await ws.send("hello")
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}", compression=None, create_connection=SinkClientConnection) as ws:
            assert await asyncio.wait_for(ws.recv(), 5) == "hello"


def _frame(op: int, payload: bytes, fin: bool = True) -> bytes:
    n = len(payload)
    b0 = (0x80 if fin else 0) | op
    if n < 126:
        head = bytes([b0, n])
    elif n < 65536:
        head = bytes([b0, 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([b0, 127]) + n.to_bytes(8, "big")
    return head + payload


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 125, 4096, 1 << 20])
async def test_fast_path_frames_split_anywhere(chunk: int) -> None:
    """Server frames of every length encoding, fragmented, with a ping in between, fed to the
    connection in chunks of `chunk` bytes: the sink gets exactly the messages, in order."""
    pinged = asyncio.Event()

    async def handler(ws) -> None:
        await pinged.wait()
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0, compression=None, ping_interval=None) as server:
        port = server.sockets[0].getsockname()[1]
        ws = await connect(
            f"ws://127.0.0.1:{port}",
            compression=None,
            create_connection=SinkClientConnection,
            max_size=1 << 22,
            ping_interval=None,
        )
        got: list[bytes] = []
        assert ws.attach(got.append)
        big = bytes(range(256)) * 400  # 102 400 bytes: 64-bit length
        mid = b"m" * 300  # 16-bit length
        stream = (
            _frame(1, b"a")
            + _frame(1, mid)
            + _frame(1, b"frag-", fin=False)
            + _frame(9, b"ping!")  # a control frame inside a fragmented message
            + _frame(0, b"men", fin=False)
            + _frame(0, b"ted")
            + _frame(2, big)
            + _frame(1, b"")
        )
        for i in range(0, len(stream), chunk):
            ws.data_received(stream[i : i + chunk])
        assert got == [b"a", mid, b"frag-mented", big, b""]
        assert ws.protocol.state.name == "OPEN"
        pinged.set()
        await ws.close()


async def test_fast_path_hands_protocol_errors_to_websockets() -> None:
    async def handler(ws) -> None:
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        ws = await connect(
            f"ws://127.0.0.1:{port}", compression=None, create_connection=SinkClientConnection, max_size=1000
        )
        got: list[bytes] = []
        assert ws.attach(got.append)
        ws.data_received(_frame(1, b"ok") + _frame(1, b"x" * 2000))  # over max_size: 1009 from websockets
        assert got == [b"ok"]
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
        assert ws.protocol.state.name in ("CLOSING", "CLOSED")
