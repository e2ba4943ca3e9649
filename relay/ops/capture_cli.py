"""`kraken-relay capture inspect | export | import`: read and make flight-recorder files.

  kraken-relay capture inspect PATH... [--gap SECONDS] [--json] [--check]
      per line: protocol, urls, time span, sessions, frames per channel and symbol, requests,
      disconnects, connect failures, resyncs, silent gaps, downtime, and every book frame
      re-verified (spot CRC32, futures seq) per session; the published stream per (symbol,
      depth). `--json` prints `relay.ops.capture_inspect`'s dict (keys in its docstring) plus
      `files`, `truncated_files` (cut short by a crash; read up to the last whole batch) and
      `bad_lines`. `--check`: exit 1 when a mismatch, seq error or duplicate trade was found.
  kraken-relay capture export PATH... (--line NAME | --published) [-o FILE] [--kinds K,...] [--raw]
      plain NDJSON, one record a line (the format's own objects); `--raw`: only the frames'
      text, one a line (`--kinds` then selects which records with text: default `frame`;
      frames an import synthesized, marked `synthetic`, are left out: they were never received).
  kraken-relay capture import FIXTURE --format F --protocol P --line NAME -o DIR [--url URL]
      a third-party recording (`relay.capture.fixtures`) written as real capture files.

PATH is a capture file or a directory of them. Exit 0 ok, 2 bad usage or input, 1 a failure
(a write that failed, `--check` findings).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import orjson

from relay.capture.fixtures import FORMATS, PROTOCOLS, PUBLIC_URLS, FixtureError, convert_file
from relay.capture.format import CONNECT, CONNECT_FAILED, DISCONNECT, FRAME, PUBLISHED, RESYNC, SUBSCRIBE, encode
from relay.capture.reader import Reader
from relay.capture.writer import CaptureWriter
from relay.ops.capture_inspect import Inspector, text_report

KINDS = (FRAME, SUBSCRIBE, CONNECT, CONNECT_FAILED, DISCONNECT, RESYNC)
_PENDING = 4 * 2000  # import: records handed to the writer thread but not yet written (it never drops)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="capture_action", metavar="ACTION")
    parser.set_defaults(_capture_usage=parser.format_usage)

    p = sub.add_parser("inspect", help="per-line summary with every book frame re-verified")
    p.add_argument("paths", nargs="+", metavar="PATH", help="capture files or directories")
    p.add_argument("--gap", type=float, default=5.0, metavar="SECONDS", help="report silences longer than this")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--check", action="store_true", help="exit 1 on a checksum mismatch, seq error or duplicate")

    e = sub.add_parser("export", help="records as plain NDJSON (or the raw frames)")
    e.add_argument("paths", nargs="+", metavar="PATH", help="capture files or directories")
    which = e.add_mutually_exclusive_group(required=True)
    which.add_argument("--line", help="the line to export")
    which.add_argument("--published", action="store_true", help="export the published stream")
    e.add_argument("-o", "--output", metavar="FILE", help="output file (default stdout)")
    e.add_argument("--kinds", help=f"comma-separated record kinds ({','.join(KINDS)}; default all, --raw: frame)")
    e.add_argument("--raw", action="store_true", help="only the frames' text, one per line")

    i = sub.add_parser("import", help="convert a third-party Kraken recording into capture files")
    i.add_argument("fixture", metavar="FIXTURE", help="the recording")
    i.add_argument("--format", required=True, choices=FORMATS, help="its layout")
    i.add_argument("--protocol", required=True, choices=PROTOCOLS, help="the Kraken API it recorded")
    i.add_argument("--line", required=True, help="the line name to record it as")
    i.add_argument("-o", "--output", required=True, metavar="DIR", help="capture directory to write")
    i.add_argument("--url", help="the line's url (default: the file's, else Kraken's public url)")


def _fail(msg: str, code: int = 2) -> int:
    print(f"kraken-relay capture: {msg}", file=sys.stderr)
    return code


def _reader(paths: list[str]) -> Reader | str:
    """A reader of the named paths, or why there is nothing to read."""
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        return f"no such file or directory: {', '.join(missing)}"
    reader = Reader(paths)
    if not reader.files:
        return f"no capture files in {', '.join(paths)}"
    return reader


def main(args: argparse.Namespace) -> int:
    action = getattr(args, "capture_action", None)
    if action is None:
        sys.stderr.write(args._capture_usage())
        return _fail("an action is required: inspect, export or import")
    try:
        if action == "inspect":
            return _inspect(args)
        if action == "export":
            return _export(args)
        return _import(args)
    except OSError as exc:
        return _fail(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc))


def _inspect(args: argparse.Namespace) -> int:
    if not args.gap > 0:
        return _fail("--gap must be a positive number of seconds")
    reader = _reader(args.paths)
    if isinstance(reader, str):
        return _fail(reader)
    result = Inspector(args.gap).feed_all(reader).result()
    result["files"] = [str(f) for f in reader.files]
    result["truncated_files"] = [str(f) for f in reader.truncated]
    result["bad_lines"] = reader.bad_lines
    if args.json:
        out = orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n"
    else:
        out = text_report(result)
        if reader.truncated:
            out += f"\ntruncated (read up to the last complete batch): {', '.join(map(str, reader.truncated))}\n"
        if reader.bad_lines:
            out += f"\n{reader.bad_lines} lines that are not capture records were skipped\n"
    _write_stdout(out.encode())
    return 1 if args.check and not result["ok"] else 0


def _export(args: argparse.Namespace) -> int:
    kinds = set((args.kinds or (FRAME if args.raw else ",".join(KINDS))).split(",")) - {""}
    unknown = kinds - set(KINDS)
    if unknown:
        return _fail(f"unknown record kinds: {', '.join(sorted(unknown))} (known: {', '.join(KINDS)})")
    reader = _reader(args.paths)
    if isinstance(reader, str):
        return _fail(reader)
    name = PUBLISHED if args.published else args.line
    others: dict[str, None] = {}
    found = False

    def lines() -> Iterator[bytes]:
        nonlocal found
        for rec in reader:
            if rec.line != name:
                others[rec.line] = None
                continue
            found = True
            if rec.kind not in kinds:
                continue
            if not args.raw:
                yield encode(rec)
            elif rec.data is not None and not rec.fields.get("synthetic"):
                yield rec.data + b"\n"

    with _output(args.output) as out:
        try:
            for chunk in lines():
                out.write(chunk)
        except BrokenPipeError:  # `| head`: the reader is gone, nothing more to say
            _silence_stdout()
            return 0
    if not found:
        return _fail(f"no records of {name!r} (lines in the capture: {', '.join(others) or 'none'})")
    return 0


@contextlib.contextmanager
def _output(path: str | None) -> Iterator[IO[bytes]]:
    if path is None or path == "-":
        yield sys.stdout.buffer
        with contextlib.suppress(BrokenPipeError):
            sys.stdout.buffer.flush()
        return
    with open(path, "wb") as f:
        yield f


def _write_stdout(data: bytes) -> None:
    try:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    except BrokenPipeError:
        _silence_stdout()


def _silence_stdout() -> None:
    """After a broken pipe: point stdout at /dev/null so the interpreter's exit flush is quiet."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _import(args: argparse.Namespace) -> int:
    line = args.line
    if not line or line == PUBLISHED:
        return _fail(f"--line must name a line (not {line!r})")
    if not Path(args.fixture).is_file():
        return _fail(f"no such file: {args.fixture}")
    if args.format == "kraken-sdk" and args.protocol == "v2":
        print(
            "warning: python-kraken-sdk's v2 file was re-serialized and lost its number lexemes, so its"
            " checksums do not verify; the derived wire-ndjson file keeps them",
            file=sys.stderr,
        )
    try:
        records = list(convert_file(args.fixture, args.format, args.protocol, line, args.url))
    except FixtureError as exc:
        return _fail(f"{args.fixture}: {exc}")
    prefix = "import-" + re.sub(r"[^A-Za-z0-9_.-]", "_", line)
    # its own prefix and no retention bound: an import never deletes other capture files
    writer = CaptureWriter(args.output, prefix=prefix, max_total_bytes=2**62, max_file_seconds=1e9)
    frames = made = 0
    try:
        for rec in records:
            _throttle(writer)
            writer.record(rec.line, rec.kind, rec.data, rec.wall_ns, rec.mono_ns, **rec.fields)
            frames += rec.kind == FRAME and not rec.fields.get("synthetic")
            made += bool(rec.fields.get("synthetic"))
    except RuntimeError as exc:
        return _fail(f"writing {args.output} failed: {exc}", 1)
    finally:
        writer.close(timeout=60.0)
    if writer.records_dropped or writer.write_errors:
        return _fail(f"writing {args.output} failed: {writer.last_error or 'records dropped'}", 1)
    url = args.url or next((r.fields.get("url") for r in records if r.kind == CONNECT), PUBLIC_URLS[args.protocol])
    print(
        f"imported {len(records)} records ({frames} frames"
        + (f", {made} synthesized" if made else "")
        + f") as line {line} ({args.protocol}, {url}) into {args.output}"
    )
    return 0


def _throttle(writer: CaptureWriter, pending: int = _PENDING, stall: float = 30.0) -> None:
    """Wait while the writer thread is behind: its queue is bounded and it drops (rather than
    blocks) when full, which suits the live relay but an import must keep every record."""
    done, since = writer.records_written, time.monotonic()
    while writer.records_queued - writer.records_written - writer.records_dropped > pending:
        if writer.records_written != done:
            done, since = writer.records_written, time.monotonic()
        elif time.monotonic() - since > stall:
            raise RuntimeError(f"the capture writer made no progress for {stall:g} s")
        time.sleep(0.001)
