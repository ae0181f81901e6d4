"""Validation and (de)serialisation of templates, subject ids and limits.

Used by the gateway (first line) and again by the nodes (defence in depth),
so both reject the same inputs with the same messages.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from tunggal.errors import InvalidArgument
from tunggal.v1 import tunggal_pb2 as pb

FloatMatrix = npt.NDArray[np.float32]

SUBJECT_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
REQUEST_ID_MAX = 128
_LE_F32 = np.dtype("<f4")


def encode_template(vector: npt.ArrayLike) -> pb.Template:
    """Pack one vector as a `Template` (little-endian float32)."""
    arr = np.asarray(vector, dtype=_LE_F32).reshape(-1)
    return pb.Template(data=arr.tobytes(), dim=int(arr.shape[0]))


def decode_template(template: pb.Template, dim: int, field: str) -> FloatMatrix:
    """Validate one template and return it L2-normalised, shape (dim,).

    Raises InvalidArgument naming `field` for a wrong dimension, a byte
    length that does not match it, NaN/inf values or an all-zero vector.
    """
    if template.dim != dim:
        raise InvalidArgument(
            f"{field}.dim is {template.dim}, this cluster's templates have dim {dim}"
        )
    if len(template.data) != 4 * dim:
        raise InvalidArgument(
            f"{field}.data has {len(template.data)} bytes, expected {4 * dim} "
            f"(dim {dim} little-endian float32)"
        )
    vec = np.frombuffer(template.data, dtype=_LE_F32).astype(np.float32)
    if not np.all(np.isfinite(vec)):
        raise InvalidArgument(f"{field}.data contains NaN or infinite values")
    norm = float(np.linalg.norm(vec))
    if norm == 0.0 or not np.isfinite(norm):
        raise InvalidArgument(f"{field}.data is an all-zero vector (no direction to match)")
    out: FloatMatrix = vec / np.float32(norm)
    return out


def decode_template_batch(
    templates: Sequence[pb.Template], dim: int, field: Callable[[int], str]
) -> list[FloatMatrix | InvalidArgument]:
    """`decode_template` of many templates at once: one row or one error each.

    Well-formed templates are checked and normalised in one vectorised pass;
    any that fail are decoded again one by one for `decode_template`'s own
    message, naming `field(i)` (only built for those)."""
    n = len(templates)
    size = 4 * dim
    out: list[FloatMatrix | InvalidArgument] = []
    if n == 0:
        return out
    if any(t.dim != dim or len(t.data) != size for t in templates):
        for i, template in enumerate(templates):
            try:
                out.append(decode_template(template, dim, field(i)))
            except InvalidArgument as exc:
                out.append(exc)
        return out
    rows = np.frombuffer(b"".join(t.data for t in templates), dtype=_LE_F32).reshape(n, dim)
    rows = rows.astype(np.float32)
    norms = np.linalg.norm(rows, axis=1)
    good = np.isfinite(rows).all(axis=1) & np.isfinite(norms) & (norms > 0)
    rows /= np.where(good, norms, np.float32(1.0))[:, None]
    for i, ok in enumerate(good.tolist()):
        if ok:
            out.append(rows[i])
        else:
            try:
                out.append(decode_template(templates[i], dim, field(i)))
            except InvalidArgument as exc:
                out.append(exc)
    return out


def decode_templates(
    templates: list[pb.Template] | tuple[pb.Template, ...],
    dim: int,
    max_count: int,
    field: str = "templates",
) -> FloatMatrix:
    """Validate 1..max_count templates and return them as a (n, dim) matrix."""
    if len(templates) == 0:
        raise InvalidArgument(f"{field} is empty: send at least one template")
    if len(templates) > max_count:
        raise InvalidArgument(
            f"{field} has {len(templates)} templates, at most {max_count} per call"
        )
    rows = [decode_template(t, dim, f"{field}[{i}]") for i, t in enumerate(templates)]
    return np.stack(rows).astype(np.float32, copy=False)


def decode_probe(probe: pb.Probe, dim: int, field: str = "probe") -> FloatMatrix:
    """Validate a probe (today: a template) and return it normalised."""
    kind = probe.WhichOneof("kind")
    if kind != "template":
        raise InvalidArgument(f"{field} is empty: set {field}.template")
    return decode_template(probe.template, dim, f"{field}.template")


def check_subject_id(subject_id: str, field: str = "subject_id") -> str:
    """Return `subject_id` if well-formed, else raise InvalidArgument."""
    if not subject_id:
        raise InvalidArgument(f"{field} is empty")
    if not SUBJECT_ID_RE.match(subject_id):
        raise InvalidArgument(
            f"{field} {subject_id[:80]!r} is malformed: use 1..64 characters "
            "from A-Z a-z 0-9 . _ : -"
        )
    return subject_id


def check_request_id(request_id: str) -> str:
    """Return `request_id` if within limits, else raise InvalidArgument."""
    if len(request_id) > REQUEST_ID_MAX:
        raise InvalidArgument(
            f"request_id has {len(request_id)} characters, at most {REQUEST_ID_MAX}"
        )
    return request_id


def check_k(k: int, max_k: int) -> int:
    """Return `k` if in 1..max_k, else raise InvalidArgument."""
    if k < 1 or k > max_k:
        raise InvalidArgument(f"k is {k}, must be between 1 and {max_k}")
    return k


def check_score(value: float, field: str) -> float:
    """Return a similarity bound if it is a finite value in [-1, 1]."""
    if not math.isfinite(value) or value < -1.0 or value > 1.0:
        raise InvalidArgument(f"{field} is {value}, must be a number between -1 and 1")
    return float(value)


def check_threshold(value: float) -> float:
    """Return a Verify threshold if it is in (-1, 1], else raise InvalidArgument."""
    threshold = check_score(value, "threshold")
    if threshold <= -1.0:
        raise InvalidArgument(f"threshold is {value}, must be greater than -1 and at most 1")
    return threshold


def in_escalation_band(best: float | None, threshold: float, band: float) -> bool:
    """Whether a best HNSW score (None: nothing found) lies in the ambiguity band
    just below the verify threshold, where a mate HNSW missed would hide."""
    return band > 0 and best is not None and threshold - band <= best < threshold


def check_mode(mode: int) -> int:
    """Return an explicit EnrollMode, else raise InvalidArgument."""
    if mode not in (pb.ENROLL_MODE_APPEND, pb.ENROLL_MODE_REPLACE):
        raise InvalidArgument(
            "mode must be ENROLL_MODE_APPEND or ENROLL_MODE_REPLACE (explicitly chosen)"
        )
    return mode
