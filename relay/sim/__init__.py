"""The built-in Kraken simulators: a generated (or replayed) market served on several redundant
lines with per-line latency/jitter and fault injection. Spot (v2 and v1): `relay.sim.server`;
Futures: `relay.sim.futures`; see README.md."""

from relay.sim.faults import FAULT_KINDS, FaultSpec
from relay.sim.market import MarketEngine, MarketSettings
from relay.sim.server import LineConfig, SimConfig, Simulator

__all__ = ["FAULT_KINDS", "FaultSpec", "LineConfig", "MarketEngine", "MarketSettings", "SimConfig", "Simulator"]
