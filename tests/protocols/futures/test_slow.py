"""The shared slow-client policy on /ws/v1: a futures reader that falls behind loses deltas, then
gets one fresh `book_snapshot` at the current seq, and its book ends equal to the capture's."""

from __future__ import annotations

import asyncio
import socket

from websockets.asyncio.client import connect

from relay.config import ServerConfig
from relay.core.outputs import MergeSettings
from relay.protocols.futures.endpoint import FuturesEndpoint
from relay.protocols.futures.merge import FuturesMerge
from relay.server.listener import LocalServer
from tests.protocols.futures.capture import ClientView, data_frames, frames, rebuild

PRODUCT = "PI_ETHUSD"


async def test_slow_futures_reader_gets_a_snapshot_reset_then_contiguous_seq():
    fr = frames()
    start = next(i for i, f in enumerate(fr) if f.startswith(b'{"feed":"book",'))
    merge = FuturesMerge(MergeSettings())
    up = merge.add_upstream("a")
    merge.upstream_up(up, 0.0)
    server = LocalServer(ServerConfig(client_buffer_bytes=64 * 1024), host="127.0.0.1", port=0)
    ep = FuturesEndpoint(merge, {"book": [PRODUCT]})
    server.add_endpoint(ep)
    await server.start()
    try:
        for raw in fr[:start]:
            merge.feed(up, raw, 0.0)
        merge.take()
        url = server.url_for("/ws/v1")
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
        fast, slow = ClientView(), ClientView()
        for ws, view in ((fast_ws, fast), (slow_ws, slow)):
            await ws.send('{"event":"subscribe","feed":"book","product_ids":["' + PRODUCT + '"]}')
            while not view.snapshots:
                raw = await asyncio.wait_for(ws.recv(), 5)
                raw = raw if isinstance(raw, bytes) else raw.encode()
                if not raw.startswith(b'{"event"'):
                    view.feed(raw)

        async def drain(ws, view: ClientView, quiet: float) -> None:
            loop = asyncio.get_running_loop()
            last = loop.time()
            while loop.time() - last < quiet:
                try:
                    raw = await asyncio.wait_for(ws.recv(), 0.2)
                except TimeoutError:
                    continue
                last = loop.time()
                raw = raw if isinstance(raw, bytes) else raw.encode()
                if not raw.startswith(b'{"event"'):
                    view.feed(raw)

        fast_task = asyncio.create_task(drain(fast_ws, fast, 1.0))
        for i, raw in enumerate(fr[start:]):  # `slow` is not reading meanwhile
            merge.feed(up, raw, 0.0)
            ep.publish(merge.take())
            if i % 50 == 0:
                await asyncio.sleep(0)
        assert server.stats()["book_resets"] >= 1
        await fast_task
        await drain(slow_ws, slow, 1.0)  # now `slow` reads everything
        ref = rebuild(data_frames())[PRODUCT]
        assert fast.seq_errors == [] and slow.seq_errors == []
        assert fast.snapshots == {PRODUCT: 1} and slow.snapshots[PRODUCT] >= 2  # the reset snapshot
        assert fast.books[PRODUCT] == ref and slow.books[PRODUCT] == ref
        assert slow.deltas < fast.deltas  # it really lost deltas, replaced by the snapshot
        await fast_ws.close()
        await slow_ws.close()
    finally:
        await server.stop()
