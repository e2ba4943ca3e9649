"""Operator surface, kept apart from the engine: config and `check-config`, logging, metrics,
the /metrics /healthz /readyz HTTP endpoint, the event-loop lag monitor, and systemd notify."""
