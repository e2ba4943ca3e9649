"""Production runs on uvloop: the Sans-I/O client protocol works on its transports too."""

from __future__ import annotations

import asyncio

from relay.core.outputs import Publication
from tests.server.helpers import empty_update, open_slow, padded


def test_server_on_uvloop_serves_books_and_resets_a_slow_reader() -> None:
    import uvloop

    from relay.config import ServerConfig
    from relay.core.outputs import MergeSettings
    from relay.protocols.spot_v2.merge import V2Merge
    from tests.kit.paths import v2_wire_frames
    from tests.server.conftest import Client, build_relay, channels

    async def main():
        merge = V2Merge(MergeSettings(book_depth=100))
        relay = build_relay(ServerConfig(client_buffer_bytes=65536), merge, channels())
        server = relay.server
        await server.start()
        opened: list[Client] = []

        async def clients(url, **kw):
            c = await Client.open(url, **kw)
            opened.append(c)
            return c

        try:
            frames = v2_wire_frames()
            relay.feed(frames[0])
            fast = await clients(relay.url)
            fast.depth = 100
            slow = await open_slow(clients, relay)
            for c in (fast, slow):
                await c.recv()
                await c.send(
                    {"method": "subscribe", "params": {"channel": "book", "symbol": ["BTC/USD"], "depth": 100}}
                )
                await c.until(lambda m: m.get("type") == "snapshot")
            base = empty_update(relay)
            for _ in range(60):
                relay.publish([Publication("book", "BTC/USD", 100, padded(base, 20_000), False)])
                await asyncio.sleep(0.001)
            for raw in frames[1:100]:
                relay.feed(raw)
            await fast.barrier(timeout=20)
            await slow.barrier(timeout=20)
            return (
                type(asyncio.get_running_loop()).__module__,
                fast.checksum_bad,
                slow.checksum_bad,
                server.book_resets,
                slow.books["BTC/USD"].checksum == merge.books["BTC/USD"].pub.checksum,
            )
        finally:
            for c in opened:
                await c.ws.close()
            await server.stop()

    module, bad_fast, bad_slow, resets, same = uvloop.run(main())
    assert module.startswith("uvloop")
    assert bad_fast == 0 and bad_slow == 0 and resets >= 1 and same
