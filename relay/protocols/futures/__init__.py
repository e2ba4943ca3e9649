"""Kraken Futures websocket API (`/ws/v1`): wire format, merge, local endpoint and spec."""
