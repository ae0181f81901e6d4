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


def configure_logging(level: str = "info", service: str = "tunggal") -> None:
    """Send JSON log lines to stderr at `level`, tagged with `service`."""
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
        # A process configures once, at start: each logger binds its processor
        # chain on first use instead of on every line (the audit log writes one
        # per call). Tests configure structlog themselves, without this.
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service)
