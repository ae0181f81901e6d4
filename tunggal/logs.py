"""structlog set-up: one JSON object per line on stderr."""

from __future__ import annotations

import logging
import sys
from typing import TextIO, cast

import structlog


class _CurrentStderr:
    """Writes to whatever sys.stderr is at the time (it may be replaced)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(
    level: str = "info", service: str = "tunggal", *, cache: bool = False
) -> None:
    """Send JSON log lines to stderr at `level`, tagged with `service`.

    `cache` binds each logger's processor chain on its first use instead of on
    every line (the gateway's audit log writes one per call). Only a server
    process that configures once, for good, should set it: a cached logger
    ignores any later ``structlog.configure``, such as a test's."""
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.dict_tracebacks,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=cast(TextIO, _CurrentStderr())),
        cache_logger_on_first_use=cache,
    )
    structlog.contextvars.bind_contextvars(service=service)
