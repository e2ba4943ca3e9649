"""The Kraken websocket protocols the relay speaks, one package each, registered in one table.

Each package (`spot_v2`, `spot_v1`, `futures`) holds that protocol's Sans-I/O pieces: wire
parsing and encoding (`wire`), its merge (`merge`), its local endpoint (`endpoint`: requests,
acks, errors, fan-out), its upstream subscription planning, and its `ProtocolSpec` (`spec`).
The daemon builds one stack (merge + upstream pool + endpoint) per protocol that has an upstream
in the config; nothing is translated between protocols. Adding a protocol means adding a
package and one line in `PROTOCOLS`.
"""

from __future__ import annotations

from relay.config import RelayConfig
from relay.protocols.futures.spec import FUTURES
from relay.protocols.spec import EndpointContext, ProtocolSpec
from relay.protocols.spot_v1.spec import SPOT_V1
from relay.protocols.spot_v2.spec import SPOT_V2

PROTOCOLS: dict[str, ProtocolSpec] = {spec.name: spec for spec in (SPOT_V2, SPOT_V1, FUTURES)}

__all__ = ["PROTOCOLS", "EndpointContext", "ProtocolSpec", "configured", "get"]


def get(name: str) -> ProtocolSpec:
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise ValueError(f"protocol {name!r} is not available") from None


def configured(cfg: RelayConfig) -> list[ProtocolSpec]:
    """The protocols with at least one upstream in `cfg`, in `PROTOCOLS` order."""
    names = {u.protocol for u in cfg.upstreams}
    return [spec for name, spec in PROTOCOLS.items() if name in names]
