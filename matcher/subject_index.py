"""Which labels belong to a key (a subject id's hash), packed: chains in an open hash table.

The gallery answers Verify from memory (subject -> labels, consistent with
the label -> subject map under the same lock), so it needs the labels of a
subject without a Python dict, which costs well over 100 bytes a subject
(the id str alone is 65 bytes for a 16-character NIK). Here:

- each label has an 8-byte `next` link, chaining the labels of one key;
- a linear-probing table holds, per key, the key (8 bytes) and the head of
  its chain (8 bytes), at a load of 0.5 to 0.75: 21 to 32 bytes a key.

Keys are 64-bit hashes; two ids with the same hash share a chain, so callers
filter a chain by owner (`matcher.owners.OwnerTable.labels_of`). Bulk links
(a gallery's load, a batch of enrollments) are vectorised; unlinking walks
the chains of the keys concerned.

Thread safety: as for the gallery's other in-memory state, writes need the
gallery's exclusive lock and reads its shared lock.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Labels = npt.NDArray[np.int64]
Keys = npt.NDArray[np.int64]

END = -1
"""`next` of the last label of a chain."""
_EMPTY = -1
"""A slot never used: a probe stops here."""
_TOMBSTONE = -2
"""A slot whose chain emptied: probes go on past it, inserts may reuse it."""
_MIN_SLOTS = 1024
_MAX_LOAD = 0.75
"""Used slots (chains and tombstones) over table size that triggers a rebuild."""
_REBUILT_LOAD = 0.5
"""Chains over table size just after a rebuild."""


class SubjectIndex:
    """key -> the labels linked under it, for labels 0..capacity-1."""

    def __init__(self, capacity: int) -> None:
        self._next: Labels = np.full(capacity, END, dtype=np.int64)
        self._keys: Keys = np.zeros(_MIN_SLOTS, dtype=np.int64)
        self._heads: Labels = np.full(_MIN_SLOTS, _EMPTY, dtype=np.int64)
        self._used = 0  # slots holding a chain or a tombstone
        self._chains = 0  # slots holding a chain

    @property
    def nbytes(self) -> int:
        """Bytes held: the links and the table."""
        return int(self._next.nbytes + self._keys.nbytes + self._heads.nbytes)

    @property
    def keys(self) -> int:
        """Keys with at least one label."""
        return self._chains

    def grow(self, capacity: int) -> None:
        """Room for labels up to `capacity` - 1 (never shrinks)."""
        extra = capacity - len(self._next)
        if extra > 0:
            self._next = np.concatenate([self._next, np.full(extra, END, dtype=np.int64)])

    def chain(self, key: int) -> list[int]:
        """Every label linked under `key`, newest links first."""
        slot = self._find(key)
        return [] if slot < 0 else self._walk(int(self._heads[slot]))

    def _walk(self, label: int) -> list[int]:
        """The labels of the chain that starts at `label`."""
        out: list[int] = []
        while label != END:
            out.append(label)
            label = int(self._next[label])
        return out

    def link(self, labels: Labels, keys: Keys) -> None:
        """Link `labels[i]` under `keys[i]` (the labels must not be linked already)."""
        if len(labels) == 0:
            return
        order = np.lexsort((labels, keys))
        ordered_keys = keys[order]
        ordered = labels[order]
        starts = np.flatnonzero(np.r_[True, ordered_keys[1:] != ordered_keys[:-1]])
        ends = np.r_[starts[1:], len(ordered)] - 1
        distinct = ordered_keys[starts]
        if self._used + len(distinct) > _MAX_LOAD * len(self._keys):
            self._rebuild(self._chains + len(distinct))
        slots = self._find_many(distinct)
        found = slots >= 0
        old_heads = np.full(len(distinct), END, dtype=np.int64)
        old_heads[found] = self._heads[slots[found]]
        # Each key's new labels in a row, the last one pointing at its old chain.
        self._next[ordered[:-1]] = ordered[1:]
        self._next[ordered[ends]] = old_heads
        self._heads[slots[found]] = ordered[starts[found]]
        self._insert_many(distinct[~found], ordered[starts[~found]])

    def unlink(self, labels: Labels, keys: Keys) -> None:
        """Remove `labels[i]` from the chain of `keys[i]` (absent ones are ignored)."""
        gone = set(np.asarray(labels).tolist())
        for key in np.unique(keys).tolist():
            slot = self._find(key)
            if slot < 0:
                continue
            kept = [label for label in self._walk(int(self._heads[slot])) if label not in gone]
            if kept:
                self._next[kept[:-1]] = kept[1:]
                self._next[kept[-1]] = END
                self._heads[slot] = kept[0]
            else:
                self._heads[slot] = _TOMBSTONE
                self._chains -= 1
        self._next[np.asarray(labels, dtype=np.int64)] = END

    def _find(self, key: int) -> int:
        """The slot of `key`'s chain, -1 when it has none."""
        size = len(self._keys)
        pos = key % size
        while True:
            head = int(self._heads[pos])
            if head == _EMPTY:
                return -1
            if head >= 0 and int(self._keys[pos]) == key:
                return pos
            pos = (pos + 1) % size

    def _find_many(self, keys: Keys) -> Labels:
        """`_find` of many distinct keys at once."""
        size = len(self._keys)
        pos = keys % size
        out = np.full(len(keys), -1, dtype=np.int64)
        pending = np.arange(len(keys))
        while len(pending):
            here = pos[pending]
            heads = self._heads[here]
            hit = (heads >= 0) & (self._keys[here] == keys[pending])
            out[pending[hit]] = here[hit]
            going_on = ~hit & (heads != _EMPTY)
            pending = pending[going_on]
            pos[pending] = (here[going_on] + 1) % size
        return out

    def _insert_many(self, keys: Keys, heads: Labels) -> None:
        """New chains for distinct keys that have none (the table has room)."""
        size = len(self._keys)
        pos = keys % size
        pending = np.arange(len(keys))
        while len(pending):
            here = pos[pending]
            free = self._heads[here] < 0
            # One key per free slot this round; the others probe the next slot.
            taken, first = np.unique(here[free], return_index=True)
            winners = pending[free][first]
            self._used += int((self._heads[taken] == _EMPTY).sum())
            self._heads[taken] = heads[winners]
            self._keys[taken] = keys[winners]
            self._chains += len(winners)
            placed = np.zeros(len(keys), dtype=bool)
            placed[winners] = True
            pending = pending[~placed[pending]]
            pos[pending] = (pos[pending] + 1) % size

    def _rebuild(self, chains: int) -> None:
        """A table sized for `chains` chains, without tombstones."""
        live = self._heads >= 0
        keys, heads = self._keys[live], self._heads[live]
        size = max(_MIN_SLOTS, int(chains / _REBUILT_LOAD))
        self._keys = np.zeros(size, dtype=np.int64)
        self._heads = np.full(size, _EMPTY, dtype=np.int64)
        self._used = self._chains = 0
        self._insert_many(keys, heads)
