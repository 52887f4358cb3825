"""structlog setup: JSON lines (default) or console; one bound logger per component."""

from __future__ import annotations

import hashlib
import logging
import sys
from typing import Any

import structlog

_configured = False


def configure_logging(level: str = "info", fmt: str = "json", stream: Any = None) -> None:
    """Configure structlog once per process. ``fmt`` is ``json`` or ``console``."""
    global _configured
    lvl = logging.getLevelName(level.upper())
    if not isinstance(lvl, int):
        lvl = logging.INFO
    renderer: Any = structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=stream or sys.stderr),
        cache_logger_on_first_use=False,
    )
    _configured = True


def get_logger(component: str) -> Any:
    if not _configured:
        configure_logging()
    return structlog.get_logger().bind(component=component)


def user_ref(user_id: str) -> str:
    """A stable, non-reversible reference to a user for info-level logs (never the raw id)."""
    return "u:" + hashlib.sha256(user_id.encode("utf-8", "surrogatepass")).hexdigest()[:10]
