"""The packed label <-> subject table against a plain dict, under random writes."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from matcher.owners import OwnerTable
from matcher.subject_index import SubjectIndex

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


def _weak_key(subject: bytes) -> int:
    """A key under which most subjects collide: chains must be filtered by owner."""
    return len(subject) % 3


@settings(max_examples=200, deadline=None)
@given(ops=_OPS, colliding=st.booleans())
def test_the_table_answers_like_a_dict_through_writes_clears_growth_and_compaction(
    ops: list[tuple[str, list[int], object]], colliding: bool
) -> None:
    if colliding:
        with mock.patch("matcher.owners._key", _weak_key):
            _check_against_a_dict(ops)
    else:
        _check_against_a_dict(ops)


def _check_against_a_dict(ops: list[tuple[str, list[int], object]]) -> None:
    table = OwnerTable(32)
    table.compact_min_garbage = 0  # rewrite the arena as soon as garbage outweighs live bytes
    model: dict[int, str] = {}
    for op, wanted, arg in ops:
        labels = [lb for lb in wanted if lb < len(table)]
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
        for subject in {*model.values(), "absent"}:
            owned = sorted(lb for lb, s in model.items() if s == subject)
            assert table.labels_of(subject).tolist() == owned
        live = sum(len(s) for s in model.values())
        assert table.garbage_bytes <= max(live, 0)  # compaction keeps garbage bounded
        inverse = 8 * len(table) + 16 * 1024  # a link a label; the smallest hash table
        assert table.nbytes == 9 * len(table) + live + table.garbage_bytes + inverse


def test_a_nik_costs_25_bytes_a_label_and_54_to_65_both_ways() -> None:
    table = OwnerTable(100_000)
    table.assign(np.arange(100_000, dtype=np.int64), [f"3201{i:012d}" for i in range(100_000)])
    # label -> subject: 25 bytes; subject -> labels: an 8-byte link, 21 to 32 a subject.
    assert 100_000 * (25 + 8 + 21) <= table.nbytes <= 100_000 * (25 + 8 + 32)
    assert table.get(999) == "3201000000000999"
    assert table.labels_of("3201000000000999").tolist() == [999]
    assert table.labels_of("nobody").size == 0 and table.labels_of("\u00e9").size == 0


def test_bad_ids_are_refused_and_change_nothing() -> None:
    table = OwnerTable(1000)
    table.assign(np.arange(1000, dtype=np.int64), [f"3201{i:012d}" for i in range(1000)])
    with pytest.raises(ValueError, match=r"1\.\.255 bytes"):
        table.set(np.array([1], dtype=np.int64), "")
    with pytest.raises(ValueError, match="twice"):
        table.assign(np.array([2, 2], dtype=np.int64), ["a", "b"])
    assert table.get(1) == "3201000000000001"  # a refused write changes nothing
    assert table.labels_of("3201000000000001").tolist() == [1]
    assert table.labels_of("3201000000000002").tolist() == [2]


def test_subject_index_chains_through_rebuilds_tombstones_and_collisions() -> None:
    rng = np.random.default_rng(5)
    n = 6000
    index = SubjectIndex(n)
    # Keys that share table slots (multiples of the sizes it takes), negative ones too.
    key_pool = np.concatenate(
        [np.arange(1500) * 4096, -np.arange(1, 1500) * 3, rng.integers(-(2**62), 2**62, 1000)]
    ).astype(np.int64)
    model: dict[int, set[int]] = {}
    owner: dict[int, int] = {}
    free = list(range(n))
    for _ in range(30):
        rng.shuffle(free)
        take, free = free[:400], free[400:]
        keys = rng.choice(key_pool, size=len(take))
        index.link(np.array(take, dtype=np.int64), keys)
        for label, key in zip(take, keys.tolist(), strict=True):
            model.setdefault(key, set()).add(label)
            owner[label] = key
        held = np.array(sorted(owner), dtype=np.int64)
        drop = rng.choice(held, size=len(held) // 3, replace=False)
        index.unlink(drop, np.array([owner[lb] for lb in drop.tolist()], dtype=np.int64))
        for label in drop.tolist():
            model[owner[label]].discard(label)
            del owner[label]
            free.append(label)
        for key in key_pool[::7].tolist():
            assert sorted(index.chain(key)) == sorted(model.get(key, set()))
        assert index.keys == sum(1 for labels in model.values() if labels)
