"""The pool against a tiny in-test Kraken (tests/upstream/fake_kraken.py) and the real merge."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from relay.protocols.spot_v2.plan import desired_from_channels
from relay.protocols.spot_v2.spec import SPOT_V2
from relay.upstream.pool import UpstreamPool
from tests.upstream.fake_kraken import FakeLine, Market
from tests.upstream.harness import PLANNER, ConnectProxy, Consumer, make_merge, small_config, until

SYMBOLS = ["BTC/USD", "ETH/USD"]


class Rig:
    def __init__(self, market: Market, lines: list[FakeLine], pool: UpstreamPool, consumer: Consumer) -> None:
        self.market, self.lines, self.pool, self.consumer = market, lines, pool, consumer
        self.merge = pool.merge

    def conn(self, i: int) -> Any:
        return self.pool.connections[i]

    async def all_live(self, timeout: float = 5.0) -> bool:
        return await until(lambda: all(c.state == "live" for c in self.pool.connections), timeout)


@contextlib.asynccontextmanager
async def rig(
    n: int = 2, hosts: list[str] | None = None, up_extra: list[dict] | None = None, **sections: Any
) -> AsyncIterator[Rig]:
    market = Market(SYMBOLS, interval=0.02)
    lines = [FakeLine(market, host=(hosts or ["127.0.0.1"] * n)[i]) for i in range(n)]
    for line in lines:
        await line.start()
    ups = [{"name": f"line{i}", "url": line.url, **((up_extra or [{}] * n)[i])} for i, line in enumerate(lines)]
    cfg = small_config(ups, SYMBOLS, **sections)
    merge = make_merge(cfg)
    loop = asyncio.get_running_loop()
    consumer = Consumer(SYMBOLS, loop.time)
    for s in SYMBOLS:
        merge.want_book_depth(s, 10)
    pool = UpstreamPool(cfg, merge, consumer, protocol=SPOT_V2, planner_options=PLANNER, stable_after=0.5)
    market.start()
    await pool.start()
    try:
        yield Rig(market, lines, pool, consumer)
    finally:
        await pool.stop()
        await market.stop()
        for line in lines:
            await line.stop()


def _book_subs(line: FakeLine, symbol: str) -> list[str]:
    return [
        r["method"]
        for r in line.requests
        if r["params"]["channel"] == "book" and symbol in r["params"].get("symbol", [])
    ]


async def test_two_lines_subscribe_and_publish_a_verified_feed() -> None:
    async with rig() as r:
        assert await r.all_live()
        assert await until(lambda: all(n > 20 for n in r.consumer.book_frames.values()))
        assert r.consumer.mismatches == [] and r.consumer.trade_errors == []
        for line in r.lines:
            subs = {(q["params"]["channel"], s) for q in line.requests for s in q["params"]["symbol"]}
            assert subs == {(ch, s) for ch in ("book", "trade") for s in SYMBOLS}
            book = next(q for q in line.requests if q["params"]["channel"] == "book")
            trade = next(q for q in line.requests if q["params"]["channel"] == "trade")
            assert book["params"]["depth"] == 10 and trade["params"]["snapshot"] is True
        st = r.pool.stats()
        up = st["upstreams"][0]
        assert up["state"] == "live" and up["connects"] == 1 and up["frames"] > 0 and up["bytes"] > 0
        assert st["symbols"]["BTC/USD"]["upstreams"] == {"line0": "valid", "line1": "valid"}
        assert up["symbols"] == {"BTC/USD": "valid", "ETH/USD": "valid"}
        assert up["subscriptions"]["book:BTC/USD:10"] == "active"


async def test_one_line_dropped_reconnects_and_restores_subscriptions_other_undisturbed() -> None:
    async with rig() as r:
        assert await r.all_live()
        before = [(q["method"], q["params"]["channel"], tuple(q["params"]["symbol"])) for q in r.lines[0].requests]
        await r.lines[0].close_all(1001, "CloudFlare WebSocket proxy restarting")
        assert await until(lambda: r.conn(0).connects == 2 and r.conn(0).state == "live")
        after = [(q["method"], q["params"]["channel"], tuple(q["params"]["symbol"])) for q in r.lines[0].requests]
        assert sorted(after[len(before) :]) == sorted(before)  # exactly the same subscriptions again
        assert r.conn(0).last_disconnect == "1001 CloudFlare WebSocket proxy restarting"
        assert r.conn(0).disconnects == {"1001": 1}  # bounded metric label: the code only
        assert r.conn(1).connects == 1 and not r.conn(1).disconnects  # the other line never noticed
        frames = dict(r.consumer.book_frames)
        assert await until(lambda: all(r.consumer.book_frames[s] > frames[s] + 10 for s in SYMBOLS))
        assert r.consumer.mismatches == [] and r.consumer.trade_errors == []


async def test_silent_connection_hits_the_frame_deadline_and_recovers() -> None:
    async with rig() as r:
        assert await r.all_live()
        r.lines[1].stall = True
        assert await until(lambda: r.conn(1).disconnects.get("timeout", 0) >= 1, timeout=3.0)
        r.lines[1].stall = False
        # a reconnect made during the stall got no status: it is dropped after handshake_timeout
        assert await until(lambda: r.conn(1).state == "live", timeout=5.0), r.conn(1).stats()
        assert r.conn(0).connects == 1
        assert r.consumer.mismatches == [] and r.consumer.trade_errors == []


async def test_connection_without_status_is_dropped() -> None:
    async with rig(n=1, reconnect={"handshake_timeout": 0.5}) as r:
        assert await r.all_live()
        r.lines[0].status_on_connect = False
        await r.lines[0].close_all()
        assert await until(lambda: r.conn(0).disconnects.get("no status", 0) >= 1, timeout=3.0)
        r.lines[0].status_on_connect = True
        assert await r.all_live()


async def test_own_pings_keep_the_connection_busy() -> None:
    async with rig(n=1) as r:
        assert await r.all_live()
        await asyncio.sleep(0.8)
        assert r.lines[0].pings >= 2  # ping_interval 0.25 s, we send nothing else once subscribed


async def test_rejected_symbol_is_retried_and_reported_without_blocking_others() -> None:
    async with rig(n=1) as r:
        r.lines[0].reject["ETH/USD"] = 4  # book + trade rejected twice each
        assert await until(lambda: "book:ETH/USD:10" in r.conn(0).rejections)
        assert "Currency pair not supported" in r.conn(0).rejections["book:ETH/USD:10"]
        assert await until(lambda: r.consumer.book_frames["BTC/USD"] > 5)  # others flow meanwhile
        assert await until(lambda: r.conn(0).planner.states().get("book:ETH/USD:10") == "active", timeout=5.0)
        assert await until(lambda: r.consumer.book_frames["ETH/USD"] > 5)
        assert len([m for m in _book_subs(r.lines[0], "ETH/USD") if m == "subscribe"]) >= 2
        assert r.conn(0).state == "live" and not r.conn(0).rejections


async def test_handshake_429_backs_off_to_max_delay_for_the_whole_address() -> None:
    async with rig(n=2) as r:
        assert await r.all_live()
        r.lines[0].http_status = 429
        await r.lines[0].close_all()
        assert await until(lambda: r.conn(0).failures.get("429", 0) >= 1, timeout=4.0)
        t429 = r.lines[0].connection_log[-1][0]
        await r.lines[1].close_all()  # the other line shares the address: it must wait too
        assert await until(lambda: r.conn(0).failures.get("429", 0) >= 2, timeout=4.0)
        refused = [t for t, _, outcome in r.lines[0].connection_log if outcome == "http 429"]
        assert refused[1] - refused[0] >= 0.4  # max_delay
        assert await until(lambda: r.conn(1).connects == 2, timeout=4.0)
        assert r.lines[1].connection_log[-1][0] - t429 >= 0.35
        r.lines[0].http_status = None
        assert await until(lambda: r.conn(0).state == "live", timeout=3.0)


async def test_refusal_storm_stays_within_attempt_budget() -> None:
    # both lines leave from the same address: one shared budget of 5 attempts per 1.5 s
    async with rig(budget={"attempts": 5, "window": 1.5}, reconnect={"initial_delay": 0.01, "max_delay": 0.05}) as r:
        assert await r.all_live()
        t0 = asyncio.get_running_loop().time()
        for line in r.lines:
            line.http_status = 503
            await line.close_all()
        await asyncio.sleep(3.0)
        times = sorted(t for line in r.lines for t, _, outcome in line.connection_log if outcome == "http 503")
        assert len(times) >= 5
        for i, t in enumerate(times):
            in_window = [u for u in times[: i + 1] if u > t - 1.5 + 0.01]
            assert len(in_window) <= 5
        assert r.pool.stats()["budgets"]["default"]["denied"] > 0
        for line in r.lines:
            line.http_status = None
        assert await r.all_live(timeout=4.0)
        assert t0 > 0


async def test_both_lines_down_then_back_resume_with_fresh_valid_book() -> None:
    async with rig() as r:
        assert await r.all_live()
        for line in r.lines:
            line.http_status = 503
            await line.close_all()
        assert await until(lambda: all(c.state != "live" for c in r.pool.connections))
        assert await until(lambda: r.merge.symbol_state("BTC/USD")["book"] != "ok")
        await asyncio.sleep(1.0)
        snaps = dict(r.consumer.snapshots)
        for line in r.lines:
            line.http_status = None
        assert await r.all_live(timeout=4.0)
        assert await until(lambda: all(r.consumer.snapshots[s] > snaps[s] for s in SYMBOLS))
        frames = dict(r.consumer.book_frames)
        assert await until(lambda: all(r.consumer.book_frames[s] > frames[s] + 10 for s in SYMBOLS))
        assert r.consumer.mismatches == []
        assert r.merge.symbol_state("BTC/USD")["book"] == "ok"


async def test_checksum_mismatch_resubscribes_only_that_symbol_on_that_line() -> None:
    async with rig() as r:
        assert await r.all_live()
        r.lines[0].corrupt.add("BTC/USD")
        assert await until(lambda: "unsubscribe" in _book_subs(r.lines[0], "BTC/USD"))
        await asyncio.sleep(0.5)
        r.lines[0].corrupt.clear()
        assert _book_subs(r.lines[0], "ETH/USD") == ["subscribe"]
        assert _book_subs(r.lines[1], "BTC/USD") == ["subscribe"]
        assert r.conn(0).connects == 1  # no reconnect for a bad symbol
        assert r.conn(0).resyncs.get("checksum", 0) >= 1
        assert await until(lambda: r.merge.symbol_state("BTC/USD")["upstreams"]["line0"] == "valid", timeout=4.0)
        assert r.consumer.mismatches == [] and r.consumer.trade_errors == []


async def test_silent_symbol_is_resubscribed_on_that_line_only() -> None:
    async with rig() as r:
        assert await r.all_live()
        r.lines[1].silent.add("ETH/USD")
        assert await until(lambda: "unsubscribe" in _book_subs(r.lines[1], "ETH/USD"), timeout=3.0)
        r.lines[1].silent.clear()
        assert "unsubscribe" not in _book_subs(r.lines[1], "BTC/USD")
        assert "unsubscribe" not in _book_subs(r.lines[0], "ETH/USD")
        assert r.conn(1).resyncs.get("stale", 0) >= 1 and r.conn(1).connects == 1


async def test_maintenance_line_serves_nothing_others_carry_on() -> None:
    async with rig() as r:
        assert await r.all_live()
        r.lines[0].set_status("maintenance")
        assert await until(lambda: r.conn(0).state == "maintenance")
        assert r.merge.symbol_state("BTC/USD")["upstreams"]["line0"] == "maintenance"
        frames = r.consumer.book_frames["BTC/USD"]
        assert await until(lambda: r.consumer.book_frames["BTC/USD"] > frames + 10)
        r.lines[0].set_status("online")
        assert await until(lambda: r.conn(0).state == "live")
        r.lines[1].set_status("maintenance")
        assert await until(lambda: r.conn(1).state == "maintenance")
        await r.lines[1].close_all(1013, "Market data unavailable")
        assert await until(lambda: r.conn(1).next_attempt_at is not None)
        # while the line reports maintenance, attempts are >= maintenance_delay (5 s) apart
        assert r.conn(1).next_attempt_at - asyncio.get_running_loop().time() >= 4.5
        assert r.conn(1).state == "maintenance" and r.conn(1).stats()["down_since"] is not None
        assert await until(lambda: r.merge.symbol_state("BTC/USD")["upstreams"]["line0"] == "valid", timeout=3.0)
        assert r.consumer.mismatches == []


async def test_source_address_is_used() -> None:
    async with rig(hosts=["127.0.0.1", "127.0.0.1"], up_extra=[{"source_address": "127.0.0.2"}, {}]) as r:
        assert await r.all_live()
        assert {ip for _, ip, _ in r.lines[0].connection_log} == {"127.0.0.2"}
        assert {ip for _, ip, _ in r.lines[1].connection_log} == {"127.0.0.1"}
        assert r.conn(0).egress == "127.0.0.2" and r.conn(1).egress == "default"


async def test_http_connect_proxy_is_honoured() -> None:
    proxy = ConnectProxy()
    await proxy.start()
    try:
        async with rig(n=1, up_extra=[{"proxy": proxy.url}]) as r:
            assert await r.all_live()
            assert len(proxy.connects) == 1
            await r.lines[0].close_all()
            assert await until(lambda: r.conn(0).connects == 2 and r.conn(0).state == "live")
            assert len(proxy.connects) == 2
            assert r.conn(0).egress.startswith("proxy:127.0.0.1:")
    finally:
        await proxy.stop()


async def test_socks5_proxy_with_source_address() -> None:
    proxy = ConnectProxy(socks=True)
    await proxy.start()
    try:
        async with rig(n=1, up_extra=[{"proxy": proxy.url, "source_address": "127.0.0.2"}]) as r:
            assert await r.all_live()
            assert len(proxy.connects) == 1
            assert proxy.peers == ["127.0.0.2"]  # the source address applies to the proxy hop
            assert {ip for _, ip, _ in r.lines[0].connection_log} == {"127.0.0.1"}  # Kraken sees the proxy
    finally:
        await proxy.stop()


async def test_http_proxy_with_source_address() -> None:
    proxy = ConnectProxy()
    await proxy.start()
    try:
        async with rig(n=1, up_extra=[{"proxy": proxy.url, "source_address": "127.0.0.2"}]) as r:
            assert await r.all_live()
            assert proxy.peers == ["127.0.0.2"] and len(proxy.connects) == 1
    finally:
        await proxy.stop()


async def test_reload_adds_and_removes_symbols() -> None:
    async with rig(n=1) as r:
        assert await r.all_live()
        ch = r.pool.config.channels.model_copy(
            update={"trade": r.pool.config.channels.trade.model_copy(update={"symbols": ["BTC/USD"]})}
        )
        r.pool.set_desired(desired_from_channels(ch))
        assert await until(
            lambda: any(q["method"] == "unsubscribe" and q["params"]["channel"] == "trade" for q in r.lines[0].requests)
        )
        unsub = [q for q in r.lines[0].requests if q["method"] == "unsubscribe"]
        assert [(q["params"]["channel"], q["params"]["symbol"]) for q in unsub] == [("trade", ["ETH/USD"])]
        assert "trade:ETH/USD" not in r.conn(0).planner.states()


async def test_unusable_source_address_keeps_retrying() -> None:
    async with rig(n=1, up_extra=[{"source_address": "192.0.2.77"}]) as r:
        assert await until(lambda: sum(r.conn(0).failures.values()) >= 2, timeout=3.0)
        assert r.conn(0).state in ("backoff", "connecting")
        assert "source address unavailable" in r.conn(0).failures


def test_runs_on_uvloop_with_source_address() -> None:
    """Production runs on uvloop: same pool, source address passed through to its transport."""
    import uvloop

    async def main() -> tuple[set[str], int, str]:
        async with rig(n=1, up_extra=[{"source_address": "127.0.0.2"}]) as r:
            ok = await r.all_live()
            await until(lambda: r.consumer.book_frames["BTC/USD"] > 5)
            assert ok
            return (
                {ip for _, ip, _ in r.lines[0].connection_log},
                r.consumer.book_frames["BTC/USD"],
                type(asyncio.get_running_loop()).__module__,
            )

    ips, frames, loop_module = uvloop.run(main())
    assert loop_module.startswith("uvloop")
    assert ips == {"127.0.0.2"} and frames > 5


async def test_lag_sampler_sees_exchange_timestamps() -> None:
    from relay.ops.metrics import LagSampler

    seen: list[float] = []
    market = Market(SYMBOLS, interval=0.02)
    line = FakeLine(market)
    await line.start()
    cfg = small_config([{"name": "a", "url": line.url}], SYMBOLS)
    merge = make_merge(cfg)
    pool = UpstreamPool(
        cfg, merge, lambda pubs: None, protocol=SPOT_V2, lag_sampler=lambda name: LagSampler(seen.append, every=4)
    )
    market.start()
    await pool.start()
    try:
        assert await until(lambda: len(seen) >= 5)
        assert all(0 <= s < 5 for s in seen)
    finally:
        await pool.stop()
        await market.stop()
        await line.stop()
