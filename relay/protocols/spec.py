"""`ProtocolSpec`: everything the protocol-neutral layers (upstream, server, daemon) need to know
about one Kraken websocket protocol. Each protocol package builds one; `relay.protocols.PROTOCOLS`
lists them. The seams it hands out are typed in `relay.protocols.interfaces`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from relay.config import RelayConfig
from relay.core.keys import SubKey
from relay.core.outputs import MergeSettings
from relay.protocols.interfaces import Endpoint, Parser, ProtocolMerge, RequestEncoder


@dataclass(frozen=True, slots=True)
class EndpointContext:
    """What the daemon hands a protocol's endpoint besides its merge and the config."""

    version: str  # the relay's version, for status/greeting frames
    resubscribe: Callable[[], None]  # the endpoint's demanded subscriptions changed


def _no_ws_ping(cfg: RelayConfig) -> float | None:
    return None


def _frame_timeout(cfg: RelayConfig) -> float:
    return cfg.liveness.frame_timeout


@dataclass(frozen=True, slots=True)
class ProtocolSpec:
    """One protocol's upstream side (parser, requests, pings, liveness), its merge, its config
    section and its local endpoint.

    * `parser()`: a new upstream adapter (frame bytes -> `relay.core.events`).
    * `make_merge(settings, cfg)`: the protocol's merge (`ProtocolMerge`).
    * `encode_request(channel, symbols | None, req_id, method=, **params)` and
      `request_params(channel, param)`: the subscription planner's request frames.
    * `encode_ping(req_id)`, or None when the protocol relies on RFC 6455 pings (sent every
      `ws_ping_interval(cfg)` seconds by the websocket layer).
    * `section(cfg)`: this protocol's config section (None: not configured); `desired(section)`:
      the upstream subscriptions it asks for; `symbols(section)`: its symbols (readiness).
    * `make_endpoint(merge, cfg, ctx)`: the local endpoint, served on its `path`.
    * `describe(section, cfg)`: what `kraken-relay check-config` prints for this protocol.
    * `frame_timeout(cfg)`: upstream liveness deadline (any frame proves the line alive).
    * `label_prefix`: prefix of its symbols in metrics labels and /readyz keys where its names
      collide with another protocol's (Spot v1 `ETH/USD` vs v2 `ETH/USD`): "v1:" -> "v1:ETH/USD".
    """

    name: str
    parser: Callable[[], Parser]
    make_merge: Callable[[MergeSettings, RelayConfig], ProtocolMerge]
    encode_request: RequestEncoder
    request_params: Callable[[str, int], dict[str, Any]]
    encode_ping: Callable[[int], bytes] | None
    section: Callable[[RelayConfig], Any]
    desired: Callable[[Any], list[SubKey]]
    symbols: Callable[[Any], list[str]]
    make_endpoint: Callable[[ProtocolMerge, RelayConfig, EndpointContext], Endpoint]
    describe: Callable[[Any, RelayConfig], str]  # (section, cfg): one summary clause (check-config)
    ws_ping_interval: Callable[[RelayConfig], float | None] = _no_ws_ping
    frame_timeout: Callable[[RelayConfig], float] = _frame_timeout
    label_prefix: str = ""
