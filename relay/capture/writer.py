"""The capture writer: records from the event loop to compressed, rotated, bounded files.

`frame()`, `published()` and `record()` run on the event loop and only append two references to
the current batch: a packed 16-byte entry head and the frame's own bytes (no copy). A batch is handed to one writer thread when it is full or `batch_seconds` old
(`tick`); the thread hands it to the recorder's child process (`relay.capture.child`), which
encodes it (`relay.capture.format`), compresses it into one zstd frame and appends it to the
current file (`relay.capture.files`). Encoding a record costs about a microsecond of Python; in
the child it never holds the relay's GIL, so the event loop pays only the append and the thread
only a `marshal` copy (`process=False` keeps the files in the thread, for tools and tests). The
queue in front of the thread is bounded: when the files fall behind (a slow or full disk), the
batch is dropped and its records counted, so the loop never waits and memory never grows: at
most `max_pending_batches` batches and `max_pending_bytes` of frame data wait.

Files rotate at `max_file_bytes` or `max_file_seconds`; the oldest are deleted while the
directory holds more than `max_total_bytes` or files older than `max_age_seconds`. A batch is
written with one `write()` of a complete zstd frame, so after a SIGKILL every file but the last
is complete and the last one is readable up to its last complete batch.
"""

from __future__ import annotations

import contextlib
import marshal
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import orjson

from relay.capture.child import read_message, send_body, send_parts
from relay.capture.files import ENTRY, CaptureFiles, unpack_batch
from relay.capture.format import SUFFIX

_STOP = None
_mono_ns = time.monotonic_ns
_pack = ENTRY.pack


class CaptureWriter:
    def __init__(
        self,
        directory: str | Path,
        *,
        max_file_bytes: int = 64 * 1024 * 1024,
        max_file_seconds: float = 3600.0,
        max_total_bytes: int = 1024 * 1024 * 1024,
        max_age_seconds: float | None = None,
        batch_records: int = 2000,
        batch_seconds: float = 0.5,
        max_pending_batches: int = 64,
        max_pending_bytes: int = 16 * 1024 * 1024,
        level: int = 1,
        prefix: str = "capture",
        clock: Callable[[], float] = time.time,
        process: bool = True,
        close_timeout: float = 5.0,
    ) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_file_bytes, self.max_file_seconds = max_file_bytes, max_file_seconds
        self.max_total_bytes, self.max_age_seconds = max_total_bytes, max_age_seconds
        self.batch_records, self.batch_seconds = batch_records, batch_seconds
        self.prefix, self.clock = prefix, clock
        self.process = process
        self._close_timeout = close_timeout
        self._options: dict[str, Any] = {
            "directory": str(self.dir),
            "prefix": prefix,
            "max_file_bytes": max_file_bytes,
            "max_file_seconds": max_file_seconds,
            "max_total_bytes": max_total_bytes,
            "max_age_seconds": max_age_seconds,
            "level": level,
        }
        # the current batch: entry heads (`relay.capture.files.ENTRY`) and bodies, alternating
        self._parts: list[bytes] = []
        self._max_parts = 2 * batch_records
        self._ids: dict[Any, int] = {}  # stream (a line, or a published key tuple) -> id
        self._streams: list[Any] = []  # id -> stream (append-only: the thread reads a prefix)
        self.max_pending_bytes = max_pending_bytes
        # bytes handed to the thread (loop side) and bytes it finished with (thread side): each
        # counter has one writer, so their difference is the backlog without a lock
        self._bytes_queued = 0
        self._bytes_done = 0
        self._batch_started = 0.0
        self._batch_offset = 0  # wall ns - monotonic ns when the current batch started
        self._queue: queue.Queue[Batch | None] = queue.Queue(max_pending_batches)
        # counters (read from any thread; each is written by one side only)
        self.records_queued = 0
        self.records_written = 0
        self.records_dropped = 0  # loop side: the thread was behind
        self.records_lost = 0  # thread side: a write failed
        self.bytes_written = 0
        self.files_opened = 0
        self.files_deleted = 0
        self.write_errors = 0
        self.last_error = ""
        self.oldest_pending = 0.0  # wall time of the oldest batch the thread has not written
        self._thread = threading.Thread(target=self._run, name="capture-writer", daemon=True)
        self._thread.start()

    # -- the event loop's side ------------------------------------------------------------
    # A batch is a list of packed entry heads (`relay.capture.files.ENTRY`: monotonic ns, a
    # stream id, a length), each followed by its bytes, so the writer thread has no per-record
    # work holding the GIL: it hands the list to the kernel with `writev` (the GIL released). Stream ids name a line (its frames), a
    # published (protocol, channel, symbol, key), or -1: any other record, marshalled. Frames and
    # publications take their wall time from the batch's wall-monotonic offset.
    def frame(self, line: str | tuple[str, str, str, int], data: bytes) -> None:
        """A frame received on `line` (the hot path: one pack, two appends); `published` passes
        its stream's key tuple instead of a line name."""
        sid = self._ids.get(line)
        if sid is None:
            sid = self._register(line)
        parts = self._parts
        if not parts:
            self._start_batch()
        parts.append(_pack(_mono_ns(), sid, len(data)))
        parts.append(data)
        if len(parts) >= self._max_parts:
            self.flush()

    def published(self, protocol: str, channel: str, symbol: str, key: int, data: bytes) -> None:
        """A frame as the clients of (channel, symbol, key) received it (`capture.published`)."""
        self.frame((protocol, channel, symbol, key), data)

    def record(
        self, line: str, kind: str, data: bytes | None = None, wall_ns: int = 0, mono_ns: int = 0, **fields: Any
    ) -> None:
        """Add one record (times default to now). Never blocks, never raises on a full queue."""
        entry = (wall_ns or time.time_ns(), mono_ns or _mono_ns(), line, kind, data, fields)
        try:
            body = marshal.dumps(entry)
        except ValueError:  # a field of an unusual type (an enum, a path): as its JSON value
            body = marshal.dumps((*entry[:5], orjson.loads(orjson.dumps(fields, default=str))))
        parts = self._parts
        if not parts:
            self._start_batch()
        parts.append(_pack(entry[1], -1, len(body)))
        parts.append(body)
        if len(parts) >= self._max_parts:
            self.flush()

    def _register(self, stream: Any) -> int:
        sid = self._ids[stream] = len(self._streams)
        self._streams.append(stream)
        return sid

    def _start_batch(self) -> None:
        self._batch_started = self.clock()
        self._batch_offset = time.time_ns() - _mono_ns()

    def flush(self) -> None:
        """Hand the current batch to the writer thread (dropped and counted if it is behind)."""
        parts = self._parts
        if not parts:
            return
        self._parts = []
        count = len(parts) // 2
        size = sum(map(len, parts))
        if self._bytes_queued - self._bytes_done + size > self.max_pending_bytes:
            self.records_dropped += count
            return
        try:
            self._queue.put_nowait(
                Batch(self._batch_started, self._batch_offset, count, len(self._streams), parts, size)
            )
        except queue.Full:
            self.records_dropped += count
            return
        self.records_queued += count
        self._bytes_queued += size

    def tick(self) -> None:
        """Timer (about every 0.1 s): a batch older than `batch_seconds` goes to the thread."""
        if self._parts and self.clock() - self._batch_started >= self.batch_seconds:
            self.flush()

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, close the file, stop the thread (bounded by `timeout`)."""
        self.flush()
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            return
        self._thread.join(timeout)

    def lag(self) -> float:
        """Seconds the oldest batch not yet written has waited (0 when the thread keeps up)."""
        oldest = self.oldest_pending
        return max(0.0, self.clock() - oldest) if oldest else 0.0

    def disk_bytes(self) -> int:
        total = 0
        for p in self.dir.glob(f"{self.prefix}-*{SUFFIX}"):
            with contextlib.suppress(OSError):  # deleted meanwhile
                total += p.stat().st_size
        return total

    def stats(self) -> dict[str, Any]:
        return {
            "records_written": self.records_written,
            "records_dropped": self.records_dropped + self.records_lost,
            "bytes_written": self.bytes_written,
            "files_opened": self.files_opened,
            "files_deleted": self.files_deleted,
            "write_errors": self.write_errors,
            "disk_bytes": self.disk_bytes(),
            "lag_seconds": self.lag(),
        }

    # -- the writer thread ----------------------------------------------------------------
    def _run(self) -> None:
        sink: _Sink = _ChildSink(self._options) if self.process else _LocalSink(CaptureFiles(**self._options))
        self._sink = sink
        while True:
            item = self._queue.get()
            if item is _STOP:
                break
            self.oldest_pending = item.started
            try:
                self._write_batch(sink, item)
            except OSError as exc:  # a full or failing disk, a lost child: count, drop, go on
                self.write_errors += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                self.records_lost += item.records
            self._bytes_done += item.size
            self.oldest_pending = 0.0
        sink.close(self._close_timeout)

    def _write_batch(self, sink: _Sink, batch: Batch) -> None:
        """One batch to the files (through the child process); `OSError` when it failed."""
        sink.write(batch, self._streams, self.clock())
        self.records_written += batch.records
        self.bytes_written, self.files_opened, self.files_deleted = sink.totals()


class Batch(NamedTuple):
    started: float  # wall time of its first record (for `lag`)
    offset: int  # wall ns - monotonic ns
    records: int  # how many
    streams: int  # stream ids in use (a prefix of the writer's `_streams`)
    data: list[bytes]  # entry heads and bodies, alternating
    size: int  # their bytes


class _Sink(Protocol):
    def write(self, batch: Batch, streams: list[Any], now: float) -> None: ...
    def totals(self) -> tuple[int, int, int]: ...
    def close(self, timeout: float) -> None: ...


class _LocalSink:
    """The files written from the writer thread itself (`process=False`)."""

    def __init__(self, files: CaptureFiles) -> None:
        self.files = files

    def write(self, batch: Batch, streams: list[Any], now: float) -> None:
        self.files.write(unpack_batch(b"".join(batch.data), streams), batch.offset, now)

    def totals(self) -> tuple[int, int, int]:
        f = self.files
        return f.bytes_written, f.files_opened, f.files_deleted

    def close(self, timeout: float) -> None:
        self.files.close()


class _ChildSink:
    """The files written by `relay.capture.child`, one batch at a time (request, answer). A child
    that dies is replaced at the next batch, at most once a second; its batch is lost and counted."""

    RESTART_AFTER = 1.0

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        self.proc: subprocess.Popen[bytes] | None = None
        self._base = (0, 0, 0)  # totals of children that ended
        self._last = (0, 0, 0)  # the running child's totals
        self._died_at = float("-inf")
        self._sent = 0  # stream names the running child knows

    def _start(self) -> subprocess.Popen[bytes]:
        if time.monotonic() - self._died_at < self.RESTART_AFTER:
            raise OSError("capture child restarting")
        root = str(Path(__file__).resolve().parents[2])  # the directory holding `relay`
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "relay.capture.child", orjson.dumps(self.options).decode()],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        return self.proc

    def write(self, batch: Batch, streams: list[Any], now: float) -> None:
        proc = self.proc or self._start()
        assert proc.stdin is not None and proc.stdout is not None
        new = streams[self._sent : batch.streams]  # stream names this child has not been told
        why = ""
        try:
            send_body(proc.stdin, marshal.dumps((new, batch.offset, now)))
            send_parts(proc.stdin, batch.data, batch.size)
            self._sent = batch.streams
            reply: Any = read_message(proc.stdout)
        except (OSError, ValueError) as exc:
            reply, why = None, f": {exc}"
        if reply is None:
            self._lost(proc)
            raise OSError(f"capture child exited ({proc.returncode}){why}")
        error, written, opened, deleted = reply
        self._last = (int(written), int(opened), int(deleted))
        if error:
            raise OSError(error)

    def _lost(self, proc: subprocess.Popen[bytes]) -> None:
        self._died_at = time.monotonic()
        self._base = self.totals()
        self._last = (0, 0, 0)
        self._sent = 0
        self.proc = None
        with contextlib.suppress(Exception):
            proc.kill()
            proc.wait(1.0)

    def totals(self) -> tuple[int, int, int]:
        b, last = self._base, self._last
        return b[0] + last[0], b[1] + last[1], b[2] + last[2]

    def close(self, timeout: float) -> None:
        proc = self.proc
        if proc is None:
            return
        with contextlib.suppress(Exception):
            assert proc.stdin is not None
            proc.stdin.close()  # end of input: the child closes its file and exits
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(1.0)
        self.proc = None
