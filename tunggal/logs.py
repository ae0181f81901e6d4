"""structlog set-up: one JSON object per line on stderr, with nothing secret in it.

A log line must never hold a template (in any encoding), an API key or the
internal secret, tracebacks included. Two layers see to that:

- Tracebacks are rendered as structured frames (file, line, function) without
  frame locals: a handler's locals are the request, its subject ids and its
  template bytes.
- `Redactor`, the last processor before JSON, rewrites whatever still looks
  secret: fields named like a secret (``*secret*``, ``*token*``, ``*key*``...),
  template-like fields (``template``, ``vector``...) unless they are one number,
  raw bytes, arrays, protobuf messages, long lists of floats, and in every
  string (exception messages too) the known secret values, bearer tokens,
  bytes literals and escaped binary, long base64 or hex runs and long runs of
  decimal numbers.

Subject ids are not redacted: they are the pseudonymous handles operators
need to trace a call (the gateway's audit log records them on purpose).
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, Mapping
from typing import Any, TextIO, cast

import numpy as np
import structlog
from google.protobuf.message import Message
from structlog.typing import EventDict, WrappedLogger

from tunggal.internal_auth import internal_secret

REDACTED = "[redacted]"
"""What a redacted value or text fragment is replaced with."""

_SECRET_NAME = re.compile(
    r"secret|passw|token|authori[sz]|credential|cookie|bearer|api_?key|(?:^|[^a-z])keys?(?:$|[^a-z])",
    re.IGNORECASE,
)
"""Field names whose value is never logged, whatever its type."""

_TEMPLATE_NAME = re.compile(r"template|vector|embedding|probe", re.IGNORECASE)
"""Field names whose value is logged only when it is one number (a count, a rate)."""

_MIN_FLOATS = 6
"""A list of this many floats or more is treated as a template's values (six:
numpy's repr of a long array shows its first three and last three)."""

_LONG_RUN = 65
"""Encoded-binary runs this long or longer are redacted. One more than the
longest subject id (64 characters), so no subject id is ever mistaken for one;
65 base64 characters are 48 bytes, 12 float32 values of a template."""

_B64 = r"A-Za-z0-9+/"
_B64URL = r"A-Za-z0-9_-"


def _mixed_run(alphabet: str) -> re.Pattern[str]:
    """A run of `_LONG_RUN`+ characters of `alphabet` (which holds A-Z a-z 0-9
    and two more) mixing digits, upper and lower case, as encoded random bytes
    do. It starts only where a run starts, which keeps the search linear."""
    extra = alphabet.removeprefix("A-Za-z0-9")
    return re.compile(
        rf"(?<![{alphabet}])"
        rf"(?=[A-Za-z{extra}]*[0-9])(?=[a-z0-9{extra}]*[A-Z])(?=[A-Z0-9{extra}]*[a-z])"
        rf"[{alphabet}]{{{_LONG_RUN},}}={{0,2}}"
    )


_NUMBER = r"[-+]?\d*\.\d+(?:[eE][-+]?\d+)?"

_TEXT_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # "Bearer <key>" as in an authorization header (how callers send their key).
    (re.compile(r"\b(Bearer)\s+[A-Za-z0-9._~+/=-]+", re.IGNORECASE), rf"\1 {REDACTED}"),
    # A bytes literal as repr() writes it, closed or cut off.
    (re.compile(r"(?<![A-Za-z0-9_])b'(?:[^'\\\n]|\\.)*(?:'|$)"), REDACTED),
    (re.compile(r'(?<![A-Za-z0-9_])b"(?:[^"\\\n]|\\.)*(?:"|$)'), REDACTED),
    # Runs of escaped bytes (\x1f, \321) as in protobuf text format or hexdumps.
    (re.compile(r"(?:\\(?:x[0-9a-fA-F]{2}|[0-7]{3})[^\\\s]{0,3}){4,}"), REDACTED),
    # Long hex and base64 runs: a template's bytes encoded.
    (re.compile(rf"(?<![0-9a-fA-F])[0-9a-fA-F]{{{_LONG_RUN},}}"), REDACTED),
    (_mixed_run(_B64), REDACTED),
    (_mixed_run(_B64URL), REDACTED),
    # Decimal numbers in a row, as an array's repr prints a template ("..." included).
    (
        re.compile(rf"(?<![\d.])(?:{_NUMBER}(?:[\s,;]|\.\.\.)+){{{_MIN_FLOATS - 1},}}{_NUMBER}"),
        REDACTED,
    ),
)


_SPECIAL = re.compile(r"[\s'\"\\,;]")
_RUN = re.compile(rf"[^\s'\"\\,;\x00]{{{_LONG_RUN}}}")
"""Every one of _TEXT_PATTERNS needs a _SPECIAL character, "..." or a _RUN.
Text with none of them (nor a secret) skips them all: most log strings (names,
ids, addresses) are short and plain, and the gateway writes an audit line per
call, with up to max_k subject ids in it."""

_NAME_PLAIN, _NAME_SECRET, _NAME_TEMPLATE = 0, 1, 2
_NAME_CACHE_MAX = 4096


class Redactor:
    """structlog processor: rewrite every value that must never be logged.

    `secrets` are exact values (the internal secret, keys) cut out of every
    string. The rules are in the module docstring."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)
        self._names: dict[str, int] = {}

    def __call__(self, _logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
        """The event's fields, each redacted by its name and value."""
        out: EventDict = {}
        for key, value in event_dict.items():
            name = str(key)
            out[name] = self._field(name, value)
        return out

    def text(self, text: str) -> str:
        """`text` with secret values and encoded binary replaced by REDACTED."""
        if self._plain(text, len(text)):
            return text
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        for pattern, replacement in _TEXT_PATTERNS:
            text = pattern.sub(replacement, text)
        return text

    def _field(self, name: str, value: Any) -> Any:
        kind = self._names.get(name)
        if kind is None:
            kind = _name_kind(name)
            if len(self._names) < _NAME_CACHE_MAX:
                self._names[name] = kind
        if kind == _NAME_SECRET or (kind == _NAME_TEMPLATE and not _is_number(value)):
            return REDACTED
        return self._value(value)

    def _value(self, value: Any) -> Any:  # noqa: PLR0911  one return per kind, fastest first
        kind = type(value)
        if kind is str:
            return self.text(value)
        if value is None or kind is int or kind is float or kind is bool:
            return value
        if isinstance(value, str):  # subclasses: str enums
            return self.text(str(value))
        if isinstance(value, int | float):  # subclasses: int enums, numpy float64
            return value
        if isinstance(value, bytes | bytearray | memoryview):
            return f"{REDACTED} {len(value)} bytes"
        if isinstance(value, np.ndarray):
            return f"{REDACTED} array {list(value.shape)}"
        if isinstance(value, np.integer | np.floating):
            return value.item()
        if isinstance(value, Message):
            return f"{REDACTED} {value.DESCRIPTOR.full_name}"
        if isinstance(value, Mapping):
            return {str(k): self._field(str(k), v) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return self._items(list(value))
        return self.text(repr(value))

    def _plain(self, text: str, longest_part: int) -> bool:
        """True when no rule can change `text`, whose parts (split at NUL)
        are at most `longest_part` long. Checked first, and fast."""
        if _SPECIAL.search(text) is not None or "..." in text:
            return False
        if longest_part >= _LONG_RUN and _RUN.search(text) is not None:
            return False
        return all(secret not in text for secret in self._secrets)

    def _items(self, items: list[Any]) -> Any:
        if all(type(i) is str for i in items):
            if self._plain("\x00".join(items), max(map(len, items), default=0)):
                return items
        elif len(items) >= _MIN_FLOATS and all(_is_float(i) for i in items):
            return f"{REDACTED} {len(items)} numbers"
        return [self._value(i) for i in items]


def _name_kind(name: str) -> int:
    if _SECRET_NAME.search(name):
        return _NAME_SECRET
    if _TEMPLATE_NAME.search(name):
        return _NAME_TEMPLATE
    return _NAME_PLAIN


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | np.integer | np.floating)


def _is_float(value: Any) -> bool:
    return isinstance(value, float | np.floating)


class _CurrentStderr:
    """Writes to whatever sys.stderr is at the time (it may be replaced)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


class _Service:
    """structlog processor: tag every line with the process's service name.

    A processor rather than a bound context variable: context variables bound
    in the main thread do not reach a gRPC server's worker threads."""

    def __init__(self, service: str) -> None:
        self._service = service

    def __call__(self, _logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
        event_dict.setdefault("service", self._service)
        return event_dict


def processors(service: str, secrets: Iterable[str] = ()) -> list[structlog.typing.Processor]:
    """The processor chain of every Tunggal process, ending in one JSON object."""
    return [
        structlog.contextvars.merge_contextvars,
        # Frames without their locals: a handler's locals hold the request.
        structlog.processors.ExceptionRenderer(
            structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
        ),
        Redactor(secrets),
        # After the Redactor: what these add is known to be safe.
        _Service(service),
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.JSONRenderer(),
    ]


def configure_logging(
    level: str = "info",
    service: str = "tunggal",
    *,
    cache: bool = False,
    secrets: Iterable[str] = (),
) -> None:
    """Send JSON log lines to stderr at `level`, tagged with `service`.

    `secrets` are values to cut out of every line, beside the internal secret
    found in the environment (``TUNGGAL_INTERNAL_SECRET``), always included.

    `cache` binds each logger's processor chain on its first use instead of on
    every line (the gateway's audit log writes one per call). Only a server
    process that configures once, for good, should set it: a cached logger
    ignores any later ``structlog.configure``, such as a test's."""
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    structlog.configure(
        processors=processors(service, [*secrets, *filter(None, [internal_secret()])]),
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=cast(TextIO, _CurrentStderr())),
        cache_logger_on_first_use=cache,
    )
