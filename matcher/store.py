"""The node's durable store: SQLite in WAL mode with synchronous=FULL.

SQLite is the write-ahead log and the source of truth. A write is committed
(WAL frame fsynced) before it is acknowledged; SQLite's WAL frames carry
checksums and salts, so a torn last frame after a crash is detected and
discarded on open, never fatal. The HNSW index is derived state: snapshots
plus the `changes` tail rebuild it (see matcher/snapshot.py, docs/storage.md).

Tables:
  templates(label PK, subject_id, vector BLOB float32 normalised, seq)
  subjects(subject_id PK, created_at, updated_at)
  changes(seq PK, label)      - every label added or removed, in order
  requests(request_id PK, fingerprint, template_count, created_at) - idempotency
  meta(key PK, value)         - dim, format version, pruned_through
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from tunggal.errors import FailedPrecondition

FORMAT_VERSION = "1"
FloatMatrix = npt.NDArray[np.float32]
Labels = npt.NDArray[np.int64]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS templates (
  label INTEGER PRIMARY KEY,
  subject_id TEXT NOT NULL,
  vector BLOB NOT NULL,
  seq INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS templates_subject ON templates(subject_id);
CREATE TABLE IF NOT EXISTS subjects (
  subject_id TEXT PRIMARY KEY,
  created_at REAL NOT NULL,
  updated_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS changes (seq INTEGER PRIMARY KEY, label INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS requests (
  request_id TEXT PRIMARY KEY,
  fingerprint BLOB NOT NULL,
  template_count INTEGER NOT NULL,
  created_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
"""


@dataclass(frozen=True)
class EnrollOp:
    """One subject's enrollment, ready to commit (labels already allocated)."""

    subject_id: str
    vectors: FloatMatrix
    labels: Labels
    replace: bool
    request_id: str
    fingerprint: bytes


@dataclass(frozen=True)
class Committed:
    """What one committed EnrollOp changed."""

    subject_id: str
    added: Labels
    removed: Labels
    template_count: int


class Store:
    """Durable templates and change log of one matcher node."""

    def __init__(self, path: Path, dim: int) -> None:
        self.path = path
        self.dim = dim
        path.parent.mkdir(parents=True, exist_ok=True)
        self._write = self._connect()
        self._write.executescript(_SCHEMA)
        self._check_meta()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=10000")
        return conn

    def _check_meta(self) -> None:
        rows = dict(self._write.execute("SELECT key, value FROM meta").fetchall())
        if not rows:
            self._write.executemany(
                "INSERT INTO meta(key, value) VALUES (?, ?)",
                [("dim", str(self.dim)), ("format", FORMAT_VERSION), ("pruned_through", "0")],
            )
            return
        if rows.get("dim") != str(self.dim):
            raise FailedPrecondition(
                f"data in {self.path} holds dim {rows.get('dim')} templates, "
                f"this node is configured for dim {self.dim}"
            )

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    def close(self) -> None:
        """Close every connection (checkpoints the WAL)."""
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()
        self._write.close()

    # ---- reads -------------------------------------------------------------

    def last_seq(self) -> int:
        """Sequence number of the newest durable change (0 if none)."""
        row = self._reader().execute("SELECT COALESCE(MAX(seq), 0) FROM changes").fetchone()
        pruned = int(self.get_meta("pruned_through"))
        return max(int(row[0]), pruned)

    def get_meta(self, key: str) -> str:
        """A value from the meta table."""
        row = self._reader().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return str(row[0]) if row else ""

    def set_meta(self, key: str, value: str) -> None:
        """Durably store a value in the meta table."""
        self._write.execute(
            "INSERT INTO meta(key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def labels_of(self, subject_id: str) -> Labels:
        """Labels of a subject's templates (empty when unknown)."""
        rows = (
            self._reader()
            .execute(
                "SELECT label FROM templates WHERE subject_id = ? ORDER BY label", (subject_id,)
            )
            .fetchall()
        )
        return np.array([r[0] for r in rows], dtype=np.int64)

    def subject(self, subject_id: str) -> tuple[int, float, float] | None:
        """(template_count, created_at, updated_at) or None when unknown."""
        conn = self._reader()
        row = conn.execute(
            "SELECT created_at, updated_at FROM subjects WHERE subject_id = ?", (subject_id,)
        ).fetchone()
        if row is None:
            return None
        count = conn.execute(
            "SELECT COUNT(*) FROM templates WHERE subject_id = ?", (subject_id,)
        ).fetchone()[0]
        return int(count), float(row[0]), float(row[1])

    def counts(self) -> tuple[int, int]:
        """(subjects, templates) stored."""
        conn = self._reader()
        subjects = conn.execute("SELECT COUNT(*) FROM subjects").fetchone()[0]
        templates = conn.execute("SELECT COUNT(*) FROM templates").fetchone()[0]
        return int(subjects), int(templates)

    def label_bound(self) -> int:
        """One past the highest stored label (0 when empty)."""
        row = self._reader().execute("SELECT MAX(label) FROM templates").fetchone()
        return 0 if row[0] is None else int(row[0]) + 1

    def iter_templates(
        self, chunk: int = 50_000
    ) -> Iterator[tuple[Labels, list[str], FloatMatrix]]:
        """All stored templates in label order, `chunk` rows at a time."""
        cur = self._reader().execute(
            "SELECT label, subject_id, vector FROM templates ORDER BY label"
        )
        while rows := cur.fetchmany(chunk):
            labels = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            vectors = np.frombuffer(b"".join(r[2] for r in rows), dtype="<f4").reshape(
                len(rows), self.dim
            )
            yield labels, [r[1] for r in rows], vectors.astype(np.float32)

    def vectors(self, labels: Labels, chunk: int = 10_000) -> FloatMatrix:
        """The stored (float32) templates at `labels`, in that order.

        KeyError names the first label that is not stored."""
        out = np.empty((len(labels), self.dim), dtype=np.float32)
        wanted = labels.tolist()
        reader = self._reader()
        for start in range(0, len(wanted), chunk):
            part = wanted[start : start + chunk]
            marks = ",".join("?" * len(part))
            found = dict(
                reader.execute(
                    f"SELECT label, vector FROM templates WHERE label IN ({marks})",  # noqa: S608 - only "?" placeholders are formatted in
                    part,
                ).fetchall()
            )
            for row, label in enumerate(part, start):
                blob = found.get(label)
                if blob is None:
                    raise KeyError(f"label {label} is not stored")
                out[row] = np.frombuffer(blob, dtype="<f4")
        return out

    def changed_labels_since(self, seq: int) -> Labels:
        """Distinct labels touched by changes after `seq`."""
        rows = (
            self._reader()
            .execute("SELECT DISTINCT label FROM changes WHERE seq > ?", (seq,))
            .fetchall()
        )
        return np.array([r[0] for r in rows], dtype=np.int64)

    def stored_request(self, request_id: str) -> tuple[bytes, int] | None:
        """(fingerprint, template_count) remembered for an idempotency key."""
        row = (
            self._reader()
            .execute(
                "SELECT fingerprint, template_count FROM requests WHERE request_id = ?",
                (request_id,),
            )
            .fetchone()
        )
        return (bytes(row[0]), int(row[1])) if row else None

    # ---- writes (callers serialise them) ------------------------------------

    def commit_enrolls(self, ops: Sequence[EnrollOp], now: float) -> list[Committed]:
        """Commit many enrollments in one fsynced transaction.

        Each op with a request_id is remembered with its fingerprint and
        resulting template count, in the same transaction.
        """
        conn = self._write
        out: list[Committed] = []
        seq = self._next_seq()
        conn.execute("BEGIN IMMEDIATE")
        try:
            for op in ops:
                removed = np.zeros(0, dtype=np.int64)
                if op.replace:
                    removed = np.array(
                        [
                            r[0]
                            for r in conn.execute(
                                "SELECT label FROM templates WHERE subject_id = ?",
                                (op.subject_id,),
                            )
                        ],
                        dtype=np.int64,
                    )
                    conn.execute("DELETE FROM templates WHERE subject_id = ?", (op.subject_id,))
                    for label in removed.tolist():
                        conn.execute("INSERT INTO changes(seq, label) VALUES (?, ?)", (seq, label))
                        seq += 1
                rows = []
                for label, vec in zip(op.labels.tolist(), op.vectors, strict=True):
                    rows.append((label, op.subject_id, vec.astype("<f4").tobytes(), seq))
                    conn.execute("INSERT INTO changes(seq, label) VALUES (?, ?)", (seq, label))
                    seq += 1
                conn.executemany(
                    "INSERT INTO templates(label, subject_id, vector, seq) VALUES (?, ?, ?, ?)",
                    rows,
                )
                conn.execute(
                    "INSERT INTO subjects(subject_id, created_at, updated_at) VALUES (?, ?, ?) "
                    "ON CONFLICT(subject_id) DO UPDATE SET updated_at = excluded.updated_at",
                    (op.subject_id, now, now),
                )
                count = conn.execute(
                    "SELECT COUNT(*) FROM templates WHERE subject_id = ?", (op.subject_id,)
                ).fetchone()[0]
                if op.request_id:
                    conn.execute(
                        "INSERT INTO requests(request_id, fingerprint, template_count, created_at)"
                        " VALUES (?, ?, ?, ?)",
                        (op.request_id, op.fingerprint, count, now),
                    )
                out.append(Committed(op.subject_id, op.labels, removed, int(count)))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return out

    def delete_subject(self, subject_id: str) -> Labels:
        """Remove a subject and its templates durably; returns the freed labels."""
        conn = self._write
        conn.execute("BEGIN IMMEDIATE")
        try:
            labels = np.array(
                [
                    r[0]
                    for r in conn.execute(
                        "SELECT label FROM templates WHERE subject_id = ?", (subject_id,)
                    )
                ],
                dtype=np.int64,
            )
            seq = self._next_seq()
            for label in labels.tolist():
                conn.execute("INSERT INTO changes(seq, label) VALUES (?, ?)", (seq, label))
                seq += 1
            conn.execute("DELETE FROM templates WHERE subject_id = ?", (subject_id,))
            conn.execute("DELETE FROM subjects WHERE subject_id = ?", (subject_id,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return labels

    def _next_seq(self) -> int:
        row = self._write.execute("SELECT COALESCE(MAX(seq), 0) FROM changes").fetchone()
        pruned = int(
            self._write.execute("SELECT value FROM meta WHERE key = 'pruned_through'").fetchone()[0]
        )
        return max(int(row[0]), pruned) + 1

    def prune(self, through_seq: int, requests_before: float) -> None:
        """Forget changes up to `through_seq` and idempotency keys older than a time."""
        conn = self._write
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("DELETE FROM changes WHERE seq <= ?", (through_seq,))
            conn.execute(
                "UPDATE meta SET value = ? "
                "WHERE key = 'pruned_through' AND CAST(value AS INTEGER) < ?",
                (str(through_seq), through_seq),
            )
            conn.execute("DELETE FROM requests WHERE created_at < ?", (requests_before,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
