"""The typed seams between the layers: what a protocol hands the upstream, server and daemon
layers (`ProtocolMerge`, `Endpoint`), and what those layers hand back (`Session`).

They are `typing.Protocol`s: the protocol packages implement them without importing the layers
above, and mypy checks both sides.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from relay.core.keys import SubKey
from relay.core.outputs import Parser, Publication, ResyncRequest, UpstreamStats

__all__ = ["BusSource", "Endpoint", "Parser", "ProtocolMerge", "RequestEncoder", "Session"]


class RequestEncoder(Protocol):
    """`(channel, symbols | None, req_id, method=, **params) -> frame`: one (un)subscribe request."""

    def __call__(
        self, channel: str, symbols: list[str] | None, req_id: int, method: str = "subscribe", **params: Any
    ) -> bytes: ...


class ProtocolMerge(Protocol):
    """A protocol's merge as the upstream pool, the endpoint and the daemon use it (Sans-I/O).

    The upstream connection registers its line (`add_upstream`), feeds every frame (`feed`, the
    hot path; control events come back for the connection to act on), reports connection state,
    and drains `take()` (publications for the endpoint) and `take_requests()` (resyncs).
    """

    upstream_stats: list[UpstreamStats]
    books: dict[str, Any]
    trades: dict[str, Any]
    tickers: dict[str, Any]

    def add_upstream(self, name: str) -> int: ...
    def upstream_up(self, up: int, now: float) -> None: ...
    def upstream_down(self, up: int, now: float) -> None: ...
    def line_status(self, up: int, system: str, now: float, version: str = "") -> None: ...
    def upstream_version(self) -> str: ...
    def symbol_resubscribing(self, up: int, channel: str, symbol: str, now: float) -> None: ...
    def feed(self, up: int, raw: bytes, now: float) -> Any: ...
    def tick(self, now: float) -> None: ...
    def take(self) -> list[Publication]: ...
    def take_requests(self) -> list[ResyncRequest]: ...
    def system_status(self) -> str: ...
    def symbol_state(self, symbol: str) -> dict[str, Any]: ...
    def book_snapshot(self, symbol: str, depth: int) -> bytes | None: ...


class Session(Protocol):
    """One client connection as an endpoint sees it (`relay.server.client.ClientConnection`).

    `subs`, `relay_filter` and `relay_subscribed` are the endpoint's per-client subscription
    state; `ep_state` is free for an endpoint's own per-client object.
    """

    connection_id: int
    subs: set[Any]
    relay_filter: set[str] | None
    relay_subscribed: bool
    ep_state: Any

    def queue(self, frame: bytes) -> None: ...  # one text message for this client only
    def deliver(self, wire: bytes) -> None: ...  # a frame built once by `relay.core.wsframe.text_frame`
    def deliver_book(self, key: Any, wire: bytes, snapshot: bool) -> None: ...  # droppable book frame
    def open_book(self, key: Any, snapshot: bool) -> None: ...
    def stop_book(self, key: Any) -> None: ...
    def count_error(self) -> None: ...  # a request answered with an error (metrics)
    def idle(self, now: float) -> float: ...  # seconds since its last output (0: output queued)


class Endpoint(Protocol):
    """A protocol served on its own path of the one local listener (Sans-I/O).

    `source` serves book snapshots for slow-client resets (`book_snapshot(symbol, key)`). The
    connection calls `opened` after the handshake (queue a greeting), `message` per text
    message (after size and rate checks), `reject` when such a check fails (`reason`: too_big |
    binary | rate), `closed` once. `publish` gets the merge's publications; `tick` runs timers
    (heartbeats, pending requests); `reload(cfg) -> cfg` on SIGHUP may veto changes by returning
    an adjusted config; `demanded_subscriptions()` is the upstream set the endpoint needs now
    (configured plus what clients asked for), or None to use the protocol's configured set;
    `upstream_rejected(key, error, now)`: a line's subscription `key` was refused by Kraken (clients
    waiting for an on-demand `key` get Kraken's error).
    """

    name: str
    path: str
    source: Any

    def opened(self, conn: Session, now: float) -> None: ...
    def message(self, conn: Session, data: bytes, now: float) -> None: ...
    def reject(self, conn: Session, reason: str, data: bytes | None) -> None: ...
    def closed(self, conn: Session, now: float) -> None: ...
    def tick(self, now: float) -> None: ...
    def publish(self, pubs: Iterable[Publication]) -> None: ...
    def stats(self) -> dict[str, Any]: ...
    def reload(self, cfg: Any) -> Any: ...
    def demanded_subscriptions(self) -> Sequence[SubKey] | None: ...
    def upstream_rejected(self, key: SubKey, error: str, now: float) -> None: ...  # Kraken refused `key`


class BusSource(Protocol):
    """What the NATS publisher (`relay.nats.publisher`) reads of an endpoint: which publications
    are client data, the exact frame a subscribed client receives, and a new subscriber's
    snapshot frame (the same bytes a websocket client subscribing now would get)."""

    def bus_channel(self, channel: str) -> bool: ...  # published on NATS (not the merge's internal kinds)
    def bus_frame(self, pub: Publication) -> bytes | None: ...
    def bus_snapshot(self, channel: str, symbol: str, key: int) -> bytes | None: ...
    def bus_want_book(self, symbol: str, depth: int) -> bool: ...  # keep publishing this depth's view
