"""No log line, tracebacks included, holds template bytes, keys or the internal secret."""

from __future__ import annotations

import base64
import io
import json
import re
import secrets
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import structlog

from tests.conftest import NodeProcess
from tunggal.internal_auth import METADATA_KEY, SECRET_ENV
from tunggal.logs import REDACTED, Redactor, configure_logging, processors
from tunggal.node.v1 import node_pb2_grpc as node_grpc
from tunggal.templates import decode_template, encode_template
from tunggal.v1 import tunggal_pb2 as pb

DIM = 128  # the node's default
APPEND = pb.ENROLL_MODE_APPEND


@pytest.fixture(autouse=True)
def _restore_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()


def _template_vector(seed: int) -> np.ndarray[Any, np.dtype[np.float32]]:
    """A template whose leading values are clearly negative (before and after
    normalising), so their decimal forms ("-0.0812...") cannot occur by chance
    in a log line."""
    rng = np.random.default_rng(seed)
    vector = rng.standard_normal(DIM).astype(np.float32)
    vector[:8] = -rng.uniform(1.0, 3.0, 8)
    return vector


_CONTROL_ESCAPES = {0x07: "a", 0x08: "b", 0x09: "t", 0x0A: "n", 0x0B: "v", 0x0C: "f", 0x0D: "r"}


def _escaped_byte(byte: int) -> str:
    """A regex for `byte` as any escaping writes it: itself when printable,
    ``\\xhh`` (repr), ``\\ooo`` (protobuf text), with any number of
    backslashes (a repr of a repr doubles them)."""
    forms = [f"x{byte:02x}", f"0*{byte:o}"]
    if byte in _CONTROL_ESCAPES:
        forms.append(_CONTROL_ESCAPES[byte])
    escaped = rf"\\+(?:{'|'.join(forms)})"
    if 0x20 <= byte < 0x7F:
        return rf"(?:\\*{re.escape(chr(byte))}|{escaped})"
    return escaped


def _decimal(value: float) -> str:
    """A regex for negative `value` as printed with fixed or scientific notation,
    matching its first five significant digits."""
    mantissa, exponent_text = f"{abs(value):.9e}".split("e")
    digits, exponent = mantissa.replace(".", "")[:5], int(exponent_text)
    if exponent < 0:
        fixed = "0." + "0" * (-exponent - 1) + digits
    else:
        fixed = digits[: exponent + 1] + "." + digits[exponent + 1 :]
    scientific = rf"{digits[0]}\.{digits[1:]}\d*[eE]{exponent:+03d}"
    return rf"-(?:{re.escape(fixed)}|{scientific})"


def _forms(name: str, data: bytes) -> dict[str, re.Pattern[str]]:
    """Recognisable pieces of `data` (little-endian float32 values) in every form
    a log line could carry them: escaped bytes, hex, base64 (both alphabets) and
    decimal values, named for the failure message."""
    forms = {
        f"{name} escaped": "".join(_escaped_byte(byte) for byte in data[:6]),
        f"{name} hex": re.escape(data[:8].hex()),
        f"{name} base64": re.escape(base64.b64encode(data[:12]).decode()),
        f"{name} base64url": re.escape(base64.urlsafe_b64encode(data[:12]).decode()),
    }
    for i, value in enumerate(np.frombuffer(data, dtype="<f4")[:6].tolist()):
        forms[f"{name} value {i}"] = _decimal(value)
    return {label: re.compile(pattern) for label, pattern in forms.items()}


def _literal(name: str, text: str) -> dict[str, re.Pattern[str]]:
    return {name: re.compile(re.escape(text))}


def _strings(value: Any) -> Iterator[str]:
    """Every string in a parsed JSON value, keys included."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _leaks(log_text: str, forbidden: dict[str, re.Pattern[str]]) -> set[str]:
    """The names of the `forbidden` patterns found in the log, raw or JSON-decoded."""
    decoded = "\n".join(
        text
        for line in log_text.splitlines()
        if line.startswith("{")
        for text in _strings(json.loads(line))
    )
    return {
        name
        for name, pattern in forbidden.items()
        if pattern.search(log_text) or pattern.search(decoded)
    }


@pytest.mark.timeout(120)
def test_an_unhandled_error_in_a_node_handler_logs_no_request_contents(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Subject ids are not secret (the gateway's audit log records them), but a
    # crash log carries no request contents at all: the id must not appear.
    secret = f"internal-{secrets.token_hex(16)}"
    monkeypatch.setenv(SECRET_ENV, secret)
    subject = "crash-subject-7f3a9c"
    vector = _template_vector(seed=12)
    template = encode_template(vector)
    stored = decode_template(template, DIM, "t").astype("<f4").tobytes()

    node = NodeProcess(tmp_path / "node-0").start()
    try:
        with grpc.insecure_channel(node.address) as channel:
            stub = node_grpc.MatcherNodeStub(channel)
            auth = ((METADATA_KEY, secret),)
            first = encode_template(_template_vector(seed=1))
            stub.Enroll(
                pb.EnrollRequest(subject_id="first", templates=[first], mode=APPEND), metadata=auth
            )
            # Enroll writes its rows to `templates`; without it the next one
            # raises sqlite3.OperationalError inside the handler.
            with sqlite3.connect(node.data_dir / "gallery.sqlite") as db:
                db.execute("DROP TABLE templates")
            with pytest.raises(grpc.RpcError) as failed:
                stub.Enroll(
                    pb.EnrollRequest(subject_id=subject, templates=[template], mode=APPEND),
                    metadata=auth,
                )
        assert failed.value.code() == grpc.StatusCode.INTERNAL
        assert "templates" not in (failed.value.details() or "")  # no internals to the caller
    finally:
        node.stop()

    log = node.log.read_text()
    crashes = [
        entry
        for line in log.splitlines()
        if line.startswith("{")
        for entry in [json.loads(line)]
        if entry["event"] == "unhandled_error"
    ]
    assert len(crashes) == 1, log
    crash = crashes[0]
    assert crash["method"] == "Enroll"
    assert crash["level"] == "error"
    assert crash["service"] == "node:node-0"
    assert "timestamp" in crash
    (stack,) = crash["exception"]
    assert stack["exc_type"] == "OperationalError"
    assert "no such table: templates" in stack["exc_value"]
    frames = stack["frames"]
    assert frames[0]["filename"].endswith("tunggal/rpc.py")  # the handler's wrapper, and on
    assert len(frames) > 2
    assert all(set(frame) == {"filename", "lineno", "name"} for frame in frames)

    forbidden = (
        _forms("sent template", template.data)
        | _forms("stored template", stored)
        | _literal("internal secret", secret)
        | _literal("subject id", subject)
    )
    assert _leaks(log, forbidden) == set()


def _chain_output(secrets: list[str], log: Any) -> dict[str, Any]:
    """Run the processor chain on what `log(logger)` logs; the one JSON line, parsed."""
    buffer = io.StringIO()
    structlog.configure(
        processors=processors("test", secrets),
        logger_factory=structlog.PrintLoggerFactory(file=buffer),
        cache_logger_on_first_use=False,
    )
    log(structlog.get_logger("test"))
    lines = buffer.getvalue().splitlines()
    assert len(lines) == 1, lines
    parsed: dict[str, Any] = json.loads(lines[0])
    return parsed


def _fail_with(
    request: pb.EnrollRequest,
    key: str,
    vector: Any,  # noqa: ARG001  a local the traceback must not show
) -> None:
    data = request.templates[0].data
    raise ValueError(f"cannot store {data!r} for {key}")


def test_tracebacks_carry_frames_without_locals_and_scrubbed_messages() -> None:
    secret = f"internal-{secrets.token_hex(16)}"
    vector = _template_vector(seed=3)
    template = encode_template(vector)
    request = pb.EnrollRequest(subject_id="s-1", templates=[template])

    def log(logger: Any) -> None:
        try:
            _fail_with(request, f"key {secret}", vector)
        except ValueError:
            logger.exception("unhandled_error", method="Enroll")

    line = _chain_output([secret], log)
    (stack,) = line["exception"]
    assert stack["exc_type"] == "ValueError"
    assert stack["exc_value"] == f"cannot store {REDACTED} for key {REDACTED}"
    assert [f["name"] for f in stack["frames"]][-1] == "_fail_with"
    assert all("locals" not in frame for frame in stack["frames"])
    forbidden = _forms("template", template.data) | _literal("secret", secret)
    assert _leaks(json.dumps(line), forbidden) == set()


def test_fields_that_must_never_be_logged_are_redacted() -> None:
    secret = f"internal-{secrets.token_hex(16)}"
    vector = _template_vector(seed=4)
    data = vector.astype("<f4").tobytes()
    sent: dict[str, Any] = {
        "internal_secret": secret,
        "api_key": "sk-live-123",
        "key_id": "k1",
        "Authorization": "Bearer sk-live-123",
        "password": 1234,
        "token": ["a", "b"],
        "template": data,
        "vectors": vector.tolist(),
        "raw": data,
        "buffer": bytearray(data[:16]),
        "array": vector,
        "floats": [float(v) for v in vector[:6]],
        "message": pb.EnrollRequest(subject_id="s-1", templates=[encode_template(vector)]),
        "nested": {"secret": "x", "ok": [1, 2], "bytes": data},
        "hex": data.hex(),
        "b64": base64.b64encode(data).decode(),
        "b64url": base64.urlsafe_b64encode(data).decode(),
        "numbers": str(vector),
        "array_repr": repr(np.tile(vector, 40)),  # elided "..." in the middle
        "escaped": 'data: "\\321\\002\\377A\\020\\177\\003"',
        "header": "authorization: bearer sk-live-123",
        "detail": f"the secret is {secret}",
    }
    kept: dict[str, Any] = {
        "subject_id": "x" * 64,
        "candidates": ["0123456789abcdef" * 4, "s-2"],
        "templates": 4,
        "probes": 20_000,
        "path": "/tmp/pytest-of-someone/pytest-12/test_the_node_log_of_an_error0/node-0",
        "peer": "ipv4:127.0.0.1:50123",
        "hit_rate": 0.999,
        "labels": list(range(20)),
        "exact": True,
        "error": "database is locked",
        "reason": "quota_rate",
        "quotas": ["Verify rate 50/s", "daily 200000"],
        "nothing": None,
    }
    line = _chain_output([secret], lambda logger: logger.warning("event", **sent, **kept))

    assert {key: line[key] for key in kept} == kept
    assert line["event"] == "event"
    assert line["level"] == "warning"
    assert "timestamp" in line
    for key, value in line.items():
        if key in sent:
            assert REDACTED in json.dumps(value), (key, value)
    assert line["nested"]["ok"] == [1, 2]
    assert line["header"] == f"authorization: bearer {REDACTED}"
    assert line["detail"] == f"the secret is {REDACTED}"
    forbidden = (
        _forms("template", data) | _literal("secret", secret) | _literal("key", "sk-live-123")
    )
    assert _leaks(json.dumps(line), forbidden) == set()


def test_configure_logging_writes_json_lines_without_the_environments_secret(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = f"internal-{secrets.token_hex(16)}"
    monkeypatch.setenv(SECRET_ENV, secret)
    configure_logging("info", service="node:test")
    logger = structlog.get_logger("test")
    logger.debug("hidden")
    logger.info("called", detail=f"sent {secret}", subject_id="s-1")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    line = json.loads(lines[0])
    assert line["event"] == "called"
    assert line["service"] == "node:test"
    assert line["subject_id"] == "s-1"
    assert line["detail"] == f"sent {REDACTED}"


@pytest.mark.timeout(30)
def test_redaction_keeps_plain_text_and_finishes_on_long_runs() -> None:
    redactor = Redactor(["hunter2-secret"])
    assert redactor.text("node-0 listening on 127.0.0.1:50051") == (
        "node-0 listening on 127.0.0.1:50051"
    )
    assert redactor.text("at 2024-01-01T12:00:00.123456Z, 3.5 ms") == (
        "at 2024-01-01T12:00:00.123456Z, 3.5 ms"
    )
    # Inputs that would make a backtracking pattern quadratic still finish.
    long_plain = "x" * 200_000
    assert redactor.text(long_plain) == long_plain
    assert redactor.text(", ".join(["1.5"] * 50_000)) == REDACTED
