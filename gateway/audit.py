"""Audit log: one structlog JSON line per public call.

Each line (event ``audit``) has the tenant (``-`` when unauthenticated), the
method, the status code name, latency_ms and the caller's address; a
rejection adds its reason, shadow-mode quota hits add ``shadow``. Only
whitelisted identifiers are taken from messages: the subject_id of Enroll,
Delete, Verify and GetSubject, the item count of EnrollBatch, and the
subject ids Identify returned. Template bytes, keys and key hashes are never
logged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import structlog

_SUBJECT_METHODS = frozenset({"Enroll", "Delete", "Verify", "GetSubject"})


@dataclass(slots=True)
class AuditEntry:
    """What is known about one call when it ends."""

    method: str
    tenant: str | None = None
    code: grpc.StatusCode = grpc.StatusCode.OK
    latency_ms: float = 0.0
    peer: str = ""
    reason: str | None = None
    shadow: Sequence[str] = ()
    subject_id: str | None = None
    items: int | None = None
    candidates: Sequence[str] | None = None


def request_fields(entry: AuditEntry, method: str, request: object) -> None:
    """Copy the request's whitelisted identifiers into `entry`."""
    if method in _SUBJECT_METHODS:
        subject_id = getattr(request, "subject_id", None)
        if isinstance(subject_id, str):
            entry.subject_id = subject_id
    elif method == "EnrollBatch":
        items = getattr(request, "items", None)
        if items is not None:
            entry.items = len(items)


def response_fields(entry: AuditEntry, method: str, response: object) -> None:
    """Copy the response's whitelisted identifiers (Identify's subject ids) into `entry`."""
    if method == "Identify":
        candidates = getattr(response, "candidates", None)
        if candidates is not None:
            entry.candidates = [str(c.subject_id) for c in candidates]


class AuditLog:
    """Writes `AuditEntry`s as structlog lines (logger ``tunggal.audit``)."""

    def __init__(self, logger: Any = None) -> None:
        self._log = logger if logger is not None else structlog.get_logger("tunggal.audit")

    def record(self, entry: AuditEntry) -> None:
        """Log one line for a finished call."""
        fields: dict[str, Any] = {
            "tenant": entry.tenant or "-",
            "method": entry.method,
            "code": entry.code.name,
            "latency_ms": round(entry.latency_ms, 3),
            "peer": entry.peer,
        }
        if entry.reason is not None:
            fields["reason"] = entry.reason
        if entry.shadow:
            fields["shadow"] = list(entry.shadow)
        if entry.subject_id is not None:
            fields["subject_id"] = entry.subject_id
        if entry.items is not None:
            fields["items"] = entry.items
        if entry.candidates is not None:
            fields["candidates"] = list(entry.candidates)
        self._log.info("audit", **fields)
