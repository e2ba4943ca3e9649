"""The file side of the recorder: batches to NDJSON, compressed, appended to rotated files within
the size and age bounds. Runs in the recorder's child process (`relay.capture.child`), so none of
this holds the relay's GIL; `CaptureWriter(process=False)` runs it in a thread instead.

A batch holds entries of three shapes (see `CaptureWriter`): a line's frame `(mono, line, data)`,
a publication `(mono, None, data, (protocol, channel, symbol, key))`, any other record
`(wall, mono, line, kind, data, fields)`. Frames and publications take their wall time from the
batch's wall-monotonic `offset`. One batch is one zstd frame, written with one `write()`: a crash
never splits one, so every file but the last is complete and the last reads up to its last
complete batch.
"""

from __future__ import annotations

import marshal
import os
import struct
import time
from pathlib import Path
from typing import Any

import orjson
import zstandard

from relay.capture.format import FRAME, PUBLISHED, SUFFIX, Record, encode


def _head(line: str) -> bytes:
    """The JSON of a line's frame record between `m` and `d`."""
    return b',"l":%b,"k":"frame","d":' % orjson.dumps(line)


def _published_head(protocol: str, channel: str, symbol: str, key: int) -> bytes:
    """The same for a published stream, with its protocol, channel, symbol and key."""
    extra = orjson.dumps({"p": protocol, "channel": channel, "symbol": symbol, "key": key})[1:-1]
    return b',"l":"%b","k":"frame",%b,"d":' % (PUBLISHED.encode(), extra)


ENTRY = struct.Struct("<qiI")  # a packed batch entry: monotonic ns, stream id, length; the bytes follow


def unpack_batch(data: bytes | bytearray, streams: list[Any]) -> list[tuple[Any, ...]]:
    """A packed batch (`CaptureWriter`) as the entries `encode_batch` takes: stream id -> a line's
    frame `(mono, line, data)` or a publication `(mono, None, data, key)`; id -1 -> a marshalled
    record `(wall, mono, line, kind, data, fields)`."""
    out: list[tuple[Any, ...]] = []
    view = memoryview(data)
    unpack, size, pos, end = ENTRY.unpack_from, ENTRY.size, 0, len(data)
    while pos < end:
        mono, sid, n = unpack(data, pos)
        pos += size
        body = bytes(view[pos : pos + n])
        pos += n
        if sid < 0:
            out.append(tuple(marshal.loads(body)))
        else:
            stream = streams[sid]
            out.append((mono, stream, body) if isinstance(stream, str) else (mono, None, body, tuple(stream)))
    return out


def encode_batch(batch: list[tuple[Any, ...]], offset: int, heads: dict[Any, bytes]) -> bytes:
    """The batch as NDJSON. Frames and publications (nearly every record) are formatted around
    one `orjson.dumps` of their text with a cached header (`heads`), half the cost of a generic
    `encode`; a batch of only frames (the usual one) goes through one list comprehension."""
    dumps = orjson.dumps
    try:  # the usual batch: only frames of lines already seen, all valid UTF-8
        return b"".join(
            [b'{"w":%d,"m":%d%b%b}\n' % (m + offset, m, heads[ln], dumps(d.decode())) for m, ln, d in batch]
        )
    except (ValueError, KeyError, UnicodeDecodeError):  # a publication, another kind, a new line...
        pass
    parts: list[bytes] = []
    for t in batch:
        n = len(t)
        if n == 6:
            parts.append(encode(Record(*t)))
            continue
        m, line, data = t[0], t[1], t[2]
        hkey = line if n == 3 else t[3]
        head = heads.get(hkey)
        if head is None:
            head = heads[hkey] = _head(hkey) if n == 3 else _published_head(*hkey)
        try:
            text = dumps(data.decode())
        except UnicodeDecodeError:  # hostile bytes: the generic path keeps them as base64
            fields = {} if n == 3 else dict(zip(("p", "channel", "symbol", "key"), hkey, strict=True))
            parts.append(encode(Record(m + offset, m, line if n == 3 else PUBLISHED, FRAME, data, fields)))
            continue
        parts.append(b'{"w":%d,"m":%d%b%b}\n' % (m + offset, m, head, text))
    return b"".join(parts)


class CaptureFiles:
    """Rotated, bounded capture files in `directory` named `<prefix>-<UTC start>-<n>.ndjson.zst`."""

    def __init__(
        self,
        directory: str | Path,
        *,
        prefix: str = "capture",
        max_file_bytes: int = 64 * 1024 * 1024,
        max_file_seconds: float = 3600.0,
        max_total_bytes: int = 1024 * 1024 * 1024,
        max_age_seconds: float | None = None,
        level: int = 1,
    ) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self.max_file_bytes, self.max_file_seconds = max_file_bytes, max_file_seconds
        self.max_total_bytes, self.max_age_seconds = max_total_bytes, max_age_seconds
        self._cctx = zstandard.ZstdCompressor(level=level)
        self._heads: dict[Any, bytes] = {}
        self._file: int | None = None
        self._file_path: Path | None = None
        self._file_bytes = 0
        self._file_started = 0.0
        self._seq = 0
        self._retained_at: float | None = None
        self.bytes_written = 0
        self.files_opened = 0
        self.files_deleted = 0

    def write(self, batch: list[tuple[Any, ...]], offset: int, now: float) -> None:
        """Append one batch as one zstd frame; `OSError` when the disk fails (the file is closed,
        the next batch opens a new one)."""
        frame = self._cctx.compress(encode_batch(batch, offset, self._heads))
        try:
            if (
                self._file is None
                or self._file_bytes >= self.max_file_bytes
                or now - self._file_started >= self.max_file_seconds
            ):
                self._rotate(now)
            assert self._file is not None
            os.write(self._file, frame)  # one complete frame per write: a crash never splits one
        except OSError:
            self.close()
            raise
        self._file_bytes += len(frame)
        self.bytes_written += len(frame)
        if self._retained_at is None or now - self._retained_at >= 10.0:
            self._retain(now)

    def close(self) -> None:
        if self._file is not None:
            try:
                os.close(self._file)
            except OSError:
                pass
            self._file = None

    def files(self) -> list[Path]:
        return sorted(self.dir.glob(f"{self.prefix}-*{SUFFIX}"))

    def _rotate(self, now: float) -> None:
        self.close()
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
        self._seq += 1
        path = self.dir / f"{self.prefix}-{stamp}-{self._seq:06d}{SUFFIX}"
        while path.exists():  # a restarted writer in the same second: never append to a file
            self._seq += 1
            path = self.dir / f"{self.prefix}-{stamp}-{self._seq:06d}{SUFFIX}"
        self._file_path = path
        self._file = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._file_bytes = 0
        self._file_started = now
        self.files_opened += 1
        self._retain(now)

    def _retain(self, now: float) -> None:
        """Delete the oldest files (never the one being written) beyond the size or age bound:
        at each rotation, and every 10 s for the age bound and the file being written."""
        self._retained_at = now
        files = []
        for p in self.files():
            if p == self._file_path:
                continue
            try:
                files.append((p, p.stat()))
            except OSError:  # deleted meanwhile
                continue
        total = sum(st.st_size for _, st in files) + self._file_bytes
        for p, st in files:
            too_old = self.max_age_seconds is not None and now - st.st_mtime > self.max_age_seconds
            if total <= self.max_total_bytes and not too_old:
                break
            try:
                p.unlink()
            except OSError:
                continue
            total -= st.st_size
            self.files_deleted += 1
