"""Spot v1 (`protocol: v1`) as the daemon sees it: its merge, requests, config section and the
local endpoint on `v1.path` (`/` by default, as Kraken serves v1).

The endpoint reports Kraken's engine version to clients (`merge.upstream_version()`), never the
relay's; the relay's identity is for the operator surfaces. `desired` is the configured (warm)
set; the endpoint's `demanded_subscriptions()` adds what clients asked for on demand."""

from __future__ import annotations

import dataclasses
from typing import Any

from relay.config import RelayConfig, V1Config
from relay.core.keys import SubKey
from relay.core.outputs import MergeSettings
from relay.protocols.interfaces import ProtocolMerge
from relay.protocols.spec import EndpointContext, ProtocolSpec
from relay.protocols.spot_v1.endpoint import V1Endpoint
from relay.protocols.spot_v1.merge import V1Merge
from relay.protocols.spot_v1.wire import V1Parser, encode_ping, encode_request


def _section(cfg: RelayConfig) -> V1Config | None:
    return cfg.v1


def _merge(settings: MergeSettings, cfg: RelayConfig) -> V1Merge:
    section = _section(cfg)
    book = section.channels.book if section is not None else None
    return V1Merge(dataclasses.replace(settings, book_depth=book.depth if book is not None else 10))


def request_params(channel: str, param: int) -> dict[str, Any]:
    """v1 subscription keys: book depth, ohlc interval. No `snapshot` key: Kraken documents it for
    the private channels only, and its public defaults (book snapshot, ohlc last candle) are what
    the merge needs, as sent by existing v1 clients (cryptofeed)."""
    if channel == "book":
        return {"depth": param}
    if channel == "ohlc":
        return {"interval": param}
    return {}


def desired(section: Any) -> list[SubKey]:
    ch = section.channels
    keys: list[SubKey] = []
    if ch.book is not None:
        keys += [SubKey("book", s, ch.book.depth) for s in ch.book.symbols]
    for name in ("trade", "ticker", "spread"):
        c = getattr(ch, name)
        if c is not None:
            keys += [SubKey(name, s, 0) for s in c.symbols]
    if ch.ohlc is not None:
        keys += [SubKey("ohlc", s, i) for s in ch.ohlc.symbols for i in ch.ohlc.intervals]
    return keys


def symbols(section: Any) -> list[str]:
    return section.channels.all_symbols()


def static_pairs(section: Any) -> dict[str, list[str]]:
    ch = section.channels
    return {
        name: list(getattr(ch, name).symbols) if getattr(ch, name) is not None else []
        for name in ("book", "trade", "ticker", "spread", "ohlc")
    }


def _endpoint(merge: ProtocolMerge, cfg: RelayConfig, ctx: EndpointContext) -> V1Endpoint:
    section = _section(cfg)
    assert section is not None
    ch = section.channels
    return V1Endpoint(
        merge,
        static_pairs(section),
        ch.book.depth if ch.book is not None else 10,
        ch.ohlc.intervals if ch.ohlc is not None else (1,),
        max_subscriptions_per_client=cfg.server.max_subscriptions_per_client,
        path=section.path,
        heartbeat_interval=cfg.server.heartbeat_interval,
        dynamic=cfg.server.dynamic_subscriptions,
        resubscribe=ctx.resubscribe,
    )


def _describe(v1: V1Config, cfg: RelayConfig) -> str:
    names = [
        n if n != "book" else f"book/{v1.channels.book.depth}"  # type: ignore[union-attr]  # not None here
        for n in ("book", "trade", "ticker", "spread", "ohlc")
        if getattr(v1.channels, n) is not None and getattr(v1.channels, n).symbols
    ]
    scheme = "wss" if cfg.server.tls else "ws"
    return (
        f"Spot v1: {len(v1.channels.all_symbols())} pairs, channels {' '.join(names)}, "
        f"serving {scheme}://{cfg.server.listen}{v1.path}"
    )


SPOT_V1 = ProtocolSpec(
    name="v1",
    parser=V1Parser,
    make_merge=_merge,
    encode_request=encode_request,
    request_params=request_params,
    encode_ping=encode_ping,
    section=_section,
    desired=desired,
    symbols=symbols,
    make_endpoint=_endpoint,
    describe=_describe,
    label_prefix="v1:",
)
