"""Long-running simulator tasks that must not vanish: a failure is logged and the task restarted.

A market or line task that died silently would look, to everything connected, like Kraken going
quiet; a benchmark once measured nothing for minutes that way. Shared by the Spot and Futures
simulators.
"""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

RESTART_AFTER = 1.0  # s: a task that fails again at once must not spin


def supervise(
    tasks: list[asyncio.Task[None]],
    run: Callable[[], Coroutine[Any, Any, None]],
    name: str,
    log: Callable[[str], None] | None,
    alive: Callable[[], bool],
) -> None:
    """Start `run()` as task `name` in `tasks`; while `alive()`, restart it after a failure.
    Finished tasks leave `tasks` (callers stopping them should iterate a copy)."""

    def start() -> None:
        if alive():
            task = asyncio.create_task(run(), name=name)
            task.add_done_callback(done)
            tasks.append(task)

    def done(task: asyncio.Task[None]) -> None:
        if task in tasks:
            tasks.remove(task)
        if task.cancelled() or not alive() or task.exception() is None:
            return
        exc = task.exception()
        assert exc is not None
        where = traceback.extract_tb(exc.__traceback__)[-1]
        if log is not None:
            log(f"{name} failed: {type(exc).__name__}: {exc} at {where.filename}:{where.lineno}; restarting it")
        asyncio.get_running_loop().call_later(RESTART_AFTER, start)

    start()


_BACKGROUND: set[asyncio.Future[object]] = set()


def background(aw: Awaitable[object]) -> None:
    """Run `aw` without waiting for it, referenced until done (the loop keeps only weak refs)."""
    task = asyncio.ensure_future(aw)
    _BACKGROUND.add(task)
    task.add_done_callback(_BACKGROUND.discard)
