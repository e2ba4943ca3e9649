"""Structured logging: JSON lines for machines (journald, docker), a readable console on a TTY.

Everything goes through the stdlib `logging` root handler with structlog's ProcessorFormatter,
so our structlog events *and* third-party stdlib logs (websockets, asyncio) come out in one
format with the same timestamp/level keys. Logging is never on the per-frame hot path.
"""

from __future__ import annotations

import logging
import sys
from typing import IO, Any

import orjson
import structlog

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
_HANDLER_NAME = "kraken-relay"


def _json_dumps(obj: Any, **_: Any) -> str:
    return orjson.dumps(obj, default=str).decode()


def resolve_format(fmt: str, stream: IO[str]) -> str:
    """`auto` means console on a TTY, JSON otherwise (systemd journal, docker logs, pipes)."""
    if fmt in ("json", "console"):
        return fmt
    isatty = getattr(stream, "isatty", None)
    return "console" if callable(isatty) and isatty() else "json"


def configure_logging(level: str = "info", format: str = "auto", stream: IO[str] | None = None) -> str:
    """Configure structlog + stdlib logging once for the process; returns the chosen format.

    Safe to call again (e.g. on SIGHUP with a new level): the previous handler is replaced.
    """
    stream = sys.stderr if stream is None else stream
    if level not in LEVELS:
        raise ValueError(f"unknown log level {level!r}")
    fmt = resolve_format(format, stream)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.stdlib.ExtraAdder(),
    ]
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(serializer=_json_dumps)
        tail: list[Any] = [structlog.processors.format_exc_info]  # traceback as one string field
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=_colors(stream))
        tail = []  # ConsoleRenderer prints exc_info itself
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.PositionalArgumentsFormatter()],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tail, renderer],
    )
    handler = logging.StreamHandler(stream)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(LEVELS[level])
    # websockets logs every handshake failure with a traceback at INFO/ERROR; keep it at warning
    logging.getLogger("websockets").setLevel(max(LEVELS[level], logging.WARNING))

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    return fmt


def _colors(stream: IO[str]) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(callable(isatty) and isatty())


def get_logger(name: str | None = None, **initial: Any) -> Any:
    """A structlog logger bound to `initial` context, e.g. get_logger(__name__, upstream="primary")."""
    return structlog.get_logger(name, **initial)
