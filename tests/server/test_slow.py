"""Slow clients: book backlog replaced by a snapshot, 1008 "client too slow", others unaffected."""

from __future__ import annotations

import asyncio
import statistics
import time

from relay.core.outputs import Publication
from tests.kit.paths import v2_wire_frames
from tests.server.helpers import empty_update, open_slow, padded, trade_frame

SMALL = {"client_buffer_bytes": 64 * 1024}


async def subscribe_book(c, depth=100):
    await c.send({"method": "subscribe", "params": {"channel": "book", "symbol": ["BTC/USD"], "depth": depth}})
    await c.until(lambda m: m.get("type") == "snapshot")


async def test_slow_reader_gets_a_snapshot_reset_and_a_valid_book(make_relay, clients):
    relay = await make_relay(SMALL)
    frames = v2_wire_frames()
    relay.feed(frames[0])
    fast = await clients(relay.url)
    fast.depth = 100
    slow = await open_slow(clients, relay)
    for c in (fast, slow):
        await c.recv()
        await subscribe_book(c)
    # stop reading on `slow`: its client-side queue fills, then the socket buffers
    base = empty_update(relay)
    n = 120
    for _ in range(n):
        relay.publish([Publication("book", "BTC/USD", 100, padded(base, 20_000), False)])
        await asyncio.sleep(0.001)  # the fast reader keeps up
    for raw in frames[1:100]:  # then real updates
        relay.feed(raw)
    stats = relay.server.stats()
    assert stats["book_resets"] >= 1
    assert stats["max_client_buffered_bytes"] < 2 * 64 * 1024 + 30_000
    await fast.barrier(timeout=20)
    assert sum(1 for m in fast.log if m.get("channel") == "book" and "pad" in m["data"][0]) == n
    assert fast.checksum_bad == 0
    # now `slow` reads everything: old frames, then a fresh snapshot, then live updates
    await slow.barrier(timeout=20)
    snaps = [m for m in slow.log if m.get("type") == "snapshot"]
    assert len(snaps) >= 2
    assert slow.checksum_bad == 0
    assert slow.books["BTC/USD"].checksum == relay.merge.books["BTC/USD"].pub.checksum
    got = sum(1 for m in slow.log if m.get("channel") == "book" and "pad" in m["data"][0])
    assert got < n  # part of its backlog was replaced


async def test_reader_that_never_catches_up_is_closed_1008(make_relay, clients):
    relay = await make_relay(SMALL, slow_client_timeout=0.3, close_timeout=10)
    for tid in range(1, 3):
        relay.feed(trade_frame(tid))
    fast = await clients(relay.url)
    slow = await open_slow(clients, relay)
    for c in (fast, slow):
        await c.recv()
        await c.send({"method": "subscribe", "params": {"channel": "trade", "symbol": ["BTC/USD"]}})
        await c.recv()
    big = b'{"channel":"trade","type":"update","data":[],"pad":"' + b"y" * 20_000 + b'"}'
    peak = 0
    for _ in range(400):
        relay.publish([Publication("trade", "BTC/USD", 0, big, False)])
        peak = max(peak, relay.server.stats()["max_client_buffered_bytes"])
        await asyncio.sleep(0.001)
        if relay.server.stats()["slow_closes"]:
            break
    for _ in range(100):
        if relay.server.stats()["slow_closes"]:
            break
        await asyncio.sleep(0.02)
    assert relay.server.stats()["slow_closes"] == 1
    assert peak <= 2 * 64 * 1024 + 21_000  # bounded: closed at twice the budget
    await fast.barrier()
    # the slow client finally reads: its data, then the documented close code
    try:
        for _ in range(10_000):
            await slow.recv(timeout=5)
    except Exception:
        pass
    await asyncio.wait_for(slow.ws.wait_closed(), 10)
    assert slow.ws.close_code == 1008 and slow.ws.close_reason == "client too slow"


async def test_slow_client_does_not_delay_others(make_relay, clients):
    """p99 latency of fast readers with a stuck reader present vs. without (measured, loose bound)."""
    relay = await make_relay(SMALL, close_timeout=0.3)
    frames = v2_wire_frames()
    relay.feed(frames[0])
    base = empty_update(relay)
    fast = []
    for _ in range(3):
        c = await clients(relay.url)
        c.depth = 100
        await c.recv()
        await subscribe_book(c)
        fast.append(c)

    async def phase(seconds: float, rate: int) -> list[float]:
        lat: list[float] = []

        async def reader(c):
            while True:
                raw = await c.ws.recv(decode=False)
                if b'"sent":' in raw:
                    sent = float(raw[raw.index(b'"sent":') + 7 : raw.index(b"}]}")])
                    lat.append(time.perf_counter() - sent)
                if b'"stop"' in raw:
                    return

        tasks = [asyncio.create_task(reader(c)) for c in fast]
        t_end = time.perf_counter() + seconds
        while time.perf_counter() < t_end:
            relay.publish([Publication("book", "BTC/USD", 100, padded(base, 2000, time.perf_counter()), False)])
            await asyncio.sleep(1 / rate)
        relay.publish([Publication("book", "BTC/USD", 100, padded(base, 10, None)[:-3] + b',"stop":1}]}', False)])
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
        return lat

    before = await phase(0.8, 500)
    slow = await open_slow(clients, relay)
    slow.depth = 100
    await slow.recv()
    await subscribe_book(slow)
    p99 = lambda xs: statistics.quantiles(xs, n=100)[98]  # noqa: E731
    # The machine is shared with other test runs: up to 3 measurements with the stuck reader,
    # the best must be within 1 ms of the baseline.
    during = []
    for _ in range(3):
        during.append(p99(await phase(0.8, 500)))
        if during[-1] - p99(before) < 0.001:
            break
    print(
        f"fast readers p99: {p99(before) * 1e3:.3f} ms alone, {[round(d * 1e3, 3) for d in during]} ms with a "
        f"stuck reader; resets={relay.server.stats()['book_resets']}"
    )
    assert relay.server.stats()["book_resets"] >= 1
    assert min(during) - p99(before) < 0.001
