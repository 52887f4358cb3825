"""structlog setup: JSON lines (default) or console; one bound logger per component.

Standard-library log records (aiokafka's, for one) go through the same renderer, so the stream
stays one JSON object per line; libraries log at ``warning`` and above unless the level is
``debug``."""

from __future__ import annotations

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
    stamp = structlog.processors.TimeStamper(fmt="iso", utc=True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            stamp,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=stream or sys.stderr),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=[structlog.stdlib.add_log_level, structlog.stdlib.add_logger_name, stamp, structlog.processors.format_exc_info],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(lvl if lvl <= logging.DEBUG else max(lvl, logging.WARNING))
    logging.getLogger("taskclf_daemon").setLevel(lvl)  # our own stdlib loggers (e.g. the model's backend swap) at the chosen level
    _configured = True


def get_logger(component: str) -> Any:
    if not _configured:
        configure_logging()
    return structlog.get_logger().bind(component=component)
