"""Smoke test of the hostile upstream line (tests/kit/hostile.py): a simulator line, a HostileLine in
front of it, a raw client subscribed through it. Nothing injected: the simulator's stream passes
unchanged; each case: the frames it promises, as a client receives them."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from decimal import Decimal

import orjson
import pytest
import websockets
from websockets.frames import Opcode

from relay.sim import LineConfig, SimConfig, Simulator
from relay.verify.crc import book_crc as verify_crc
from relay.verify.crc import truncate
from relay.verify.spot_v2 import V2Verifier
from tests.kit.hostile import (
    BOOK_FRAME_RE,
    FUTURE_TS,
    HostileLine,
    RawClient,
    RawFrame,
    book_crc,
    hostile_marker,
    snapshot_frame,
    stall_line,
    trade_jump_during_hiccup,
)

SYM = "BTC/USD"


def _loads(raw: bytes) -> dict:
    return json.loads(raw, parse_float=str, parse_int=str)


def _levels(levels: list[dict]) -> dict[str, str]:
    return {lv["price"]: lv["qty"] for lv in levels}


class Rig:
    def __init__(self, sim: Simulator, line: HostileLine, client: RawClient) -> None:
        self.sim, self.line, self.client = sim, line, client

    async def text(self, timeout: float = 5.0) -> bytes:
        f = await self.client.frame(timeout)
        assert f.opcode is Opcode.TEXT and f.fin
        return f.data


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    sim = Simulator(
        SimConfig(
            symbols=[SYM, "ETH/USD"],
            rate=300,
            trade_rate=40,
            seed=5,
            levels=200,
            heartbeat_interval=0.2,
            lines=[LineConfig(latency=0.0005, jitter=0.0005)],
        )
    )
    await sim.start()
    line = HostileLine(sim.urls[0])
    await line.start()
    try:
        async with RawClient(line.url) as client:
            for req in V2Verifier([SYM], 10).requests():
                await client.send(req)
            await line.wait_book(SYM)
            await line.wait_trade(SYM, timeout=5)
            yield Rig(sim, line, client)
            assert not line.errors
            for conn in line.live:
                assert conn.tracker_mismatches == 0, "the line's own book tracking diverged"
    finally:
        await line.stop()
        await sim.stop()


async def test_passthrough_unchanged(rig: Rig) -> None:
    """A direct subscriber and one through the line receive the same update bytes; every checksum
    and trade id verifies."""
    verifier = V2Verifier([SYM], 10)
    async with RawClient(rig.sim.urls[0]) as direct:
        for req in verifier.requests():
            await direct.send(req)
        via: list[bytes] = []
        straight: list[bytes] = []

        async def collect(c: RawClient, out: list[bytes]) -> None:
            async for f in c.frames(1.2):
                assert f.opcode is Opcode.TEXT
                out.append(f.data)

        await asyncio.gather(collect(rig.client, via), collect(direct, straight))
    for raw in via:
        verifier.feed(raw)
    assert verifier.checksums_ok > 50 and not verifier.checksum_bad and not verifier.trade_gaps
    assert verifier.trade_count > 5 and not verifier.trade_dups
    updates_via = [r for r in via if r.startswith(b'{"channel":"book","type":"update"')]
    updates_direct = [r for r in straight if r.startswith(b'{"channel":"book","type":"update"')]
    start = updates_via.index(updates_direct[0])  # the line's client subscribed earlier
    middle = updates_via[start:-20]
    assert len(middle) > 50
    assert middle == updates_direct[: len(middle)]  # the same bytes, in the same order
    assert rig.line.injected.total() == 0 and all(hostile_marker(r) is None for r in via)


async def test_future_timestamp(rig: Rig) -> None:
    real = rig.line.live[0].books[SYM]
    real_mid = (Decimal(real.best(True, 1)[0][0].decode()) + Decimal(real.best(False, 1)[0][0].decode())) / 2
    task = rig.line.inject("future_timestamp", symbol=SYM)
    fake: list[bytes] = []
    while len(fake) < 4:
        raw = await rig.text()
        if FUTURE_TS.encode() in raw:
            fake.append(raw)
    assert await task == 1 and rig.line.injected["future_timestamp"] == 1
    snap = _loads(fake[0])
    assert snap["type"] == "snapshot"
    item = snap["data"][0]
    bids, asks = _levels(item["bids"]), _levels(item["asks"])
    assert len(bids) == len(asks) == 10
    assert verify_crc(asks, bids) == int(item["checksum"])
    mid = (max(map(Decimal, bids)) + min(map(Decimal, asks))) / 2
    assert abs(mid / real_mid - Decimal("1.5")) < Decimal("0.01")
    for raw in fake[1:]:  # the fake book's updates verify too
        upd = _loads(raw)["data"][0]
        bids.update(_levels(upd["bids"]))
        asks.update(_levels(upd["asks"]))
        truncate(asks, bids, 10)
        assert verify_crc(asks, bids) == int(upd["checksum"])
        assert upd["timestamp"] == FUTURE_TS
    assert all(hostile_marker(r) == "future_timestamp" for r in fake)


async def test_trade_jump(rig: Rig) -> None:
    last = rig.line.live[0].last_trade[SYM][0]
    await rig.line.inject("trade_jump", symbol=SYM)
    fake_id = max(rig.line.fake_trade_ids[SYM])
    assert fake_id >= last + 9999
    ids: list[int] = []
    while fake_id not in ids:
        raw = await rig.text()
        if raw.startswith(b'{"channel":"trade"'):
            ids += [t["trade_id"] for t in orjson.loads(raw)["data"]]
            if fake_id in ids:
                assert rig.line.injected_case(raw) == "trade_jump"
    assert ids[-1] == fake_id and (len(ids) == 1 or ids[-2] + 9999 == fake_id)
    # rewrite mode: the next real trade frame carries last + jump instead of its own id
    task = rig.line.inject("trade_jump", symbol=SYM, mode="rewrite", jump=5000)
    while True:
        raw = await rig.text()
        if raw.startswith(b'{"channel":"trade"'):
            got = [t["trade_id"] for t in orjson.loads(raw)["data"]]
            if any(t in rig.line.fake_trade_ids[SYM] and t != fake_id for t in got):
                break
    await task
    assert got[0] >= ids[-2 if len(ids) > 1 else -1] + 5000


async def test_trade_jump_during_hiccup(rig: Rig) -> None:
    """The helper stalls the (here: only) simulator line and injects the jump meanwhile."""
    reader = asyncio.ensure_future(_drain(rig.client, 0.6))
    fake_id = await trade_jump_during_hiccup(rig.line, rig.sim, 0, SYM, seconds=0.4)
    assert any(t == fake_id for raw in await reader if raw.startswith(b'{"channel":"trade"') for t in _ids(raw))
    assert any(kind == "stall" for _, _, kind, _ in rig.sim.fault_log)


async def _drain(client: RawClient, seconds: float) -> list[bytes]:
    return [f.data async for f in client.frames(seconds)]


def _ids(raw: bytes) -> list[int]:
    return [t["trade_id"] for t in orjson.loads(raw)["data"]]


async def test_huge_snapshot(rig: Rig) -> None:
    conn = rig.line.live[0]
    task = rig.line.inject("huge_snapshot", symbol=SYM)
    while True:
        raw = await rig.text(10)
        if raw.startswith(b'{"channel":"book","type":"snapshot"') and len(raw) > 1_000_000:
            break
    real = conn.books[SYM]  # untouched: the line forwarded the real stream around it
    await task
    assert 10_000_000 < len(raw) < 16 * 2**20  # ~10.5 MB: under the relay's upstream max_size
    item = orjson.loads(raw)["data"][0]
    assert len(item["bids"]) == len(item["asks"]) == 150_000
    bid_prices = [lv["price"] for lv in item["bids"]]
    ask_prices = [lv["price"] for lv in item["asks"]]
    assert bid_prices == sorted(bid_prices) and ask_prices == sorted(ask_prices, reverse=True)  # worst first
    lexemes = _loads(raw)["data"][0]
    bids, asks = _levels(lexemes["bids"]), _levels(lexemes["asks"])
    assert book_crc(bids.items(), asks.items()) == item["checksum"]
    truncate(asks, bids, 10)
    assert verify_crc(asks, bids) == item["checksum"]
    assert rig.line.frames_injected["huge_snapshot"] == 1 and real is not None


async def test_unsolicited(rig: Rig) -> None:
    task = rig.line.inject("unsolicited", count=20_000)
    seen: dict[str, int] = {}
    checked = 0
    symbol_re = re.compile(rb'"symbol":"(X\d{5}/USD)"')
    while len(seen) < 20_000 or seen.get("X20000/USD", 0) < 3:
        raw = await rig.text()
        m = symbol_re.search(raw)
        if m is None:
            continue
        sym = m.group(1).decode()
        seen[sym] = seen.get(sym, 0) + 1
        if checked < 50 and raw.startswith(b'{"channel":"book","type":"snapshot"'):
            assert hostile_marker(raw) == "unsolicited"
            item = _loads(raw)["data"][0]
            assert verify_crc(_levels(item["asks"]), _levels(item["bids"])) == int(item["checksum"])
            checked += 1
    await task
    assert rig.line.frames_injected["unsolicited"] == 60_000 and set(seen.values()) == {3}
    assert "X00001/USD" in seen


async def test_bad_numbers(rig: Rig) -> None:
    await rig.line.inject("bad_numbers", symbol=SYM)
    frames: list[bytes] = []
    while len(frames) < 8:
        raw = await rig.text()
        if rig.line.injected_case(raw) == "bad_numbers":
            frames.append(raw)
    texts = b"\n".join(frames)
    assert b'"price":1e400' in texts and b'"price":NaN' in texts and b'"qty":-1.00000000' in texts
    for raw in frames:
        if b"NaN" in raw or b"1e400" in raw:
            with pytest.raises(orjson.JSONDecodeError):
                orjson.loads(raw)
    precise = [r for r in frames if hostile_marker(r) is None]  # valid JSON, too many decimals
    assert len(precise) == 2
    book = _loads(precise[0])["data"][0]
    assert len(book["bids"][0]["price"].split(".")[1]) == 5  # BTC/USD's precision is 1
    assert rig.line.frames_injected["bad_numbers"] == 8


async def test_invalid_utf8_is_a_text_frame(rig: Rig) -> None:
    await rig.line.inject("invalid_utf8", symbol=SYM)
    bad: list[RawFrame] = []
    while len(bad) < 3:
        f = await rig.client.frame()
        if b"\xff" in f.data:
            bad.append(f)
    for f in bad:
        assert f.opcode is Opcode.TEXT
        with pytest.raises(UnicodeDecodeError):
            f.data.decode()
        assert hostile_marker(f.data) == "invalid_utf8"
    assert BOOK_FRAME_RE.fullmatch(bad[0].data) and BOOK_FRAME_RE.fullmatch(bad[1].data)  # Kraken's layout
    assert bad[2].data.startswith(b'{"channel":"trade"')


async def test_non_string_symbol(rig: Rig) -> None:
    await rig.line.inject("non_string_symbol", symbol=SYM)
    got: list[dict] = []
    while len(got) < 9:
        raw = await rig.text()
        if hostile_marker(raw) == "non_string_symbol":
            got.append(orjson.loads(raw))
    assert {(m["channel"], json.dumps(m["data"][0]["symbol"])) for m in got} == {
        (ch, v) for ch in ("book", "trade", "ticker") for v in ("123", "null", '["BTC/USD"]')
    }


async def test_status_flapping(rig: Rig) -> None:
    cid = rig.line.live[0].status["connection_id"]
    await rig.line.inject("status_flapping", count=20)
    systems: list[str] = []
    while len(systems) < 20:
        raw = await rig.text()
        if raw.startswith(b'{"channel":"status"'):
            item = orjson.loads(raw)["data"][0]
            assert item["connection_id"] == cid and item["version"] == "2.0.10"
            if systems or item["system"] == "maintenance":  # not the upstream's own `online` at connect
                systems.append(item["system"])
    assert systems == ["maintenance", "online"] * 10


def test_snapshot_frame_helper() -> None:
    bids = [("100.0", "1.5"), ("101.0", "2.0")] + [(f"{90 + i}.0", "1.0") for i in range(10)]
    asks = [("103.0", "1.0"), ("102.0", "0.50000000")]
    raw = snapshot_frame("ETH/USD", bids, asks, "2025-01-01T00:00:00.000000Z")
    assert BOOK_FRAME_RE.fullmatch(raw)
    item = _loads(raw)["data"][0]
    assert [lv["price"] for lv in item["bids"]][:2] == ["100.0", "101.0"]  # written as given
    assert verify_crc(_levels(item["asks"]), _levels(item["bids"])) == int(item["checksum"])


async def test_close_is_mirrored(rig: Rig) -> None:
    """The upstream's close code reaches the relay's side; an abort aborts it; a refused
    upstream handshake fails the relay's handshake (502)."""
    async with websockets.connect(rig.line.url) as ws:
        await rig.line.wait_for(lambda c: c.client.remote_address == ws.local_address, what="the connection")
        rig.sim.inject(0, "close_1001")
        await asyncio.wait_for(ws.wait_closed(), 5)
        assert ws.close_code == 1001
    async with websockets.connect(rig.line.url) as ws:
        await rig.line.wait_for(lambda c: c.client.remote_address == ws.local_address, what="the connection")
        rig.sim.inject(0, "drop")
        await asyncio.wait_for(ws.wait_closed(), 5)
        assert ws.close_code == 1006
    stall_line(rig.sim, 0, 0.1)  # the stall helper: the simulator's fault
    assert "stall" in rig.sim.state()["lines"][0]["faults"]
    rig.sim.inject(0, "refuse", 1.0)
    with pytest.raises(websockets.InvalidStatus) as err:
        await websockets.connect(rig.line.url)
    assert err.value.response.status_code == 502 and rig.line.refused == 1


async def test_injection_cut_short_by_a_close(rig: Rig) -> None:
    """The relay dropping the line in the middle of an injection ends it quietly (`cut_short`)."""
    task = rig.line.inject("unsolicited", count=20_000)
    while rig.line.frames_injected["unsolicited"] < 1000:
        await rig.client.frame()
    await rig.client.__aexit__()
    assert await asyncio.wait_for(task, 10) == 0
    assert rig.line.cut_short["unsolicited"] == 1 and rig.line.injected["unsolicited"] == 0
