"""The README's nats-py consumer, run as written against a publishing relay: its book verifies."""

from __future__ import annotations

import re
from typing import Any

import pytest

from relay.sim import LineConfig, SimConfig
from tests.kit.inprocess import relay_on_sim, wait_for
from tests.kit.nats import nats_server
from tests.kit.paths import ROOT

pytestmark = pytest.mark.timeout(90)


def readme_consumer() -> str:
    text = (ROOT / "README.md").read_text()
    at = text.index("A consumer that keeps a verified BTC/USD book")
    block = re.search(r"```python\n(.*?)```", text[at:], re.S)
    assert block is not None
    return block.group(1)


async def test_the_readme_consumer_keeps_a_verified_book() -> None:
    code = readme_consumer()
    assert len(code.strip().splitlines()) <= 40
    namespace: dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    async with nats_server(jetstream=False) as server:
        sim = SimConfig(lines=[LineConfig(), LineConfig(latency=0.001)], symbols=["BTC/USD"], rate=150.0, seed=5)
        config = {
            "channels": {"book": {"symbols": ["BTC/USD"], "depth": 10}},
            "nats": {"servers": [server.url], "subject_prefix": "kraken.a"},
        }
        async with relay_on_sim(sim, config, lambda r: r.ready()[0]) as (relay, _sim):
            await wait_for(lambda: relay.nats is not None and relay.nats.stats()["connected"], 15, "NATS connected")
            report = await namespace["follow"](server.url, seconds=3.0)
    assert report["checksum_bad"] == 0
    assert report["checksums_ok"] >= 100
    assert report["snapshots"] == {"BTC/USD": 1}
