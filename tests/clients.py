"""Real third-party Kraken clients run offline against a local v2 endpoint (simulator or relay).

Reusable by any test: point `url` at something that speaks Kraken v2 on loopback.

- `run_kraken_sdk_orderbook(url, symbols, depth, n_updates, timeout)`: python-kraken-sdk's
  `SpotOrderBookClient`, which verifies the checksum of every update itself. Offline patches: the
  websocket URL is a class attribute (`WS_URL`, overridden in a subclass), and its blocking REST
  `Market.get_asset_pairs` (used for `pair_decimals`/`lot_decimals`) is replaced on the instance
  by an answer built from `relay.sim.instruments` (a blocking call would also deadlock the loop
  when the server runs in the same process).
- `run_ccxt_watch_order_book(ws_url, rest_url, symbols, n, timeout, depth)`: ccxt's `kraken`
  (pro) `watch_order_book`. Markets are loaded from `rest_url` (`/0/public/AssetPairs` and
  `/0/public/Assets`, e.g. the simulator's) or, when `rest_url` is None, from the real 2021
  AssetPairs capture (`cryptofeed/sample_data/KRAKEN.0`, `.d` dark-pool pairs removed; without
  fixtures, `relay.sim.instruments`' synthesized AssetPairs) plus the synthesized Assets answer.
  `n` counts book frames per symbol. ccxt's own checksum check is off by default and works on floats, so
  the harness verifies every book itself: ccxt's book (price, amount) rendered with the market's
  precision, CRC32 of the top 10 compared with the frame's `checksum`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson

from relay.sim.instruments import load_instruments, rest_asset_pairs, rest_assets
from tests.kit.paths import FIXTURES

KRAKEN_REST_CAPTURE = FIXTURES / "cryptofeed" / "sample_data" / "KRAKEN.0"


@dataclass
class Result:
    """What a client saw: frames, books valid/invalid, errors."""

    frames: int = 0  # book frames handled (snapshots + updates)
    updates: int = 0
    valid: int = 0  # frames after which the client's book matched the checksum
    invalid: int = 0
    errors: list[str] = field(default_factory=list)
    per_symbol: Counter = field(default_factory=Counter)
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        return self.frames > 0 and self.invalid == 0 and not self.errors


def _asset_pairs_by_name(symbols: list[str]) -> dict[str, Any]:
    insts = load_instruments()
    out = {}
    for sym in symbols:
        inst = insts[sym]
        out[sym] = next(iter(rest_asset_pairs([inst])["result"].values()))
    return out


async def run_kraken_sdk_orderbook(
    url: str, symbols: list[str], depth: int = 10, n_updates: int = 200, timeout: float = 30.0
) -> Result:
    """python-kraken-sdk `SpotOrderBookClient` on `url` (e.g. `ws://127.0.0.1:PORT/v2`)."""
    from kraken.spot import SpotOrderBookClient

    base = url[: -len("/v2")] if url.endswith("/v2") else url.rstrip("/")
    result = Result()
    done = asyncio.Event()
    pairs = _asset_pairs_by_name(symbols)

    class Client(SpotOrderBookClient):
        WS_URL = base

        async def on_book_update(self, pair: str, message: dict) -> None:
            if "error" in message:  # the sdk's own checksum mismatch notice
                result.errors.append(str(message["error"]))
                result.invalid += 1
                done.set()
                return
            result.frames += 1
            result.per_symbol[pair] += 1
            if message.get("type") == "update":
                result.updates += 1
            book = self.get(pair)
            if book is not None and book.get("valid"):
                result.valid += 1
            elif book is not None:
                result.invalid += 1
            if result.updates >= n_updates:
                done.set()

    logging.getLogger("kraken").setLevel(logging.CRITICAL)
    t0 = time.monotonic()
    client = Client(depth=depth)
    market = client._SpotOrderBookClient__market
    market.get_asset_pairs = lambda pair=None, **kw: {p: pairs[p] for p in ([pair] if isinstance(pair, str) else pair)}
    try:
        await asyncio.wait_for(client.start(), timeout)
        await client.add_book(pairs=list(symbols))
        try:
            await asyncio.wait_for(done.wait(), max(0.1, timeout - (time.monotonic() - t0)))
        except TimeoutError:
            result.errors.append(f"timeout after {result.updates} updates")
        if client.exception_occur:
            result.errors.append("client reported an exception")
    except Exception as exc:  # reported, not raised: the caller asserts on Result
        result.errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        try:
            await asyncio.wait_for(client.close(), 5)
        except Exception:
            pass
    result.elapsed = time.monotonic() - t0
    return result


def _capture_markets() -> dict[str, Any]:
    """The real AssetPairs REST capture (2021) without `.d` dark-pool pairs, as a parsed body."""
    first = KRAKEN_REST_CAPTURE.read_text().splitlines()[0]  # line 1: the AssetPairs response
    body = first.split(": ", 1)[1] if not first.lstrip().startswith("{") else first
    data = orjson.loads(body)
    data["result"] = {k: v for k, v in data["result"].items() if not k.endswith(".d")}
    return data


async def run_ccxt_watch_order_book(
    ws_url: str,
    rest_url: str | None,
    symbols: list[str],
    n: int = 200,
    timeout: float = 30.0,
    depth: int = 10,
) -> Result:
    """ccxt.pro `kraken.watch_order_book` for each symbol on `ws_url`, books checked per frame."""
    import ccxt.pro as ccxtpro

    result = Result()
    ex = ccxtpro.kraken({"enableRateLimit": False, "timeout": 10000})
    ex.urls["api"]["ws"]["publicV2"] = ws_url
    ex.urls["api"]["ws"]["public"] = ws_url
    if rest_url is not None:
        ex.urls["api"]["public"] = rest_url.rstrip("/")
    else:
        insts = load_instruments()
        if KRAKEN_REST_CAPTURE.exists():
            pairs_body = _capture_markets()
        else:  # no fixtures: the simulator's synthesized AssetPairs for the wanted symbols
            pairs_body = rest_asset_pairs([insts[s] for s in symbols])
        assets_body = rest_assets([insts[s] for s in insts if s in symbols])

        async def public_get_asset_pairs(params: dict | None = None) -> dict:
            return pairs_body

        async def public_get_assets(params: dict | None = None) -> dict:
            return assets_body

        ex.publicGetAssetPairs = ex.public_get_assetpairs = public_get_asset_pairs
        ex.publicGetAssets = ex.public_get_assets = public_get_assets
    # Capture every book frame's checksum, then check ccxt's resulting book against it.
    original = ex.handle_order_book
    precision: dict[str, tuple[int, int]] = {}

    def handle_order_book(client: Any, message: dict) -> None:
        original(client, message)
        try:
            first = message["data"][0]
            sym_ws = first["symbol"]
            book = ex.orderbooks.get(sym_ws)
            if book is None:
                return
            pp, qp = precision[sym_ws]
            parts = []
            for side in (book["asks"], book["bids"]):
                for price, amount in list(side)[:10]:
                    parts.append(_token(price, pp) + _token(amount, qp))
            ok = zlib.crc32("".join(parts).encode()) == int(first["checksum"])
            result.frames += 1
            result.per_symbol[sym_ws] += 1
            if message.get("type") == "update":
                result.updates += 1
            if ok:
                result.valid += 1
            else:
                result.invalid += 1
        except Exception as exc:  # shape problems are failures too
            result.errors.append(f"check: {type(exc).__name__}: {exc}")

    ex.handle_order_book = handle_order_book
    t0 = time.monotonic()
    try:
        await asyncio.wait_for(ex.load_markets(), timeout)
        for sym in symbols:
            m = ex.market(sym)
            pp = _decimals(m["precision"]["price"])
            qp = _decimals(m["precision"]["amount"])
            precision[sym] = (pp, qp)

        async def watch(sym: str) -> None:
            while result.per_symbol[sym] < n:
                await ex.watch_order_book(sym, depth)

        await asyncio.wait_for(
            asyncio.gather(*(watch(s) for s in symbols)), max(0.1, timeout - (time.monotonic() - t0))
        )
    except TimeoutError:
        result.errors.append(f"timeout after {result.frames} frames")
    except Exception as exc:
        result.errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        try:
            await asyncio.wait_for(ex.close(), 5)
        except Exception:
            pass
    result.elapsed = time.monotonic() - t0
    return result


def _decimals(step: Any) -> int:
    """ccxt precision (a tick size like 0.1, or a digit count) -> number of decimals."""
    if isinstance(step, int):
        return step
    text = format(float(step), ".15f").rstrip("0")
    return len(text.split(".")[1]) if "." in text else 0


def _token(value: float, places: int) -> str:
    return format(value, f".{places}f").replace(".", "").lstrip("0")
