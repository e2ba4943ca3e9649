"""The relay's YAML configuration: schema, defaults, validation with one-line errors.

Validation uses pydantic; errors are reported as `key.path[i].field: what is wrong`, one line,
so `kraken-relay check-config` and a failed SIGHUP reload can name exactly what to fix.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from relay.core.spot import BOOK_DEPTHS, OHLC_INTERVALS


class ConfigError(ValueError):
    """A config problem, already formatted as one line: `key.path: reason`."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _host_port(value: str, what: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"must be HOST:PORT for the {what}, got {value!r}")
    return value


def split_host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


class NatsTlsConfig(_Strict):
    ca: str | None = None
    cert: str | None = None
    key: str | None = None


class NatsAuthConfig(_Strict):
    """Credentials and TLS for a NATS connection (the publisher's, or a NATS line's `nats:`)."""

    user: str | None = None
    password: str | None = None
    token: str | None = None
    creds: str | None = None  # a NATS credentials file (JWT + nkey seed)
    tls: NatsTlsConfig | None = None

    def client_options(self) -> dict[str, Any]:
        """nats-py `connect()` keyword arguments (the TLS context is built here, at connect)."""
        import ssl

        opts: dict[str, Any] = {}
        if self.user is not None:
            opts["user"], opts["password"] = self.user, self.password
        if self.token is not None:
            opts["token"] = self.token
        if self.creds is not None:
            opts["user_credentials"] = self.creds
        if self.tls is not None:
            ctx = ssl.create_default_context(cafile=self.tls.ca)
            if self.tls.cert:
                ctx.load_cert_chain(self.tls.cert, self.tls.key)
            opts["tls"] = ctx
        return opts


class UpstreamConfig(_Strict):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    url: str
    source_address: str | None = None
    proxy: str | None = None
    protocol: Literal["v2", "v1", "futures"] = "v2"  # which stack (merge + endpoint) this line feeds
    # A NATS line (`url: nats://host:4222`, several comma-separated for a cluster): another
    # relay's publications under this prefix (README "NATS"); only for nats:// and tls:// URLs.
    subject_prefix: str | None = None
    nats: NatsAuthConfig | None = None  # a NATS line's credentials and TLS (kept out of the logged URL)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if v.startswith(("nats://", "tls://")):
            nats_servers(v)
            return v
        parts = urlsplit(v)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ValueError("must be a ws:// or wss:// URL (or nats:// for a NATS line)")
        return v

    @field_validator("subject_prefix")
    @classmethod
    def _prefix(cls, v: str | None) -> str | None:
        return None if v is None else _subject_prefix(v)

    @model_validator(mode="after")
    def _nats_line(self) -> UpstreamConfig:
        if self.is_nats:
            if self.source_address or self.proxy:
                raise ValueError("source_address and proxy apply to websocket lines, not to a nats:// line")
        elif self.subject_prefix is not None or self.nats is not None:
            raise ValueError("subject_prefix and nats: only for a nats:// line")
        return self

    @property
    def is_nats(self) -> bool:
        """A line that reads another relay's NATS publications (`relay.upstream.nats_line`)."""
        return self.url.startswith(("nats://", "tls://"))

    @field_validator("source_address")
    @classmethod
    def _source(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                ipaddress.ip_address(v)
            except ValueError:
                raise ValueError("must be an IP address of this host") from None
        return v

    @field_validator("proxy")
    @classmethod
    def _proxy(cls, v: str | None) -> str | None:
        if v is not None:
            parts = urlsplit(v)
            if parts.scheme not in ("http", "socks4", "socks5", "socks5h") or not parts.hostname or not parts.port:
                raise ValueError("must be an http://, socks4:// or socks5:// URL with host and port")
        return v


def nats_servers(v: str) -> list[str]:
    """`nats://a:4222,nats://b:4222` -> the server URLs (each nats:// or tls:// with a host)."""
    servers = [x.strip() for x in v.split(",") if x.strip()]
    if not servers:
        raise ValueError("must name at least one nats:// server")
    for url in servers:
        parts = urlsplit(url)
        if parts.scheme not in ("nats", "tls") or not parts.hostname:
            raise ValueError(f"{url!r} is not a nats:// or tls:// URL with a host")
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError:
            raise ValueError(f"{url!r} has a bad port") from None
    return servers


def _subject_prefix(v: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*", v):
        raise ValueError("must be dot-separated tokens of letters, digits, - and _ (e.g. kraken.eu)")
    return v


def _name_check(what: str, example: str) -> Callable[[list[str]], list[str]]:
    """Validator for a list of market names (`BTC/USD` in v2, `XBT/USD` in v1)."""

    def check(v: list[str]) -> list[str]:
        for s in v:
            if not isinstance(s, str) or "/" not in s or s != s.strip():
                raise ValueError(f"{s!r} is not a Kraken {what} like {example}")
        if len(set(v)) != len(v):
            raise ValueError(f"lists a {what.split()[-1]} twice")
        return v

    return check


class SymbolsChannelConfig(_Strict):
    symbols: list[str] = Field(default_factory=list)

    names: ClassVar[Callable[[list[str]], list[str]]] = staticmethod(_name_check("v2 symbol", "BTC/USD"))

    @field_validator("symbols")
    @classmethod
    def _check_symbols(cls, v: list[str]) -> list[str]:
        return cls.names(v)


class BookChannelConfig(SymbolsChannelConfig):
    depth: int = 100

    @field_validator("depth")
    @classmethod
    def _depth(cls, v: int) -> int:
        if v not in BOOK_DEPTHS:
            raise ValueError(f"must be one of {', '.join(map(str, BOOK_DEPTHS))}")
        return v


class OhlcChannelConfig(SymbolsChannelConfig):
    intervals: list[int] = Field(default_factory=lambda: [1])

    @field_validator("intervals")
    @classmethod
    def _intervals(cls, v: list[int]) -> list[int]:
        bad = [i for i in v if i not in OHLC_INTERVALS]
        if bad:
            raise ValueError(f"{bad[0]} is not a Kraken interval ({', '.join(map(str, OHLC_INTERVALS))})")
        return v


class ChannelsConfig(_Strict):
    book: BookChannelConfig | None = None
    trade: SymbolsChannelConfig | None = None
    ticker: SymbolsChannelConfig | None = None
    ohlc: OhlcChannelConfig | None = None
    instrument: bool = True  # needed for precisions and served to clients

    def all_symbols(self) -> list[str]:
        seen: dict[str, None] = {}
        for ch in (self.book, self.trade, self.ticker, self.ohlc):
            if ch is not None:
                seen.update(dict.fromkeys(ch.symbols))
        return list(seen)


_PRODUCT = re.compile(r"^[A-Za-z]{2}_[A-Za-z0-9_]+$")


def _products(v: list[str]) -> list[str]:
    for p in v:
        if not isinstance(p, str) or not _PRODUCT.fullmatch(p):
            raise ValueError(f"{p!r} is not a Kraken Futures product id like PF_XBTUSD")
    upper = [p.upper() for p in v]
    if len(set(upper)) != len(upper):
        raise ValueError("lists a product twice")
    return upper  # Kraken upper-cases product ids in every answer


class FuturesFeedConfig(_Strict):
    products: list[str] = Field(default_factory=list)

    _check_products = field_validator("products")(classmethod(lambda cls, v: _products(v)))


class FuturesChannelsConfig(_Strict):
    book: FuturesFeedConfig | None = None
    trade: FuturesFeedConfig | None = None
    ticker: FuturesFeedConfig | None = None
    ticker_lite: FuturesFeedConfig | None = None

    def all_products(self) -> list[str]:
        seen: dict[str, None] = {}
        for ch in (self.book, self.trade, self.ticker, self.ticker_lite):
            if ch is not None:
                seen.update(dict.fromkeys(ch.products))
        return list(seen)


class FuturesConfig(_Strict):
    """Kraken Derivatives (`wss://futures.kraken.com/ws/v1`) feeds, served on `path`."""

    channels: FuturesChannelsConfig
    path: str = "/ws/v1"
    # Upstream liveness: the `heartbeat` feed is always subscribed; a line silent for this long
    # (no heartbeat, no data) is reconnected. RFC 6455 pings every `ping_interval` s catch a dead
    # TCP connection sooner (Kraken requires one at least every 60 s).
    heartbeat_timeout: float = Field(default=90.0, gt=0)
    ping_interval: float = Field(default=30.0, gt=0, le=60.0)

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith("/") or v == "/":
            raise ValueError("must start with / and not be / (kept for the v1 endpoint)")
        return v


_v1_pairs: Any = staticmethod(_name_check("v1 pair", "XBT/USD"))


class V1BookConfig(BookChannelConfig):
    names = _v1_pairs


class V1PairsConfig(SymbolsChannelConfig):
    names = _v1_pairs


class V1OhlcConfig(OhlcChannelConfig):
    names = _v1_pairs


class V1ChannelsConfig(_Strict):
    """Spot v1 channels; pairs use v1 names (`XBT/USD`, `XDG/USD`: REST AssetPairs `wsname`)."""

    book: V1BookConfig | None = None
    trade: V1PairsConfig | None = None
    ticker: V1PairsConfig | None = None
    spread: V1PairsConfig | None = None
    ohlc: V1OhlcConfig | None = None

    def all_symbols(self) -> list[str]:
        seen: dict[str, None] = {}
        for ch in (self.book, self.trade, self.ticker, self.spread, self.ohlc):
            if ch is not None:
                seen.update(dict.fromkeys(ch.symbols))
        return list(seen)


class V1Config(_Strict):
    """Legacy Kraken Spot v1 (`wss://ws.kraken.com`) channels, served on `path` (`/`, as Kraken)."""

    channels: V1ChannelsConfig
    path: str = "/"

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("must start with /")
        return v


class TlsConfig(_Strict):
    cert: str
    key: str


class DynamicSubscriptionsConfig(_Strict):
    """On-demand upstream subscriptions, per protocol (each protocol has its own cap).

    Whatever a client asks for beyond the configured (warm) set is subscribed upstream on every
    line, shared with every client asking for the same, and released `release_after` seconds
    after the last client left. `allow` / `deny` are shell-style patterns on the symbol or
    product (`*/USD`, `PF_*`); empty `allow` means any symbol Kraken lists.
    """

    enabled: bool = True
    allow: list[str] = Field(default_factory=list)
    deny: list[str] = Field(default_factory=list)
    max_subscriptions: int = Field(default=200, ge=0, le=10000)  # on-demand upstream subscriptions
    release_after: float = Field(default=60.0, ge=0)
    timeout: float = Field(default=15.0, gt=0)  # a client waits this long for the first data

    @model_validator(mode="before")
    @classmethod
    def _old_name(cls, data: Any) -> Any:
        """`max_symbols` (before 0.3) is the old name of `max_subscriptions`."""
        if isinstance(data, dict) and "max_symbols" in data:
            data = dict(data)
            old = data.pop("max_symbols")
            data.setdefault("max_subscriptions", old)
        return data


class ServerConfig(_Strict):
    listen: str = "127.0.0.1:8765"
    path: str = "/v2"
    tls: TlsConfig | None = None
    token: str | None = None  # bearer token required from every client (loopback too, see below)
    public_without_token: Literal["refuse", "warn", "allow"] = "refuse"  # `run` with a non-loopback listen, no token
    token_exempt_loopback: bool = False  # a TLS proxy on the same host makes every peer loopback
    token_max_failures: int = Field(default=10, ge=1)  # failed token attempts per address per window,
    token_failure_window: float = Field(default=60.0, gt=0)  # then HTTP 429 without a check
    max_clients: int = Field(default=1000, ge=1)
    max_connections_per_peer: int | None = Field(default=None, ge=1)  # open websockets per address; None: max_clients
    # Handshakes every address may hold while the table (2 x max_clients + 64) is full: a newcomer
    # from an address below it evicts the oldest handshake of the address holding the most.
    pending_handshakes_per_peer: int = Field(default=32, ge=1)
    max_subscriptions_per_client: int = Field(default=200, ge=1)
    max_message_bytes: int = Field(default=64 * 1024, ge=1024)
    max_requests_per_second: float = Field(default=50.0, gt=0)
    client_buffer_bytes: int = Field(default=4 * 1024 * 1024, ge=64 * 1024)
    total_buffer_bytes: int = Field(default=256 * 1024 * 1024, ge=1024 * 1024)  # output held for all clients
    client_snapshot_bytes_per_second: int = Field(default=4 * 1024 * 1024, ge=64 * 1024)  # book snapshot pacing
    heartbeat_interval: float = Field(default=1.0, gt=0)
    dynamic_subscriptions: DynamicSubscriptionsConfig = DynamicSubscriptionsConfig()

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        return _host_port(v, "websocket server")

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith("/") or v == "/":
            raise ValueError("must start with / and not be / (kept for the v1 endpoint)")
        return v


class HttpConfig(_Strict):
    listen: str = "127.0.0.1:9100"

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        return _host_port(v, "HTTP endpoint")


class ReconnectConfig(_Strict):
    initial_delay: float = Field(default=0.5, gt=0)
    max_delay: float = Field(default=30.0, gt=0)
    maintenance_delay: float = Field(default=5.0, ge=5.0)
    handshake_timeout: float = Field(default=10.0, gt=0)
    stagger: float = Field(default=1.0, ge=0)
    # A line that was live when it dropped retries at once (no jitter, no stagger), this many
    # times in a row until a session stays up 10 s; 0: always back off.
    immediate_reconnects: int = Field(default=3, ge=0)


class BudgetConfig(_Strict):
    attempts: int = Field(default=100, ge=1)  # per egress address, Cloudflare allows ~150
    window: float = Field(default=600.0, gt=0)


class LivenessConfig(_Strict):
    frame_timeout: float = Field(default=5.0, gt=0)
    ping_interval: float = Field(default=2.0, gt=0)
    stale_after: float = Field(default=10.0, gt=0)


class SubscribeConfig(_Strict):
    batch_size: int = Field(default=20, ge=1)
    requests_per_second: float = Field(default=5.0, gt=0)
    retry_delay: float = Field(default=5.0, gt=0)


class MergeConfig(_Strict):
    trade_gap_wait: float = Field(default=0.5, ge=0)
    history: int = Field(default=512, ge=16)
    recent_trades: int = Field(default=50, ge=0, le=1000)
    # cross-checks (README "No single line is trusted")
    max_clock_skew: float = Field(default=60.0, gt=0)  # book timestamps this far past the clock: refused
    max_line_lead: float = Field(default=5.0, gt=0)  # ... or this far ahead of every other live line
    quarantine_after: int = Field(default=5, ge=1)  # contradictions within a minute that mute a line
    quarantine_for: float = Field(default=60.0, gt=0)  # seconds a muted line's data is ignored


class CaptureConfig(_Strict):
    """The flight recorder (README "Capture"): off unless `dir` is set."""

    dir: str | None = None
    max_file_bytes: int = Field(default=64 * 1024 * 1024, ge=4096)
    max_file_seconds: float = Field(default=3600.0, gt=0)
    max_total_bytes: int = Field(default=1024 * 1024 * 1024, ge=64 * 1024)
    max_age_seconds: float | None = Field(default=None, gt=0)
    published: bool = False  # also record the published stream, as clients received it
    max_pending_bytes: int = Field(default=16 * 1024 * 1024, ge=64 * 1024)  # waiting for the disk
    compression_level: int = Field(default=1, ge=1, le=19)  # zstd; 1 is the cheapest per record


class JetStreamConfig(_Strict):
    """Retain the published subjects in a JetStream stream (README "NATS": replay the last N minutes)."""

    stream: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]+$")  # default: the prefix, `.` as `_`, upper case
    max_age_seconds: float = Field(default=3600.0, gt=0)
    max_bytes: int = Field(default=1024 * 1024 * 1024, ge=1024 * 1024)
    storage: Literal["file", "memory"] = "file"
    replicas: int = Field(default=1, ge=1, le=5)
    keyframe_interval: float = Field(default=10.0, gt=0)  # a book snapshot per subject this often, to start from


class NatsConfig(NatsAuthConfig):
    """Publish every frame served to local clients on NATS too (README "NATS"); off unless set."""

    servers: list[str] = Field(min_length=1)
    subject_prefix: str = "kraken"
    name: str | None = None  # the relay's identity in headers and state; default: the host name
    flush_interval: float = Field(default=0.0, ge=0, le=1.0)  # 0: write each loop pass's batch at its end
    max_pending_bytes: int = Field(default=8 * 1024 * 1024, ge=64 * 1024)  # beyond: dropped and counted
    state_interval: float = Field(default=1.0, gt=0, le=60.0)  # the state subject, this often
    connect_timeout: float = Field(default=2.0, gt=0)
    jetstream: JetStreamConfig | None = None

    @field_validator("servers")
    @classmethod
    def _servers(cls, v: list[str]) -> list[str]:
        return [s for url in v for s in nats_servers(url)]

    @field_validator("subject_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        return _subject_prefix(v)


class LoggingConfig(_Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class RelayConfig(_Strict):
    upstreams: list[UpstreamConfig] = Field(min_length=1)
    # Spot v2 channels; required when a v2 upstream exists (empty otherwise, so code reading
    # `config.channels` needs no None checks).
    channels: ChannelsConfig = ChannelsConfig(instrument=False)
    futures: FuturesConfig | None = None
    v1: V1Config | None = None
    server: ServerConfig = ServerConfig()
    http: HttpConfig = HttpConfig()
    reconnect: ReconnectConfig = ReconnectConfig()
    budget: BudgetConfig = BudgetConfig()
    liveness: LivenessConfig = LivenessConfig()
    subscribe: SubscribeConfig = SubscribeConfig()
    merge: MergeConfig = MergeConfig()
    logging: LoggingConfig = LoggingConfig()
    capture: CaptureConfig = CaptureConfig()
    nats: NatsConfig | None = None

    @model_validator(mode="after")
    def _unique_names(self) -> RelayConfig:
        names = [u.name for u in self.upstreams]
        for i, n in enumerate(names):
            if n in names[:i]:
                raise ValueError(f"upstreams[{i}].name: {n!r} is used twice")
        protocols = {u.protocol for u in self.upstreams}
        if "v2" in protocols:
            if "channels" not in self.model_fields_set:
                raise ValueError("channels: is required (an upstream has protocol v2)")
            if not self.channels.all_symbols() and not self.server.dynamic_subscriptions.enabled:
                raise ValueError("channels: no symbols configured in any channel (and on-demand serving is off)")
        elif "channels" in self.model_fields_set and self.channels.all_symbols():
            raise ValueError("channels: configured but no upstream has protocol v2")
        for proto in ("v1", "futures"):
            section = getattr(self, proto, None)
            if proto in protocols and section is None:
                i = next(i for i, u in enumerate(self.upstreams) if u.protocol == proto)
                raise ValueError(f"{proto}: is required (upstreams[{i}] has protocol {proto})")
            if section is not None and proto not in protocols:
                raise ValueError(f"{proto}: configured but no upstream has protocol {proto}")
        on_demand = self.server.dynamic_subscriptions.enabled
        if self.futures is not None and not self.futures.channels.all_products() and not on_demand:
            raise ValueError("futures.channels: no products configured in any feed (and on-demand serving is off)")
        if self.v1 is not None and not self.v1.channels.all_symbols() and not on_demand:
            raise ValueError("v1.channels: no pairs configured in any channel (and on-demand serving is off)")
        paths = [("server.path", self.server.path)]
        for proto in ("v1", "futures"):
            section = getattr(self, proto, None)
            if section is not None:
                paths.append((f"{proto}.path", getattr(section, "path", "/")))
        for i, (key, path) in enumerate(paths):
            for other, opath in paths[:i]:
                if path == opath:
                    raise ValueError(f"{key}: {path!r} is already used by {other}")
        return self


# ---------------------------------------------------------------------------------------------
ENV_OVERRIDES: dict[str, tuple[str, ...]] = {
    "KRAKEN_RELAY_LISTEN": ("server", "listen"),
    "KRAKEN_RELAY_HTTP_LISTEN": ("http", "listen"),
    "KRAKEN_RELAY_LOG_LEVEL": ("logging", "level"),
    "KRAKEN_RELAY_LOG_FORMAT": ("logging", "format"),
    "KRAKEN_RELAY_TOKEN": ("server", "token"),
    "KRAKEN_RELAY_PUBLIC_WITHOUT_TOKEN": ("server", "public_without_token"),
}


_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif str(part).startswith(("function-", "tagged-union", "nullable")):
            continue
        elif _PLAIN_KEY.fullmatch(str(part)):
            out += ("." if out else "") + str(part)
        else:  # a key with spaces, newlines, ... is shown quoted so the error stays one line
            out += f"[{str(part)!r}]"
    return out or "config"


# pydantic error type -> operator wording (anything not listed keeps pydantic's message)
_PLAIN_MESSAGES = {
    "list_type": "must be a list",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "string_type": "must be a string",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
}


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model that holds the key at `loc` (for "did you mean" on unknown keys)."""
    model: Any = RelayConfig
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return None
        model = None
        for cand in _flatten(field.annotation):
            if isinstance(cand, type) and issubclass(cand, BaseModel):
                model = cand
                break
        if model is None:
            return None
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _flatten(annotation: Any) -> list[Any]:
    args = getattr(annotation, "__args__", None)
    if not args:
        return [annotation]
    out: list[Any] = []
    for a in args:
        out.extend(_flatten(a))
    return out


def _unknown_key(loc: tuple[Any, ...]) -> str:
    model = _model_at(loc)
    if model is None or not loc:
        return "unknown key"
    import difflib

    close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1)
    if close:
        return f"unknown key (did you mean {close[0]!r}?)"
    return f"unknown key (expected one of: {', '.join(model.model_fields)})"


def format_validation_error(exc: ValidationError) -> str:
    """First error as `key.path: reason` (pydantic's own wording, minus its prefixes)."""
    err = exc.errors()[0]
    msg = str(err.get("msg", "invalid"))
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
    etype = str(err.get("type", ""))
    ctx = err.get("ctx") or {}
    raw_loc = tuple(err.get("loc", ()))
    if etype == "extra_forbidden":
        msg = _unknown_key(raw_loc)
    elif etype == "missing":
        msg = "is required"
    elif etype in _PLAIN_MESSAGES:
        msg = _PLAIN_MESSAGES[etype]
    elif etype == "too_short":
        n = ctx.get("min_length", 1)
        msg = f"needs at least {n} item{'s' if n != 1 else ''}" + (
            " (a list of {name, url} mappings)" if raw_loc == ("upstreams",) else ""
        )
    elif etype in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        op = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}[etype]
        bound = next(iter(ctx.values()), "?")
        msg = f"must be {op} {bound}"
    elif msg.startswith("Input should be "):
        msg = "must be " + msg[len("Input should be ") :]
    loc = _loc(raw_loc)
    if loc == "config" and ": " in msg:  # model-level errors carry their own path
        return msg
    return f"{loc}: {msg}"


def parse_config(data: Any, env: dict[str, str] | None = None) -> RelayConfig:
    """Validate a parsed YAML document (plus environment overrides) into a RelayConfig."""
    if not isinstance(data, dict):
        raise ConfigError("config: must be a mapping with upstreams and channels")
    env_vars: Mapping[str, str] = os.environ if env is None else env
    data = dict(data)
    for var, path in ENV_OVERRIDES.items():
        if var in env_vars:
            section = dict(data.get(path[0]) or {})
            section[path[1]] = env_vars[var]
            data[path[0]] = section
    try:
        return RelayConfig.model_validate(data)
    except ValidationError as exc:
        msg = format_validation_error(exc).replace("\r", "\\r").replace("\n", "\\n")  # always one line
        for var, path in ENV_OVERRIDES.items():  # say where an overridden value came from
            if var in env_vars and msg.startswith(".".join(path) + ":"):
                msg += f" (from ${var})"
        raise ConfigError(msg) from None


def load_config(path: str | Path, env: dict[str, str] | None = None) -> RelayConfig:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{where} not valid YAML ({getattr(exc, 'problem', exc)})") from None
    return parse_config(data, env)
