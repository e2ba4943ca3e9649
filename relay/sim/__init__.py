"""The built-in Kraken Spot v2 simulator: a generated (or replayed) market served on several
redundant lines with per-line latency/jitter and fault injection. See `relay.sim.server`."""

from relay.sim.faults import FAULT_KINDS, FaultSpec
from relay.sim.market import MarketEngine, MarketSettings
from relay.sim.server import LineConfig, SimConfig, Simulator

__all__ = ["FAULT_KINDS", "FaultSpec", "LineConfig", "MarketEngine", "MarketSettings", "SimConfig", "Simulator"]
