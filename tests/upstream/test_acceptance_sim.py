"""Acceptance: the pool + the real merge against the simulator (`relay.sim`), 2 lines.

Time is compressed (frame deadline 0.8 s, staleness 0.6 s, backoff 0.05..0.4 s) so each case
takes a few seconds. The consumer verifies every published book frame's checksum on its own
book and every trade's id; gaps are compared with the healthy line's own longest gap.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from relay.protocols.spot_v2.spec import SPOT_V2
from relay.sim import FAULT_KINDS, LineConfig, SimConfig, Simulator
from relay.upstream.pool import UpstreamPool
from tests.upstream.harness import PLANNER, ConnectProxy, Consumer, make_tap_merge, small_config, until

SYMBOLS = ["BTC/USD", "ETH/USD"]


class SimRig:
    def __init__(self, sim: Simulator, pool: UpstreamPool, consumer: Consumer) -> None:
        self.sim, self.pool, self.consumer = sim, pool, consumer
        self.merge = pool.merge
        self.loop = asyncio.get_running_loop()

    def conn(self, i: int) -> Any:
        return self.pool.connections[i]

    async def all_live(self, timeout: float = 6.0) -> bool:
        return await until(lambda: all(c.state == "live" for c in self.pool.connections), timeout)

    async def flowing(self, timeout: float = 6.0) -> bool:
        n = {s: self.consumer.book_frames[s] for s in SYMBOLS}
        return await until(lambda: all(self.consumer.book_frames[s] >= n[s] + 5 for s in SYMBOLS), timeout)

    def valid_everywhere(self) -> bool:
        return all(set(self.merge.symbol_state(s)["upstreams"].values()) == {"valid"} for s in SYMBOLS) and all(
            c.state == "live" for c in self.pool.connections
        )

    def book_requests(self, line: int, symbol: str, since: float = 0.0) -> list[str]:
        return [
            m["method"]
            for t, m in self.sim.requests[line]
            if t >= since
            and m.get("params", {}).get("channel") == "book"
            and symbol in m.get("params", {}).get("symbol", [])
        ]


@contextlib.asynccontextmanager
async def sim_rig(up_extra: list[dict] | None = None, **sections: Any) -> AsyncIterator[SimRig]:
    sim = Simulator(
        SimConfig(
            symbols=SYMBOLS,
            rate=150.0,
            trade_rate=20.0,
            seed=7,
            levels=100,
            heartbeat_interval=0.2,
            lines=[LineConfig(latency=0.0005, jitter=0.0005), LineConfig(latency=0.001, jitter=0.0005)],
        )
    )
    await sim.start()
    ups = [{"name": f"line{i}", "url": url, **((up_extra or [{}, {}])[i])} for i, url in enumerate(sim.urls)]
    sections.setdefault("channels", {"instrument": True})
    cfg = small_config(ups, SYMBOLS, **sections)
    merge = make_tap_merge(cfg, SYMBOLS)
    consumer = Consumer(SYMBOLS, asyncio.get_running_loop().time)
    for s in SYMBOLS:
        merge.want_book_depth(s, 10)
    pool = UpstreamPool(cfg, merge, consumer, protocol=SPOT_V2, planner_options=PLANNER, stable_after=0.5)
    await pool.start()
    try:
        yield SimRig(sim, pool, consumer)
    finally:
        await pool.stop()
        await sim.stop()


# (kind, params, duration, also drop the connection so the fault meets a reconnect)
FAULTS: list[tuple[str, dict, float | None, bool]] = [
    ("drop", {}, None, False),
    ("close_1001", {}, None, False),
    ("close_1013", {}, None, False),
    ("stall", {}, 1.2, False),
    ("silent_symbol", {"symbol": "ETH/USD"}, 1.2, False),
    ("corrupt_checksum", {"symbol": "BTC/USD"}, None, False),
    ("maintenance", {}, 1.2, False),
    ("cancel_only", {}, 1.2, False),
    ("refuse", {}, 1.2, True),
    ("slow", {"delay": 0.3}, 1.2, False),
    ("budget", {"limit": 1, "window": 30.0}, 1.2, True),
]


def test_every_simulator_fault_kind_is_covered() -> None:
    assert {f[0] for f in FAULTS} == set(FAULT_KINDS)


@pytest.mark.parametrize("kind,params,duration,drop", FAULTS, ids=[f[0] for f in FAULTS])
async def test_fault_on_one_line_is_invisible_downstream(
    kind: str, params: dict, duration: float | None, drop: bool
) -> None:
    async with sim_rig() as r:
        assert await r.all_live()
        assert await r.flowing()
        t0 = r.loop.time()
        r.sim.inject(1, kind, duration, **params)
        if drop:
            r.sim.inject(1, "drop")
        await asyncio.sleep(duration or 0.3)
        if kind == "budget":
            r.sim.clear(1)
        # the faulty line recovers by itself
        assert await until(r.valid_everywhere, timeout=6.0), (
            r.pool.stats()["upstreams"][1],
            [r.merge.symbol_state(s) for s in SYMBOLS],
        )
        assert await r.flowing()
        c = r.consumer
        assert c.mismatches == []
        assert c.trade_errors == []
        assert c.updates_before_snapshot == 0
        for s in SYMBOLS:
            healthy = r.merge.longest_gap(0, s, t0)
            assert healthy > 0
            assert c.longest_gap(s, t0) <= 2 * healthy + 0.02, (s, c.longest_gap(s, t0), healthy)
        assert r.conn(0).connects == 1 and not r.conn(0).disconnects  # the healthy line never noticed


def _subs(requests: list[tuple[float, dict]]) -> list[tuple]:
    """(method, channel, symbol, depth) of every (un)subscribe request, req_id aside."""
    out = []
    for _, m in requests:
        if m.get("method") in ("subscribe", "unsubscribe"):
            p = m["params"]
            out += [(m["method"], p["channel"], s, p.get("depth"), p.get("snapshot")) for s in p.get("symbol", [""])]
    return sorted(out)


async def test_both_lines_down_then_back() -> None:
    async with sim_rig() as r:
        assert await r.all_live()
        before = {i: _subs(r.sim.requests[i]) for i in range(2)}
        n_before = {i: len(r.sim.requests[i]) for i in range(2)}
        r.sim.inject("all", "refuse", 1.5)
        r.sim.inject("all", "drop")
        assert await until(lambda: r.merge.symbol_state("BTC/USD")["book"] != "ok")
        snaps = dict(r.consumer.snapshots)
        await asyncio.sleep(1.5)
        assert await r.all_live(timeout=6.0)
        for i in range(2):  # every subscription restored, exactly the same requests again
            assert _subs(r.sim.requests[i][n_before[i] :]) == before[i]
        assert await until(lambda: all(r.consumer.snapshots[s] > snaps[s] for s in SYMBOLS))
        assert await r.flowing()
        assert r.consumer.mismatches == [] and r.consumer.trade_errors == []
        assert all(r.merge.symbol_state(s)["book"] == "ok" for s in SYMBOLS)


async def test_silent_channel_detected_in_window_and_only_that_symbol_resubscribed() -> None:
    async with sim_rig() as r:
        assert await r.all_live()
        assert await r.flowing()
        wall0 = __import__("time").time()
        t0 = r.loop.time()
        r.sim.inject(1, "silent_symbol", 3.0, symbol="ETH/USD")
        assert await until(lambda: "unsubscribe" in r.book_requests(1, "ETH/USD", wall0), timeout=3.0)
        detected = r.loop.time() - t0
        stale_after = r.pool.config.liveness.stale_after
        assert detected <= stale_after + 0.5  # staleness window + tick + one round trip
        await asyncio.sleep(0.3)
        assert r.book_requests(1, "BTC/USD", wall0) == []
        assert r.book_requests(0, "ETH/USD", wall0) == [] and r.book_requests(0, "BTC/USD", wall0) == []
        other = [
            m
            for t, m in r.sim.requests[1]
            if t >= wall0 and m.get("method") != "ping" and m.get("params", {}).get("channel") != "book"
        ]
        assert other == []  # trades of ETH/USD still flow on that line: not touched
        assert r.conn(1).connects == 1
        r.sim.clear(1)
        assert await until(r.valid_everywhere, timeout=4.0)


async def test_refuse_storm_stays_within_budget() -> None:
    budget = {"attempts": 6, "window": 2.0}
    async with sim_rig(budget=budget, reconnect={"initial_delay": 0.01, "max_delay": 0.05, "stagger": 0.01}) as r:
        assert await r.all_live()
        wall0 = __import__("time").time()
        r.sim.inject("all", "refuse", 4.0)
        r.sim.inject("all", "drop")
        await asyncio.sleep(4.0)
        attempts = sorted(
            t for i in range(2) for t, _, outcome in r.sim.connection_log[i] if t >= wall0 and outcome == "refused"
        )
        assert len(attempts) >= 6  # it keeps trying
        assert r.conn(0).failures.get("handshake reset", 0) >= 1
        for i, t in enumerate(attempts):
            assert len([u for u in attempts[: i + 1] if u > t - budget["window"] + 0.02]) <= budget["attempts"]
        assert await r.all_live(timeout=6.0)
        assert r.consumer.mismatches == []


async def test_source_address_seen_by_the_simulator() -> None:
    async with sim_rig(up_extra=[{"source_address": "127.0.0.2"}, {"source_address": "127.0.0.1"}]) as r:
        assert await r.all_live()
        assert {ip for _, ip, _ in r.sim.connection_log[0]} == {"127.0.0.2"}
        assert {ip for _, ip, _ in r.sim.connection_log[1]} == {"127.0.0.1"}


async def test_proxy_url_is_honoured() -> None:
    proxy = ConnectProxy()
    await proxy.start()
    try:
        async with sim_rig(up_extra=[{"proxy": proxy.url}, {}]) as r:
            assert await r.all_live()
            assert await r.flowing()
            assert len(proxy.connects) == 1  # only line 0 goes through the proxy
            r.sim.inject(0, "drop")
            assert await until(lambda: r.conn(0).connects == 2 and r.conn(0).state == "live")
            assert len(proxy.connects) == 2
    finally:
        await proxy.stop()


async def test_every_channel_subscribes_and_every_ack_is_checked() -> None:
    channels = {
        "instrument": True,
        "ticker": {"symbols": SYMBOLS},
        "ohlc": {"symbols": ["BTC/USD"], "intervals": [1, 5]},
    }
    async with sim_rig(channels=channels) as r:
        assert await r.all_live()
        for c in r.pool.connections:
            states = c.planner.states()
            assert set(states.values()) == {"active"}
            assert {"instrument", "ticker:BTC/USD", "ohlc:BTC/USD:1", "ohlc:BTC/USD:5", "trade:ETH/USD"} <= set(states)
        assert await until(lambda: r.merge.ticker_snapshot("BTC/USD") is not None)
        assert await until(lambda: r.merge.instrument_snapshot() is not None)
        ohlc = [m for _, m in r.sim.requests[0] if m.get("params", {}).get("channel") == "ohlc"]
        assert sorted(m["params"]["interval"] for m in ohlc) == [1, 5]
