"""Tests for the operator surface: CLI, config, logging, metrics, HTTP, systemd, deploy files."""
