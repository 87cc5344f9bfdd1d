"""The default store: one SQLite file (owner-only) of people, faces, embeddings and the change feed.

Why SQLite: transactions make an enrolment all-or-nothing across a crash, WAL mode lets readers
query while one writer enrols, and the file is portable. The file is recognised by its
``PRAGMA application_id``; a file that is not ours is refused and never written to. Its schema
version is ``PRAGMA user_version``: a file of a newer version is refused, an older one is migrated
in one transaction (version 1 -> 2 adds the change feed; faces enrolled before it carry seq 0).

Removal is real, and never waits on readers. ``PRAGMA secure_delete`` zeroes what a deletion frees,
but the person's old pages stay in the write-ahead log (and the database file keeps its old copy) until a
checkpoint copies the zeroed pages back and truncates the log. That checkpoint cannot finish while a
reader (another connection, thread or process) still holds a snapshot from before the removal, and
waiting for it would block the removal for as long as the read lasts. So the delete commits at once,
the wiping checkpoint is tried without waiting, and until it succeeds it is tried again before each
gallery operation of this store and every ``_WIPE_RETRY_S`` by a thread of its own: the person's bytes
leave both files as soon as no reader holds such a snapshot, while the process keeps running. A store
that sees removals in the change feed, or opens a file whose log is not empty, finishes a wipe another
process left pending the same way.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path

from facenet.errors import GalleryError
from facenet.fileio import atomic_path
from facenet.gallery.store import Changes, SQLStore, check_model, meta_rows, new_gallery_id

APPLICATION_ID = 0x464E4554  # "FNET"
SCHEMA_VERSION = 2
_SQLITE_MAGIC = b"SQLite format 3\x00"
_BUSY_TIMEOUT_S = 30.0  # how long a writer waits for another writer
_WIPE_RETRY_S = 1.0  # how often a pending wipe is tried again while a reader holds an old snapshot

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
    def __init__(
        self, path: Path, conn: sqlite3.Connection, model_id: str, embedding_size: int, storage: str, policy: str
    ):
        super().__init__(model_id, embedding_size, storage, policy)
        self.path, self.location, self._conn = path, str(path), conn
        self._wipe_lock = threading.Lock()
        self._wipe_pending = False  # removed bytes may still be in the files
        self._retrier: threading.Thread | None = None
        self._closed = threading.Event()

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        model_id: str | None,
        embedding_size: int | None,
        create: bool,
        storage: str,
        policy: str | None = None,
    ) -> SQLiteStore:
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
                raise GalleryError(
                    f"gallery {path} is damaged and cannot be read ({exc}); restore it from an export"
                ) from exc
            store = cls(path, conn, *check_model(str(path), meta, model_id, embedding_size, policy))
        except BaseException:
            conn.close()
            raise
        wal = path.with_name(path.name + "-wal")
        if wal.exists() and wal.stat().st_size:
            store._wipe_later()  # a removal of another process may have left its log unwiped
        return store

    def close(self) -> None:
        self._closed.set()  # stops the retrying thread
        self._conn.close()
        with self._wipe_lock:
            if self._wipe_pending:  # one last try; the next process to open the file finishes it otherwise
                _truncate_wal(self.path)

    @contextmanager
    def _read(self):
        self._wipe()
        self._conn.execute("BEGIN")  # one snapshot for every statement inside
        try:
            yield self._conn.cursor()
        finally:
            self._conn.execute("COMMIT")

    @contextmanager
    def _write(self):
        self._wipe()
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
        removed = super().remove(name)  # committed: readers holding older snapshots do not delay it
        self._wipe_later()
        return removed

    def changes(self, after: int | None) -> Changes:
        changes = super().changes(after)
        if len(changes.removed):  # another process removed someone; a reader may have kept it from wiping
            self._wipe_later()
        return changes

    def _wipe_later(self) -> None:
        """Note that removed bytes may still be in the files, and try to wipe them now."""
        with self._wipe_lock:
            self._wipe_pending = True
        self._wipe()

    def _wipe(self) -> None:
        """Finish a pending wipe unless a reader holds a snapshot from before it (never waiting for one);
        then a thread tries again every ``_WIPE_RETRY_S`` until it succeeds or the store is closed."""
        with self._wipe_lock:
            if self._wiped() or self._retrier is not None or self._closed.is_set():
                return
            self._retrier = threading.Thread(target=self._retry_wipe, name="facenet-gallery-wipe", daemon=True)
            self._retrier.start()

    def _retry_wipe(self) -> None:
        while not self._closed.wait(_WIPE_RETRY_S):
            with self._wipe_lock:
                if self._wiped():
                    self._retrier = None
                    return

    def _wiped(self) -> bool:
        """Try a pending wipe once (the caller holds ``_wipe_lock``); True when nothing is left to wipe."""
        if self._wipe_pending:
            self._wipe_pending = not _truncate_wal(self.path)
        return not self._wipe_pending

    def export(self, path: str | os.PathLike) -> None:
        """Write a compact, self-contained copy (a gallery file itself; deleted pages are not copied)."""
        with atomic_path(path) as tmp:
            self._conn.execute("VACUUM INTO ?", (str(tmp),))
            copy = sqlite3.connect(tmp, isolation_level=None)
            try:  # the copy goes its own way: an index snapshot of this gallery is not one of it
                copy.execute("DELETE FROM meta WHERE key = 'gallery_id'")
                copy.execute("INSERT INTO meta (key, value) VALUES ('gallery_id', ?)", (new_gallery_id(),))
            finally:
                copy.close()


def _truncate_wal(path: Path) -> bool:
    """Copy every logged page into the database file and truncate the log to 0 bytes, without waiting on
    anyone (a connection of its own with no busy timeout, so any thread may call it). False when a reader's
    snapshot or another writer is in the way; the frames that could be copied are copied anyway."""
    try:
        conn = sqlite3.connect(path, timeout=0, isolation_level=None)
        try:
            return conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
        finally:
            conn.close()
    except sqlite3.OperationalError:  # busy (locked) at that very moment
        return False


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Bring the file to SCHEMA_VERSION in one transaction (a no-op when it is there already)."""
    if conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]  # another process may have migrated it
        if version > SCHEMA_VERSION:
            raise GalleryError(
                f"gallery {path} was written by a newer facenet (schema {version}); upgrade facenet to read it"
            )
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
        raise GalleryError(
            f"{path} is not a facenet gallery (not an SQLite database); it was left untouched — pass another --gallery"
        )
    if int.from_bytes(header[68:72], "big") != APPLICATION_ID:
        raise GalleryError(
            f"{path} is an SQLite database of another application, not a facenet gallery; "
            "it was left untouched — pass another --gallery"
        )
    if int.from_bytes(header[60:64], "big") > SCHEMA_VERSION:
        raise GalleryError(
            f"gallery {path} was written by a newer facenet (schema "
            f"{int.from_bytes(header[60:64], 'big')}); upgrade facenet to read it"
        )


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
