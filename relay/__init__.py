"""kraken-relay: redundant Kraken websocket connections merged into one clean local feed."""

__version__ = "0.1.0"
