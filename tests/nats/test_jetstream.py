"""JetStream retention: a consumer replays the last minute of a book subject, starting from the
retained keyframe, and rebuilds the same book states the live consumer saw (same sequence
numbers, same checksums)."""

from __future__ import annotations

import datetime

import nats
import pytest
from nats.js.api import ConsumerConfig, DeliverPolicy

from relay.core import bus
from relay.sim import LineConfig, SimConfig
from tests.kit.books import V2BookVerifier
from tests.kit.inprocess import relay_on_sim, wait_for
from tests.kit.nats import BookFollower, nats_server

pytestmark = pytest.mark.timeout(120)

SYMBOLS = ["BTC/USD", "ETH/USD"]


async def test_replay_of_the_last_minute_rebuilds_the_live_book_states() -> None:
    async with nats_server(jetstream=True) as server:
        sim = SimConfig(lines=[LineConfig(), LineConfig(latency=0.001)], symbols=SYMBOLS, rate=200.0, seed=23)
        config = {
            "channels": {"book": {"symbols": SYMBOLS, "depth": 10}, "trade": {"symbols": SYMBOLS}},
            "nats": {
                "servers": [server.url],
                "subject_prefix": "kraken.a",
                "jetstream": {"storage": "memory", "max_age_seconds": 300, "keyframe_interval": 1.0},
            },
        }
        async with relay_on_sim(sim, config, lambda r: r.ready()[0]) as (relay, _sim):
            pub = relay.nats
            assert pub is not None
            await wait_for(lambda: pub.stats()["jetstream_ok"] is True, 15, "the JetStream stream set up")
            nc = await nats.connect(server.url)
            try:
                live = await BookFollower(nc, "kraken.a", "BTC/USD").start()
                await wait_for(lambda: len(live.states) >= 300 and pub.stats()["keyframes"] >= 4, 30, "a live run")
                await live.stop()
                assert live.gaps == 0 and live.verifier.bad == 0
                live_states = dict(zip(live.seqs, live.states[1:]))  # states[0] is its snapshot's

                # replay the last minute: the first retained keyframe in it, then the updates after it
                js = nc.jetstream()
                since = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=60)
                start = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=since)
                keyframes = await js.subscribe(bus.keyframe_subject("kraken.a", "v2", "book", "BTC-USD"), config=start)
                key = await keyframes.next_msg(timeout=5)
                await keyframes.unsubscribe()
                verifier = V2BookVerifier(10)
                check = bus.SeqCheck()
                check.reset(key.headers[bus.EPOCH], int(key.headers[bus.SEQ]))
                verifier.feed(key.data)
                replayed: dict[int, int] = {}
                updates = await js.subscribe(bus.data_subject("kraken.a", "v2", "book", "BTC-USD"), config=start)
                last_live = max(live_states)
                while check.last < last_live:
                    msg = await updates.next_msg(timeout=5)
                    seq = int(msg.headers[bus.SEQ])
                    verdict = check.check(msg.headers[bus.EPOCH], seq)
                    if verdict.reason == "duplicate":
                        continue  # before the keyframe: already in it
                    assert verdict.ok, f"replay gap at {seq} ({verdict.reason})"
                    replayed[seq] = verifier.feed(msg.data).checksum
                await updates.unsubscribe()
            finally:
                await nc.close()
    assert verifier.bad == 0
    common = sorted(set(live_states) & set(replayed))
    assert len(common) >= 200, len(common)
    assert [live_states[s] for s in common] == [replayed[s] for s in common]
