"""Spot v2 (`protocol: v2`, `wss://ws.kraken.com/v2`) as the daemon sees it: its `ProtocolSpec`."""

from __future__ import annotations

import dataclasses
from typing import Any

from relay.config import ChannelsConfig, RelayConfig
from relay.core.outputs import MergeSettings
from relay.protocols.interfaces import ProtocolMerge
from relay.protocols.spec import EndpointContext, ProtocolSpec
from relay.protocols.spot_v2.endpoint import V2Endpoint
from relay.protocols.spot_v2.merge import V2Merge
from relay.protocols.spot_v2.plan import desired_from_channels, request_params
from relay.protocols.spot_v2.wire import V2Parser, encode_ping, encode_subscribe


def _section(cfg: RelayConfig) -> ChannelsConfig | None:
    return cfg.channels if any(u.protocol == "v2" for u in cfg.upstreams) else None


def _merge(settings: MergeSettings, cfg: RelayConfig) -> V2Merge:
    book = cfg.channels.book
    return V2Merge(dataclasses.replace(settings, book_depth=book.depth if book is not None else 10))


def _endpoint(merge: ProtocolMerge, cfg: RelayConfig, ctx: EndpointContext) -> V2Endpoint:
    return V2Endpoint(
        merge,  # type: ignore[arg-type]  # a V2Merge (built by `_merge`)
        cfg.channels,
        path=cfg.server.path,
        version=ctx.version,
        max_subscriptions_per_client=cfg.server.max_subscriptions_per_client,
        dynamic=cfg.server.dynamic_subscriptions,  # its own tracker and cap: per protocol
        resubscribe=ctx.resubscribe,
        heartbeat_interval=cfg.server.heartbeat_interval,
    )


def _describe(ch: ChannelsConfig, cfg: RelayConfig) -> str:
    chans = []
    if ch.book is not None and ch.book.symbols:
        chans.append(f"book/{ch.book.depth}")
    for name in ("trade", "ticker"):
        sub = getattr(ch, name)
        if sub is not None and sub.symbols:
            chans.append(name)
    if ch.ohlc is not None and ch.ohlc.symbols:
        chans.append("ohlc/" + ",".join(map(str, ch.ohlc.intervals)))
    if ch.instrument:
        chans.append("instrument")
    scheme = "wss" if cfg.server.tls else "ws"
    return (
        f"{len(ch.all_symbols())} symbols; channels {' '.join(chans)}; "
        f"serving {scheme}://{cfg.server.listen}{cfg.server.path}"
    )


def _symbols(section: Any) -> list[str]:
    return list(section.all_symbols())


SPOT_V2 = ProtocolSpec(
    name="v2",
    parser=V2Parser,
    make_merge=_merge,
    encode_request=encode_subscribe,
    request_params=request_params,
    encode_ping=encode_ping,
    section=_section,
    desired=desired_from_channels,
    symbols=_symbols,
    make_endpoint=_endpoint,
    describe=_describe,
)
