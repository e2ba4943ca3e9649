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
