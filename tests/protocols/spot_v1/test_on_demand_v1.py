"""Spot v1 on demand, end to end: with a warm set of one pair, a client subscribes every channel of
three other pairs (book at depth 10 and 1000, trade, ticker, spread, ohlc at every interval), is
answered within 2 s and gets verified data; an invalid pair is refused within 1 s with Kraken's
text; the on-demand subscriptions are released upstream after the last client left. And every
candle update the simulator sends reaches a relay client.
"""

from __future__ import annotations

from relay.core.spot import OHLC_INTERVALS
from tests.protocols.spot_v1.conftest import v1_rig
from tests.protocols.spot_v1.helpers import PlainClient, V1Checker, wait_for

OTHER = {"ETH/USD": "ETH/USD", "SOL/USD": "SOL/USD", "LTC/USD": "LTC/USD"}  # v1 name -> simulator's v2 name


def _requests() -> list[tuple[dict, list[str]]]:
    """(request, the channel names it subscribes), each for the three pairs at once."""
    pairs = list(OTHER)
    subs: list[tuple[dict, str]] = [
        ({"name": "book", "depth": 10}, "book-10"),
        ({"name": "book", "depth": 1000}, "book-1000"),
        ({"name": "trade"}, "trade"),
        ({"name": "ticker"}, "ticker"),
        ({"name": "spread"}, "spread"),
    ]
    subs += [({"name": "ohlc", "interval": i}, f"ohlc-{i}") for i in OHLC_INTERVALS]
    return [
        ({"event": "subscribe", "reqid": i + 1, "pair": pairs, "subscription": sub}, [name])
        for i, (sub, name) in enumerate(subs)
    ]


async def test_every_channel_of_other_pairs_on_demand_then_released():
    async with v1_rig(symbols=["BTC/USD", *OTHER.values()], warm=["XBT/USD"], dynamic={"release_after": 0.5}) as rig:
        stack = rig.relay.stack("v1")
        assert await wait_for(lambda: stack.merge.book_snapshot("XBT/USD", 10) is not None, 10)
        client = await PlainClient.connect(rig.url)
        try:
            assert (await client.events(1))[0]["status"] == "online"
            warm = {k.label() for k in stack.desired()}
            sent: dict[int, float] = {}
            reqs = _requests()
            for req, _ in reqs:
                sent[req["reqid"]] = await client.send(req)
            acks = await client.events(len(reqs) * len(OTHER), timeout=10.0)
            assert all(a["status"] == "subscribed" for a in acks), [a for a in acks if a["status"] != "subscribed"]
            got = {(a["channelName"], a["pair"]) for a in acks}
            assert got == {(name, p) for _, names in reqs for name in names for p in OTHER}
            for t, a in client.replies[1:]:
                assert t - sent[a["reqid"]] < 2.0, (a, t - sent[a["reqid"]])  # one upstream round trip

            # verified data on every stream (the deep books' checksums for their first updates)
            checker = V1Checker()
            fed = 0
            deep_frames: dict[int, int] = {}

            def feed() -> V1Checker:
                nonlocal fed
                for _, raw in client.frames[fed:]:
                    if raw.startswith(b"[") and b'"book-1000"' in raw[-40:]:
                        cid = int(raw[1 : raw.index(b",")])
                        deep_frames[cid] = deep_frames.get(cid, 0) + 1
                        if deep_frames[cid] > 60:
                            continue  # 1000-level books are slow to re-sort in Python: enough
                    checker.feed(raw)
                fed = len(client.frames)
                return checker

            streams = {(n, p) for p in OTHER for n in ("ticker", "spread", *(f"ohlc-{i}" for i in OHLC_INTERVALS))}

            def has_all() -> bool:
                c = feed()
                seen = {(m[-2], m[-1]) for m in c.other}
                traded = {t[-1] for _, t in client.data if t[-2] == "trade"}
                books = all(c.book(p, d) is not None for p in OTHER for d in (10, 1000))
                return books and traded >= set(OTHER) and seen >= streams and c.verified > 100

            assert await client.until(has_all, 15.0), (
                checker.verified,
                streams - {(m[-2], m[-1]) for m in checker.other},
            )
            assert checker.bad == []
            for p in OTHER:
                deep = checker.book(p, 1000)
                assert deep is not None and min(map(len, deep)) > 900  # really deeper than the held 100
            per_book = {checker.channels[cid]: 0 for cid in checker.books}
            assert set(per_book) == {(f"book-{d}", p) for p in OTHER for d in (10, 1000)}

            # an invalid pair: refused with Kraken's text (a malformed one at once, an unlisted one
            # after one upstream round trip)
            n = len(client.replies)
            t0 = await client.send(
                {"event": "subscribe", "reqid": 99, "pair": ["FOO/USD"], "subscription": {"name": "ticker"}}
            )
            err = (await client.events(1, timeout=5.0))[0]
            assert err["status"] == "error" and err["errorMessage"] == "Currency pair not supported FOO/USD"
            assert client.replies[n][0] - t0 < 1.0
            t0 = await client.send(
                {"event": "subscribe", "reqid": 98, "pair": ["FOOUSD"], "subscription": {"name": "ticker"}}
            )
            err = (await client.events(1, timeout=5.0))[0]
            assert err["errorMessage"] == "Currency pair not in ISO 4217-A3 format FOOUSD"
            assert client.replies[n + 1][0] - t0 < 1.0
            demanded = {k.label() for k in stack.desired()} - warm
            assert {f"ticker:{p}" for p in OTHER} <= demanded and not any("FOO" in k for k in demanded)
        finally:
            await client.close()

        # released upstream after the last client left: the relay's desired set and the simulator
        def released() -> bool:
            on_sim = {k for line in rig.sim.lines for k in line.index if k[1] in OTHER.values()}
            return {k.label() for k in stack.desired()} == warm and not on_sim

        assert await wait_for(released, 10.0), {k.label() for k in stack.desired()} - warm


async def test_every_ohlc_update_the_simulator_sends_reaches_the_client():
    async with v1_rig(symbols=["BTC/USD", "ETH/USD"], warm=["XBT/USD"], rate=300.0) as rig:
        stack = rig.relay.stack("v1")
        assert await wait_for(lambda: stack.merge.ohlc_snapshot("XBT/USD", 1) is not None, 10)
        relay = await PlainClient.connect(rig.url)
        sim = await PlainClient.connect(rig.sim.v1_urls[0])
        try:
            for c in (relay, sim):
                await c.events(1)
                await c.send({"event": "subscribe", "reqid": 1, "pair": ["XBT/USD"], "subscription": {"name": "ohlc"}})
                assert (await c.events(1))[0]["status"] == "subscribed"

            def candles(c: PlainClient) -> list[list]:
                return [d[1] for _, d in c.data if d[-2] == "ohlc-1"]

            # the simulator's own stream (after its first message, the last candle): 30 updates
            assert await sim.until(lambda: len(candles(sim)) > 30, 20.0), len(candles(sim))
            want = candles(sim)[1:31]
            assert await relay.until(lambda: all(u in candles(relay) for u in want), 10.0)
            got = candles(relay)
            at = [got.index(u) for u in want]
            assert at == sorted(at)  # in the simulator's order
            # the candle's `time` is its last update's, before `endTime`, and it moves
            for row in want:
                assert float(row[0]) < float(row[1])
            assert len({row[0] for row in want}) > 1
        finally:
            await relay.close()
            await sim.close()


async def test_status_changes_keep_the_client_connection_id_and_krakens_version():
    async with v1_rig(lines=1, warm=["XBT/USD"]) as rig:
        stack = rig.relay.stack("v1")
        assert await wait_for(lambda: stack.merge.system_status() == "online", 10)
        a, b = await PlainClient.connect(rig.url), await PlainClient.connect(rig.url)
        try:
            hello_a, hello_b = (await a.events(1))[0], (await b.events(1))[0]
            assert (
                hello_a["connectionID"] != hello_b["connectionID"]
                and min(hello_a["connectionID"], hello_b["connectionID"]) > 0
            )
            rig.sim.inject(0, "maintenance", 1.0)
            for c, hello in ((a, hello_a), (b, hello_b)):
                change = (await c.events(1, timeout=10.0))[0]
                assert change == {**hello, "status": "maintenance"}  # its own id; the engine's version
                back = (await c.events(1, timeout=10.0))[0]
                assert back == hello
        finally:
            await a.close()
            await b.close()
