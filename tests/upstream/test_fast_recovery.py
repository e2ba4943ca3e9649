"""Every line dropped at once (a proxy restart carrying both), or 0.3 s apart: the relay's clients
have a valid book again about as soon as a client connected straight to the exchange.

The relay runs in-process on the simulator with the product's default reconnect settings (what
users get, not the kit's compressed ones). A verifying client of the relay and a direct client
of the simulator (same verifier, reconnecting at once) are measured in the same test; each has
its book back when it holds a checksum-verified book of every symbol with data generated after
the last drop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import datetime

import orjson
import websockets

from relay.app import Relay
from relay.sim import LineConfig, SimConfig, Simulator
from relay.verify.spot_v2 import V2Verifier
from tests.kit.inprocess import relay_on_sim, wait_for

SYMBOLS = ["BTC/USD", "ETH/USD"]
SLACK = 0.5  # the acceptance bound: direct client's recovery + 0.5 s


def _wall(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


class Watcher:
    """A book client that reconnects at once when dropped; records when each verified book
    frame arrived and the exchange time of its data."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.verifier = V2Verifier(SYMBOLS, 10, trades=False)
        self.frames: list[tuple[float, str, float]] = []  # (arrival, symbol, exchange time) verified
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        v = self.verifier
        while True:
            with contextlib.suppress(OSError, websockets.ConnectionClosed, websockets.InvalidHandshake):
                async with websockets.connect(self.url, compression=None, max_size=1 << 24) as ws:
                    for req in v.requests():
                        await ws.send(req.decode())
                    async for raw in ws:
                        msg = orjson.loads(raw)
                        if msg.get("channel") != "book":
                            continue
                        bad = len(v.checksum_bad)
                        v.feed(raw)
                        if len(v.checksum_bad) == bad and v.updates_before_snapshot == 0:
                            now = time.monotonic()
                            self.frames += [(now, d["symbol"], _wall(d["timestamp"])) for d in msg["data"]]

    def back_after(self, mono: float, wall: float) -> float | None:
        """Seconds from `mono` until every symbol had a verified frame with data newer than `wall`."""
        first: dict[str, float] = {}
        for t, sym, exch in self.frames:
            if t >= mono and exch > wall and sym not in first:
                first[sym] = t
        return max(first.values()) - mono if len(first) == len(SYMBOLS) else None

    def flowing_since(self, mono: float) -> bool:
        return {s for t, s, _ in self.frames if t >= mono} == set(SYMBOLS)

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


def all_live(relay: Relay) -> bool:
    return all(c.state == "live" for c in relay.pools()[0].connections)


async def incident(
    relay: Relay, sim: Simulator, via_relay: Watcher, direct: Watcher, gap: float
) -> tuple[float, float]:
    """Drop line 0, then line 1 `gap` s later; seconds until each client has a valid book again
    (from the moment the last line dropped)."""
    mark = time.monotonic()
    await wait_for(lambda: all_live(relay), 10, "both lines live")
    await wait_for(lambda: via_relay.flowing_since(mark) and direct.flowing_since(mark), 10, "books flowing")
    sim.inject(0, "drop")
    if gap:
        await asyncio.sleep(gap)
    down, down_wall = time.monotonic(), time.time()
    sim.inject(1, "drop")  # every line is down now; the direct client (line 1) too
    await wait_for(
        lambda: via_relay.back_after(down, down_wall) is not None and direct.back_after(down, down_wall) is not None,
        10,
        "both clients to have a valid book again",
    )
    relay_s, direct_s = via_relay.back_after(down, down_wall), direct.back_after(down, down_wall)
    assert relay_s is not None and direct_s is not None
    return relay_s, direct_s


async def test_every_line_dropped_clients_recover_within_a_direct_clients_time_plus_half_a_second() -> None:
    sim_cfg = SimConfig(symbols=SYMBOLS, rate=200.0, seed=5, lines=[LineConfig(), LineConfig()])
    config = {
        "channels": {"book": {"symbols": SYMBOLS, "depth": 10}, "trade": {"symbols": SYMBOLS}},
        "reconnect": {},  # the product's defaults (initial_delay 0.5, stagger 1.0, ...)
    }
    async with relay_on_sim(sim_cfg, config, ready=all_live) as (relay, sim):
        via_relay, direct = Watcher(relay.server.url), Watcher(sim.urls[1])
        try:
            # at once, then 0.3 s apart: the second incident follows the first within seconds
            results = [(gap, *await incident(relay, sim, via_relay, direct, gap)) for gap in (0.0, 0.3)]
            print("recovery (gap, relay s, direct s):", [(g, round(r, 3), round(d, 3)) for g, r, d in results])
            for gap, relay_s, direct_s in results:
                assert relay_s <= direct_s + SLACK, (
                    f"dropped {gap} s apart: relay {relay_s:.3f} s, direct {direct_s:.3f} s"
                )
            v = via_relay.verifier
            assert not v.checksum_bad and v.updates_before_snapshot == 0
        finally:
            await via_relay.stop()
            await direct.stop()
