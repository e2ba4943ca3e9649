"""A `kraken-relay run` child process as the daemon tests drive it: its URLs and HTTP probes."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson


class Daemon:
    def __init__(self, proc: subprocess.Popen, config_path: Path, ws_url: str, http_url: str) -> None:
        self.proc, self.config_path, self.ws_url, self.http_url = proc, config_path, ws_url, http_url

    def http(self, path: str) -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(self.http_url + path, timeout=2) as r:
                return r.status, orjson.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, orjson.loads(e.read() or b"null")

    async def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                if (await asyncio.to_thread(self.http, "/readyz"))[0] == 200:
                    return
            await asyncio.sleep(0.2)
        raise AssertionError("relay never became ready")
