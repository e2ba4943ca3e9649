"""Protocol registry: what the generic layers (upstream pool, planner, server, app) need to know
about each Kraken websocket protocol the relay speaks.

One stack per protocol (multiproto design): each protocol has its own merge, fed only by the
upstreams configured with that `protocol:`, and its own endpoint path on the one local listener.
Nothing is translated between protocols. Adding a protocol = one `ProtocolSpec` in `PROTOCOLS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from relay.core.merge import MergeSettings
from relay.ops.config import RelayConfig
from relay.upstream.subscriptions import SubKey, desired_from_channels
from relay.upstream.subscriptions import request_params as v2_request_params

if TYPE_CHECKING:  # pragma: no cover
    from relay.server.listener import LocalServer


@dataclass(frozen=True, slots=True)
class ProtocolSpec:
    """Everything protocol-specific the generic layers use.

    * `parser()`: a new upstream adapter (`.parse(raw) -> relay.core.events` event; connection
      frames map to the neutral control events StatusEvent/AckEvent/PongEvent/HeartbeatEvent).
    * `make_merge(settings, cfg)`: the protocol's merge (same public surface as `Merge`).
    * `encode_request(channel, symbols | None, req_id, method=, **params) -> bytes` and
      `request_params(channel, param) -> dict`: the subscription planner's request frames.
    * `encode_ping(req_id) -> bytes` or None when the protocol relies on RFC 6455 pings
      (`ws_ping_interval(cfg)` then says how often the websocket layer pings).
    * `section(cfg)`: the config section with this protocol's channels (None: not configured);
      `desired(section) -> list[SubKey]`; `symbols(section)`: configured symbols (readiness).
    * `path(cfg)`: the local endpoint path; `endpoint(server, merge, cfg)`: the server-side
      endpoint for that path (None for v2, which is `LocalServer`'s built-in endpoint).
    * `frame_timeout(cfg)`: upstream liveness deadline (any frame proves the line alive).
    """

    name: str
    parser: Callable[[], Any]
    make_merge: Callable[[MergeSettings, RelayConfig], Any]
    encode_request: Callable[..., bytes]
    request_params: Callable[[str, int], dict]
    encode_ping: Callable[[int], bytes] | None
    section: Callable[[RelayConfig], Any]
    desired: Callable[[Any], list[SubKey]]
    symbols: Callable[[Any], list[str]]
    path: Callable[[RelayConfig], str]
    endpoint: Callable[[LocalServer, Any, RelayConfig], Any] | None = None
    ws_ping_interval: Callable[[RelayConfig], float | None] = lambda cfg: None
    frame_timeout: Callable[[RelayConfig], float] = lambda cfg: cfg.liveness.frame_timeout
    # Prefix of this protocol's symbols in metrics labels and /readyz keys, where its names can
    # collide with another protocol's (Spot v1 `ETH/USD` vs v2 `ETH/USD`): "v1:" -> "v1:ETH/USD".
    label_prefix: str = ""


# -- Spot v2 ---------------------------------------------------------------------------------
def _v2_parser() -> Any:
    from relay.core.v2 import V2Parser

    return V2Parser()


def _v2_merge(settings: MergeSettings, cfg: RelayConfig) -> Any:
    from relay.core.merge import Merge

    return Merge(settings)


def _v2_encode(channel: str, symbols: list[str] | None, req_id: int, method: str = "subscribe", **params: Any) -> bytes:
    from relay.core.v2 import encode_subscribe

    return encode_subscribe(channel, symbols, req_id, method=method, **params)


def _v2_ping(req_id: int) -> bytes:
    from relay.core.v2 import encode_ping

    return encode_ping(req_id)


V2 = ProtocolSpec(
    name="v2",
    parser=_v2_parser,
    make_merge=_v2_merge,
    encode_request=_v2_encode,
    request_params=v2_request_params,
    encode_ping=_v2_ping,
    section=lambda cfg: cfg.channels if any(u.protocol == "v2" for u in cfg.upstreams) else None,
    desired=desired_from_channels,
    symbols=lambda section: section.all_symbols(),
    path=lambda cfg: cfg.server.path,
)

PROTOCOLS: dict[str, ProtocolSpec] = {"v2": V2}


def register(spec: ProtocolSpec) -> None:
    """Add (or replace) a protocol; called at import time by the protocol's module."""
    PROTOCOLS[spec.name] = spec


def get(name: str) -> ProtocolSpec:
    _load_all()
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise ValueError(f"protocol {name!r} is not available") from None


def configured(cfg: RelayConfig) -> list[ProtocolSpec]:
    """The protocols with at least one upstream in `cfg`, v2 first."""
    _load_all()
    names = dict.fromkeys(u.protocol for u in cfg.upstreams)
    return [PROTOCOLS[n] for n in PROTOCOLS if n in names] + [
        get(n) for n in names if n not in PROTOCOLS
    ]


_EXTRA_MODULES = ("relay.core.futures_protocol", "relay.core.v1_protocol")


def _load_all() -> None:
    """Import the optional protocol modules once (each calls `register`)."""
    import importlib

    for mod in _EXTRA_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name != mod:
                raise
