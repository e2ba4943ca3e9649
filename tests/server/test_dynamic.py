"""Dynamic subscriptions: the relay asks the upstream side for extra symbols on demand."""

from __future__ import annotations

import asyncio

from tests.server.helpers import ticker_frame


class FakePool:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []

    def on_demand(self, channel: str, symbol: str) -> None:
        self.calls.append(("demand", channel, symbol))

    def on_release(self, channel: str, symbol: str) -> None:
        self.calls.append(("release", channel, symbol))


DYN = {
    "dynamic_subscriptions": {
        "enabled": True,
        "allow": ["ETH/USD", "SOL/USD", "ADA/USD"],
        "max_symbols": 2,
        "release_after": 0.2,
    }
}


async def test_demand_ack_after_data_then_release_after_last_client(make_relay, clients):
    pool = FakePool()
    relay = await make_relay(DYN, demand=pool)
    c = await clients(relay.url)
    await c.recv()
    await c.send({"method": "subscribe", "params": {"channel": "ticker", "symbol": ["ETH/USD"]}, "req_id": 1})
    await asyncio.sleep(0.1)
    assert pool.calls == [("demand", "ticker", "ETH/USD")]
    assert len(c.log) == 1  # no ack before data
    relay.feed(ticker_frame("ETH/USD"))
    ack = await c.recv()
    assert ack["success"] and ack["req_id"] == 1 and ack["result"]["symbol"] == "ETH/USD"
    snap = await c.recv()
    assert snap["channel"] == "ticker" and snap["type"] == "snapshot" and snap["data"][0]["symbol"] == "ETH/USD"
    # a second client is served at once, without another upstream demand
    d = await clients(relay.url)
    await d.recv()
    await d.send({"method": "subscribe", "params": {"channel": "ticker", "symbol": ["ETH/USD"]}})
    assert (await d.recv())["success"]
    assert pool.calls == [("demand", "ticker", "ETH/USD")]
    await c.send({"method": "unsubscribe", "params": {"channel": "ticker", "symbol": ["ETH/USD"]}})
    await d.close()
    await c.until(lambda m: m.get("method") == "unsubscribe")
    for _ in range(100):
        if len(pool.calls) == 2:
            break
        await asyncio.sleep(0.02)
    assert pool.calls[-1] == ("release", "ticker", "ETH/USD")


async def test_demand_refusals_limits_and_timeouts(make_relay, clients):
    pool = FakePool()
    relay = await make_relay(DYN, demand=pool, demand_timeout=0.3)
    c = await clients(relay.url)
    await c.recv()
    await c.send({"method": "subscribe", "params": {"channel": "trade", "symbol": ["DOGE/USD"]}})
    err = await c.recv()
    assert err["error"] == "Currency pair not supported DOGE/USD" and err["symbol"] == "DOGE/USD"
    await c.send(
        {
            "method": "subscribe",
            "params": {"channel": "trade", "symbol": ["ETH/USD", "SOL/USD", "ADA/USD"]},
            "req_id": 9,
        }
    )
    err = await c.recv()
    assert err["error"] == "Relay symbol limit reached" and err["symbol"] == "ADA/USD"
    relay.endpoint.demand_failed("trade", "SOL/USD", "Currency pair not supported SOL/USD", 0.0)
    err = await c.recv()
    assert err["symbol"] == "SOL/USD" and err["req_id"] == 9 and err["success"] is False
    timeout = await c.recv(timeout=3)
    assert timeout["error"] == "Timed out waiting for market data" and timeout["symbol"] == "ETH/USD"
    assert ("demand", "trade", "ETH/USD") in pool.calls and ("demand", "trade", "SOL/USD") in pool.calls


async def test_dynamic_disabled_rejects_unknown_symbols(make_relay, clients):
    pool = FakePool()
    relay = await make_relay(demand=pool)
    c = await clients(relay.url)
    await c.recv()
    await c.send({"method": "subscribe", "params": {"channel": "book", "symbol": ["ETH/USD", "BTC/USD"]}})
    replies = [await c.recv() for _ in range(2)]
    assert replies[0]["error"] == "Currency pair not supported ETH/USD"
    assert replies[1]["success"] and replies[1]["result"]["symbol"] == "BTC/USD"
    assert pool.calls == []


async def test_client_leaving_while_waiting_releases_the_demand(make_relay, clients):
    pool = FakePool()
    relay = await make_relay(DYN, demand=pool)
    c = await clients(relay.url)
    await c.recv()
    await c.send({"method": "subscribe", "params": {"channel": "book", "symbol": ["SOL/USD"]}})
    for _ in range(100):
        if pool.calls:
            break
        await asyncio.sleep(0.01)
    await c.close()
    for _ in range(100):
        if len(pool.calls) == 2:
            break
        await asyncio.sleep(0.02)
    assert pool.calls == [("demand", "book", "SOL/USD"), ("release", "book", "SOL/USD")]
    assert relay.endpoint.stats()["pending_subscriptions"] == 0


async def test_dynamic_book_without_a_configured_book_channel(make_relay, clients):
    from tests.kit.paths import v2_wire_frames
    from tests.server.conftest import channels

    pool = FakePool()
    relay = await make_relay(DYN, chans=channels(book=None), demand=pool)
    c = await clients(relay.url)
    await c.recv()
    await c.send(
        {"method": "subscribe", "params": {"channel": "book", "symbol": ["ETH/USD"], "depth": 25}, "req_id": 3}
    )
    for _ in range(100):
        if pool.calls:
            break
        await asyncio.sleep(0.01)
    assert pool.calls == [("demand", "book", "ETH/USD")]
    frames = [f.replace(b"BTC/USD", b"ETH/USD") for f in v2_wire_frames()[:40]]
    for raw in frames:
        relay.feed(raw)
    ack = await c.recv()
    assert ack["success"] and ack["req_id"] == 3 and ack["result"]["depth"] == 25
    c.depth = 25
    await c.barrier()
    assert c.books["ETH/USD"] and c.checksum_bad == 0 and c.checksums_ok >= 1
