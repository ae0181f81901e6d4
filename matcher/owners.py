"""Which subject owns each label and which labels each subject owns, packed.

The gallery's label -> subject_id map and its inverse, changed together
under the gallery's exclusive lock, so a reader sees both in one state.

A Python list of str costs about 73 bytes a label (an 8-byte pointer and a
65-byte str object for a 16-character NIK). Here a label costs a 9-byte entry
(offset into one byte arena, and length) plus its id's bytes: 25 bytes for a
NIK. Subject ids are ASCII of 1..64 characters (`tunggal.templates`), so a
length of 0 marks a free label. The inverse (`labels_of`) is a
`matcher.subject_index.SubjectIndex` keyed by the id's hash: 8 bytes a label
and 21 to 32 a subject.

Bytes of cleared labels stay in the arena until they outnumber the live
ones; then the arena is rewritten in one vectorised pass (so each clear
costs a constant amount, amortised).

Thread safety: as for the gallery's other in-memory state, writes need the
gallery's exclusive lock and reads its shared lock.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from matcher.subject_index import SubjectIndex

Labels = npt.NDArray[np.int64]

_MAX_ID_BYTES = 255
COMPACT_MIN_GARBAGE = 1 << 20
"""Bytes of garbage below which the arena is never rewritten."""


def _key(subject: bytes) -> int:
    """The subject index's key of an encoded subject id."""
    return hash(subject)


class OwnerTable:
    """label -> subject_id (or None) for `capacity` labels, and subject_id -> labels
    (see the module docstring)."""

    def __init__(self, capacity: int) -> None:
        self._offset: npt.NDArray[np.int64] = np.zeros(capacity, dtype=np.int64)
        self._length: npt.NDArray[np.uint8] = np.zeros(capacity, dtype=np.uint8)
        self._arena = bytearray()
        self._live_bytes = 0
        self._subjects = SubjectIndex(capacity)
        self.compact_min_garbage = COMPACT_MIN_GARBAGE

    @property
    def garbage_bytes(self) -> int:
        """Arena bytes no label points to any more."""
        return len(self._arena) - self._live_bytes

    def __len__(self) -> int:
        return int(self._length.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes held: the entries, the arena (garbage included) and the inverse."""
        return int(
            self._offset.nbytes + self._length.nbytes + len(self._arena) + self._subjects.nbytes
        )

    def get(self, label: int) -> str | None:
        """The subject owning `label`, None when it is free."""
        owner = self._owner_bytes(label)
        return None if owner is None else owner.decode("ascii")

    def _owner_bytes(self, label: int) -> bytes | None:
        length = int(self._length[label])
        if length == 0:
            return None
        start = int(self._offset[label])
        return bytes(self._arena[start : start + length])

    def labels_of(self, subject_id: str) -> Labels:
        """The labels `subject_id` owns, ascending (empty when none)."""
        try:
            wanted = subject_id.encode("ascii")
        except UnicodeEncodeError:
            return np.zeros(0, dtype=np.int64)
        owned = [lb for lb in self._subjects.chain(_key(wanted)) if self._owner_bytes(lb) == wanted]
        return np.array(sorted(owned), dtype=np.int64)

    def held(self, labels: Labels) -> npt.NDArray[np.bool_]:
        """Which of `labels` have an owner."""
        out: npt.NDArray[np.bool_] = self._length[labels] > 0
        return out

    def names(self, labels: Labels) -> list[str]:
        """The owner of each of `labels`, "" for a free label or for -1 (no label)."""
        return [self.get(lb) or "" if lb >= 0 else "" for lb in np.asarray(labels).tolist()]

    def set(self, labels: Labels, subject_id: str) -> None:
        """Give every one of `labels` to `subject_id`."""
        self.assign(labels, [subject_id] * len(labels))

    def assign(self, labels: Labels, subject_ids: Sequence[str]) -> None:
        """Give `labels[i]` to `subject_ids[i]` (labels held before are overwritten)."""
        if len(labels) == 0:
            return
        labels = np.asarray(labels, dtype=np.int64)
        if len(np.unique(labels)) != len(labels):
            raise ValueError("a label appears twice")
        encoded = [s.encode("ascii") for s in subject_ids]
        lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
        if lengths.min() < 1 or lengths.max() > _MAX_ID_BYTES:
            raise ValueError(f"subject ids must have 1..{_MAX_ID_BYTES} bytes")
        self.clear(labels[self.held(labels)])
        keys = np.fromiter(map(_key, encoded), dtype=np.int64, count=len(encoded))
        self._subjects.link(labels, keys)
        self._offset[labels] = len(self._arena) + np.cumsum(lengths) - lengths
        self._length[labels] = lengths
        self._arena += b"".join(encoded)
        self._live_bytes += int(lengths.sum())
        self._compact_if_due()

    def clear(self, labels: Labels) -> None:
        """Free `labels` (free ones stay free)."""
        if len(labels) == 0:
            return
        labels = np.unique(np.asarray(labels, dtype=np.int64))
        labels = labels[self.held(labels)]
        owners = [self._owner_bytes(lb) or b"" for lb in labels.tolist()]
        keys = np.fromiter(map(_key, owners), dtype=np.int64, count=len(owners))
        self._subjects.unlink(labels, keys)
        self._live_bytes -= int(self._length[labels].sum(dtype=np.int64))
        self._length[labels] = 0
        self._compact_if_due()

    def grow(self, capacity: int) -> None:
        """Room for `capacity` labels (never shrinks)."""
        extra = capacity - len(self)
        if extra > 0:
            self._offset = np.concatenate([self._offset, np.zeros(extra, dtype=np.int64)])
            self._length = np.concatenate([self._length, np.zeros(extra, dtype=np.uint8)])
            self._subjects.grow(capacity)

    def _compact_if_due(self) -> None:
        if self.garbage_bytes > max(self._live_bytes, self.compact_min_garbage):
            self._compact()

    def _compact(self) -> None:
        """Rewrite the arena with the live labels' bytes only."""
        live = np.nonzero(self._length)[0]
        lengths = self._length[live].astype(np.int64)
        starts = np.cumsum(lengths) - lengths
        source = np.repeat(self._offset[live] - starts, lengths) + np.arange(int(lengths.sum()))
        arena = np.frombuffer(self._arena, dtype=np.uint8)
        self._arena = bytearray(arena[source].tobytes())
        del arena  # the old buffer is released with its last view
        self._offset[live] = starts
        self._live_bytes = len(self._arena)
