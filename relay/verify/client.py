"""Drive a verifier against a live endpoint: connect, subscribe, feed it every frame, reconnect.

`kraken-relay verify URL --protocol v2 --symbols BTC/USD,ETH/USD --depth 10 --duration 30`
prints one JSON report and exits 0 when every book checksum (spot) or `seq` step (futures)
verified and no trade was duplicated or skipped, 1 otherwise (or when nothing arrived).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ssl
import sys
import time
from collections.abc import Callable
from typing import Any, Protocol

import orjson
import websockets

from relay.verify.futures import FuturesVerifier
from relay.verify.spot_v1 import V1Verifier
from relay.verify.spot_v2 import V2Verifier


class Verifier(Protocol):
    book_frames: int

    def requests(self) -> list[bytes]: ...
    def feed(self, raw: bytes | str) -> None: ...
    @property
    def ok(self) -> bool: ...
    def report(self) -> dict[str, Any]: ...


VERIFIERS: dict[str, Callable[..., Verifier]] = {"v2": V2Verifier, "v1": V1Verifier, "futures": FuturesVerifier}


class VerifyingClient:
    """One websocket client feeding `verifier`; reconnects (counted) until stopped."""

    def __init__(self, url: str, verifier: Verifier, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self.url, self.verifier, self.ssl = url, verifier, ssl_context
        self.connects = 0
        self.disconnects = 0
        self.frames = 0

    async def run(self) -> None:
        while True:
            try:
                async with websockets.connect(self.url, compression=None, max_size=16 * 2**20, ssl=self.ssl) as ws:
                    self.connects += 1
                    for req in self.verifier.requests():
                        await ws.send(req.decode())
                    async for raw in ws:
                        self.frames += 1
                        self.verifier.feed(raw)
            except (TimeoutError, OSError, websockets.WebSocketException):
                pass
            self.disconnects += 1
            await asyncio.sleep(0.5)

    def report(self) -> dict[str, Any]:
        return {
            "ok": self.verifier.ok and self.verifier.book_frames > 0,
            "frames": self.frames,
            "connects": self.connects,
            "disconnects": self.disconnects,
            **self.verifier.report(),
        }


async def verify(
    url: str, verifier: Verifier, duration: float, ssl_context: ssl.SSLContext | None = None
) -> dict[str, Any]:
    """Run a `VerifyingClient` for `duration` seconds and return its report."""
    client = VerifyingClient(url, verifier, ssl_context=ssl_context)
    task = asyncio.create_task(client.run())
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline and not task.done():
        await asyncio.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return client.report()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "url", help="endpoint, e.g. ws://127.0.0.1:8765/v2, wss://127.0.0.1:8765/, ws://127.0.0.1:8765/ws/v1"
    )
    parser.add_argument("--protocol", choices=sorted(VERIFIERS), default="v2", help="the endpoint's protocol")
    parser.add_argument(
        "--symbols", required=True, help="comma-separated symbols (v2 BTC/USD, v1 XBT/USD, futures PF_XBTUSD)"
    )
    parser.add_argument("--depth", type=int, default=10, help="book depth (spot)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds to verify")
    parser.add_argument("--no-trades", action="store_true", help="verify books only")
    parser.add_argument("--insecure", action="store_true", help="wss: do not verify the server certificate")


def main(args: argparse.Namespace) -> int:
    verifier = VERIFIERS[args.protocol](
        [s for s in args.symbols.split(",") if s], args.depth, trades=not args.no_trades
    )
    ctx = None
    if args.url.startswith("wss://"):
        ctx = ssl.create_default_context()
        if args.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
    report = asyncio.run(verify(args.url, verifier, args.duration, ctx))
    sys.stdout.write(orjson.dumps(report).decode() + "\n")
    return 0 if report["ok"] else 1
