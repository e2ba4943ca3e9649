"""Read capture files (`relay.capture.format`): records in order, files oldest first.

A file cut short by a crash is read up to its last complete zstd frame (batch); what follows
is reported in `Reader.truncated`, never raised."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import zstandard

from relay.capture.format import SUFFIX, Record, decode


def capture_files(paths: Iterable[str | Path]) -> list[Path]:
    """Files named on the command line, or every capture file of a directory, oldest first
    (names sort by their start time)."""
    out: list[Path] = []
    for p in map(Path, paths):
        out += sorted(p.glob(f"*{SUFFIX}")) if p.is_dir() else [p]
    return out


class Reader:
    def __init__(self, paths: Iterable[str | Path]) -> None:
        self.files = capture_files(paths)
        self.truncated: list[Path] = []  # files whose last batch was incomplete
        self.bad_lines = 0

    def __iter__(self) -> Iterator[Record]:
        for path in self.files:
            yield from self._file(path)

    def _file(self, path: Path) -> Iterator[Record]:
        data = path.read_bytes()
        dctx = zstandard.ZstdDecompressor()
        while data:
            dobj = dctx.decompressobj()
            try:
                chunk = dobj.decompress(data)
            except zstandard.ZstdError:
                self.truncated.append(path)
                return
            if not dobj.eof:  # the batch being written when the writer stopped
                self.truncated.append(path)
                return
            data = dobj.unused_data
            for line in chunk.splitlines():
                if not line:
                    continue
                try:
                    yield decode(line)
                except ValueError:
                    self.bad_lines += 1
