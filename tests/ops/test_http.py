"""HTTP endpoint: /metrics, /healthz (event-loop lag), /readyz (data freshness), bounded parsing."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest

from relay.ops.http import HttpServer, readiness
from relay.ops.loopmon import LoopLagMonitor
from relay.ops.metrics import RelayMetrics
from tests.ops.fakes import DegradedRelay


async def request(port: int, raw: bytes, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), timeout)  # requests say "Connection: close"
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return status, headers, body


async def get(port: int, path: str, accept: str = "") -> tuple[int, dict[str, str], bytes]:
    extra = f"Accept: {accept}\r\n" if accept else ""
    return await request(port, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n".encode())


class Ready:
    def __init__(self) -> None:
        self.value: tuple[bool, dict] = (False, {"BTC/USD": {"book": "resyncing"}})

    def __call__(self) -> tuple[bool, dict]:
        return self.value


@pytest.fixture
async def server():
    mon = LoopLagMonitor(interval=0.02, threshold=0.3, recent=0.3)
    mon.start()
    metrics = RelayMetrics(DegradedRelay(), mon, process_metrics=False)
    ready = Ready()
    srv = HttpServer("127.0.0.1", 0, metrics.registry, ready, mon, request_timeout=0.5)
    await srv.start()
    srv.test_ready = ready  # type: ignore[attr-defined]
    yield srv
    await srv.stop()
    mon.stop()


async def test_metrics_endpoint_serves_prometheus_text(server: HttpServer) -> None:
    status, headers, body = await get(server.port, "/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain")
    assert b'kraken_relay_upstream_up{upstream="beta"} 0.0' in body
    assert int(headers["content-length"]) == len(body)
    status, headers, body = await get(server.port, "/metrics?x=1", accept="application/openmetrics-text; version=1.0.0")
    assert status == 200 and headers["content-type"].startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")


async def test_healthz_ok_while_loop_is_responsive_and_503_when_it_lags(server: HttpServer) -> None:
    await asyncio.sleep(0.1)
    status, _, body = await get(server.port, "/healthz")
    assert status == 200 and orjson.loads(body)["status"] == "ok"
    # block the event loop for longer than the threshold: the next probe must report it
    loop = asyncio.get_running_loop()
    loop.call_soon(time.sleep, 0.6)
    status, _, body = await get(server.port, "/healthz")
    doc = orjson.loads(body)
    assert status == 503, doc
    assert doc["event_loop_lag_seconds"] > 0.3
    # and it recovers once the loop is responsive again
    for _ in range(100):
        await asyncio.sleep(0.05)
        status, _, _ = await get(server.port, "/healthz")
        if status == 200:
            break
    assert status == 200


async def test_readyz_follows_the_ready_callable(server: HttpServer) -> None:
    status, headers, body = await get(server.port, "/readyz")
    assert status == 503 and headers["content-type"] == "application/json"
    assert orjson.loads(body) == {"ready": False, "symbols": {"BTC/USD": {"book": "resyncing"}}}
    server.test_ready.value = (True, {"BTC/USD": {"book": "ok"}})  # type: ignore[attr-defined]
    status, _, body = await get(server.port, "/readyz")
    assert status == 200 and orjson.loads(body)["ready"] is True


async def test_readyz_is_503_when_the_callable_raises() -> None:
    def broken() -> tuple[bool, dict]:
        raise KeyError("merge not started")

    srv = HttpServer("127.0.0.1", 0, RelayMetrics(dict, process_metrics=False).registry, broken)
    await srv.start()
    try:
        status, _, body = await get(srv.port, "/readyz")
        assert status == 503 and "merge not started" in orjson.loads(body)["reason"]
        status, _, _ = await get(srv.port, "/healthz")  # no loop monitor: alive means ok
        assert status == 200
    finally:
        await srv.stop()


async def test_errors_and_methods(server: HttpServer) -> None:
    assert (await get(server.port, "/nope"))[0] == 404
    status, headers, _ = await request(
        server.port, b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    assert status == 405 and headers["allow"] == "GET, HEAD"
    assert (await request(server.port, b"garbage\r\n\r\n"))[0] == 400
    status, headers, body = await request(
        server.port, b"HEAD /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert status == 200 and body == b"" and int(headers["content-length"]) > 0
    status, _, body = await get(server.port, "/")
    assert status == 200 and b"/metrics" in body


async def test_oversized_request_head_is_refused(server: HttpServer) -> None:
    raw = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Junk: " + b"a" * 20000 + b"\r\n\r\n"
    status, _, _ = await request(server.port, raw)
    assert status in (400, 431)  # aiohttp answers an over-long header line with 400


async def test_idle_connections_neither_lock_out_probes_nor_linger(server: HttpServer) -> None:
    # 100 idle connections: there are no connection slots to exhaust
    idle = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(100)]
    try:
        await asyncio.sleep(0.05)
        t0 = time.monotonic()
        assert (await get(server.port, "/healthz"))[0] == 200
        assert time.monotonic() - t0 < 1.0
        # a connection that never sends a request is dropped after request_timeout (0.5 s)
        for r, _ in idle:
            try:
                assert await asyncio.wait_for(r.read(), 3) == b""
            except ConnectionResetError:
                pass  # just as closed
        # a keep-alive connection gets several answers, then is dropped once idle
        r, w = await asyncio.open_connection("127.0.0.1", server.port)
        for _ in range(2):
            w.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await asyncio.wait_for(r.readline(), 2)).startswith(b"HTTP/1.1 200")
            assert (await asyncio.wait_for(r.readuntil(b"}"), 2)).endswith(b"}")
        assert await asyncio.wait_for(r.read(), 3) == b""
        w.close()
    finally:
        for _, w in idle:
            w.close()
    assert (await get(server.port, "/healthz"))[0] == 200


def test_readiness_needs_one_valid_line_per_symbol() -> None:
    states = {
        "BTC/USD": {"book": "ok", "upstreams": {"a": "valid", "b": "down"}},
        "ETH/USD": {"book": "resyncing", "upstreams": {"a": "resyncing", "b": "stale"}},
    }
    ok, detail = readiness(["BTC/USD"], states.__getitem__)
    assert ok and detail["BTC/USD"]["ready"] is True
    ok, detail = readiness(["BTC/USD", "ETH/USD"], states.__getitem__)
    assert not ok and detail["ETH/USD"]["ready"] is False
    ok, detail = readiness(["BTC/USD", "DOGE/USD"], states.__getitem__)  # unknown symbol
    assert not ok and detail["DOGE/USD"]["ready"] is False
    assert readiness([], states.__getitem__)[0] is False


async def test_concurrent_scrapes_share_one_collection() -> None:
    stats = DegradedRelay()
    metrics = RelayMetrics(stats, process_metrics=False)
    srv = HttpServer("127.0.0.1", 0, metrics.registry, metrics_cache_seconds=30)
    await srv.start()
    try:
        results = await asyncio.gather(*(get(srv.port, "/metrics") for _ in range(5)))
        assert [r[0] for r in results] == [200] * 5
        assert len({r[2] for r in results}) == 1
        assert stats.calls == 1  # one snapshot served to all five scrapers
        srv.metrics_cache_seconds = 0
        await get(srv.port, "/metrics")
        assert stats.calls == 2
    finally:
        await srv.stop()
