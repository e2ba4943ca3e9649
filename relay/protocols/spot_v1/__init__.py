"""Kraken Spot websocket API v1 (legacy): wire format, merge, local endpoint and spec."""
