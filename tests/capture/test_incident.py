"""Issue 16's acceptance on one recorded incident: two simulator lines with a drop, a corrupted
checksum, a stall, a Cloudflare close and a maintenance window, a relay with capture on, and a
verifying client.

* The capture holds every frame each line sent, compared with what the simulator handed to each
  connection, frame for frame, and the disconnects with their codes and reasons.
* `kraken-relay capture inspect` counts what the simulator counted.
* Replayed into a fresh relay, the capture gives a verifying client the same book states and the
  same trades as the original client saw.
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from relay.app import Relay
from relay.capture.format import Record
from relay.capture.reader import Reader
from relay.capture.sessions import Schedule, build
from relay.config import parse_config
from relay.ops.capture_inspect import inspect
from relay.sim import LineConfig, SimConfig
from relay.sim.capture_replay import ReplayServer
from tests.kit.feed import FeedRecorder, overlap
from tests.kit.inprocess import FAST_RECONNECT, relay_on_sim, wait_for
from tests.kit.net import free_port

SYMBOLS = ["BTC/USD", "ETH/USD"]
CHANNELS = {"book": {"symbols": SYMBOLS, "depth": 10}, "trade": {"symbols": SYMBOLS}}


@dataclass
class Incident:
    capture: Path
    sent: dict[int, dict[int, list[bytes]]]  # line -> connection id -> frames, in order
    order: dict[int, list[int]]  # line -> its connection ids in connect order
    client: FeedRecorder
    line_names: list[str]
    before_tap: dict[str, int] = field(default_factory=dict)  # connects before the tap, per line


async def _faults(sim: Any, relay: Any) -> None:
    """The incident: each fault Kraken is known for, on one line at a time, then on all."""
    conns = {c.name: c for c in relay.stack("v2").pool.connections}

    def live(name: str) -> bool:
        return conns[name].state == "live"

    await asyncio.sleep(0.6)
    sim.inject(0, "drop")  # Cloudflare's 1006
    await wait_for(lambda: conns["line0"].connects >= 2 and live("line0"), 15, "line0 back after the drop")
    await asyncio.sleep(0.4)
    sim.inject(1, "corrupt_checksum", symbol="BTC/USD")
    await asyncio.sleep(0.4)
    sim.inject(1, "stall", 0.8)
    await asyncio.sleep(1.2)
    sim.inject(0, "close_1001")
    await wait_for(lambda: conns["line0"].connects >= 3 and live("line0"), 15, "line0 back after 1001")
    await asyncio.sleep(0.4)
    sim.inject("all", "maintenance", 0.8)
    await asyncio.sleep(1.6)


@pytest.fixture(scope="module")
def incident(tmp_path_factory: pytest.TempPathFactory) -> Incident:
    """One recorded incident, shared by the tests below (a module-scoped run keeps CI short)."""
    capture = tmp_path_factory.mktemp("capture")
    sent: dict[int, dict[int, list[bytes]]] = defaultdict(lambda: defaultdict(list))
    order: dict[int, list[int]] = defaultdict(list)

    old: set[int] = set()  # connections opened before the tap: their start was not seen

    def tap(line: int, cid: int, frame: bytes) -> None:
        if cid in old:
            return
        per_line = sent[line]
        if cid not in per_line:
            order[line].append(cid)
        per_line[cid].append(frame)

    async def run() -> Incident:
        sim_cfg = SimConfig(symbols=SYMBOLS, rate=150.0, seed=1616, lines=[LineConfig(latency=0.001), LineConfig()])
        cfg = {"channels": CHANNELS, "capture": {"dir": str(capture), "published": True}}
        async with relay_on_sim(sim_cfg, cfg, ready=lambda r: r.ready()[0]) as (relay, sim):
            conns = {c.name: c for c in relay.stack("v2").pool.connections}
            await wait_for(lambda: all(c.state == "live" for c in conns.values()), 15, "both lines live")
            first = {n: c.connects for n, c in conns.items()}
            old.update(c.cid for ln in sim.lines for c in ln.conns)
            sim.sent_tap = tap
            # the tap starts now: the lines reconnect so every connection is seen from its start
            sim.inject("all", "drop")
            await wait_for(
                lambda: all(c.connects > first[n] and c.state == "live" for n, c in conns.items()), 15, "lines back"
            )
            async with FeedRecorder(f"ws://127.0.0.1:{relay.server.port}/v2", SYMBOLS) as client:
                await wait_for(lambda: all(client.states[s] for s in SYMBOLS), 10, "the client's books")
                await _faults(sim, relay)
            names = [c.name for c in relay.stack("v2").pool.connections]
            return Incident(capture, sent, order, client, names, first)

    return asyncio.run(run())


def _sessions(records: list[Record], line: str) -> list[list[bytes]]:
    """The frames of each of `line`'s connections, in order."""
    out: list[list[bytes]] = []
    for r in records:
        if r.line != line:
            continue
        if r.kind == "connect":
            out.append([])
        elif r.kind == "frame" and out:
            assert r.data is not None
            out[-1].append(r.data)
    return out


def test_the_capture_holds_every_frame_each_line_sent(incident: Incident) -> None:
    records = list(Reader([incident.capture]))
    for idx, name in enumerate(incident.line_names):
        captured = _sessions(records, name)
        # the sessions before the tap (their start was not seen by the test) are skipped
        captured = captured[incident.before_tap[name] :]
        sim_sessions = [incident.sent[idx][cid] for cid in incident.order[idx]]
        assert len(captured) == len(sim_sessions) >= (3 if name == "line0" else 1), name
        assert sum(map(len, sim_sessions)) > 300, name
        for n, (got, want) in enumerate(zip(captured, sim_sessions, strict=True)):
            if got != want:
                # only an aborted connection (the drop) may lose what was queued, never delivered
                assert want[: len(got)] == got, f"{name} session {n}: frames differ"
                assert len(want) - len(got) < 50, f"{name} session {n}: {len(want) - len(got)} frames missing"
    assert all(r.kind != "frame" or r.line != "published" or r.fields.get("p") == "v2" for r in records)


def test_the_capture_holds_the_disconnects_with_their_reasons(incident: Incident) -> None:
    records = list(Reader([incident.capture]))
    ends = [(r.fields.get("code"), r.fields.get("by")) for r in records if r.kind == "disconnect" and r.line == "line0"]
    assert (None, None) in ends  # the drop: no close frame
    assert (1001, "server") in ends
    texts = [r.fields.get("text") for r in records if r.kind == "disconnect" and r.fields.get("code") == 1001]
    assert texts and all(t == "CloudFlare WebSocket proxy restarting" for t in texts)
    resyncs = [r for r in records if r.kind == "resync" and r.line == "line1"]
    assert any(r.fields["symbol"] == "BTC/USD" and r.fields["reason"] == "checksum" for r in resyncs), resyncs
    connects = [r for r in records if r.kind == "connect"]
    assert all(r.fields["p"] == "v2" and r.fields["url"].startswith("ws://127.0.0.1:") for r in connects)


def test_the_client_saw_the_incident_clean(incident: Incident) -> None:
    c = incident.client
    assert c.bad == 0 and c.disconnects == 0
    assert all(len(c.states[s]) > 50 for s in SYMBOLS)
    ids: dict[str, list[int]] = defaultdict(list)
    for sym, tid in c.trades:
        ids[sym].append(tid)
    for sym, seq in ids.items():
        assert seq == list(range(seq[0], seq[0] + len(seq))), f"{sym}: trades not exactly once"


def _v2_stream(frame: bytes) -> tuple[str, str] | None:
    """(channel, symbol) of a v2 data frame, parsed independently of the relay's parser."""
    msg = orjson.loads(frame)
    if not isinstance(msg, dict) or "data" not in msg or msg.get("channel") in (None, "status", "heartbeat"):
        return None
    data = msg["data"]
    first = data[0] if isinstance(data, list) and data else {}
    return msg["channel"], first.get("symbol", "")


def _after_tap(records: list[Record], before_tap: dict[str, int]) -> list[Record]:
    """Each line's records from its first connection the test's tap saw on."""
    seen: dict[str, int] = defaultdict(int)
    out = []
    for r in records:
        if r.kind == "connect":
            seen[r.line] += 1
        if r.line in before_tap and seen[r.line] > before_tap[r.line]:
            out.append(r)
    return out


def test_inspect_counts_what_the_simulator_sent(incident: Incident) -> None:
    records = list(Reader([incident.capture]))
    report = inspect(_after_tap(records, incident.before_tap), gap_seconds=0.5)
    for idx, name in enumerate(incident.line_names):
        line = report["lines"][name]
        captured = _sessions(records, name)[incident.before_tap[name] :]
        # what reached the line: each connection's frames up to where the connection ended
        sent = [
            f
            for cid, got in zip(incident.order[idx], captured, strict=True)
            for f in incident.sent[idx][cid][: len(got)]
        ]
        want: dict[tuple[str, str], int] = defaultdict(int)
        for f in sent:
            stream = _v2_stream(f)
            if stream is not None:
                want[stream] += 1
        assert line["frames"] == len(sent), name
        for (channel, symbol), n in want.items():
            assert line["channels"][channel]["symbols"][symbol] == n, (name, channel, symbol)
        assert line["sessions"] == len(captured)
    line0, line1 = report["lines"]["line0"], report["lines"]["line1"]
    assert line0["disconnects"]["by_code"].get("1006") == 1 and line0["disconnects"]["by_code"].get("1001") == 1
    # the one corrupted checksum is found by re-verifying, on the line that carried it
    assert line0["books"]["checksum_mismatches"] == 0
    assert line1["books"]["mismatch_runs"] == 1
    assert line1["books"]["listed"][0]["symbol"] == "BTC/USD"
    assert line1["gaps"]["count"] >= 1  # the stall (0.8 s) is a silent period
    assert line1["resyncs"]["by_reason"].get("checksum") == 1
    # the published stream, as the clients received it, is valid throughout
    pub = inspect(r for r in records if r.line == "published")["published"]["v2"]["books"]
    assert pub["checksum_mismatches"] == 0 and pub["verified"] > 100


async def _replay(incident: Incident, out: Path) -> tuple[FeedRecorder, dict[str, int], ReplayServer]:
    """The incident's capture served by `kraken-relay replay` to a fresh relay (same config), with
    a recording client on it, until the relay's lines received every recorded frame."""
    capture = build(Reader([incident.capture]))
    server = ReplayServer(Schedule(capture), [free_port() for _ in capture.lines], close_grace=10.0)
    await server.start()
    urls = server.urls()
    data = {
        "upstreams": [{"name": n, "url": urls[n]} for n in incident.line_names],
        "reconnect": FAST_RECONNECT,
        "channels": CHANNELS,
        "capture": {"dir": str(out)},
    }
    relay = Relay(parse_config(data, env={}), server_port=0, http_port=0)
    expected = {n: sum(len(s.frames) for s in h.sessions) for n, h in capture.lines.items()}
    try:
        await relay.start()
        conns = {c.name: c for c in relay.stack("v2").pool.connections}
        await wait_for(lambda: relay.ready()[0], 15, "the replayed relay ready")
        async with FeedRecorder(f"ws://127.0.0.1:{relay.server.port}/v2", SYMBOLS) as client:
            await wait_for(lambda: all(conns[n].frames >= k for n, k in expected.items()), 40, "every recorded frame")
            await asyncio.sleep(0.2)  # the last frames' publications reach the client
        received = {n: c.frames for n, c in conns.items()}
    finally:
        await relay.stop()
        await asyncio.wait_for(server.wait(), 15)
        await server.stop()
    return client, received, server


def _same_run(original: list[Any], replayed: list[Any], what: str) -> None:
    """`replayed` matches `original` from where they first meet to where the shorter one ends."""
    i, j, n = overlap(original, replayed)
    assert n > 0, f"{what}: nothing in common"
    assert i + n == len(original) or j + n == len(replayed), f"{what}: they part after {n} (at {i}/{j})"
    assert n >= 0.8 * (len(original) - i), f"{what}: only {n} of {len(original) - i} in common"


def test_replaying_the_capture_gives_a_client_the_same_books_and_trades(incident: Incident, tmp_path: Path) -> None:
    client, received, server = asyncio.run(_replay(incident, tmp_path))
    assert client.bad == 0 and client.disconnects == 0
    for sym in SYMBOLS:
        _same_run(incident.client.states[sym], client.states[sym], f"{sym} book states")
    _same_run(incident.client.trades, client.trades, "trades")
    # the replayed relay's lines got exactly the recorded frames, and the same disconnects
    recorded = list(Reader([incident.capture]))
    replayed = list(Reader([tmp_path]))
    for name in incident.line_names:
        assert _sessions(replayed, name) == _sessions(recorded, name), name
        ends = [
            (r.fields.get("code"), r.fields.get("by")) for r in recorded if r.kind == "disconnect" and r.line == name
        ]
        again = [
            (r.fields.get("code"), r.fields.get("by")) for r in replayed if r.kind == "disconnect" and r.line == name
        ]
        assert again[:-1] == ends[:-1], name  # the last one is each relay's own shutdown
    assert all(st.skipped == 0 for st in server.schedule.lines.values())

    # ... and the replayed relay made the same resync decisions
    def decisions(recs: list[Record]) -> Counter[tuple[str, str, str, str]]:
        return Counter(
            (r.line, r.fields["channel"], r.fields["symbol"], r.fields["reason"]) for r in recs if r.kind == "resync"
        )

    assert decisions(replayed) == decisions(recorded)
    assert decisions(recorded)[("line1", "book", "BTC/USD", "checksum")] == 1
