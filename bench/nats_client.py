"""Benchmark NATS consumer process: N NATS connections on one asyncio (uvloop) loop.

The NATS counterpart of `bench/e2e_client.py`, with the same job, the same `ready` / `stop` /
`done` protocol and the same output, so `bench.harness.start_clients(..., script="nats_client.py")`
and `stop_clients` drive it and `bench/nats_bench.py` matches its records against a direct
simulator client exactly as `e2e.py` does (the relay publishes the websocket frames byte for byte,
so the same `"checksum":` / `"trade_id":` keys are in the NATS payloads).

Modes (job `mode`):

* `raw` (default): each connection speaks the NATS client protocol itself: `CONNECT` (headers on,
  as a consumer that checks `Kraken-Relay-Seq` needs), one `SUB` per entry of `subs` (a subject
  listed twice is two subscriptions, two copies of each message), `PING`; ready at the `PONG`.
  Then it only counts and keeps `(receive time, bytes)` per read, with `e2e_client.Conn`'s own
  scanning (C-level `bytes.find`/`count`, keys extracted after the run), and answers the server's
  `PING`s. A nats-py consumer costs ~10-20 µs of Python per message; 1 000 of them at 200
  messages/s would measure the consumers, not NATS, on 2 cores (the same reason `e2e_client.py`
  does not use `websockets`).
* `nats-py`: real nats-py connections, one `subscribe(subject, cb=...)` per entry of `subs`; the
  callback only counts (books, trades). What a plain Python consumer costs (no records).

Usage: python bench/nats_client.py '<job JSON>' (the orchestrator starts it).
"""

from __future__ import annotations

import asyncio
import marshal
import sys
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

import e2e_client

CONNECT = (
    b"CONNECT "
    + orjson.dumps(
        {
            "verbose": False,
            "pedantic": False,
            "headers": True,
            "no_responders": True,
            "protocol": 1,
            "lang": "bench-raw",
            "version": "0",
            "name": "kraken-relay bench consumer",
        }
    )
    + b"\r\n"
)


class NatsConn(e2e_client.Conn):
    """One raw NATS consumer connection; after the handshake, exactly `e2e_client.Conn`."""

    def connection_made(self, transport) -> None:  # type: ignore[no-untyped-def]
        self.transport = transport
        cmds = [CONNECT]
        cmds += [b"SUB %s %d\r\n" % (subject.encode(), sid) for sid, subject in enumerate(self.job["subs"], 1)]
        cmds.append(b"PING\r\n")  # its PONG: every SUB above is in place
        transport.write(b"".join(cmds))

    def data_received(self, data: bytes) -> None:
        if not self.upgraded:
            self.head += data
            if b"-ERR" in self.head:
                self.transport.close()  # type: ignore[union-attr]
                if not self.ready.done():
                    self.ready.set_exception(RuntimeError(self.head[-200:].decode("latin-1")))
                return
            i = self.head.find(b"PONG\r\n")
            if i < 0:
                return
            self.upgraded = True
            data = self.head[i + 6 :]
            self.head = b""
            if not self.ready.done():
                self.ready.set_result(None)
            if not data:
                return
        # The server's keep-alive (every 2 min by default); payloads are JSON, never a bare CRLF,
        # so "PING\r\n" is the protocol's. The carry's last 5 bytes catch one split across reads.
        if b"PING\r\n" in self.carry[-5:] + data:
            self.transport.write(b"PONG\r\n")  # type: ignore[union-attr]
        super().data_received(data)


async def run_nats_py(job: dict) -> None:
    """`mode: nats-py`: n nats-py connections; each subscription's callback counts."""
    import nats

    url = f"nats://{job['host']}:{job['port']}"
    counts = [[0, 0, 0.0, 0.0] for _ in range(job["n"])]  # books, trades, first, last
    conns = []
    chk, tid, mono = e2e_client.CHK, e2e_client.TID, time.monotonic

    def counter(c: list):  # type: ignore[no-untyped-def]
        async def cb(msg) -> None:  # type: ignore[no-untyped-def]
            d = msg.data
            now = mono()
            if not c[2]:
                c[2] = now
            c[3] = now
            c[0] += d.count(chk)
            c[1] += d.count(tid)

        return cb

    for i in range(job["n"]):
        nc = await nats.connect(url, connect_timeout=float(job.get("connect_timeout", 120.0)), allow_reconnect=False)
        for subject in job["subs"]:
            await nc.subscribe(subject, cb=counter(counts[i]), pending_msgs_limit=-1, pending_bytes_limit=-1)
        await nc.flush()
        conns.append(nc)
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    await reader.readline()
    t_end = time.monotonic()
    out = {
        "t_end": t_end,
        "conns": [
            {
                "books": c[0],
                "trades": c[1],
                "bytes": 0,
                "first": c[2],
                "last": c[3],
                "closed": nc.is_closed,
                "truncated": False,
            }
            for c, nc in zip(counts, conns, strict=True)
        ],
        "records": {},
    }
    for nc in conns:
        try:
            await asyncio.wait_for(nc.close(), 2)
        except Exception:
            pass
    with open(job["out"], "wb") as f:
        marshal.dump(out, f)
    print("done", flush=True)


def main() -> None:
    job = orjson.loads(sys.argv[1])
    import uvloop

    if job.get("mode", "raw") == "nats-py":
        uvloop.run(run_nats_py(job))
        return
    # e2e_client's connection loop and output, with this module's connection class
    e2e_client.Conn = NatsConn  # type: ignore[misc]
    uvloop.run(e2e_client.run(job))


if __name__ == "__main__":
    main()
