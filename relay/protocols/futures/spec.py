"""Kraken Futures (`protocol: futures`) as the daemon sees it: its `ProtocolSpec`.

Upstream requests are `{"event":"subscribe","feed":F,"product_ids":[...]}`; the `heartbeat` feed is
always subscribed and sizes the liveness deadline (`futures.heartbeat_timeout`); keep-alive is RFC
6455 pings every `futures.ping_interval` s (Kraken wants one at least every 60 s); acks carry no
request id, so the planner matches them by (feed, product). The desired set is the endpoint's
(`demanded_subscriptions`: the configured products plus those clients asked for), re-read through
`EndpointContext.resubscribe` whenever it changes.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from relay.config import FuturesChannelsConfig, RelayConfig
from relay.core.keys import SubKey
from relay.core.outputs import MergeSettings
from relay.protocols.futures.endpoint import FuturesEndpoint, products_by_feed
from relay.protocols.futures.merge import FuturesMerge
from relay.protocols.futures.wire import TRADE_SNAPSHOT, FuturesParser, encode_request, request_params
from relay.protocols.interfaces import ProtocolMerge
from relay.protocols.spec import EndpointContext, ProtocolSpec

FEEDS = ("book", "trade", "ticker", "ticker_lite")


def desired(section: Any) -> list[SubKey]:
    """The upstream subscriptions for a `futures:` section (heartbeat first: it proves liveness)."""
    ch: FuturesChannelsConfig = section.channels
    keys = [SubKey("heartbeat", "", 0)]
    for feed in FEEDS:
        cfg = getattr(ch, feed)
        if cfg is not None:
            keys += [SubKey(feed, p, 0) for p in cfg.products]
    return keys


def _merge(settings: MergeSettings, cfg: RelayConfig) -> FuturesMerge:
    # a late joiner's trade_snapshot has as many trades as Kraken's (100), whatever spot keeps
    return FuturesMerge(replace(settings, recent_trades=max(settings.recent_trades, TRADE_SNAPSHOT)))


def _endpoint(merge: ProtocolMerge, cfg: RelayConfig, ctx: EndpointContext) -> FuturesEndpoint:
    assert cfg.futures is not None
    return FuturesEndpoint(
        merge,
        products_by_feed(cfg.futures),
        path=cfg.futures.path,
        max_subscriptions=cfg.server.max_subscriptions_per_client,
        trade_snapshot_count=TRADE_SNAPSHOT,
        dynamic=cfg.server.dynamic_subscriptions,
        resubscribe=ctx.resubscribe,
    )


def _ws_ping_interval(cfg: RelayConfig) -> float | None:
    return cfg.futures.ping_interval if cfg.futures is not None else 30.0


def _frame_timeout(cfg: RelayConfig) -> float:
    return max(cfg.liveness.frame_timeout, cfg.futures.heartbeat_timeout if cfg.futures else 90.0)


def _section(cfg: RelayConfig) -> Any:
    return cfg.futures


def _products(section: Any) -> list[str]:
    return list(section.channels.all_products())


def _describe(fut: Any, cfg: RelayConfig) -> str:
    feeds = [n for n in FEEDS if getattr(fut.channels, n) is not None and getattr(fut.channels, n).products]
    scheme = "wss" if cfg.server.tls else "ws"
    return (
        f"Futures: {len(fut.channels.all_products())} products, feeds {' '.join(feeds)}, "
        f"serving {scheme}://{cfg.server.listen}{fut.path}"
    )


FUTURES = ProtocolSpec(
    name="futures",
    parser=FuturesParser,
    make_merge=_merge,
    encode_request=encode_request,
    request_params=request_params,
    encode_ping=None,
    section=_section,
    desired=desired,
    symbols=_products,
    make_endpoint=_endpoint,
    describe=_describe,
    ws_ping_interval=_ws_ping_interval,
    frame_timeout=_frame_timeout,
)
