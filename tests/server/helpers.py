"""Server test helpers shared by several modules: v2 channel frames as Kraken sends them, padded
book frames, and a client with tiny socket buffers (a slow reader)."""

from __future__ import annotations

import asyncio
import socket

import orjson

TS = "2023-07-30T15:30:00.000000Z"


def trade_frame(tid: int, symbol: str = "BTC/USD") -> bytes:
    return (
        b'{"channel":"trade","type":"update","data":[{"symbol":"'
        + symbol.encode()
        + b'","side":"buy","price":29430.3,"qty":0.00100000,"ord_type":"market","trade_id":'
        + str(tid).encode()
        + b',"timestamp":"'
        + TS.encode()
        + b'"}]}'
    )


def ticker_frame(symbol: str = "BTC/USD", last: bytes = b"29430.3", ts: str = TS) -> bytes:
    return (
        b'{"channel":"ticker","type":"update","data":[{"symbol":"'
        + symbol.encode()
        + b'","bid":29430.2,"bid_qty":0.18967538,"ask":29430.3,"ask_qty":3.16450013,"last":'
        + last
        + b',"volume":1234.56789000,"vwap":29400.1,"low":29300.0,"high":29500.0,"change":10.1,'
        b'"change_pct":0.03,"timestamp":"' + ts.encode() + b'"}]}'
    )


def ohlc_frame(interval: int = 1, trades: int = 5) -> bytes:
    return (
        b'{"channel":"ohlc","type":"update","timestamp":"' + TS.encode() + b'","data":[{"symbol":"BTC/USD",'
        b'"open":29430.0,"high":29431.0,"low":29429.0,"close":29430.3,"trades":'
        + str(trades).encode()
        + b',"volume":0.50000000,"vwap":29430.1,"interval_begin":"2023-07-30T15:30:00.000000000Z",'
        b'"interval":' + str(interval).encode() + b',"timestamp":"2023-07-30T15:31:00.000000Z"}]}'
    )


def padded(frame: bytes, pad: int, stamp: float | None = None) -> bytes:
    """An unknown extra key inside the book element: clients ignore it, checksums still hold."""
    extra = b',"pad":"' + b"x" * pad + b'"'
    if stamp is not None:
        extra += b',"sent":' + repr(stamp).encode()
    return frame[:-3] + extra + b"}]}"


def empty_update(relay) -> bytes:
    snap = relay.merge.book_snapshot("BTC/USD", 100)
    head, _, _ = snap.partition(b'"bids":')
    tail = snap[snap.index(b'"checksum"') :]
    return head.replace(b'"snapshot"', b'"update"') + b'"bids":[],"asks":[],' + tail


async def open_slow(clients, relay):
    """A client whose socket buffers are tiny on both ends, so not reading shows up at once."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", relay.server.port))
    c = await clients(relay.url, sock=sock, max_queue=1)
    c.depth = 100
    local = sock.getsockname()[1]
    for conn in relay.server.open_clients:
        peer = conn.transport.get_extra_info("peername")
        if peer[1] == local:
            conn.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    return c


def instrument_frame(*symbols: str) -> bytes:
    """A v2 `instrument` snapshot listing `symbols` (BTC/USD precisions: 1 dp price, 8 dp qty)."""
    pairs = [
        {
            "symbol": s,
            "base": s.split("/")[0],
            "quote": s.split("/")[1],
            "status": "online",
            "price_precision": 1,
            "qty_precision": 8,
        }
        for s in symbols
    ]
    return orjson.dumps({"channel": "instrument", "type": "snapshot", "data": {"assets": [], "pairs": pairs}})
