"""Spot v1 in the protocol registry (`relay.protocols`): its merge, requests, config section and
the local endpoint on `v1.path` (`/` by default, as Kraken serves v1).

Imported by `relay.protocols._load_all()`; importing it registers the spec.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from relay import protocols
from relay.core.merge import MergeSettings
from relay.upstream.subscriptions import SubKey


def _parser() -> Any:
    from relay.core.v1 import V1Parser

    return V1Parser()


def _section(cfg: Any) -> Any:
    return getattr(cfg, "v1", None)


def _merge(settings: MergeSettings, cfg: Any) -> Any:
    from relay.core.v1_merge import V1Merge

    section = _section(cfg)
    book = section.channels.book if section is not None else None
    return V1Merge(dataclasses.replace(settings, book_depth=book.depth if book is not None else 10))


def _encode(channel: str, symbols: list[str] | None, req_id: int, method: str = "subscribe", **params: Any) -> bytes:
    from relay.core.v1 import encode_request

    return encode_request(channel, symbols, req_id, method=method, **params)


def _ping(req_id: int) -> bytes:
    from relay.core.v1 import encode_ping

    return encode_ping(req_id)


def request_params(channel: str, param: int) -> dict:
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
    return {name: list(getattr(ch, name).symbols) if getattr(ch, name) is not None else []
            for name in ("book", "trade", "ticker", "spread", "ohlc")}


def _endpoint(server: Any, merge: Any, cfg: Any) -> Any:
    from relay import __version__
    from relay.server.v1 import V1Endpoint

    section = _section(cfg)
    ch = section.channels
    return V1Endpoint(
        merge,
        static_pairs(section),
        ch.book.depth if ch.book is not None else 10,
        ch.ohlc.intervals if ch.ohlc is not None else (1,),
        max_subscriptions_per_client=cfg.server.max_subscriptions_per_client,
        version=f"kraken-relay {__version__}",
        path=section.path,
        heartbeat_interval=cfg.server.heartbeat_interval,
    )


V1 = protocols.ProtocolSpec(
    name="v1",
    parser=_parser,
    make_merge=_merge,
    encode_request=_encode,
    request_params=request_params,
    encode_ping=_ping,
    section=_section,
    desired=desired,
    symbols=symbols,
    path=lambda cfg: _section(cfg).path,
    endpoint=_endpoint,
    label_prefix="v1:",
)

protocols.register(V1)
