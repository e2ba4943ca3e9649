"""`capture import` (relay.capture.fixtures): the real Kraken recordings become capture files,
and `capture inspect` re-verifies them to the numbers the fixtures README states (every book
checksum / futures seq step, the frame counts per channel)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from relay.capture.fixtures import FixtureError, convert, convert_file
from relay.capture.reader import Reader
from relay.cli import main as cli
from relay.ops.capture_inspect import inspect
from tests.kit.paths import FIXTURES, V2_WIRE, need_fixture

CF = FIXTURES / "cryptofeed" / "sample_data"
SDK = FIXTURES / "python-kraken-sdk" / "tests" / "spot" / "fixture"


def imported(tmp_path: Path, fixture: Path, fmt: str, protocol: str, *extra: str) -> dict[str, Any]:
    """The fixture through `kraken-relay capture import`, then inspected: the line's report."""
    need_fixture(fixture)
    out = tmp_path / "cap"
    assert (
        cli(
            [
                "capture",
                "import",
                str(fixture),
                "--format",
                fmt,
                "--protocol",
                protocol,
                "--line",
                "k",
                "-o",
                str(out),
                *extra,
            ]
        )
        == 0
    )
    return inspect(Reader([out]))["lines"]["k"]


def wire_lines() -> list[bytes]:
    return [ln.strip() for ln in V2_WIRE.read_bytes().splitlines() if ln.strip()]


def channel_frames(line: dict[str, Any]) -> dict[str, int]:
    return {ch: c["frames"] for ch, c in line["channels"].items()}


def test_cryptofeed_v1_book_1000_all_4269_checksums_verify(tmp_path: Path) -> None:
    ln = imported(tmp_path, CF / "KRAKEN.ws.50.0", "cryptofeed", "v1")
    assert ln["frames"] == 4321 and ln["protocol"] == "v1" and ln["urls"] == ["wss://ws.kraken.com"]
    assert channel_frames(ln) == {"book-1000": 4279, "heartbeat": 31, "subscriptionStatus": 10, "systemStatus": 1}
    b = ln["books"]
    assert (b["snapshots"], b["verified"], b["checksum_mismatches"], b["before_snapshot"]) == (10, 4269, 0, 0)
    updates = {sym: row["verified"] for sym, row in b["by_symbol"].items()}
    assert updates == {  # the README's per-pair update counts
        "XMR/USD": 846, "SC/EUR": 818, "WAVES/EUR": 576, "OMG/USD": 573, "ADA/XBT": 347,
        "KSM/XBT": 335, "ETH/CHF": 317, "XBT/CHF": 289, "OCEAN/XBT": 148, "GRT/ETH": 20,
    }  # fmt: skip
    assert ln["subscribes"] == 1 and ln["connects"] == 1 and ln["disconnects"]["by_code"] == {"1000": 1}
    assert ln["gaps"]["count"] == 0 and ln["first"] == "2021-04-17T16:48:52.385815Z"


def test_cryptofeed_v1_trade_and_ticker_files(tmp_path: Path) -> None:
    trades = imported(tmp_path / "t", CF / "KRAKEN.ws.48.0", "cryptofeed", "v1")
    assert trades["frames"] == 49
    assert channel_frames(trades) == {"heartbeat": 30, "subscriptionStatus": 10, "systemStatus": 1, "trade": 8}
    assert trades["trades"] == {"trades": 10, "duplicates": 0, "id_gaps": 0}
    assert set(trades["channels"]["trade"]["symbols"]) == {"SC/EUR", "XMR/USD"}
    ticker = imported(tmp_path / "k", CF / "KRAKEN.ws.49.0", "cryptofeed", "v1")
    assert ticker["frames"] == 60 and ticker["unparsed_frames"] == 0
    assert channel_frames(ticker) == {"heartbeat": 31, "subscriptionStatus": 10, "systemStatus": 1, "ticker": 18}
    assert ticker["books"]["frames"] == 0


def test_cryptofeed_futures_7014_deltas_contiguous(tmp_path: Path) -> None:
    ln = imported(tmp_path, CF / "KRAKEN_FUTURES.ws.1.0", "cryptofeed", "futures")
    assert ln["frames"] == 7175 and ln["subscribes"] == 3 and ln["unparsed_frames"] == 0
    assert channel_frames(ln) == {
        "info": 1, "subscribed": 30, "book_snapshot": 10, "book": 7014, "trade_snapshot": 10, "trade": 3,
        "ticker_lite": 107,
    }  # fmt: skip
    b = ln["books"]
    assert (b["snapshots"], b["verified"], b["seq_errors"], b["before_snapshot"]) == (10, 7014, 0, 0)
    assert len(b["by_symbol"]) == 10 and ln["trades"]["duplicates"] == 0


def test_kraken_sdk_v1_979_checksums_verify_with_synthetic_times(tmp_path: Path) -> None:
    ln = imported(tmp_path, SDK / "orderbook-v1.json", "kraken-sdk", "v1")
    assert ln["frames"] == 1150
    assert channel_frames(ln) == {
        "book-10": 980,
        "heartbeat": 152,
        "pong": 16,
        "subscriptionStatus": 1,
        "systemStatus": 1,
    }
    b = ln["books"]
    assert (b["snapshots"], b["verified"], b["checksum_mismatches"]) == (1, 979, 0)
    assert ln["first"].startswith("2023-08-30T17:") and ln["subscribes"] == 1  # synthesized from the ack


def test_derived_v2_wire_all_510_verify_and_the_reserialized_sdk_file_does_not(tmp_path: Path) -> None:
    ln = imported(tmp_path / "w", V2_WIRE, "wire-ndjson", "v2")
    # and the status frame and subscribe ack the wire file lacks, synthesized
    assert ln["frames"] == 512 and channel_frames(ln) == {"book": 510, "status": 1, "subscribe": 1}
    assert (ln["books"]["snapshots"], ln["books"]["verified"], ln["books"]["checksum_mismatches"]) == (1, 510, 0)
    assert ln["first"].startswith("2023-07-30T15:29:58") and ln["last"].startswith("2023-07-30T15:30:49")
    # the README's caveat: python `json` dropped the lexemes (`4.0`), so 0 / 510 verify
    sdk = imported(tmp_path / "s", SDK / "orderbook-v2.json", "kraken-sdk", "v2")
    assert sdk["books"]["verified"] == 0 and sdk["books"]["checksum_mismatches"] == 510
    assert sdk["books"]["mismatch_runs"] == 1


def test_records_of_an_import(tmp_path: Path) -> None:
    """Times from the file (ns exact), the file's requests, a synthesized one when it has none,
    never going backwards, a final normal close."""
    recs = list(convert_file(need_fixture(CF / "KRAKEN.ws.48.0"), "cryptofeed", "v1", "a"))
    assert [r.kind for r in recs[:3]] == ["connect", "subscribe", "frame"] and recs[-1].kind == "disconnect"
    assert recs[0].wall_ns == recs[0].mono_ns == 1_618_678_132_368_463_000
    assert recs[0].fields == {"p": "v1", "url": "wss://ws.kraken.com", "egress": None}
    assert orjson.loads(recs[1].data or b"")["subscription"] == {"name": "trade"}
    assert recs[-1].fields == {"code": 1000, "text": "", "by": "server", "reason": "1000"}
    wire = list(convert_file(need_fixture(V2_WIRE), "wire-ndjson", "v2", "b", "ws://127.0.0.1:1/v2"))
    assert wire[0].fields["url"] == "ws://127.0.0.1:1/v2"
    assert orjson.loads(wire[1].data or b"") == {
        "method": "subscribe",
        "params": {"channel": "book", "symbol": ["BTC/USD"], "depth": 10},
        "req_id": 1,
    }
    times = [r.wall_ns for r in wire]
    assert [orjson.loads(r.data or b"").get("channel", "ack") for r in wire if r.fields.get("synthetic")] == [
        "status",
        "ack",
    ]
    times = [r.wall_ns for r in wire]
    real = [r for r in wire if r.kind == "frame" and not r.fields.get("synthetic")]
    assert times == sorted(times) and real[1].wall_ns == 1_690_730_998_343_415_000  # its own timestamp
    assert [r.data for r in real] == wire_lines()
    sdk = list(convert_file(need_fixture(SDK / "orderbook-v1.json"), "kraken-sdk", "v1", "c"))
    assert orjson.loads(sdk[1].data or b"") == {
        "event": "subscribe",
        "reqid": 1,
        "pair": ["XBT/USD"],
        "subscription": {"name": "book", "depth": 10},
    }
    assert [r.wall_ns for r in sdk] == sorted(r.wall_ns for r in sdk)


def test_wrong_protocol_or_format_is_refused() -> None:
    with pytest.raises(FixtureError, match="v1 traffic, not futures"):
        list(
            convert(b'1.0: {"event":"heartbeat"}\n1.1: [1,{"a":[]},"book-10","XBT/USD"]', "cryptofeed", "futures", "x")
        )
    with pytest.raises(FixtureError, match="cryptofeed"):
        list(convert(b'{"channel":"heartbeat"}', "cryptofeed", "v2", "x"))
    with pytest.raises(FixtureError, match="no received frames"):
        list(convert(b"", "wire-ndjson", "v2", "x"))


def test_cli_import_export_round_trip(tmp_path: Path, capsys) -> None:
    out = tmp_path / "cap"
    wire = need_fixture(V2_WIRE)
    assert (
        cli(
            [
                "capture",
                "import",
                str(wire),
                "--format",
                "wire-ndjson",
                "--protocol",
                "v2",
                "--line",
                "sdk",
                "-o",
                str(out),
            ]
        )
        == 0
    )
    assert "imported 515 records (510 frames, 2 synthesized) as line sdk" in capsys.readouterr().out
    raw = tmp_path / "raw.ndjson"
    assert cli(["capture", "export", str(out), "--line", "sdk", "--raw", "-o", str(raw)]) == 0
    assert raw.read_bytes().splitlines() == wire_lines()  # the frames, byte for byte
    assert cli(["capture", "export", str(out), "--line", "sdk", "--kinds", "connect,disconnect"]) == 0
    lines = [orjson.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    assert [(o["l"], o["k"]) for o in lines] == [("sdk", "connect"), ("sdk", "disconnect")]
    assert lines[1]["code"] == 1000 and isinstance(lines[0]["w"], int)
    assert cli(["capture", "export", str(out), "--line", "nope"]) == 2
    assert "lines in the capture: sdk" in capsys.readouterr().err
    assert cli(["capture", "export", str(out), "--published"]) == 2
    assert cli(["capture", "export", str(out), "--line", "sdk", "--kinds", "frames"]) == 2
    bad = [
        "capture",
        "import",
        str(wire),
        "--format",
        "wire-ndjson",
        "--protocol",
        "v1",
        "--line",
        "x",
        "-o",
        str(tmp_path / "x"),
    ]
    assert cli(bad) == 2 and "v2 traffic, not v1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli(["capture", "export", str(out)])  # --line or --published is required
