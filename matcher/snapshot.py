"""Atomic, checksummed snapshots of a node's HNSW index.

A snapshot is a directory ``snapshots/snap-<seq>`` holding ``index.bin``
(hnswlib's own format) and ``manifest.json`` (seq, sha256 and size of the
index file, index parameters). It is written under a ``.tmp`` name, every
file fsynced, then renamed into place and the parent directory fsynced, so a
crash leaves either the whole snapshot or none. Loading verifies the
checksum and falls back to older snapshots, and finally to a full rebuild
from the store.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

_log = structlog.get_logger("matcher.snapshot")
_PREFIX = "snap-"


@dataclass(frozen=True)
class Manifest:
    """What a snapshot holds."""

    seq: int
    sha256: str
    size: int
    dim: int
    m: int
    ef_construction: int
    capacity: int
    count: int
    created_at: float


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_snapshot(root: Path, index: Any, manifest_fields: dict[str, int], keep: int) -> Path:
    """Write `index` (an hnswlib.Index) as the snapshot at manifest_fields['seq'].

    The caller must keep writers out of the index while this runs (searches
    may go on). Older snapshots beyond the newest `keep` are removed.
    """
    root.mkdir(parents=True, exist_ok=True)
    seq = manifest_fields["seq"]
    final = root / f"{_PREFIX}{seq:020d}"
    tmp = root / f"{_PREFIX}{seq:020d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    index_path = tmp / "index.bin"
    index.save_index(str(index_path))
    _fsync_path(index_path)
    manifest = Manifest(
        seq=seq,
        sha256=_sha256(index_path),
        size=index_path.stat().st_size,
        dim=manifest_fields["dim"],
        m=manifest_fields["m"],
        ef_construction=manifest_fields["ef_construction"],
        capacity=manifest_fields["capacity"],
        count=manifest_fields["count"],
        created_at=time.time(),
    )
    manifest_path = tmp / "manifest.json"
    manifest_path.write_text(json.dumps(manifest.__dict__, indent=2))
    _fsync_path(manifest_path)
    _fsync_path(tmp)
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    _fsync_path(root)
    for old in list(snapshots(root))[keep:]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def snapshots(root: Path) -> Iterator[Path]:
    """Finished snapshot directories, newest first (leftover .tmp ignored)."""
    if not root.exists():
        return iter(())
    found = sorted(
        (p for p in root.iterdir() if p.name.startswith(_PREFIX) and not p.name.endswith(".tmp")),
        key=lambda p: p.name,
        reverse=True,
    )
    return iter(found)


def read_manifest(path: Path) -> Manifest | None:
    """The snapshot's manifest if it and its index file check out, else None."""
    try:
        data = json.loads((path / "manifest.json").read_text())
        manifest = Manifest(**data)
        index_path = path / "index.bin"
        if index_path.stat().st_size != manifest.size:
            _log.warning("snapshot_bad_size", path=str(path))
            return None
        if _sha256(index_path) != manifest.sha256:
            _log.warning("snapshot_bad_checksum", path=str(path))
            return None
    except (OSError, ValueError, TypeError) as exc:
        _log.warning("snapshot_unreadable", path=str(path), error=str(exc))
        return None
    return manifest


def remove_leftovers(root: Path) -> None:
    """Delete half-written snapshot directories left by a crash."""
    if root.exists():
        for p in root.iterdir():
            if p.name.endswith(".tmp"):
                shutil.rmtree(p, ignore_errors=True)
