"""Kraken Spot websocket API v2: wire format, merge, local endpoint, upstream plan and spec."""
