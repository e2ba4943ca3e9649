"""Shared test kit: repository paths, the Kraken capture fixtures, and helpers used by several test packages."""
