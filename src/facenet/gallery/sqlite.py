"""The default store: one SQLite file (owner-only) of people, faces, embeddings and the change feed.

Why SQLite: transactions make an enrolment all-or-nothing across a crash, WAL mode lets readers
query while one writer enrols, and the file is portable. The file is recognised by its
``PRAGMA application_id``; a file that is not ours is refused and never written to. Its schema
version is ``PRAGMA user_version``: a file of a newer version is refused, an older one is migrated
in one transaction (version 1 -> 2 adds the change feed; faces enrolled before it carry seq 0).

Removal is real: ``PRAGMA secure_delete`` zeroes freed pages, and the write-ahead log is
checkpointed and truncated right after, so the removed embeddings' bytes leave the disk files
(unless another process holds a read snapshot at that moment; its next checkpoint finishes the job).
"""

from __future__ import annotations

import os
import sqlite3
from contextlib import contextmanager
from pathlib import Path

from facenet.errors import GalleryError
from facenet.fileio import atomic_path
from facenet.gallery.store import SQLStore, check_model, meta_rows

APPLICATION_ID = 0x464E4554  # "FNET"
SCHEMA_VERSION = 2
_SQLITE_MAGIC = b"SQLite format 3\x00"
_BUSY_TIMEOUT_S = 30.0

# MIGRATIONS[v] takes a file from version v to v + 1; a new file runs them all
_MIGRATIONS = {
    0: """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE people (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE, created REAL NOT NULL);
CREATE TABLE faces (id INTEGER PRIMARY KEY AUTOINCREMENT,
                    person_id INTEGER NOT NULL REFERENCES people(id) ON DELETE CASCADE,
                    source TEXT NOT NULL, created REAL NOT NULL);
CREATE INDEX faces_person ON faces(person_id);
CREATE TABLE embeddings (face_id INTEGER PRIMARY KEY REFERENCES faces(id) ON DELETE CASCADE,
                         vector BLOB NOT NULL)
""",
    1: """
ALTER TABLE faces ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
CREATE INDEX faces_seq ON faces(seq);
CREATE TABLE removed_faces (face_id INTEGER PRIMARY KEY, seq INTEGER NOT NULL);
CREATE INDEX removed_faces_seq ON removed_faces(seq);
CREATE TABLE feed (id INTEGER PRIMARY KEY CHECK (id = 1), head INTEGER NOT NULL);
INSERT INTO feed (id, head) VALUES (1, 0)
""",
}


class SQLiteStore(SQLStore):
    def __init__(self, path: Path, conn: sqlite3.Connection, model_id: str, embedding_size: int, storage: str,
                 policy: str):
        super().__init__(model_id, embedding_size, storage, policy)
        self.path, self.location, self._conn = path, str(path), conn

    @classmethod
    def open(cls, path: str | os.PathLike, model_id: str | None, embedding_size: int | None, create: bool,
             storage: str, policy: str | None = None) -> "SQLiteStore":
        path = Path(path).expanduser()
        if not path.exists() or path.stat().st_size == 0:
            if not create:
                raise GalleryError(f"no gallery at {path}; enrol someone first or pass the right --gallery")
            if model_id is None or embedding_size is None:
                raise GalleryError(f"no gallery at {path}; creating one needs a model (its id and embedding size)")
            _create(path, meta_rows(model_id, int(embedding_size), storage, policy))
        else:
            _check_header(path)
        conn = sqlite3.connect(path, timeout=_BUSY_TIMEOUT_S, isolation_level=None)
        try:
            try:
                for pragma in ("foreign_keys=ON", "secure_delete=ON", "synchronous=FULL", "journal_mode=WAL"):
                    conn.execute(f"PRAGMA {pragma}")
                _migrate(conn, path)
                meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            except sqlite3.DatabaseError as exc:
                raise GalleryError(f"gallery {path} is damaged and cannot be read ({exc}); "
                                   "restore it from an export") from exc
            return cls(path, conn, *check_model(str(path), meta, model_id, embedding_size, policy))
        except BaseException:
            conn.close()
            raise

    def close(self) -> None:
        self._conn.close()

    @contextmanager
    def _read(self):
        self._conn.execute("BEGIN")  # one snapshot for every statement inside
        try:
            yield self._conn.cursor()
        finally:
            self._conn.execute("COMMIT")

    @contextmanager
    def _write(self):
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn.cursor()
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def enroll(self, records, merge: bool = True) -> None:
        try:
            super().enroll(records, merge)
        except sqlite3.IntegrityError as exc:
            raise GalleryError(f"enrolment rejected by gallery {self.path}: {exc}") from exc

    def remove(self, name: str) -> int:
        removed = super().remove(name)
        self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the deleted bytes leave the log too
        return removed

    def export(self, path: str | os.PathLike) -> None:
        """Write a compact, self-contained copy (a gallery file itself; deleted pages are not copied)."""
        with atomic_path(path) as tmp:
            self._conn.execute("VACUUM INTO ?", (str(tmp),))


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Bring the file to SCHEMA_VERSION in one transaction (a no-op when it is there already)."""
    if conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]  # another process may have migrated it
        if version > SCHEMA_VERSION:
            raise GalleryError(f"gallery {path} was written by a newer facenet (schema {version}); "
                               "upgrade facenet to read it")
        for step in range(version, SCHEMA_VERSION):
            for statement in _MIGRATIONS[step].split(";"):
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _check_header(path: Path) -> None:
    """Refuse anything that is not one of our gallery files, by reading its header only."""
    try:
        with open(path, "rb") as fh:
            header = fh.read(100)
    except OSError as exc:
        raise GalleryError(f"cannot read gallery {path}: {exc.strerror}") from exc
    if len(header) < 100 or not header.startswith(_SQLITE_MAGIC):
        raise GalleryError(f"{path} is not a facenet gallery (not an SQLite database); it was left untouched — "
                           "pass another --gallery")
    if int.from_bytes(header[68:72], "big") != APPLICATION_ID:
        raise GalleryError(f"{path} is an SQLite database of another application, not a facenet gallery; "
                           "it was left untouched — pass another --gallery")
    if int.from_bytes(header[60:64], "big") > SCHEMA_VERSION:
        raise GalleryError(f"gallery {path} was written by a newer facenet (schema "
                           f"{int.from_bytes(header[60:64], 'big')}); upgrade facenet to read it")


def _create(path: Path, meta: list[tuple[str, str]]) -> None:
    """Build the empty gallery beside ``path`` and move it in place: a crash leaves no half file."""
    with atomic_path(path) as tmp:
        conn = sqlite3.connect(tmp, isolation_level=None)
        try:
            conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
            _migrate(conn, Path(tmp))
            conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", meta)
            conn.execute("PRAGMA journal_mode=WAL")
        finally:
            conn.close()

