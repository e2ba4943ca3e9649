"""The v2 endpoint's slow-client policy serves v1 clients too: a reader that falls behind loses
book updates, then gets a fresh snapshot (with the relay's channel id) and a valid book."""

from __future__ import annotations

import asyncio
import socket

import orjson
from websockets.asyncio.client import connect

from relay.config import ServerConfig
from relay.core.outputs import MergeSettings, Publication
from relay.protocols.spot_v1.endpoint import V1Endpoint
from relay.protocols.spot_v1.merge import V1Merge
from relay.server.listener import LocalServer
from tests.protocols.spot_v1.helpers import V1Checker, sdk_frames


async def test_slow_v1_reader_gets_a_snapshot_reset_and_a_valid_book():
    frames = sdk_frames()
    merge = V1Merge(MergeSettings(book_depth=10))
    up = merge.add_upstream("a")
    server = LocalServer(ServerConfig(client_buffer_bytes=64 * 1024), host="127.0.0.1", port=0)
    ep = V1Endpoint(merge, {"book": ["XBT/USD"]}, 10)
    server.add_endpoint(ep)
    await server.start()
    try:
        for raw in frames[:200]:
            merge.feed(up, raw, 0.0)
        merge.take()
        url = server.url_for("/")
        fast_ws = await connect(url, compression=None, max_size=None, open_timeout=5)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
        slow_ws = await connect(url, sock=sock, compression=None, max_size=None, max_queue=1, open_timeout=5)
        local = sock.getsockname()[1]
        for conn in server.open_clients:
            if conn.transport.get_extra_info("peername")[1] == local:
                conn.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        sub = '{"event":"subscribe","reqid":1,"pair":["XBT/USD"],"subscription":{"name":"book","depth":10}}'
        fast, slow = V1Checker(), V1Checker()
        for ws, chk in ((fast_ws, fast), (slow_ws, slow)):
            await ws.send(sub)
            while chk.snapshots == 0:
                chk.feed((await asyncio.wait_for(ws.recv(), 5)).encode())

        async def drain(ws, chk, quiet: float) -> None:
            """Read until no data frame (heartbeats do not count) came for `quiet` seconds."""
            loop = asyncio.get_running_loop()
            last = loop.time()
            while loop.time() - last < quiet:
                try:
                    msg = await asyncio.wait_for(ws.recv(), 0.2)
                except TimeoutError:
                    continue
                if msg != '{"event":"heartbeat"}':
                    last = loop.time()
                chk.feed(msg.encode() if isinstance(msg, str) else msg)

        fast_task = asyncio.create_task(drain(fast_ws, fast, 1.0))
        # `slow` stops reading; big (valid, empty) book updates fill its buffers
        for _ in range(120):
            pad = (
                b'[0,{"pad":"'
                + b"x" * 20_000
                + b'"},{"a":[],"c":"%d"},"book","XBT/USD"]' % merge.books["XBT/USD"].pub.checksum
            )
            ep.publish([Publication("book", "XBT/USD", 10, pad, False)])
            await asyncio.sleep(0.001)
        for raw in frames[200:400]:  # then real updates
            merge.feed(up, raw, 0.0)
            ep.publish(merge.take())
        assert server.stats()["book_resets"] >= 1
        await fast_task
        await drain(slow_ws, slow, 1.0)  # now `slow` reads everything
        assert fast.bad == [] and slow.bad == []
        assert fast.snapshots == 1 and slow.snapshots >= 2  # the reset snapshot
        assert slow.channels == fast.channels  # same relay channel id on the reset snapshot
        assert fast.book("XBT/USD", 10) == slow.book("XBT/USD", 10)
        await fast_ws.close()
        await slow_ws.close()
    finally:
        await server.stop()


async def test_v1_clients_get_the_v2_limits_as_v1_errors():
    merge = V1Merge(MergeSettings(book_depth=10))
    server = LocalServer(ServerConfig(max_requests_per_second=5.0, max_message_bytes=1024), host="127.0.0.1", port=0)
    server.add_endpoint(V1Endpoint(merge, {"book": ["XBT/USD"]}, 10))
    await server.start()
    try:
        async with connect(server.url_for("/"), compression=None, open_timeout=5) as ws:
            assert '"systemStatus"' in await ws.recv()
            for i in range(20):
                await ws.send(f'{{"event":"ping","reqid":{i}}}')
            await ws.send('{"event":"ping","reqid":99,"pad":"' + "x" * 2000 + '"}')
            await ws.send(b"\x00binary")
            replies = []
            for _ in range(22):
                replies.append(orjson.loads(await asyncio.wait_for(ws.recv(), 5)))
        pongs = [r for r in replies if r.get("event") == "pong"]
        errors = [r for r in replies if r.get("event") == "error"]
        assert 4 <= len(pongs) <= 7  # the burst, then the rate limit
        assert any(e["errorMessage"] == "Exceeded msg rate" and e.get("reqid") == 10 for e in errors)
        assert any(e["errorMessage"] in ("Message too large", "Exceeded msg rate") for e in errors)
        assert len(pongs) + len(errors) == 22
    finally:
        await server.stop()
