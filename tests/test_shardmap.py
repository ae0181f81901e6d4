"""Shard map: rendezvous hashing properties and node-list parsing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from shard.shardmap import Node, ShardMap, parse_nodes

ROOT = Path(__file__).resolve().parent.parent
TWO = [Node("node-0", "127.0.0.1:50052"), Node("node-1", "127.0.0.1:50053")]
THREE = [*TWO, Node("node-2", "127.0.0.1:50054")]
SUBJECTS = [f"3171{i:012d}" for i in range(30_000)]


def test_owner_is_deterministic_and_order_free() -> None:
    a = ShardMap(THREE)
    b = ShardMap(list(reversed(THREE)))
    for sid in SUBJECTS[:2000]:
        assert a.owner(sid) == a.owner(sid) == b.owner(sid)


def test_owner_ignores_addresses() -> None:
    moved = [Node(n.name, f"10.0.0.{i}:6000") for i, n in enumerate(THREE)]
    a, b = ShardMap(THREE), ShardMap(moved)
    assert all(a.owner(s).name == b.owner(s).name for s in SUBJECTS[:2000])


def test_owner_is_pinned() -> None:
    """Golden values: a change here re-homes every stored subject."""
    smap = ShardMap(THREE)
    got = {sid: smap.owner(sid).name for sid in GOLDEN}
    assert got == GOLDEN


GOLDEN = {
    "a": "node-1",
    "3171012345670001": "node-0",
    "subject-0": "node-0",
    "subject-1": "node-2",
    "subject-2": "node-1",
}


def test_same_owners_in_another_process() -> None:
    """No dependence on Python's per-process hash() seed."""
    code = (
        "import json, sys; from shard.shardmap import ShardMap, parse_nodes; "
        "m = ShardMap(parse_nodes(sys.argv[1])); "
        "print(json.dumps([m.owner(f'3171{i:012d}').name for i in range(500)]))"
    )
    spec = ",".join(f"{n.name}={n.address}" for n in THREE)
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code, spec],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    smap = ShardMap(THREE)
    assert json.loads(out.stdout) == [smap.owner(s).name for s in SUBJECTS[:500]]


@pytest.mark.parametrize("nodes", [TWO, THREE])
def test_balance(nodes: list[Node]) -> None:
    smap = ShardMap(nodes)
    counts = Counter(smap.owner(s).name for s in SUBJECTS)
    expected = len(SUBJECTS) / len(nodes)
    assert set(counts) == {n.name for n in nodes}
    for name, count in counts.items():
        assert abs(count - expected) / expected < 0.03, (name, count, expected)


def test_adding_a_node_moves_a_third_only_to_it() -> None:
    before, after = ShardMap(TWO), ShardMap(THREE)
    moved = [s for s in SUBJECTS if before.owner(s) != after.owner(s)]
    assert 0.30 < len(moved) / len(SUBJECTS) < 0.37
    assert all(after.owner(s).name == "node-2" for s in moved)


def test_removing_a_node_moves_only_its_subjects() -> None:
    before, after = ShardMap(THREE), ShardMap(TWO)
    for s in SUBJECTS[:5000]:
        if before.owner(s).name != "node-2":
            assert after.owner(s) == before.owner(s)


def test_group_returns_indices_per_owner() -> None:
    smap = ShardMap(THREE)
    ids = [*SUBJECTS[:100], SUBJECTS[0]]
    groups = smap.group(ids)
    assert sorted(i for idx in groups.values() for i in idx) == list(range(len(ids)))
    for node, idx in groups.items():
        assert idx == sorted(idx)
        assert all(smap.owner(ids[i]) == node for i in idx)
    assert smap.group([]) == {}


def test_single_node_owns_everything() -> None:
    smap = ShardMap(TWO[:1])
    assert {smap.owner(s) for s in SUBJECTS[:100]} == {TWO[0]}


def test_parse_nodes() -> None:
    assert parse_nodes("node-0=127.0.0.1:50052, node-1 = 127.0.0.1:50053") == TWO
    assert parse_nodes("a=[::1]:7000") == [Node("a", "[::1]:7000")]
    assert parse_nodes("a=matcher-0.matcher.svc:50052,") == [
        Node("a", "matcher-0.matcher.svc:50052")
    ]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty"),
        ("  ", "empty"),
        ("node-0", "not name=host:port"),
        ("node-0=127.0.0.1", "not host:port"),
        ("node-0=:50052", "not host:port"),
        ("node-0=127.0.0.1:port", "port 'port'"),
        ("node-0=127.0.0.1:70000", "port '70000'"),
        ("=127.0.0.1:50052", "name ''"),
        ("node 0=127.0.0.1:50052", "name 'node 0'"),
        ("a=h:1,,b=h:2", "empty entry"),
        ("a=h:1,a=h:2", "node name 'a' appears twice"),
        ("a=h:1,b=h:1", "node address 'h:1' appears twice"),
    ],
)
def test_parse_nodes_errors(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        parse_nodes(spec)


def test_shard_map_rejects_empty_and_duplicates() -> None:
    with pytest.raises(ValueError, match="at least one node"):
        ShardMap([])
    with pytest.raises(ValueError, match="twice"):
        ShardMap([Node("a", "h:1"), Node("a", "h:2")])
