"""`kraken-relay` command line: run, demo, sim, check-config, verify, capture, replay, cert, --version.

Each subcommand lives in the module that owns it; this file only wires argparse to them, so
subcommands import their (heavier) dependencies only when used. Exit codes: 0 ok, 2 bad config
or usage, 1 runtime failure.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from relay import __version__

# subcommand -> (module, help). Each module provides `add_arguments(parser)` and `main(args) -> int`.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "run": ("relay.app", "run the relay daemon with a YAML config"),
    "demo": ("relay.demo", "run the relay against the built-in simulator, with periodic faults"),
    "sim": ("relay.sim.cli", "run the built-in Kraken simulator (Spot v2, Spot v1, Futures; with fault injection)"),
    "check-config": ("relay.ops.check_config", "validate a config file and exit (0 ok, 2 invalid)"),
    "verify": ("relay.verify.client", "check a live feed: every book checksum / seq step, every trade once"),
    "capture": (
        "relay.ops.capture_cli",
        "read capture files: inspect (per-line summary, re-verified), export (NDJSON), import",
    ),
    "replay": (
        "relay.sim.capture_replay",
        "serve a capture as Kraken lines, one port per captured line, with its timing",
    ),
    "cert": ("relay.ops.cert", "write a self-signed certificate and key for a local TLS listener (server.tls)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kraken-relay", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"kraken-relay {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        sp = sub.add_parser(name, help=help_text)
        sp.set_defaults(_module=module)
        try:
            importlib.import_module(module).add_arguments(sp)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            sp.set_defaults(_missing=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    if getattr(args, "_missing", False):
        print(f"kraken-relay: '{args.command}' is not available in this build", file=sys.stderr)
        return 2
    return int(importlib.import_module(args._module).main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
