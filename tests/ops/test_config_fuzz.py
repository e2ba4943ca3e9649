"""Any mangled config gives either a valid RelayConfig or ONE line `key.path: reason` – never a
traceback, never a multi-line pydantic dump (what check-config and a SIGHUP reload print)."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from relay.config import ConfigError, RelayConfig, parse_config
from tests.kit.props import capped

VALID: dict[str, Any] = {
    "upstreams": [
        {"name": "a", "url": "wss://ws.kraken.com/v2"},
        {"name": "b", "url": "wss://beta-ws.kraken.com/v2", "proxy": "socks5://127.0.0.1:1080"},
    ],
    "channels": {
        "book": {"symbols": ["BTC/USD", "ETH/USD"], "depth": 100},
        "trade": {"symbols": ["BTC/USD"]},
        "ohlc": {"symbols": ["BTC/USD"], "intervals": [1, 5]},
        "instrument": True,
    },
    "server": {
        "listen": "127.0.0.1:8765",
        "path": "/v2",
        "max_clients": 10,
        "dynamic_subscriptions": {"enabled": True, "allow": ["SOL/USD"]},
    },
    "http": {"listen": "127.0.0.1:9100"},
    "reconnect": {"initial_delay": 0.5},
    "logging": {"level": "info", "format": "json"},
}

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(["BTC/USD", "ws://x", "127.0.0.1:0", "wss://", "1e9"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=8,
)


def paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += paths(v, (*prefix, i))
    return out


def mutate(doc: dict[str, Any], path: tuple[Any, ...], action: str, key: str, value: Any) -> Any:
    if not path:
        return value if action == "replace" else doc
    parent: Any = doc
    for part in path[:-1]:
        parent = parent[part]
    last = path[-1]
    if action == "replace":
        parent[last] = value
    elif action == "delete":
        del parent[last]
    elif isinstance(parent[last], dict):  # add an unknown (or known) key
        parent[last][key] = value
    return doc


@settings(max_examples=capped(2000))  # ~3.5 ms an example
@given(st.data())
def test_any_mangled_config_is_valid_or_one_line_naming_a_key(data: st.DataObject) -> None:
    doc = copy.deepcopy(VALID)
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths(doc)))
        action = data.draw(st.sampled_from(["replace", "delete", "add"]))
        doc = mutate(doc, path, action, data.draw(st.text(max_size=10)), data.draw(values))
        if not isinstance(doc, dict):
            break
    try:
        cfg = parse_config(doc, env={})
    except ConfigError as exc:
        msg = str(exc)
        assert msg and "\n" not in msg, msg
        key, sep, reason = msg.partition(": ")
        assert sep and key and reason, msg
        assert "Value error" not in msg and "For further information" not in msg, msg
    else:
        assert isinstance(cfg, RelayConfig)
