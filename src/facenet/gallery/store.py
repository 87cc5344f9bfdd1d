"""The persistent gallery: one SQLite file of people, their faces and the faces' embeddings.

Why SQLite: transactions make an enrolment all-or-nothing across a crash, WAL mode lets readers
query while one writer enrols, and the file is portable. The file is recognised by its
``PRAGMA application_id``; a file that is not ours is refused and never written to.

Identification is open-set: ``identify(..., threshold=t)`` keeps only people whose distance is
at most ``t``; an empty result list means "unknown". A person with several photos is scored by
the minimum squared-L2 distance over their faces (the nearest photo decides). Without a threshold
the search is closed-set (always the k nearest people).

Removal is real: ``PRAGMA secure_delete`` zeroes freed pages, and the write-ahead log is
checkpointed and truncated right after, so the removed embeddings' bytes leave the disk files
(unless another process holds a read snapshot at that moment; its next checkpoint finishes the job).
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from facenet.errors import GalleryError
from facenet.fileio import atomic_path
from facenet.gallery.index import FaceIndex
from facenet.gallery.quantize import dequantize, quantize

APPLICATION_ID = 0x464E4554  # "FNET"
SCHEMA_VERSION = 1
STORAGES = ("float32", "int8")
_SQLITE_MAGIC = b"SQLite format 3\x00"
_BUSY_TIMEOUT_S = 30.0
_NORM_TOLERANCE = 1e-2

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE people (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE, created REAL NOT NULL);
CREATE TABLE faces (id INTEGER PRIMARY KEY AUTOINCREMENT,
                    person_id INTEGER NOT NULL REFERENCES people(id) ON DELETE CASCADE,
                    source TEXT NOT NULL, created REAL NOT NULL);
CREATE INDEX faces_person ON faces(person_id);
CREATE TABLE embeddings (face_id INTEGER PRIMARY KEY REFERENCES faces(id) ON DELETE CASCADE,
                         vector BLOB NOT NULL);
"""


@dataclass(frozen=True)
class Match:
    """One candidate person for a query face: squared-L2 distance to their nearest enrolled face."""

    name: str
    distance: float
    face_id: int


@dataclass(frozen=True)
class Person:
    name: str
    faces: int
    created: float


@dataclass(frozen=True)
class Record:
    """One person's faces as carried between galleries (export/import) or enrolled in bulk."""

    name: str
    embeddings: np.ndarray
    sources: Sequence[str]


class Gallery:
    """Enrol, list, remove and identify people; see the module docstring for the guarantees."""

    def __init__(self, path: Path, conn: sqlite3.Connection, model_id: str, embedding_size: int,
                 storage: str, index: str):
        self.path, self._conn = path, conn
        self.model_id, self.embedding_size, self.storage = model_id, embedding_size, storage
        self._index_kind = index
        self._index: FaceIndex | None = None  # built on the first query, then kept in step
        self._face_person: dict[int, int] = {}
        self._names: dict[int, str] = {}
        self._max_face_id = 0
        self._data_version = None

    # -- opening -------------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike, model_id: str | None = None, embedding_size: int | None = None,
             create: bool = True, storage: str = "float32", index: str = "auto") -> "Gallery":
        """Open (or create) the gallery at ``path`` for embeddings of model ``model_id``.

        ``model_id``/``embedding_size`` of ``None`` accept whatever the file holds (listing, export);
        creating a file needs both. ``storage`` ("float32" or "int8") only matters on creation.
        """
        path = Path(path).expanduser()
        if storage not in STORAGES:
            raise GalleryError(f"unknown storage {storage!r}; choose float32 or int8")
        if not path.exists() or path.stat().st_size == 0:
            if not create:
                raise GalleryError(f"no gallery at {path}; enrol someone first or pass the right --gallery")
            if model_id is None or embedding_size is None:
                raise GalleryError(f"no gallery at {path}; creating one needs a model (its id and embedding size)")
            _create(path, model_id, int(embedding_size), storage)
        else:
            _check_header(path)
        conn = sqlite3.connect(path, timeout=_BUSY_TIMEOUT_S, isolation_level=None)
        try:
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            for pragma in ("foreign_keys=ON", "secure_delete=ON", "synchronous=FULL", "journal_mode=WAL"):
                conn.execute(f"PRAGMA {pragma}")
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise GalleryError(f"gallery {path} is damaged and cannot be read ({exc}); restore it from an export") from exc
        try:
            stored_model, stored_size, stored_storage = meta["model_id"], int(meta["embedding_size"]), meta["storage"]
        except (KeyError, ValueError) as exc:
            conn.close()
            raise GalleryError(f"gallery {path} has no valid model record; restore it from an export") from exc
        if model_id is not None and model_id != stored_model:
            conn.close()
            raise GalleryError(f"gallery {path} holds embeddings of model {stored_model!r} but model {model_id!r} "
                               "is in use; embeddings of different models cannot be compared — use that model "
                               "or another --gallery")
        if embedding_size is not None and int(embedding_size) != stored_size:
            conn.close()
            raise GalleryError(f"gallery {path} holds {stored_size}-D embeddings but the model in use makes "
                               f"{embedding_size}-D ones; use another --gallery")
        return cls(path, conn, stored_model, stored_size, stored_storage, index)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "Gallery":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- writing -------------------------------------------------------------------------------

    def enroll(self, name: str, embeddings: np.ndarray, sources: Sequence[str] | None = None) -> Person:
        """Add faces to ``name`` (created if new) in one transaction; returns the person's new totals."""
        sources = [""] * len(np.atleast_2d(embeddings)) if sources is None else sources
        self.enroll_many([Record(name, embeddings, sources)])
        return next(self._people(name.strip()))

    def enroll_many(self, records: Iterable[Record], merge: bool = True) -> None:
        """Enrol several people in one transaction (bulk loads, imports): all of them or none.

        With ``merge=False`` a name already in the gallery is an error (nothing is written).
        """
        checked = [self._check_record(r) for r in records]
        added: list[tuple[int, int, np.ndarray]] = []
        names: dict[int, str] = {}
        now = time.time()
        try:
            with self._transaction() as cur:
                if not merge:
                    taken = [r.name for r in checked
                             if cur.execute("SELECT 1 FROM people WHERE name = ?", (r.name,)).fetchone()]
                    if taken:
                        raise GalleryError(f"{len(taken)} name(s) already in gallery {self.path}: "
                                           f"{', '.join(taken[:5])}; pass --merge to add their faces to them")
                for rec in checked:
                    cur.execute("INSERT OR IGNORE INTO people (name, created) VALUES (?, ?)", (rec.name, now))
                    person_id = cur.execute("SELECT id FROM people WHERE name = ?", (rec.name,)).fetchone()[0]
                    names[person_id] = rec.name
                    blobs = self._encode(rec.embeddings)
                    for vector, blob, source in zip(rec.embeddings, blobs, rec.sources):
                        cur.execute("INSERT INTO faces (person_id, source, created) VALUES (?, ?, ?)",
                                    (person_id, str(source), now))
                        face_id = cur.lastrowid
                        cur.execute("INSERT INTO embeddings (face_id, vector) VALUES (?, ?)", (face_id, blob))
                        added.append((face_id, person_id, vector))
        except sqlite3.IntegrityError as exc:
            raise GalleryError(f"enrolment rejected by gallery {self.path}: {exc}") from exc
        self._names.update(names)
        if added and self._index is not None:
            ids = np.array([a[0] for a in added], np.int64)
            vectors = self._decode(self._encode(np.stack([a[2] for a in added])))
            self._index.add(ids, vectors)
            self._face_person.update((a[0], a[1]) for a in added)
            self._max_face_id = max(self._max_face_id, int(ids.max()))

    def remove(self, name: str) -> int:
        """Delete ``name`` with all their faces and embeddings; returns how many faces went."""
        with self._transaction() as cur:
            row = cur.execute("SELECT id FROM people WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise GalleryError(f"no person named {name!r} in gallery {self.path}; "
                                   "`facenet gallery list` shows who is enrolled")
            face_ids = [r[0] for r in cur.execute("SELECT id FROM faces WHERE person_id = ?", row)]
            cur.execute("DELETE FROM people WHERE id = ?", row)
        self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        if self._index is not None:
            self._index.remove(face_ids)
            for face_id in face_ids:
                self._face_person.pop(face_id, None)
            self._names.pop(row[0], None)
        return len(face_ids)

    def export(self, path: str | os.PathLike) -> None:
        """Write a compact, self-contained copy (a gallery file itself; deleted pages are not copied)."""
        with atomic_path(path) as tmp:
            self._conn.execute("VACUUM INTO ?", (str(tmp),))

    def import_(self, path: str | os.PathLike, merge: bool = False) -> int:
        """Add every person of the gallery at ``path`` (same model required); returns faces added."""
        with Gallery.open(path, self.model_id, self.embedding_size, create=False) as other:
            records = list(other.records())
        self.enroll_many(records, merge=merge)
        return sum(len(r.embeddings) for r in records)

    # -- reading -------------------------------------------------------------------------------

    def people(self) -> list[Person]:
        """Everyone enrolled, by name, with their number of faces."""
        return list(self._people())

    def records(self) -> Iterator[Record]:
        """Each person's faces as float32 unit rows with their source labels."""
        for person_id, name in self._conn.execute("SELECT id, name FROM people ORDER BY id").fetchall():
            rows = self._conn.execute("SELECT f.source, e.vector FROM faces f JOIN embeddings e ON e.face_id = f.id "
                                      "WHERE f.person_id = ? ORDER BY f.id", (person_id,)).fetchall()
            yield Record(name, self._decode([r[1] for r in rows]), [r[0] for r in rows])

    def __len__(self) -> int:
        """Number of faces."""
        return self._conn.execute("SELECT count(*) FROM faces").fetchone()[0]

    def identify(self, queries: np.ndarray, k: int = 5, threshold: float | None = None) -> list[list[Match]]:
        """For each query row, up to ``k`` people nearest first; ``[]`` means unknown (open set)."""
        queries = np.atleast_2d(np.asarray(queries, np.float32))
        if queries.ndim != 2 or queries.shape[1] != self.embedding_size:
            raise GalleryError(f"queries must be (n, {self.embedding_size}) embeddings, got shape {queries.shape}")
        self._sync()
        total = len(self._index)
        if total == 0 or k < 1:
            return [[] for _ in queries]
        fetch = min(total, 4 * k)
        while True:
            dist, ids = self._index.search(queries, fetch)
            results = [self._best_people(d, i, k) for d, i in zip(dist, ids)]
            if fetch >= total or all(len(r) >= k for r in results):
                break
            fetch = min(total, fetch * 4)
        if threshold is not None:  # strictly closer, as verification decides (facenet.api.compare)
            results = [[m for m in r if m.distance < threshold] for r in results]
        return results

    # -- internals -----------------------------------------------------------------------------

    def _best_people(self, dist: np.ndarray, ids: np.ndarray, k: int) -> list[Match]:
        best: dict[int, Match] = {}
        for d, face_id in zip(dist.tolist(), ids.tolist()):
            if face_id < 0:
                continue
            person = self._face_person[face_id]
            if person not in best:  # rows are sorted, so the first face seen is the person's nearest
                best[person] = Match(self._names[person], float(d), int(face_id))
        return sorted(best.values(), key=lambda m: m.distance)[:k]

    def _sync(self) -> None:
        """Bring the in-memory index up to date with commits made by other connections."""
        self._conn.execute("BEGIN")  # one read snapshot: names and faces must agree
        try:
            version = self._conn.execute("PRAGMA data_version").fetchone()[0]
            if self._index is None or version != self._data_version:
                self._reload(version)
        finally:
            self._conn.execute("COMMIT")

    def _reload(self, version: int) -> None:
        self._data_version = version
        self._names = dict(self._conn.execute("SELECT id, name FROM people").fetchall())
        if self._index is None:
            self._index = FaceIndex(self.embedding_size, self._index_kind)
            ids, persons, vectors = self._load_faces(0)
            self._index.rebuild(ids, vectors)
        else:
            live = {r[0] for r in self._conn.execute("SELECT id FROM faces")}
            gone = [f for f in self._face_person if f not in live]
            if gone:
                self._index.remove(gone)
                for face_id in gone:
                    del self._face_person[face_id]
            ids, persons, vectors = self._load_faces(self._max_face_id)
            if len(ids):
                self._index.add(ids, vectors)
        self._face_person.update(zip(ids.tolist(), persons.tolist()))
        if len(ids):
            self._max_face_id = max(self._max_face_id, int(ids.max()))

    def _load_faces(self, after_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rows = self._conn.execute("SELECT f.id, f.person_id, e.vector FROM faces f JOIN embeddings e "
                                  "ON e.face_id = f.id WHERE f.id > ? ORDER BY f.id", (after_id,)).fetchall()
        ids = np.array([r[0] for r in rows], np.int64)
        persons = np.array([r[1] for r in rows], np.int64)
        return ids, persons, self._decode([r[2] for r in rows])

    def _people(self, name: str | None = None) -> Iterator[Person]:
        sql = ("SELECT p.name, count(f.id), p.created FROM people p LEFT JOIN faces f ON f.person_id = p.id "
               + ("WHERE p.name = ? " if name is not None else "") + "GROUP BY p.id ORDER BY p.name")
        for row in self._conn.execute(sql, (name,) if name is not None else ()):
            yield Person(*row)

    def _check_record(self, rec: Record) -> Record:
        name = rec.name.strip() if isinstance(rec.name, str) else ""
        if not name:
            raise GalleryError("a person's name must be a non-empty text")
        emb = np.atleast_2d(np.asarray(rec.embeddings, np.float32))
        if emb.ndim != 2 or emb.shape[1] != self.embedding_size or len(emb) == 0:
            raise GalleryError(f"embeddings for {name!r} must be (n>=1, {self.embedding_size}), got {emb.shape}")
        if not np.isfinite(emb).all() or np.abs(np.linalg.norm(emb, axis=1) - 1).max() > _NORM_TOLERANCE:
            raise GalleryError(f"embeddings for {name!r} must be finite unit vectors (as an embedder returns)")
        if len(rec.sources) != len(emb):
            raise GalleryError(f"{len(emb)} embeddings but {len(rec.sources)} source labels for {name!r}")
        return Record(name, emb, list(rec.sources))

    def _encode(self, embeddings: np.ndarray) -> list[bytes]:
        rows = quantize(embeddings) if self.storage == "int8" else np.asarray(embeddings, "<f4")
        return [row.tobytes() for row in rows]

    def _decode(self, blobs: Sequence[bytes]) -> np.ndarray:
        if not blobs:
            return np.empty((0, self.embedding_size), np.float32)
        dtype = np.int8 if self.storage == "int8" else np.dtype("<f4")
        data = np.frombuffer(b"".join(blobs), dtype)
        if data.size != len(blobs) * self.embedding_size:
            raise GalleryError(f"gallery {self.path} holds embeddings of the wrong size; restore it from an export")
        data = data.reshape(len(blobs), self.embedding_size)
        return dequantize(data) if self.storage == "int8" else data.astype(np.float32)

    def _transaction(self):
        return _Transaction(self._conn)


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, or ``ROLLBACK`` on any error (the connection is in autocommit)."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __enter__(self) -> sqlite3.Cursor:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn.cursor()

    def __exit__(self, exc_type, exc, tb) -> None:
        self.conn.execute("ROLLBACK" if exc_type else "COMMIT")


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


def _create(path: Path, model_id: str, embedding_size: int, storage: str) -> None:
    """Build the empty gallery beside ``path`` and move it in place: a crash leaves no half file."""
    with atomic_path(path) as tmp:
        conn = sqlite3.connect(tmp, isolation_level=None)
        try:
            conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            conn.executescript(_SCHEMA)
            conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)",
                             [("model_id", model_id), ("embedding_size", str(embedding_size)), ("storage", storage)])
            conn.execute("PRAGMA journal_mode=WAL")
        finally:
            conn.close()
