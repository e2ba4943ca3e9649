"""End to end over TLS: simulator v1 lines -> relay v1 stack -> a verifying v1 client on `/`.

One line is dropped, stalled and corrupted in turn; the client must never see a bad checksum,
never see a trade twice, and keep the channel ids it was given.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request

import orjson
from websockets.asyncio.client import connect

from tests.protocols.spot_v1.conftest import client_ssl, v1_rig
from tests.protocols.spot_v1.helpers import V1Checker


async def _until(cond, timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        if cond():
            return True
        await asyncio.sleep(0.05)
    return cond()


async def test_v1_clients_over_tls_through_line_faults(tls_cert):
    cert, key = tls_cert
    async with v1_rig(cert, key) as rig:
        relay = rig.relay
        assert rig.url.startswith("wss://127.0.0.1:") and rig.url.endswith("/")
        stack = relay.stack("v1")
        assert await _until(
            lambda: (
                stack.merge.book_snapshot("XBT/USD", 100) is not None
                and stack.merge.book_snapshot("ETH/USD", 100) is not None
            ),
            10,
        )
        checker = V1Checker()
        ids_seen: list[dict] = []
        async with connect(rig.url, ssl=client_ssl(cert), compression=None, max_size=None, open_timeout=5) as ws:
            hello = orjson.loads(await ws.recv())
            assert hello["event"] == "systemStatus" and hello["status"] == "online"
            for i, (name, extra) in enumerate(
                (("book", {"depth": 10}), ("book", {"depth": 100}), ("trade", {}), ("spread", {}), ("ticker", {}))
            ):
                await ws.send(
                    orjson.dumps(
                        {
                            "event": "subscribe",
                            "reqid": i,
                            "pair": ["XBT/USD", "ETH/USD"],
                            "subscription": {"name": name, **extra},
                        }
                    ).decode()
                )

            async def reader() -> None:
                async for msg in ws:
                    checker.feed(msg.encode() if isinstance(msg, str) else msg)
                    if len(checker.events) > 100_000:
                        return

            task = asyncio.create_task(reader())
            loop = asyncio.get_running_loop()
            await asyncio.sleep(1.0)
            ids_seen.append(dict(checker.channels))
            for kind, duration in (("drop", None), ("stall", 1.5), ("corrupt_checksum", None)):
                before = checker.verified
                if kind == "corrupt_checksum":
                    rig.sim.inject(0, kind, symbol="BTC/USD")
                    rig.sim.inject(1, kind, symbol="ETH/USD")
                else:
                    rig.sim.inject(0, kind, duration)
                await asyncio.sleep(2.0 if duration is None else duration + 1.0)
                assert checker.verified > before + 20, kind  # data kept flowing through the fault
            t_end = loop.time() + 1.0
            await asyncio.sleep(max(0.0, t_end - loop.time()))
            task.cancel()
            ids_seen.append(dict(checker.channels))
        assert checker.bad == []
        assert checker.verified > 300
        assert checker.snapshots == 4  # one per (pair, depth), no reset needed
        assert ids_seen[0] == ids_seen[1] and len(ids_seen[0]) == 10  # 2 pairs x 5 streams, stable ids
        keys = [tuple(t) for t in checker.trades]
        assert len(keys) > 10 and len(keys) == len(set(keys))  # no trade published twice
        spreads = [m for m in checker.other if m[-2] == "spread"]
        assert spreads and all(len(m[1]) == 5 for m in spreads)
        # the corrupted frames and the dropped line were noticed upstream, never shown downstream
        ustats = {s.name: s for s in stack.merge.upstream_stats}
        assert ustats["line0"].checksum_mismatches >= 1 and ustats["line1"].checksum_mismatches >= 1
        # ... and each line's resync of the corrupted pair completed (only that pair was resubscribed)
        for pair in ("XBT/USD", "ETH/USD"):
            assert await _until(
                lambda pair=pair: set(stack.merge.symbol_state(pair)["upstreams"].values()) == {"valid"}, 5
            ), pair
        assert {k for p in stack.pool.stats()["upstreams"] for k, v in p["resyncs"].items() if v} == {"checksum"}
        # readiness and metrics cover the v1 pairs, prefixed "v1:" (v1 and v2 both have ETH/USD)
        ok, detail = relay.ready()
        assert ok and {"v1:XBT/USD", "v1:ETH/USD"} <= set(detail)
        base = f"http://127.0.0.1:{relay.http.port}"
        body = await asyncio.to_thread(lambda: urllib.request.urlopen(base + "/readyz", timeout=5).read())
        assert "v1:XBT/USD" in json.dumps(json.loads(body))
        metrics = await asyncio.to_thread(lambda: urllib.request.urlopen(base + "/metrics", timeout=5).read().decode())
        assert 'kraken_relay_symbol_state{channel="book",state="ok",symbol="v1:XBT/USD"} 1.0' in metrics
        assert 'symbol="v1:ETH/USD"' in metrics and 'channel="spread"' in metrics


async def test_v1_maintenance_is_reported_and_books_recover():
    async with v1_rig(rate=200) as rig:
        stack = rig.relay.stack("v1")
        assert await _until(lambda: stack.merge.book_snapshot("XBT/USD", 100) is not None, 10)
        checker = V1Checker()
        async with connect(rig.url, compression=None, max_size=None, open_timeout=5) as ws:
            await ws.send(
                '{"event":"subscribe","reqid":1,"pair":["XBT/USD"],"subscription":{"name":"book","depth":10}}'
            )

            async def reader() -> None:
                async for msg in ws:
                    checker.feed(msg.encode() if isinstance(msg, str) else msg)

            task = asyncio.create_task(reader())
            await asyncio.sleep(0.5)
            rig.sim.inject("all", "maintenance", 1.0)
            await asyncio.sleep(1.5)
            before = checker.verified
            await asyncio.sleep(1.5)
            task.cancel()
        statuses = [e["status"] for e in checker.events if e.get("event") == "systemStatus"]
        assert statuses[0] == "online" and "maintenance" in statuses and statuses[-1] == "online"
        assert checker.bad == [] and checker.verified > before  # updates flow again after maintenance
