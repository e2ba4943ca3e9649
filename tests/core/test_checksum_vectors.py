"""Every test vector of kraken-protocol.md section 8.3, and the real v2 capture."""

from __future__ import annotations

from relay.core.book import Book, Level
from relay.core.checksum import book_checksum, level3_checksum
from relay.protocols.spot_v2.wire import V2Parser
from tests.kit.paths import v2_wire_frames


def _pairs(text: str) -> list[tuple[bytes, bytes]]:
    toks = text.replace("|", " ").split()
    return [(toks[i].encode(), toks[i + 1].encode()) for i in range(0, len(toks), 2)]


V1_ASKS = _pairs(
    "45285.2 0.00100000 | 45286.4 1.54571953 | 45286.6 1.54571109 | 45289.6 1.54560911 | 45290.2 0.15890660"
    " 45291.8 1.54553491 | 45294.7 0.04454749 | 45296.1 0.35380000 | 45297.5 0.09945542 | 45299.5 0.18772827"
)
V1_BIDS = _pairs(
    "45283.5 0.10000000 | 45283.4 1.54582015 | 45282.1 0.10000000 | 45281.0 0.10000000 | 45280.3 1.54592586"
    " 45279.0 0.07990000 | 45277.6 0.03310103 | 45277.5 0.30000000 | 45277.3 1.54602737 | 45276.6 0.15445238"
)


def test_v1_kraken_v2_guide_example() -> None:
    assert book_checksum(V1_ASKS, V1_BIDS) == 3310070434


def test_v2_small_derived_vector() -> None:
    assert book_checksum(V1_ASKS[:2], V1_BIDS[:2]) == 2050935876


def test_v3_matic_snapshot_then_update_through_the_book() -> None:
    asks = _pairs(
        "0.5668 4410.79769741 | 0.5669 4655.40412487 | 0.5670 49844.89424998 | 0.5671 24306.41678000 | 0.5672 29783.25223475"
        " 0.5673 57234.71239278 | 0.5674 45065.04744000 | 0.5675 5912.76380354 | 0.5676 42514.92434778 | 0.5677 36304.08470220"
    )
    bids = _pairs(
        "0.5666 4831.75496356 | 0.5665 6658.22734739 | 0.5664 18724.91513344 | 0.5663 11563.92544914 | 0.5662 14006.65365711"
        " 0.5661 17454.85679807 | 0.5660 18097.15470000 | 0.5659 33644.89175666 | 0.5658 148.34640000 | 0.5657 606.70854372"
    )
    book = Book("MATIC/USD", 10)
    lv = lambda ps: [Level(float(p), p, q) for p, q in ps]  # noqa: E731
    assert book.load_snapshot(lv(bids), lv(asks), "t0") == 2439117997
    assert book.apply([Level(0.5657, b"0.5657", b"1098.39475580")], [], "t1", None) == 2114181697


def test_v3_unpadded_numbers_give_the_wrong_checksum() -> None:
    """The page prints trimmed numbers; hashing them as printed is the classic client bug."""
    asks = [(b"0.5668", b"4410.79769741"), (b"0.567", b"49844.89424998")]
    padded = [(b"0.5668", b"4410.79769741"), (b"0.5670", b"49844.89424998")]
    assert book_checksum(asks, []) != book_checksum(padded, [])


def test_v4_kraken_v1_guide_example() -> None:
    asks = [
        (p.encode(), b"0.00000500")
        for p in "0.05005 0.05010 0.05015 0.05020 0.05025 0.05030 0.05035 0.05040 0.05045 0.05050".split()
    ]
    bids = [
        (p.encode(), b"0.00000500")
        for p in "0.05000 0.04995 0.04990 0.04980 0.04975 0.04970 0.04965 0.04960 0.04955 0.04950".split()
    ]
    assert book_checksum(asks, bids) == 974947235


def test_v5_level3_guide_example() -> None:
    def lv(text: str) -> list[tuple[bytes, list[bytes]]]:
        out = []
        for chunk in text.split("|"):
            price, rest = chunk.strip().split(" ", 1)
            out.append((price.encode(), [q.strip().encode() for q in rest.strip(" []").split(",")]))
        return out

    asks = lv(
        "44939.5 [4.52308393, 0.00111261, 0.00100000, 0.01000000] | 44950.0 [0.10334926] | 44953.0 [0.00064537]"
        "| 44955.0 [0.00250000] | 44959.6 [0.35630000, 0.35630000] | 44960.1 [0.00338072] | 44960.2 [0.88967575]"
        "| 44967.0 [3.14392283] | 44978.5 [0.06778960] | 44979.2 [0.35630000]"
    )
    bids = lv(
        "44939.4 [0.88968699, 0.45210000, 0.10000000, 0.14296323, 0.25000000, 0.10292988, 0.33880000, 1.28140860]"
        "| 44937.1 [0.03346877] | 44934.7 [0.35630000] | 44930.2 [0.22734299, 0.01000000, 0.05550000, 0.70000000, 0.15000000]"
        "| 44928.0 [0.00105240] | 44919.6 [0.33870000] | 44919.5 [0.07610000] | 44912.0 [0.35630000]"
        "| 44909.7 [0.06690000] | 44901.9 [0.00088982]"
    )
    assert level3_checksum(asks, bids) == 1063832831


def test_real_v2_capture_replays_510_of_510() -> None:
    frames = v2_wire_frames()
    parser = V2Parser()
    book = Book("BTC/USD", 10)
    results = []
    for raw in frames:
        ev = parser.parse(raw)
        crc = (book.load_snapshot if ev.snapshot else lambda b, a, t: book.apply(b, a, t, None))(
            ev.bids, ev.asks, ev.timestamp
        )
        results.append(crc == ev.checksum)
    assert len(results) == 510
    assert all(results)
    assert parser.lexeme_fallbacks == 0  # every number kept its wire text
