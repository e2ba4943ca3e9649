"""Benchmark client process: N raw websocket connections on one asyncio (uvloop) loop.

Why raw sockets: a websockets/JSON client costs ~5-10 µs per frame, so at 10k frames/s x 100
connections the clients, not the relay, would be measured (and they share the relay's 2 cores).
Each connection does the HTTP upgrade, sends masked subscribe frames, then only scans the byte
stream with C-level `bytes.find`/`count` (frames are not unmasked-decoded: server frames are
unmasked, and the markers below never occur in websocket headers' way):

* every connection counts book frames (`"checksum":`) and trades (`"trade_id":`);
* "recording" connections also keep each read's bytes with its receive time and, after the run,
  extract the receive time (`time.monotonic()`, CLOCK_MONOTONIC,
  shared by every process on the machine) of each book frame keyed by its exact
  `checksum,timestamp` text, and of each trade keyed by `symbol:trade_id`. The orchestrator
  matches keys between a client on the relay and a client connected directly to a simulator
  line: the difference is the latency the relay adds (or, against a zero-delay reference line,
  each path's latency). A read's frames all get that read's time: what a real client would see.

Usage (the orchestrator `bench/e2e.py` drives this): reads its job as JSON on argv[1], prints
`ready` once every connection is subscribed, runs until stdin gets a line (or closes), writes
its records with `marshal` to the job's `out` path and prints `done`.
"""

from __future__ import annotations

import asyncio
import base64
import marshal
import os
import sys
import time

import orjson

CHK = b'"checksum":'
TID = b'"trade_id":'
SYM = b'"symbol":"'
MAX_RECORDS = 2_000_000  # per recording connection: bounded memory
MAX_KEPT = 256 * 1024 * 1024  # bytes kept per recording connection (bounded memory)
CARRY = 512  # bytes kept between reads: longer than any key with its symbol
ATTEMPT_TIMEOUT = 20.0  # one connection attempt (connect + upgrade) on a loaded machine


def _masked(payload: bytes) -> bytes:
    """A client text frame (clients must mask)."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = bytes([0x81, 0x80 | n])
    elif n < 65536:
        head = bytes([0x81, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x81, 0x80 | 127]) + n.to_bytes(8, "big")
    m = int.from_bytes(mask * ((n + 3) // 4), "big") >> (8 * ((4 - n % 4) % 4))
    body = (int.from_bytes(payload, "big") ^ m).to_bytes(n, "big") if n else b""
    return head + mask + body


class Conn(asyncio.Protocol):
    """One raw websocket client connection."""

    def __init__(self, job: dict, record: bool, ready: asyncio.Future) -> None:
        self.job = job
        self.record = record
        self.ready = ready
        self.transport: asyncio.Transport | None = None
        self.upgraded = False
        self.head = b""
        self.carry = b""
        self.books = 0
        self.trades = 0
        self.bytes = 0
        self.first = 0.0
        self.last = 0.0
        self.book_t: dict[bytes, float] = {}
        self.trade_t: dict[bytes, float] = {}
        self.closed = False
        self.chunks: list[tuple[float, bytes]] = []
        self.kept = 0
        self.truncated = False
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        host, port, path = self.job["host"], self.job["port"], self.job["path"]
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(  # type: ignore[attr-defined]
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        if not self.upgraded:
            self.head += data
            i = self.head.find(b"\r\n\r\n")
            if i < 0:
                return
            if b" 101 " not in self.head[:20]:
                self.transport.close()  # type: ignore[union-attr]
                if not self.ready.done():
                    self.ready.set_exception(RuntimeError(self.head[:200].decode("latin-1")))
                return
            self.upgraded = True
            data = self.head[i + 4 :]
            self.head = b""
            for sub in self.job["subs"]:
                self.transport.write(_masked(orjson.dumps(sub)))  # type: ignore[union-attr]
            if not self.ready.done():
                self.ready.set_result(None)
            if not data:
                return
        self.bytes += len(data)
        buf = self.carry + data
        if not self.record:
            b = buf.count(CHK)
            t = buf.count(TID)
            if b or t:
                if not self.first:
                    self.first = now
                self.last = now
                self.books += b
                self.trades += t
            self.carry = buf[-(len(CHK) - 1) :]
            return
        # Recording: keep (time, bytes) only; keys are extracted after the run (`scan`), so a
        # recording connection costs about what a counting one does and does not delay the
        # other connections of this process.
        self.carry = buf[-(len(CHK) - 1) :]
        if self.kept < MAX_KEPT:
            self.chunks.append((now, data))
            self.kept += len(data)
        else:
            self.truncated = True

    def scan(self) -> None:
        """Turn the kept chunks into receive times per book key and per trade key."""
        carry = b""
        book_t, trade_t = self.book_t, self.trade_t
        for now, data in self.chunks:
            buf = carry + data
            # Keep the last CARRY bytes so a key split across reads completes in the next one; a
            # marker is counted in the read where it ends, a key recorded when first complete.
            new_from = len(carry) - (len(CHK) - 1)
            carry = buf[-CARRY:]
            find = buf.find
            seen = False
            pos = 0
            while True:
                i = find(CHK, pos)
                if i < 0:
                    break
                pos = i + 11
                if i >= new_from:
                    self.books += 1
                    seen = True
                j = find(b'"}', pos)
                if j < 0:
                    break
                key = buf[pos:j]
                if key not in book_t and len(book_t) < MAX_RECORDS:
                    book_t[key] = now
            pos = 0
            while True:
                k = find(TID, pos)
                if k < 0:
                    break
                pos = k + 11
                if k >= new_from:
                    self.trades += 1
                    seen = True
                j = find(b",", pos)
                s = buf.rfind(SYM, 0, k)
                if j < 0 or s < 0:
                    continue
                e = find(b'"', s + 10)
                key = buf[s + 10 : e] + b":" + buf[pos:j]
                if key not in trade_t and len(trade_t) < MAX_RECORDS:
                    trade_t[key] = now
            if seen:
                if not self.first:
                    self.first = now
                self.last = now
        self.chunks = []

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.lost.done():
            self.lost.set_result(None)
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("closed before upgrade"))


async def _connect(job: dict, record: bool, deadline: float) -> Conn:
    """One upgraded, subscribed connection. A connection refused, reset or closed before its
    upgrade (a loaded machine: full listen backlog, a server's handshake timeout) is retried
    with backoff until `deadline` (CLOCK_MONOTONIC); the last error is raised after that."""
    loop = asyncio.get_running_loop()
    delay, attempt = 0.05, 0
    while True:
        attempt += 1
        fut = loop.create_future()
        conn: Conn | None = None
        try:
            # one attempt gets at most ATTEMPT_TIMEOUT: a handshake lost in a full backlog is retried
            left = max(0.1, min(ATTEMPT_TIMEOUT, deadline - time.monotonic()))
            t = time.monotonic()
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda f=fut: Conn(job, record, f), job["host"], job["port"]), left
            )
            await asyncio.wait_for(asyncio.shield(fut), max(0.1, left - (time.monotonic() - t)))
            return conn
        except (OSError, RuntimeError, TimeoutError) as exc:
            if conn is not None and conn.transport is not None:
                conn.transport.abort()
            if not fut.done():
                fut.cancel()
            elif not fut.cancelled():
                fut.exception()  # retrieved: no "exception was never retrieved" noise
            if time.monotonic() + delay >= deadline:
                raise RuntimeError(f"connection not upgraded after {attempt} attempts: {exc!r}") from exc
            await asyncio.sleep(delay)
            delay = min(2.0, delay * 2)


async def run(job: dict) -> None:
    loop = asyncio.get_running_loop()
    conns: list[Conn] = []
    n = job["n"]
    rec = set(job.get("record", []))
    timeout = float(job.get("connect_timeout", 120.0))  # whole start-up; generous for a loaded machine
    deadline = time.monotonic() + timeout
    batch = 50  # connect in batches: 1 000 handshakes at once would queue in the listen backlog
    for start in range(0, n, batch):
        idxs = range(start, min(n, start + batch))
        conns += await asyncio.gather(*(_connect(job, idx in rec, deadline) for idx in idxs))
    print("ready", flush=True)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    await reader.readline()
    t_end = time.monotonic()
    for c in conns:
        if c.transport is not None:
            c.transport.pause_reading()
    for i in rec:
        if i < len(conns):
            conns[i].scan()
    out = {
        "t_end": t_end,
        "conns": [
            {
                "books": c.books,
                "trades": c.trades,
                "bytes": c.bytes,
                "first": c.first,
                "last": c.last,
                "closed": c.closed,
                "truncated": c.truncated,
            }
            for c in conns
        ],
        "records": {i: (conns[i].book_t, conns[i].trade_t) for i in sorted(rec) if i < len(conns)},
    }
    for c in conns:
        if c.transport is not None:
            c.transport.abort()
    with open(job["out"], "wb") as f:
        marshal.dump(out, f)
    print("done", flush=True)


def main() -> None:
    job = orjson.loads(sys.argv[1])
    import uvloop

    uvloop.run(run(job))


if __name__ == "__main__":
    main()
