"""The packed label -> subject table against a plain dict, under random writes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from matcher.owners import OwnerTable

_IDS = st.text(alphabet="0123456789ABCxyz._:-", min_size=1, max_size=64)
_LABELS = st.lists(st.integers(0, 63), min_size=0, max_size=8, unique=True)
_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("set"), _LABELS, _IDS),
        st.tuples(st.just("assign"), _LABELS, st.lists(_IDS, min_size=8, max_size=8)),
        st.tuples(st.just("clear"), _LABELS, st.just("")),
        st.tuples(st.just("grow"), st.just([]), st.just("")),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(ops=_OPS)
def test_the_table_answers_like_a_dict_through_writes_clears_growth_and_compaction(
    ops: list[tuple[str, list[int], object]],
) -> None:
    table = OwnerTable(32)
    table.compact_min_garbage = 0  # rewrite the arena as soon as garbage outweighs live bytes
    model: dict[int, str] = {}
    for op, labels, arg in ops:
        labels = [lb for lb in labels if lb < len(table)]
        arr = np.array(labels, dtype=np.int64)
        if op == "set":
            assert isinstance(arg, str)
            table.set(arr, arg)
            model.update(dict.fromkeys(labels, arg))
        elif op == "assign":
            assert isinstance(arg, list)
            table.assign(arr, arg[: len(labels)])
            model.update(zip(labels, arg, strict=False))
        elif op == "clear":
            table.clear(arr)
            for lb in labels:
                model.pop(lb, None)
        else:
            table.grow(len(table) + 16)
        assert [table.get(lb) for lb in range(len(table))] == [
            model.get(lb) for lb in range(len(table))
        ]
        everyone = np.arange(len(table), dtype=np.int64)
        assert table.held(everyone).tolist() == [lb in model for lb in range(len(table))]
        assert table.names(np.append(everyone, -1)) == [
            *(model.get(lb, "") for lb in range(len(table))),
            "",
        ]
        live = sum(len(s) for s in model.values())
        assert table.garbage_bytes <= max(live, 0)  # compaction keeps garbage bounded
        assert table.nbytes == 9 * len(table) + live + table.garbage_bytes


def test_a_nik_costs_25_bytes_a_label_and_bad_ids_are_refused() -> None:
    table = OwnerTable(1000)
    table.assign(np.arange(1000, dtype=np.int64), [f"3201{i:012d}" for i in range(1000)])
    assert table.nbytes == 1000 * 25
    assert table.get(999) == "3201000000000999"
    with pytest.raises(ValueError, match=r"1\.\.255 bytes"):
        table.set(np.array([1], dtype=np.int64), "")
    with pytest.raises(ValueError, match="twice"):
        table.assign(np.array([2, 2], dtype=np.int64), ["a", "b"])
    assert table.get(1) == "3201000000000001"  # a refused write changes nothing
