"""cryptofeed's Kraken feed (legacy Spot v1) with `checksum_validation=True`, pointed at the relay
over TLS, offline: no `BadChecksum` while one upstream line is dropped, stalled and corrupted.

Smallest patch to run cryptofeed offline: its symbol table is filled from the real REST capture
(`cryptofeed/sample_data/KRAKEN.0`) with cryptofeed's own `Kraken._parse_symbol_data` +
`Symbols.set` (no HTTP), and a subclass replaces `websocket_endpoints` with the relay's `wss://`
URL and an SSL context trusting the test certificate. Nothing else in cryptofeed is touched.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.protocols.spot_v1.conftest import client_ssl, v1_rig
from tests.protocols.spot_v1.helpers import cf_rest_pairs

cryptofeed = pytest.importorskip("cryptofeed")


@pytest.mark.parametrize(
    ("warm", "depth"), [(None, 10), (["SOL/USD"], 1000)], ids=["configured", "on-demand-depth-1000"]
)
async def test_cryptofeed_kraken_checksums_hold_through_line_faults(tls_cert, warm, depth):
    """The feed's pairs configured, or outside the warm set (served on demand, at cryptofeed's
    default depth of 1000)."""
    from cryptofeed.connection import WebsocketEndpoint
    from cryptofeed.defines import L2_BOOK, TRADES
    from cryptofeed.exceptions import BadChecksum
    from cryptofeed.exchanges import Kraken
    from cryptofeed.symbols import Symbols

    cert, key = tls_cert
    syms, info = Kraken._parse_symbol_data(cf_rest_pairs())
    Symbols.set(Kraken.id, syms, info)
    async with v1_rig(cert, key, symbols=["BTC/USD", "ETH/USD", "SOL/USD"], warm=warm) as rig:
        stack = rig.relay.stack("v1")
        loop = asyncio.get_running_loop()
        end = loop.time() + 10
        warm_pair = "SOL/USD" if warm else "ETH/USD"
        while loop.time() < end and stack.merge.book_snapshot(warm_pair, 100) is None:
            await asyncio.sleep(0.05)
        counts = {"bad": 0, "books": 0, "checked": 0, "trades": 0}

        class RelayKraken(Kraken):
            websocket_endpoints = [WebsocketEndpoint(rig.url, limit=20, options={"ssl": client_ssl(cert)})]

            async def message_handler(self, msg, conn, timestamp):
                try:
                    await super().message_handler(msg, conn, timestamp)
                except BadChecksum:
                    counts["bad"] += 1
                    raise

        async def on_book(book, receipt):
            counts["books"] += 1
            if book.checksum is not None:
                counts["checked"] += 1

        async def on_trade(trade, receipt):
            counts["trades"] += 1

        feed = RelayKraken(
            symbols=["BTC-USD", "ETH-USD"],
            channels=[L2_BOOK, TRADES],
            callbacks={L2_BOOK: on_book, TRADES: on_trade},
            checksum_validation=True,
            max_depth=depth,
        )
        feed.start(loop)
        try:
            await asyncio.sleep(1.5)
            for kind, duration in (("drop", None), ("stall", 1.5), ("corrupt_checksum", None)):
                before = counts["checked"]
                if kind == "corrupt_checksum":
                    rig.sim.inject(0, kind, symbol="BTC/USD")
                    rig.sim.inject(1, kind, symbol="ETH/USD")
                else:
                    rig.sim.inject(0, kind, duration)
                await asyncio.sleep(2.0 if duration is None else duration + 1.0)
                assert counts["checked"] > before + 20, kind
        finally:
            feed.stop()
            await feed.shutdown()
        assert counts["bad"] == 0
        assert counts["checked"] > 200 and counts["trades"] > 5
        assert stack.merge.upstream_stats[0].checksum_mismatches >= 1  # the corruption did reach the relay
