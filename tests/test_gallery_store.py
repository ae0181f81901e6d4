"""The store's durability settings, read back from the connections it uses.

A write is acknowledged only once its WAL frame is fsynced: SQLite in WAL
mode with synchronous=FULL (2). NORMAL (1) would still be crash-consistent
but could lose the last acknowledged writes on power loss, and nothing else
in the suite would notice.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from matcher.gallery import Gallery
from matcher.store import Store
from tunggal.settings import NodeSettings

_FULL = 2


def _durability(conn: sqlite3.Connection) -> tuple[str, int]:
    journal = conn.execute("PRAGMA journal_mode").fetchone()[0]
    synchronous = conn.execute("PRAGMA synchronous").fetchone()[0]
    return str(journal).lower(), int(synchronous)


def test_every_store_connection_is_wal_with_synchronous_full(tmp_path: Path) -> None:
    store = Store(tmp_path / "gallery.sqlite", 8)
    try:
        assert _durability(store._write) == ("wal", _FULL)  # commits go through this one
        readers: list[sqlite3.Connection] = [store._reader()]
        other = threading.Thread(target=lambda: readers.append(store._reader()))
        other.start()
        other.join()
        assert readers[0] is not readers[1]  # one reader connection per thread
        for conn in readers:
            assert _durability(conn) == ("wal", _FULL)
    finally:
        store.close()


def test_a_gallery_writes_through_a_full_synchronous_wal_store(tmp_path: Path) -> None:
    gallery = Gallery(NodeSettings(data_dir=tmp_path, calibrate=False, initial_capacity=64))
    try:
        assert _durability(gallery._store._write) == ("wal", _FULL)
    finally:
        gallery.close(snapshot=False)
    assert (tmp_path / "gallery.sqlite").exists()
