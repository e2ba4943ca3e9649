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
            if self.proc.poll() is not None:
                break  # it exited: say why below
            await asyncio.sleep(0.2)
        why = f"exited with {self.proc.returncode}" if self.proc.poll() is not None else "still running"
        try:
            status, body = self.http("/readyz")
            state = f"/readyz {status}: {str(body)[:600]}"
        except (OSError, ValueError) as exc:
            state = f"/readyz unreachable ({exc})"
        err = ""
        if self.proc.poll() is not None and self.proc.stderr is not None:
            err = self.proc.stderr.read().decode(errors="replace")[-2000:]
        raise AssertionError(f"relay never became ready ({why}; {state}) {err}")
