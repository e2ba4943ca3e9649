"""Symbols the simulator can serve, with Kraken's real precisions, and the REST answers built from them.

Precisions decide the wire text of every number and therefore every checksum, so they come from
a small built-in table of major pairs (real values), extended by a real v2 `instrument` snapshot when
one is given (`SimConfig.instruments`, `kraken-relay sim --instruments FILE` / `--fixtures DIR`). The REST
`AssetPairs`/`Assets` answers are synthesized in Kraken's shape (v1 `wsname`, X/Z-prefixed
legacy asset ids) because clients such as ccxt and python-kraken-sdk load them at start-up.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# symbol -> (price_precision, qty_precision, qty_min, cost_min): real values (2024-04 snapshot).
BUILTIN: dict[str, tuple[int, int, float, float]] = {
    "BTC/USD": (1, 8, 0.0001, 0.5),
    "ETH/USD": (2, 8, 0.002, 0.5),
    "SOL/USD": (2, 8, 0.05, 0.5),
    "XRP/USD": (5, 8, 10.0, 0.5),
    "DOGE/USD": (7, 8, 60.0, 0.5),
    "ADA/USD": (6, 8, 10.0, 0.5),
    "LTC/USD": (2, 8, 0.05, 0.5),
    "DOT/USD": (4, 8, 0.6, 0.5),
    "LINK/USD": (5, 8, 0.2, 0.5),
    "BTC/EUR": (1, 8, 0.0001, 0.45),
    "ETH/EUR": (2, 8, 0.002, 0.45),
    "ETH/BTC": (5, 8, 0.002, 0.00002),
}

# Rough USD prices so simulated books sit near reality (any other asset: derived from precision).
USD_PRICE = {
    "BTC": 60000.0,
    "ETH": 3000.0,
    "SOL": 150.0,
    "XRP": 0.55,
    "DOGE": 0.12,
    "ADA": 0.45,
    "LTC": 80.0,
    "DOT": 6.5,
    "LINK": 15.0,
    "USD": 1.0,
    "EUR": 1.08,
    "GBP": 1.27,
    "USDT": 1.0,
    "USDC": 1.0,
    "AVAX": 30.0,
    "MATIC": 0.7,
    "XMR": 150.0,
    "ATOM": 8.0,
    "JPY": 0.0067,
    "CAD": 0.73,
}

# Kraken's legacy asset ids (REST) and v1 names for the few assets that have them.
LEGACY_ASSET = {
    "BTC": "XXBT",
    "ETH": "XETH",
    "LTC": "XLTC",
    "XRP": "XXRP",
    "DOGE": "XXDG",
    "XMR": "XXMR",
    "ETC": "XETC",
    "XLM": "XXLM",
    "ZEC": "XZEC",
    "MLN": "XMLN",
    "REP": "XREP",
    "USD": "ZUSD",
    "EUR": "ZEUR",
    "GBP": "ZGBP",
    "JPY": "ZJPY",
    "CAD": "ZCAD",
    "AUD": "ZAUD",
}
V1_NAME = {"BTC": "XBT", "DOGE": "XDG"}


@dataclass(frozen=True)
class Instrument:
    """One pair as the simulator needs it."""

    symbol: str
    base: str
    quote: str
    price_precision: int
    qty_precision: int
    qty_min: float = 0.0001
    cost_min: float = 0.5
    raw: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def start_price(self) -> float:
        base, quote = USD_PRICE.get(self.base), USD_PRICE.get(self.quote)
        if base is not None and quote is not None:
            return base / quote
        return 10.0 ** max(0, 5 - self.price_precision)

    def pair_dict(self) -> dict[str, Any]:
        """The v2 `instrument` channel pair entry."""
        if self.raw:
            return dict(self.raw)
        return {
            "symbol": self.symbol,
            "base": self.base,
            "quote": self.quote,
            "status": "online",
            "qty_precision": self.qty_precision,
            "qty_increment": 10.0**-self.qty_precision,
            "price_precision": self.price_precision,
            "cost_precision": 5,
            "marginable": False,
            "has_index": True,
            "cost_min": self.cost_min,
            "tick_size": 10.0**-self.price_precision,
            "price_increment": 10.0**-self.price_precision,
            "qty_min": self.qty_min,
        }


def load_instruments(path: Path | None = None) -> dict[str, Instrument]:
    """All known pairs: the built-in table, plus (and overridden by) the pairs of the v2 `instrument`
    snapshot at `path` if given and readable."""
    out: dict[str, Instrument] = {}
    for sym, (pp, qp, qmin, cmin) in BUILTIN.items():
        base, quote = sym.split("/")
        out[sym] = Instrument(sym, base, quote, pp, qp, qmin, cmin)
    try:
        data = json.loads(path.read_text()) if path else None
    except (OSError, ValueError):
        data = None
    if isinstance(data, dict):
        data = data.get("data", data)
        for p in data.get("pairs", ()) if isinstance(data, dict) else ():
            try:
                sym = p["symbol"]
                out[sym] = Instrument(
                    sym,
                    p["base"],
                    p["quote"],
                    int(p["price_precision"]),
                    int(p["qty_precision"]),
                    float(p.get("qty_min") or 0),
                    float(p.get("cost_min") or 0),
                    dict(p),
                )
            except (KeyError, TypeError, ValueError):
                continue
    return out


def _asset_id(asset: str) -> str:
    return LEGACY_ASSET.get(asset, asset)


def _v1(asset: str) -> str:
    return V1_NAME.get(asset, asset)


def rest_pair_key(inst: Instrument) -> str:
    """REST pair key: `XXBTZUSD` for legacy pairs, `SOLUSD` otherwise (as Kraken does)."""
    b, q = _asset_id(inst.base), _asset_id(inst.quote)
    if inst.base == "DOGE":  # a newer listing: legacy asset id, plain pair key (XDGUSD)
        return _v1(inst.base) + _v1(inst.quote)
    if len(b) == 4 and len(q) == 4 and b[0] in "XZ" and q[0] in "XZ":
        return b + q
    return _v1(inst.base) + _v1(inst.quote)


def rest_asset_pairs(instruments: list[Instrument]) -> dict[str, Any]:
    """`GET /0/public/AssetPairs` answer for the simulated symbols."""
    result = {}
    for inst in instruments:
        key = rest_pair_key(inst)
        result[key] = {
            "altname": _v1(inst.base) + _v1(inst.quote),
            "wsname": f"{_v1(inst.base)}/{_v1(inst.quote)}",
            "aclass_base": "currency",
            "base": _asset_id(inst.base),
            "aclass_quote": "currency",
            "quote": _asset_id(inst.quote),
            "lot": "unit",
            "cost_decimals": 5,
            "pair_decimals": inst.price_precision,
            "lot_decimals": inst.qty_precision,
            "lot_multiplier": 1,
            "leverage_buy": [],
            "leverage_sell": [],
            "fees": [[0, 0.26], [50000, 0.24]],
            "fees_maker": [[0, 0.16], [50000, 0.14]],
            "fee_volume_currency": "ZUSD",
            "margin_call": 80,
            "margin_stop": 40,
            "ordermin": format(inst.qty_min, "f"),
            "costmin": format(inst.cost_min, "f"),
            "tick_size": format(10.0**-inst.price_precision, f".{inst.price_precision}f"),
            "status": "online",
        }
    return {"error": [], "result": result}


def rest_assets(instruments: list[Instrument]) -> dict[str, Any]:
    """`GET /0/public/Assets` answer: every base and quote of the simulated symbols."""
    result: dict[str, dict[str, Any]] = {}
    for inst in instruments:
        for asset, decimals in ((inst.base, inst.qty_precision), (inst.quote, 4)):
            aid = _asset_id(asset)
            result.setdefault(
                aid,
                {
                    "aclass": "currency",
                    "altname": _v1(asset),
                    "decimals": max(decimals, 4),
                    "display_decimals": min(decimals, 5),
                    "status": "enabled",
                },
            )
    return {"error": [], "result": result}


def instrument_data(instruments: list[Instrument]) -> dict[str, Any]:
    """The v2 `instrument` snapshot `data` object: assets then pairs."""
    assets: dict[str, dict[str, Any]] = {}
    for inst in instruments:
        for asset in (inst.base, inst.quote):
            assets.setdefault(
                asset,
                {
                    "id": asset,
                    "status": "enabled",
                    "precision": 10 if asset not in ("USD", "EUR") else 4,
                    "precision_display": 5,
                    "borrowable": False,
                    "collateral_value": 0.0,
                    "margin_rate": 0.0,
                },
            )
    return {"assets": list(assets.values()), "pairs": [inst.pair_dict() for inst in instruments]}
