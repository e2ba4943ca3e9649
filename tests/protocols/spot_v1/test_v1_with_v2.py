"""v1 and v2 stacks side by side in one relay, on one listener: `/v2` and `/` from the same
simulated lines, each verified by its own client; metrics stay scrapeable although both
protocols have an `ETH/USD` (v1 rows are labelled `v1:ETH/USD`)."""

from __future__ import annotations

import asyncio

import orjson
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from relay.app import Relay
from relay.config import parse_config
from relay.sim import LineConfig, SimConfig, Simulator
from tests.protocols.spot_v1.helpers import V1Checker
from tests.server.conftest import Client


async def test_v1_and_v2_endpoints_side_by_side():
    cfg = SimConfig(symbols=["BTC/USD", "ETH/USD"], rate=300, seed=5, lines=[LineConfig(), LineConfig(latency=0.002)])
    async with Simulator(cfg) as sim:
        config = parse_config(
            {
                "upstreams": [{"name": f"v2-{i}", "url": u} for i, u in enumerate(sim.urls)]
                + [{"name": f"v1-{i}", "url": u, "protocol": "v1"} for i, u in enumerate(sim.v1_urls)],
                "channels": {"book": {"symbols": ["BTC/USD", "ETH/USD"], "depth": 25}, "instrument": False},
                "v1": {"channels": {"book": {"symbols": ["XBT/USD", "ETH/USD"], "depth": 25}}},
                "reconnect": {"initial_delay": 0.05, "max_delay": 0.4, "stagger": 0.02},
                "liveness": {"frame_timeout": 0.8, "ping_interval": 0.25, "stale_after": 2.0},
                "subscribe": {"requests_per_second": 50.0},
            },
            env={},
        )
        relay = Relay(config, server_port=0, http_port=0)
        await relay.start()
        try:
            loop = asyncio.get_running_loop()
            end = loop.time() + 10
            while loop.time() < end and not relay.ready()[0]:
                await asyncio.sleep(0.05)
            ok, detail = relay.ready()
            assert ok and set(detail) == {"BTC/USD", "ETH/USD", "v1:XBT/USD", "v1:ETH/USD"}
            v2 = await Client.open(relay.server.url)
            await v2.send({"method": "subscribe", "params": {"channel": "book", "symbol": ["ETH/USD"], "depth": 10}})
            v1 = V1Checker()
            async with connect(relay.server.url_for("/"), compression=None, open_timeout=5) as ws:
                await ws.send('{"event":"subscribe","pair":["ETH/USD"],"subscription":{"name":"book","depth":10}}')

                async def read_v1() -> None:
                    async for msg in ws:
                        v1.feed(msg.encode())

                task = asyncio.create_task(read_v1())
                end = loop.time() + 2.0
                while loop.time() < end:
                    try:
                        await v2.recv(max(0.01, end - loop.time()))
                    except TimeoutError:
                        break
                task.cancel()
            await v2.close()
            assert v2.checksum_bad == 0 and v2.checksums_ok > 20
            assert v1.bad == [] and v1.verified > 20
            asks, bids = v1.book("ETH/USD", 10)
            assert len(asks) == 10 and len(bids) == 10
            # every series is unique, so Prometheus accepts the scrape
            text = generate_latest(relay.metrics.registry).decode()
            seen = set()
            for fam in text_string_to_metric_families(text):
                for s in fam.samples:
                    key = (s.name, tuple(sorted(s.labels.items())))
                    assert key not in seen, key
                    seen.add(key)
            states = {dict(k[1])["symbol"] for k in seen if k[0] == "kraken_relay_symbol_state"}
            assert {"ETH/USD", "v1:ETH/USD", "v1:XBT/USD", "BTC/USD"} <= states
            assert orjson.loads(orjson.dumps(relay.stats()))["ready"] == 1
        finally:
            await relay.stop()
