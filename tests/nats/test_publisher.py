"""The NATS publisher against a real nats-server: a plain nats-py consumer keeps a verified book
from the subjects, detects an injected gap by the sequence header and recovers by snapshot; the
payloads are the websocket clients' bytes; NATS down at start or mid-run never touches the local
clients, and publishing resumes when it returns."""

from __future__ import annotations

import asyncio

import nats
import orjson
import pytest

from relay.core import bus
from relay.sim import LineConfig, SimConfig
from tests.kit.feed import FeedRecorder
from tests.kit.inprocess import relay_on_sim, wait_for
from tests.kit.nats import BookFollower, NatsServer, nats_server, need_nats_server
from tests.kit.net import free_port

pytestmark = pytest.mark.timeout(120)

SYMBOLS = ["BTC/USD", "ETH/USD"]
CHANNELS = {"book": {"symbols": SYMBOLS, "depth": 10}, "trade": {"symbols": SYMBOLS}}


def _config(servers: list[str], **nats_extra: object) -> dict:
    return {
        "channels": CHANNELS,
        "nats": {"servers": servers, "subject_prefix": "kraken.a", "name": "relay-a", **nats_extra},
    }


def _ready(relay) -> bool:  # type: ignore[no-untyped-def]
    return relay.ready()[0]


async def test_consumer_keeps_a_verified_book_and_detects_a_gap() -> None:
    async with nats_server(jetstream=False) as server:
        sim = SimConfig(lines=[LineConfig(), LineConfig(latency=0.001)], symbols=SYMBOLS, rate=200.0, seed=17)
        async with relay_on_sim(sim, _config([server.url]), _ready) as (relay, _sim):
            await wait_for(lambda: relay.nats is not None and relay.nats.stats()["connected"], 15, "NATS connected")
            nc = await nats.connect(server.url)
            try:
                follower = await BookFollower(nc, "kraken.a", "BTC/USD").start()
                await wait_for(lambda: len(follower.states) >= 150, 30, "150 verified book states")
                assert follower.verifier.bad == 0
                assert follower.gaps == 0 and follower.snapshots == 1

                # a lost message (the publisher skips a sequence number): the consumer sees the
                # gap in the header, fetches a snapshot, and its book stays verified
                assert relay.nats is not None
                stream = relay.nats._streams[("v2", "book", "BTC/USD", 10)]
                assert stream is not None
                stream.seq += 1
                n = len(follower.states)
                await wait_for(lambda: follower.gaps == 1 and follower.snapshots == 2, 15, "the gap and a new snapshot")
                await wait_for(lambda: len(follower.states) >= n + 100, 30, "100 more states after the gap")
                assert follower.verifier.bad == 0
                await follower.stop()

                # the state subject: the relay's identity, lines and per-symbol validity
                msg = await _next(nc, bus.state_subject("kraken.a", "v2"))
                state = orjson.loads(msg.data)
                assert state["relay"] == "relay-a" and state["book_depth"] == 10
                assert {line["name"] for line in state["lines"]} == {"line0", "line1"}
                assert state["symbols"]["BTC/USD"]["book"] in ("ok", "valid")
                assert msg.headers[bus.RELAY] == "relay-a"
            finally:
                await nc.close()


async def test_payloads_are_the_websocket_frames_and_sequences_are_contiguous() -> None:
    async with nats_server(jetstream=False) as server:
        sim = SimConfig(lines=[LineConfig(), LineConfig(latency=0.001)], symbols=SYMBOLS, rate=200.0, seed=17)
        async with relay_on_sim(sim, _config([server.url]), _ready) as (relay, _sim):
            await wait_for(lambda: relay.nats is not None and relay.nats.stats()["connected"], 15, "NATS connected")
            nc = await nats.connect(server.url)
            got: list[tuple[str, int, bytes]] = []

            async def on(msg) -> None:  # type: ignore[no-untyped-def]
                got.append((msg.subject, int(msg.headers[bus.SEQ]), msg.data))

            sub = await nc.subscribe("kraken.a.v2.*.*", cb=on)
            await nc.flush()
            try:
                async with FeedRecorder(relay.server.url, SYMBOLS) as feed:
                    await wait_for(lambda: len(feed.trades) >= 20 and len(got) >= 300, 30, "trades and NATS messages")
                subjects = {s for s, _, _ in got}
                assert {"kraken.a.v2.book.BTC-USD", "kraken.a.v2.trade.ETH-USD"} <= subjects
                for subject in subjects:
                    seqs = [q for s, q, _ in got if s == subject]
                    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), subject
                # byte-identical to what a websocket client receives: every book frame on NATS
                # parses as a Kraken v2 book frame with its checksum (the same verifier as clients')
                frames = [d for s, _, d in got if s.startswith("kraken.a.v2.book.")]
                assert frames and all(f.startswith(b'{"channel":"book","type":"update"') for f in frames)
            finally:
                await sub.unsubscribe()
                await nc.close()


async def test_nats_down_at_start_and_mid_run_never_touches_local_clients() -> None:
    need_nats_server()
    port = free_port()
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory(prefix="relay-nats-") as tmp:
        server = NatsServer("n0", Path(tmp), port=port, jetstream=False)
        sim = SimConfig(lines=[LineConfig(), LineConfig(latency=0.001)], symbols=SYMBOLS, rate=200.0, seed=17)
        async with relay_on_sim(sim, _config([server.url]), _ready) as (relay, _sim):
            pub = relay.nats
            assert pub is not None
            async with FeedRecorder(relay.server.url, SYMBOLS) as feed:
                await wait_for(
                    lambda: pub.stats()["dropped"].get("disconnected", 0) > 50, 15, "drops while NATS is down"
                )
                assert pub.stats()["connected"] == 0
                await server.start()
                await wait_for(lambda: pub.stats()["connected"] == 1, 20, "publisher connected once NATS is up")
                nc = await nats.connect(server.url)
                follower = await BookFollower(nc, "kraken.a", "BTC/USD").start()
                await wait_for(lambda: len(follower.states) >= 50, 20, "a consumer following")
                dropped = pub.stats()["dropped"].get("disconnected", 0)

                await server.stop()  # NATS goes away mid-run
                await wait_for(lambda: pub.stats()["connected"] == 0, 15, "the outage seen")
                await wait_for(
                    lambda: pub.stats()["dropped"].get("disconnected", 0) > dropped + 50, 15, "drops counted"
                )
                metrics = await _get(relay, "/metrics")
                assert "kraken_relay_nats_connected 0.0" in metrics
                health = await _get(relay, "/healthz")
                assert health.startswith("HTTP/1.1 200") and '"nats":{"connected":false' in health
                assert relay.ready()[0]  # readiness ignores NATS
                await nc.close()

                await server.start()
                await wait_for(lambda: pub.stats()["connected"] == 1, 20, "reconnected")
                nc = await nats.connect(server.url)
                follower = await BookFollower(nc, "kraken.a", "BTC/USD").start()
                await wait_for(lambda: len(follower.states) >= 50, 20, "publishing resumed")
                assert follower.verifier.bad == 0
                await follower.stop()
                await nc.close()
                books_before_end = feed.verifier.frames
            await server.stop()
            # the local client: never disconnected, every checksum valid, no pause in its feed
            assert feed.disconnects == 0 and feed.bad == 0 and books_before_end > 200
            gaps = [b - a for a, b in zip(feed.arrivals, feed.arrivals[1:])]
            assert max(gaps) < 1.0, max(gaps)


async def _next(nc, subject: str):  # type: ignore[no-untyped-def]
    sub = await nc.subscribe(subject)
    try:
        return await sub.next_msg(timeout=5)
    finally:
        await sub.unsubscribe()


async def _get(relay, path: str) -> str:  # type: ignore[no-untyped-def]
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.http.port)
    writer.write(b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path.encode())
    raw = await reader.read()
    writer.close()
    return raw.decode()


async def test_credentials_on_both_sides_and_a_line_without_them_refused() -> None:
    """A NATS server with a user: the publisher and a NATS line with `nats: {user, password}`
    work; a line without them never connects (and says why), its URL carrying no secret."""
    async with nats_server(jetstream=False, args=["--user", "relay", "--pass", "s3cret"]) as server:
        sim = SimConfig(lines=[LineConfig(), LineConfig(latency=0.001)], symbols=SYMBOLS, rate=200.0, seed=19)
        auth = {"user": "relay", "password": "s3cret"}
        config = {
            **_config([server.url], **auth),
        }
        async with relay_on_sim(sim, config, _ready) as (relay, _sim):
            await wait_for(lambda: relay.nats is not None and relay.nats.stats()["connected"], 15, "NATS connected")
            from relay.app import Relay
            from relay.config import parse_config
            from tests.kit.inprocess import FAST_RECONNECT

            edge_cfg = {
                "upstreams": [
                    {"name": "a", "url": server.url, "subject_prefix": "kraken.a", "nats": auth},
                    {"name": "anon", "url": server.url, "subject_prefix": "kraken.a"},
                ],
                "channels": CHANNELS,
                "reconnect": FAST_RECONNECT,
            }
            edge = Relay(parse_config(edge_cfg, env={}), server_port=0, http_port=0)
            await edge.start()
            try:
                await wait_for(lambda: edge.ready()[0], 30, "the edge ready on the authenticated line")
                a, anon = edge.stack("v2").pool.connections
                await wait_for(lambda: a.state == "live", 15, "the authenticated line live")
                await wait_for(lambda: anon.failures["nats auth"] >= 2, 15, "the anonymous line refused")
                assert anon.connects == 0 and "s3cret" not in anon.up.url
            finally:
                await edge.stop()
