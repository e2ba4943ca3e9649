"""The capture writer and reader (issue 16, first part): exact round trip, rotation and retention
within bounds, a stalled disk that drops and counts instead of blocking, and files that survive
a SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import zstandard

from relay.capture.format import FRAME, SUFFIX, Record, decode, encode
from relay.capture.reader import Reader
from relay.capture.writer import CaptureWriter
from tests.kit.paths import ROOT


def wait_for(cond, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_records_round_trip_exactly_even_invalid_utf8() -> None:
    for rec in [
        Record(1, 2, "line0", FRAME, b'{"channel":"book","price":0.10000000}'),
        Record(3, 4, "line1", FRAME, b'{"symbol":"BTC/\xffUSD"}'),
        Record(5, 6, "line0", "disconnect", None, {"code": 1006, "reason": "abnormal"}),
    ]:
        assert decode(encode(rec)) == rec


def test_the_fast_frame_and_publication_paths_write_what_the_generic_one_would(tmp_path: Path) -> None:
    w = CaptureWriter(tmp_path, batch_records=300)  # more than 256: the GIL yield inside a batch
    sent = []
    for i in range(700):
        data = b'{"n":%d,"t":"a\\"b\xc3\xa9"}' % i if i % 50 else b'{"bad":"\xff%d"}' % i
        if i % 3:
            w.frame(f"line{i % 2}", data)
            sent.append((f"line{i % 2}", data, {}))
        else:
            w.published("v2", "book", "BTC/USD", 10, data)
            sent.append(("published", data, {"p": "v2", "channel": "book", "symbol": "BTC/USD", "key": 10}))
    w.record("line0", "disconnect", code=1006, text="", by=None, reason="1006")
    w.close()
    recs = list(Reader([tmp_path]))
    assert [(r.line, r.data, r.fields) for r in recs[:-1]] == sent
    assert all(r.kind == FRAME for r in recs[:-1]) and recs[-1].fields["code"] == 1006
    walls = [r.wall_ns - r.mono_ns for r in recs]  # wall = monotonic + the batch's offset
    assert abs(max(walls) - min(walls)) < 10**9 and abs(recs[0].wall_ns - time.time_ns()) < 60 * 10**9


def test_a_lost_child_process_is_replaced_and_its_batch_counted(tmp_path: Path) -> None:
    from websockets.frames import CloseCode

    w = CaptureWriter(tmp_path, batch_records=10)
    for i in range(10):
        w.frame("line0", b'{"i":%d}' % i)
    wait_for(lambda: w.records_written == 10)
    child = w._sink.proc  # type: ignore[attr-defined]
    child.kill()
    child.wait(5)
    for i in range(10, 20):
        w.frame("line0", b'{"i":%d}' % i)
    wait_for(lambda: w.write_errors == 1)  # that batch is lost, and counted
    time.sleep(1.1)  # a replacement starts at most once a second
    w.record("line0", "disconnect", code=CloseCode(1001), text="", by="server", reason="1001")  # an enum field
    for i in range(20, 29):
        w.frame("line0", b'{"i":%d}' % i)
    w.close()
    recs = list(Reader([tmp_path]))
    assert [r.data for r in recs if r.kind == FRAME] == [b'{"i":%d}' % i for i in [*range(10), *range(20, 29)]]
    assert [r.fields["code"] for r in recs if r.kind == "disconnect"] == [1001]
    assert w.stats()["records_dropped"] == 10 and w.records_written == 20


def test_a_capture_reads_back_in_order_and_plain_zstd_gives_ndjson(tmp_path: Path) -> None:
    w = CaptureWriter(tmp_path, batch_records=7)
    frames = [b'{"n":%d}' % i for i in range(100)]
    for i, f in enumerate(frames):
        w.record(f"line{i % 2}", FRAME, f)
    w.record("line0", "connect", url="ws://127.0.0.1:1/v2", egress="default")
    w.close()
    recs = list(Reader([tmp_path]))
    assert [r.data for r in recs[:-1]] == frames
    assert recs[-1].kind == "connect" and recs[-1].fields == {"url": "ws://127.0.0.1:1/v2", "egress": "default"}
    assert w.records_written == 101 and w.records_dropped == 0
    (path,) = tmp_path.glob(f"*{SUFFIX}")
    text = zstandard.ZstdDecompressor().stream_reader(path.open("rb"), read_across_frames=True).read()
    assert text.count(b"\n") == 101  # readable without the relay: zstd, then one JSON object a line


def test_files_rotate_and_the_oldest_are_deleted_within_the_total_bound(tmp_path: Path) -> None:
    w = CaptureWriter(tmp_path, batch_records=50, max_file_bytes=4096, max_total_bytes=32 * 1024, level=1)
    payload = os.urandom(600).hex().encode()  # incompressible enough to fill files
    for i in range(3000):
        w.record("line0", FRAME, b'{"i":%d,"p":"%s"}' % (i, payload))
        if i % 200 == 0:
            wait_for(lambda: w._queue.empty())
    w.close()
    assert w.files_opened > 10 and w.files_deleted > 0
    assert w.disk_bytes() <= 32 * 1024 + 4096 + 64 * 1024  # the bound, plus one file and one batch
    assert not Reader([tmp_path]).truncated  # every kept file is complete


def test_a_stalled_disk_drops_and_counts_records_and_never_blocks_the_caller(tmp_path: Path) -> None:
    w = CaptureWriter(tmp_path, batch_records=10, max_pending_batches=2)
    release = threading.Event()
    real = w._write_batch

    def stuck(*args):
        release.wait(10)
        real(*args)

    w._write_batch = stuck  # type: ignore[method-assign]
    t0 = time.perf_counter()
    for i in range(10_000):
        w.record("line0", FRAME, b'{"i":%d}' % i)
    per_record = (time.perf_counter() - t0) / 10_000
    assert w.records_dropped >= 10_000 - 4 * 10  # at most the thread's batch and the queue's two
    assert per_record < 0.001  # it never waited for the disk (generous: a busy CI machine)
    assert w.lag() > 0 or w.records_written == 0
    release.set()
    w.close()
    assert w.records_written + w.records_dropped == 10_000


CHILD = """
import sys, time
from relay.capture.writer import CaptureWriter
w = CaptureWriter(sys.argv[1], batch_records=100, max_file_bytes=20_000, max_total_bytes=1 << 40)
i = 0
while True:
    w.record("line0", "frame", b'{"i":%d,"pad":"%s"}' % (i, b"x" * 200))
    i += 1
    if i % 1000 == 0:
        print(i, flush=True)
    if i % 20 == 0:  # ~20 000 records/s at most: a rate the recorder keeps up with (no drops)
        time.sleep(0.001)
"""


def test_after_a_sigkill_every_file_but_the_last_is_complete(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        for _ in range(20):  # 20 000 records asked for, several files written
            proc.stdout.readline()
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)
    files = sorted(tmp_path.glob(f"*{SUFFIX}"))
    assert len(files) > 2
    complete = Reader(files[:-1])
    ids = [int(r.data.split(b",")[0][5:]) for r in complete if r.data]
    assert not complete.truncated and ids == list(range(len(ids)))
    last = Reader(files[-1:])
    rest = [int(r.data.split(b",")[0][5:]) for r in last if r.data]  # no exception: up to its last batch
    assert rest == list(range(len(ids), len(ids) + len(rest)))
