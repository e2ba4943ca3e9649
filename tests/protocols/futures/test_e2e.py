"""End to end: futures simulator lines -> Relay (futures stack on /ws/v1) -> futures clients."""

from __future__ import annotations

import asyncio

import pytest

from tests.protocols.futures.capture import CAPTURE, data_frames, rebuild
from tests.protocols.futures.harness import FuturesClient, futures_rig, until

pytestmark = [pytest.mark.slow]


async def test_real_capture_replays_through_the_relay_contiguous_and_exact():
    async with futures_rig(replay=str(CAPTURE), rate=4000.0, paused=True) as rig:
        client = await FuturesClient(rig.url).start()
        try:
            await client.send({"event": "subscribe", "feed": "book", "product_ids": rig.products})
            await client.send({"event": "subscribe", "feed": "trade", "product_ids": rig.products})
            assert await until(lambda: len(client.view.snapshots) == len(rig.products), 5.0)
            rig.sim.resume()
            assert await until(lambda: rig.sim.market.finished and client.view.deltas >= 7014, 15.0)
            await asyncio.sleep(0.2)
            ref = rebuild(data_frames())
            assert client.view.seq_errors == []
            assert client.view.deltas == 7014
            assert client.view.snapshots == {p: 1 for p in ref}
            assert {p: client.view.books[p] for p in ref} == ref
            assert len(client.view.trade_uids) == len(set(client.view.trade_uids))
            acks = [e for e in client.events if e.get("event") == "subscribed"]
            assert len(acks) == 2 * len(rig.products)
            assert client.closed is None
        finally:
            await client.stop()


FAULTS = [  # (line, kind, duration, params): every futures fault kind of the simulator
    (0, "drop", None, {}),
    (1, "close_1001", None, {}),
    (1, "stall", 1.0, {}),
    (0, "silent_symbol", 1.0, {"symbol": "PF_ETHUSD"}),
    (1, "skip", None, {"symbol": "PF_XBTUSD", "count": 3}),
    (0, "skip", None, {"symbol": "PF_ETHUSD", "count": 2}),
    (0, "slow", 1.0, {"delay": 0.05}),
    (1, "close_1013", None, {}),
    (1, "refuse", 1.0, {"then": "drop"}),
    (0, "budget", 1.0, {"limit": 0, "window": 30.0, "then": "drop"}),
]


def test_every_sim_fault_kind_is_covered():
    from relay.sim.futures import FUTURES_FAULTS

    assert {f[1] for f in FAULTS} == set(FUTURES_FAULTS)


async def test_each_fault_on_one_line_client_sees_no_gap_no_duplicate_no_disconnect():
    async with futures_rig(rate=300.0, trade_rate=30.0) as rig:
        client = await FuturesClient(rig.url).start()
        late = None
        try:
            await client.send({"event": "subscribe", "feed": "book", "product_ids": rig.products})
            await client.send({"event": "subscribe", "feed": "trade", "product_ids": rig.products})
            await client.send({"event": "subscribe", "feed": "heartbeat"})
            assert await until(lambda: len(client.view.snapshots) == len(rig.products), 5.0)

            def both_lines_valid() -> bool:
                """Both lines valid and proven in the published seq space (a reconnected line is
                "valid" with its own book before that, and could not yet cover the other's fault)."""
                return all(
                    set(rig.merge.symbol_state(p)["upstreams"].values()) == {"valid"}
                    and all(lb.aligned for lb in rig.merge.books[p].lines)
                    for p in rig.products
                )

            for line, kind, duration, params in FAULTS:
                # One line at a time: the next fault waits until the last one healed (a busy
                # machine heals slower than any fixed pause), so the other line always covers.
                assert await until(both_lines_valid, 20.0), (kind, [rig.merge.symbol_state(p) for p in rig.products])
                params = dict(params)
                then = params.pop("then", None)
                rig.sim.inject(line, kind, duration, **params)
                if then:  # the fault meets a reconnect
                    rig.sim.inject(line, then)
                await asyncio.sleep((duration or 0.0) + 0.8)
            assert rig.sim.lines[1].rejected >= 1 and rig.sim.lines[0].rejected >= 1
            late = await FuturesClient(rig.url).start()  # a late joiner after all that
            await late.send({"event": "subscribe", "feed": "book", "product_ids": rig.products})
            await asyncio.sleep(0.5)
            view = client.view
            assert view.seq_errors == []
            assert view.snapshots == {p: 1 for p in rig.products}  # never re-based: the other line covered
            assert view.deltas > 300
            assert len(view.trade_uids) == len(set(view.trade_uids)) and len(view.trade_uids) > 30
            assert client.closed is None
            # both books equal the market's own book at the client's seq, once the market is paused
            rig.sim.paused = True
            await asyncio.sleep(0.3)
            for p in rig.products:
                market = rig.sim.market.books[p]
                assert view.books[p]["seq"] == market.seq
                assert view.books[p]["bids"] == {lv.price: lv.qty for lv in market.bids.values()}
                assert view.books[p]["asks"] == {lv.price: lv.qty for lv in market.asks.values()}
                assert late.view.books[p] == view.books[p]
                assert late.view.seq_errors == []
            assert any(e.get("event") == "subscribed" and e.get("feed") == "heartbeat" for e in client.events)
            assert rig.merge.counters.line_gaps >= 2  # the skipped deltas came from the other line
        finally:
            await client.stop()
            if late is not None:
                await late.stop()


async def test_endpoint_errors_and_unsubscribe():
    async with futures_rig(rate=100.0) as rig:
        client = await FuturesClient(rig.url).start()
        try:
            await client.send({"event": "subscribe", "feed": "book", "product_ids": ["PF_NOPE"]})
            await client.send({"event": "subscribe", "feed": "nope", "product_ids": ["PF_XBTUSD"]})
            await client.ws.send("not json")
            await client.send({"event": "subscribe", "feed": "ticker_lite", "product_ids": ["pf_xbtusd"]})

            def errors() -> list[str]:
                return [e.get("message") for e in client.events if e.get("event") == "error"]

            ack = {"event": "subscribed", "feed": "ticker_lite", "product_ids": ["PF_XBTUSD"]}
            assert await until(lambda: len(errors()) >= 3 and ack in client.events, 3.0), client.events
            # PF_NOPE is not configured: Kraken (the simulator) is asked, its answer comes when it comes
            assert sorted(errors()) == ["Invalid feed", "Invalid product id", "Json Error"]
            got = []
            client.view.feed = got.append  # type: ignore[method-assign]  # raw data frames from now on
            assert await until(lambda: any(b'"feed":"ticker_lite"' in f for f in got), 3.0)
            await client.send({"event": "unsubscribe", "feed": "ticker_lite", "product_ids": ["PF_XBTUSD"]})
            assert await until(lambda: any(e.get("event") == "unsubscribed" for e in client.events), 3.0)
            assert client.events[0] == {"event": "info", "version": 1}
        finally:
            await client.stop()


async def test_readyz_metrics_and_relay_feed_cover_futures():
    async with futures_rig(rate=100.0) as rig:
        relay = rig.relay
        assert await until(lambda: relay.ready()[0], 5.0)
        ok, detail = relay.ready()
        assert set(detail) == set(rig.products) and all(d["ready"] for d in detail.values())
        text = relay.metrics.registry and _scrape(relay)
        assert 'symbol="PF_XBTUSD"' in text and 'upstream="fut1"' in text
        # exchange-to-receive lag is sampled from futures' numeric millisecond timestamps too
        assert await until(
            lambda: (
                'kraken_relay_upstream_lag_seconds_count{upstream="fut0"} 0.0' not in _scrape(relay)
                and 'kraken_relay_upstream_lag_seconds_count{upstream="fut0"}' in _scrape(relay)
            ),
            5.0,
        )
        stats = relay.stats()
        assert {s["symbol"] for s in stats["symbols"]} >= set(rig.products)
        client = await FuturesClient(rig.url).start()
        try:
            await client.send({"event": "subscribe", "feed": "relay", "product_ids": ["PF_XBTUSD"]})
            assert await until(lambda: client.view.frames >= 1, 3.0)
        finally:
            await client.stop()


def _scrape(relay) -> str:
    from prometheus_client import generate_latest

    return generate_latest(relay.metrics.registry).decode()
