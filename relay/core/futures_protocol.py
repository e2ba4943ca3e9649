"""Registers Kraken Futures (`protocol: futures`) in `relay.protocols` (imported by the registry).

Upstream requests are `{"event":"subscribe","feed":F,"product_ids":[...]}`; the `heartbeat` feed is
always subscribed and sizes the liveness deadline (`futures.heartbeat_timeout`); keep-alive is RFC
6455 pings every `futures.ping_interval` s (Kraken wants one at least every 60 s); acks carry no
request id, so the planner matches them by (feed, product).
"""

from __future__ import annotations

from typing import Any

from relay import protocols
from relay.core.futures import FuturesParser, encode_request, request_params
from relay.core.merge import MergeSettings
from relay.ops.config import FuturesChannelsConfig, RelayConfig
from relay.upstream.subscriptions import SubKey

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


def _merge(settings: MergeSettings, cfg: RelayConfig) -> Any:
    from relay.core.futures_merge import FuturesMerge

    return FuturesMerge(settings)


def _endpoint(server: Any, merge: Any, cfg: RelayConfig) -> Any:
    from relay.server.futures import FuturesEndpoint, products_by_feed

    assert cfg.futures is not None
    return FuturesEndpoint(
        merge,
        products_by_feed(cfg.futures),
        path=cfg.futures.path,
        max_subscriptions=cfg.server.max_subscriptions_per_client,
        trade_snapshot_count=cfg.merge.recent_trades,
    )


FUTURES = protocols.ProtocolSpec(
    name="futures",
    parser=FuturesParser,
    make_merge=_merge,
    encode_request=encode_request,
    request_params=request_params,
    encode_ping=None,
    section=lambda cfg: cfg.futures,
    desired=desired,
    symbols=lambda section: section.channels.all_products(),
    path=lambda cfg: cfg.futures.path if cfg.futures is not None else "/ws/v1",
    endpoint=_endpoint,
    ws_ping_interval=lambda cfg: cfg.futures.ping_interval if cfg.futures is not None else 30.0,
    frame_timeout=lambda cfg: max(cfg.liveness.frame_timeout, cfg.futures.heartbeat_timeout if cfg.futures else 90.0),
)

protocols.register(FUTURES)
