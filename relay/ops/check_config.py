"""`kraken-relay check-config FILE`: validate a config the way `run` would, then exit.

Exit 0 with a one-line summary on stdout; exit 2 with one line on stderr naming the key path and
what is wrong. Environment overrides (KRAKEN_RELAY_LISTEN, ...) are applied, exactly as `run`
applies them, so the systemd `ExecStartPre=` and the Docker image check what will really run;
a config `run` refuses (a public listener without a token) fails here too.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys

import yaml

from relay import protocols
from relay.config import ConfigError, RelayConfig, load_config, split_host_port


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="YAML config file to validate")
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing when the config is valid")
    parser.add_argument(
        "--print",
        dest="print_effective",
        action="store_true",
        help="print the effective config (defaults and environment overrides applied) as YAML",
    )


def summary(cfg: RelayConfig) -> str:
    """One line an operator can eyeball: lines, then each protocol's symbols, channels and
    endpoint, then the HTTP listener."""
    ups = ", ".join(u.name for u in cfg.upstreams)
    parts = [f"{len(cfg.upstreams)} upstreams ({ups})"]
    for spec in protocols.configured(cfg):
        section = spec.section(cfg)
        if section is not None:
            parts.append(spec.describe(section, cfg))
    dyn = cfg.server.dynamic_subscriptions
    if dyn.enabled:
        rules = " (allow/deny patterns)" if dyn.allow or dyn.deny else ""
        parts.append(
            f"on demand: up to {dyn.max_subscriptions} per protocol{rules}, released after {dyn.release_after:g} s"
        )
    else:
        parts.append("on demand: off (only the configured set)")
    if cfg.nats is not None:
        js = f", JetStream {cfg.nats.jetstream.max_age_seconds:g} s" if cfg.nats.jetstream else ""
        parts.append(f"NATS: publishing {cfg.nats.subject_prefix}.* to {len(cfg.nats.servers)} server(s){js}")
    nats_lines = [u.name for u in cfg.upstreams if u.is_nats]
    if nats_lines:
        parts.append(f"NATS lines: {', '.join(nats_lines)}")
    parts.append(f"http {cfg.http.listen}")
    return "; ".join(parts)


def public_listener_problem(cfg: RelayConfig) -> str | None:
    """Why a listener reachable from other hosts is unprotected (no `server.token`), or None.
    `run` refuses it unless `server.public_without_token` is `warn` or `allow`."""
    host, _ = split_host_port(cfg.server.listen)
    if _is_loopback(host) or cfg.server.token:
        return None
    return (
        f"server.listen {cfg.server.listen} is reachable from other hosts and server.token is not set"
        " (set server.token or $KRAKEN_RELAY_TOKEN, or server.public_without_token: warn)"
    )


def warnings(cfg: RelayConfig) -> list[str]:
    """Valid but risky settings, printed as `warning:` lines (they do not change the exit code)."""
    out = []
    problem = public_listener_problem(cfg)
    if problem is not None and cfg.server.public_without_token == "warn":
        out.append(f"{problem.split(' (')[0]} (server.public_without_token: warn)")
    if len(cfg.upstreams) == 1:
        out.append("upstreams: only one line configured, so there is no redundancy")
    if getattr(cfg, "v1", None) is not None and cfg.server.tls is None:
        out.append("v1: server.tls is not set; some v1 clients (cryptofeed) only connect to wss:// addresses")
    return out


def effective_yaml(cfg: RelayConfig) -> str:
    """The config as the relay will run it; the client token is redacted."""
    data = cfg.model_dump(mode="json")
    if data.get("server", {}).get("token"):
        data["server"]["token"] = "<redacted>"
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=100)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def main(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.file)
    except ConfigError as exc:
        msg = str(exc)
        if not msg.startswith(str(args.file)):
            msg = f"{args.file}: {msg}"
        print(f"invalid config {msg}", file=sys.stderr)
        return 2
    if getattr(args, "print_effective", False):
        print(effective_yaml(cfg), end="")
        return 0
    problem = public_listener_problem(cfg)
    if problem is not None and cfg.server.public_without_token == "refuse":
        print(f"invalid config {args.file}: {problem}; `run` refuses it", file=sys.stderr)
        return 2
    if not args.quiet:
        for w in warnings(cfg):
            print(f"warning: {w}", file=sys.stderr)
        print(f"config ok: {args.file}: {summary(cfg)}")
    return 0
