"""Template decoding: the batch path answers exactly like one template at a time."""

from __future__ import annotations

import numpy as np
import pytest

from tunggal.errors import InvalidArgument
from tunggal.templates import decode_template, decode_template_batch, encode_template
from tunggal.v1 import tunggal_pb2 as pb

_DIM = 16


def _cases() -> list[pb.Template]:
    rng = np.random.default_rng(3)
    nan = rng.standard_normal(_DIM).astype(np.float32)
    nan[4] = np.nan
    inf = rng.standard_normal(_DIM).astype(np.float32)
    inf[0] = np.inf
    return [
        encode_template(rng.standard_normal(_DIM)),
        encode_template(nan),
        encode_template(np.zeros(_DIM)),
        encode_template(inf),
        encode_template(rng.standard_normal(_DIM) * 1e-3),
    ]


def _decoded_one_by_one(templates: list[pb.Template]) -> list[np.ndarray | str]:
    out: list[np.ndarray | str] = []
    for i, t in enumerate(templates):
        try:
            out.append(decode_template(t, _DIM, f"t[{i}]"))
        except InvalidArgument as exc:
            out.append(exc.message)
    return out


@pytest.mark.parametrize("odd_one", [None, "dim", "bytes"])
def test_batch_decoding_gives_the_same_rows_and_messages(odd_one: str | None) -> None:
    templates = _cases()
    if odd_one == "dim":  # a wrong dimension sends the whole batch down the slow path
        templates.append(encode_template(np.ones(_DIM + 1)))
    elif odd_one == "bytes":
        templates.append(pb.Template(data=b"\0" * (4 * _DIM - 1), dim=_DIM))
    batch = decode_template_batch(templates, _DIM, lambda i: f"t[{i}]")
    single = _decoded_one_by_one(templates)
    assert len(batch) == len(single)
    for got, want in zip(batch, single, strict=True):
        if isinstance(want, str):
            assert isinstance(got, InvalidArgument)
            assert got.message == want
        else:
            assert isinstance(got, np.ndarray)
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
            assert abs(float(np.linalg.norm(got)) - 1.0) < 1e-6
    assert [isinstance(r, InvalidArgument) for r in batch][:5] == [False, True, True, True, False]
    assert decode_template_batch([], _DIM, str) == []
