"""The capture writer: records from the event loop to compressed, rotated, bounded files.

`record()` runs on the event loop and only appends a tuple to the current batch. A batch is
handed to one writer thread when it is full or `batch_seconds` old (`tick`); the thread encodes
it (`relay.capture.format`), compresses it into one zstd frame and appends it to the current
file. The queue between them is bounded: when the thread falls behind (a slow or full disk), the
batch is dropped and its records counted, so the loop never waits and memory never grows:
at most `max_pending_batches` batches and `max_pending_bytes` of frame data wait.

Files rotate at `max_file_bytes` or `max_file_seconds`; the oldest are deleted while the
directory holds more than `max_total_bytes` or files older than `max_age_seconds`. A batch is
written with one `write()` of a complete zstd frame, so after a SIGKILL every file but the last
is complete and the last one is readable up to its last complete batch.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zstandard

from relay.capture.format import SUFFIX, Record, encode

_STOP = None


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
        level: int = 3,
        prefix: str = "capture",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_file_bytes, self.max_file_seconds = max_file_bytes, max_file_seconds
        self.max_total_bytes, self.max_age_seconds = max_total_bytes, max_age_seconds
        self.batch_records, self.batch_seconds = batch_records, batch_seconds
        self.prefix, self.clock = prefix, clock
        self._level = level
        self._batch: list[tuple[Any, ...]] = []
        self._batch_bytes = 0
        self.max_pending_bytes = max_pending_bytes
        # bytes handed to the thread (loop side) and bytes it finished with (thread side): each
        # counter has one writer, so their difference is the backlog without a lock
        self._bytes_queued = 0
        self._bytes_done = 0
        self._batch_started = 0.0
        self._queue: queue.Queue[tuple[float, int, list[tuple[Any, ...]]] | None] = queue.Queue(max_pending_batches)
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
        self._file: Any = None
        self._file_path: Path | None = None
        self._file_bytes = 0
        self._file_started = 0.0
        self._seq = 0
        self._thread = threading.Thread(target=self._run, name="capture-writer", daemon=True)
        self._thread.start()

    # -- the event loop's side ------------------------------------------------------------
    def record(
        self, line: str, kind: str, data: bytes | None = None, wall_ns: int = 0, mono_ns: int = 0, **fields: Any
    ) -> None:
        """Add one record (times default to now). Never blocks, never raises on a full queue."""
        batch = self._batch
        if not batch:
            self._batch_started = self.clock()
        batch.append((wall_ns or time.time_ns(), mono_ns or time.monotonic_ns(), line, kind, data, fields))
        if data is not None:
            self._batch_bytes += len(data)
        if len(batch) >= self.batch_records:
            self.flush()

    def flush(self) -> None:
        """Hand the current batch to the writer thread (dropped and counted if it is behind)."""
        batch = self._batch
        if not batch:
            return
        size, self._batch, self._batch_bytes = self._batch_bytes, [], 0
        if self._bytes_queued - self._bytes_done + size > self.max_pending_bytes:
            self.records_dropped += len(batch)
            return
        try:
            self._queue.put_nowait((self._batch_started, size, batch))
        except queue.Full:
            self.records_dropped += len(batch)
            return
        self.records_queued += len(batch)
        self._bytes_queued += size

    def tick(self) -> None:
        """Timer (about every 0.1 s): a batch older than `batch_seconds` goes to the thread."""
        if self._batch and self.clock() - self._batch_started >= self.batch_seconds:
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
        return sum(p.stat().st_size for p in self._files())

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
        cctx = zstandard.ZstdCompressor(level=self._level)
        while True:
            item = self._queue.get()
            if item is _STOP:
                break
            started, size, batch = item
            self.oldest_pending = started
            try:
                self._write_batch(cctx, batch)
            except OSError as exc:  # a full or failing disk: count, drop the batch, keep going
                self.write_errors += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                self.records_lost += len(batch)
                self._close_file()
            self._bytes_done += size
            self.oldest_pending = 0.0
        self._close_file()

    def _write_batch(self, cctx: zstandard.ZstdCompressor, batch: list[tuple[Any, ...]]) -> None:
        body = b"".join(encode(Record(w, m, ln, k, d, f)) for w, m, ln, k, d, f in batch)
        frame = cctx.compress(body)
        now = self.clock()
        if (
            self._file is None
            or self._file_bytes >= self.max_file_bytes
            or now - self._file_started >= self.max_file_seconds
        ):
            self._rotate(now)
        os.write(self._file, frame)  # one complete frame per write: a crash never splits one
        self._file_bytes += len(frame)
        self.bytes_written += len(frame)
        self.records_written += len(batch)
        self._retain(now)

    def _rotate(self, now: float) -> None:
        self._close_file()
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
        self._seq += 1
        self._file_path = self.dir / f"{self.prefix}-{stamp}-{self._seq:06d}{SUFFIX}"
        self._file = os.open(self._file_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._file_bytes = 0
        self._file_started = now
        self.files_opened += 1

    def _close_file(self) -> None:
        if self._file is not None:
            try:
                os.close(self._file)
            except OSError:
                pass
            self._file = None

    def _files(self) -> list[Path]:
        return sorted(self.dir.glob(f"{self.prefix}-*{SUFFIX}"))

    def _retain(self, now: float) -> None:
        """Delete the oldest files (never the one being written) beyond the size or age bound."""
        files = [(p, p.stat()) for p in self._files() if p != self._file_path]
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
