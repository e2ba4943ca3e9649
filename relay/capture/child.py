"""The recorder's child process: `python -m relay.capture.child OPTIONS_JSON`.

Encoding a capture record costs about as much as the relay's own work on a frame, and in a
thread it would hold the relay's GIL, so the relay's writer thread only hands each batch over
(`marshal`, a C-speed copy) and this process encodes, compresses and writes it
(`relay.capture.files`).

Protocol on stdin/stdout: each message is an 8-byte big-endian length and a `marshal` payload.
The parent sends `(new stream names, offset, now)` then the packed batch itself
(`relay.capture.files.unpack_batch`: no per-record work on the relay's side); the child answers `(error, bytes_written,
files_opened, files_deleted)` (its running totals; `error` is "" or the failed write's error) once
the batch is on disk. End of stdin (the relay closed it, or died, even by SIGKILL) closes the file
and exits, so nothing already handed over is lost. SIGINT and SIGTERM are ignored: the relay
decides when the recorder stops (a Ctrl-C or a `systemctl stop` reaches the whole process group).
"""

from __future__ import annotations

import marshal
import os
import signal
import sys
import time
from typing import IO, Any

import orjson

from relay.capture.files import CaptureFiles, unpack_batch

HEADER = 8


def read_message(stream: IO[bytes]) -> Any:
    """One message, or None at end of stream."""
    head = _read_exactly(stream, HEADER)
    if head is None:
        return None
    body = _read_exactly(stream, int.from_bytes(head, "big"))
    return None if body is None else marshal.loads(body)


def _read_body(stream: IO[bytes]) -> bytes | None:
    """A message sent raw (`send_body`), not marshalled."""
    head = _read_exactly(stream, HEADER)
    return None if head is None else _read_exactly(stream, int.from_bytes(head, "big"))


def write_message(stream: IO[bytes], obj: Any) -> None:
    send_body(stream, marshal.dumps(obj))


def send_body(stream: IO[bytes], body: bytes | bytearray) -> None:
    """A message of `body` as it is (marshalled, or a packed batch)."""
    stream.write(len(body).to_bytes(HEADER, "big"))
    stream.write(body)
    stream.flush()


IOV_MAX = 1024  # buffers per writev (Linux's limit)


def send_parts(stream: IO[bytes], parts: list[bytes], size: int) -> None:
    """A message whose body is `parts` joined, written by the kernel (`writev`: no join here,
    and the GIL released while the pipe takes it)."""
    stream.write(size.to_bytes(HEADER, "big"))
    stream.flush()
    fd = stream.fileno()
    i = 0
    while i < len(parts):
        chunk = parts[i : i + IOV_MAX]
        want = sum(map(len, chunk))
        done = os.writev(fd, chunk)
        if done < want:  # a partial write (a signal): the rest of this chunk, byte-exact
            rest = b"".join(chunk)[done:]
            while rest:
                rest = rest[os.write(fd, rest) :]
        i += IOV_MAX


def _read_exactly(stream: IO[bytes], n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = stream.read(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    options = orjson.loads((argv or sys.argv[1:])[0])
    files = CaptureFiles(**options)
    streams: list[Any] = []
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    try:
        while True:
            msg = read_message(stdin)
            data = _read_body(stdin) if msg is not None else None
            if msg is None or data is None:
                return 0
            new, offset, now = msg
            streams += new
            error = ""
            try:
                files.write(unpack_batch(data, streams), offset, now or time.time())
            except OSError as exc:  # a full or failing disk: reported, the next batch retries
                error = f"{type(exc).__name__}: {exc}"
            try:
                write_message(stdout, (error, files.bytes_written, files.files_opened, files.files_deleted))
            except BrokenPipeError:  # the relay is gone: what it handed over is written
                return 0
    finally:
        files.close()


if __name__ == "__main__":
    sys.exit(main())
