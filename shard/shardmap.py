"""Which matcher node (shard) owns a subject.

Rendezvous (highest-random-weight) hashing: every node scores every subject
with blake2b(node name, subject id) and the highest score owns it. The result
depends only on the node names (not their order, addresses or the process), and
adding an N-th node moves only ~1/N of the subjects - all of them to the new
node - while removing a node moves only that node's subjects.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

NODE_NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_DIGEST_BYTES = 8
_MAX_PORT = 65535


@dataclass(frozen=True)
class Node:
    """One matcher node: its shard name and its gRPC address (host:port)."""

    name: str
    address: str

    def __str__(self) -> str:
        return f"{self.name} ({self.address})"


def _check_address(address: str, entry: str) -> str:
    host, sep, port = address.rpartition(":")
    if not sep or not host:
        raise ValueError(f"node entry {entry!r}: address {address!r} is not host:port")
    if host.startswith("[") != host.endswith("]"):
        raise ValueError(f"node entry {entry!r}: malformed IPv6 host {host!r}")
    if not port.isdigit() or not 1 <= int(port) <= _MAX_PORT:
        raise ValueError(f"node entry {entry!r}: port {port!r} is not a number in 1..{_MAX_PORT}")
    return address


def parse_nodes(spec: str) -> list[Node]:
    """Parse ``"node-0=127.0.0.1:50052,node-1=127.0.0.1:50053"`` into nodes.

    Whitespace around entries and a trailing comma are ignored; an empty spec, a malformed entry, a
    bad name or port, or a duplicate name or address raises ValueError.
    """
    nodes: list[Node] = []
    names: set[str] = set()
    addresses: set[str] = set()
    body = spec.strip()
    body = body.removesuffix(",")  # a trailing comma is harmless
    for raw in body.split(",") if body else []:
        entry = raw.strip()
        if not entry:
            raise ValueError(f"node list {spec!r} has an empty entry (stray comma?)")
        name, sep, address = (part.strip() for part in entry.partition("="))
        if not sep:
            raise ValueError(f"node entry {entry!r} is not name=host:port")
        if not NODE_NAME_RE.match(name):
            raise ValueError(
                f"node entry {entry!r}: name {name!r} must be 1..64 characters "
                "from A-Z a-z 0-9 . _ -"
            )
        _check_address(address, entry)
        if name in names:
            raise ValueError(f"node name {name!r} appears twice in {spec!r}")
        if address in addresses:
            raise ValueError(f"node address {address!r} appears twice in {spec!r}")
        names.add(name)
        addresses.add(address)
        nodes.append(Node(name, address))
    if not nodes:
        raise ValueError("node list is empty: give at least one name=host:port")
    return nodes


class ShardMap:
    """Maps subject ids to their owning node by rendezvous hashing."""

    def __init__(self, nodes: Iterable[Node]) -> None:
        self._nodes: tuple[Node, ...] = tuple(nodes)
        if not self._nodes:
            raise ValueError("a shard map needs at least one node")
        seen: set[str] = set()
        for node in self._nodes:
            if node.name in seen:
                raise ValueError(f"node name {node.name!r} appears twice")
            seen.add(node.name)
        # One pre-seeded hasher per node; .copy() avoids re-hashing the name.
        self._seeds = [self._seed(node.name) for node in self._nodes]

    @staticmethod
    def _seed(name: str) -> hashlib.blake2b:
        raw = name.encode()
        # Length prefix: ("ab", "c") and ("a", "bc") must hash differently.
        return hashlib.blake2b(len(raw).to_bytes(2, "big") + raw, digest_size=_DIGEST_BYTES)

    @property
    def nodes(self) -> tuple[Node, ...]:
        """Every node, in the order given."""
        return self._nodes

    def weight(self, node: Node, subject_id: str) -> int:
        """The rendezvous score of `node` for `subject_id` (higher wins)."""
        hasher = self._seed(node.name)
        hasher.update(subject_id.encode())
        return int.from_bytes(hasher.digest(), "big")

    def owner(self, subject_id: str) -> Node:
        """The node that owns `subject_id`."""
        key = subject_id.encode()
        best = 0
        best_weight = -1
        for i, seed in enumerate(self._seeds):
            hasher = seed.copy()
            hasher.update(key)
            w = int.from_bytes(hasher.digest(), "big")
            # Ties (astronomically rare) go to the smaller name: order-free.
            if w > best_weight or (
                w == best_weight and self._nodes[i].name < self._nodes[best].name
            ):
                best, best_weight = i, w
        return self._nodes[best]

    def group(self, subject_ids: Sequence[str]) -> dict[Node, list[int]]:
        """Indices into `subject_ids` per owning node (only nodes that own any)."""
        groups: dict[Node, list[int]] = {}
        for i, subject_id in enumerate(subject_ids):
            groups.setdefault(self.owner(subject_id), []).append(i)
        return groups
