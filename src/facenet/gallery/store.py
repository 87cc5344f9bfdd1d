"""The gallery's storage layer: people, faces, embeddings and the change feed, in SQL.

Two stores share this code: ``SQLiteStore`` (one file, the default) and ``PostgresStore`` (a server
that many processes share). A store knows SQL, transactions and its schema; it does no search.
``facenet.gallery.Gallery`` keeps an in-memory FAISS index on top of a store.

**The change feed.** Every write transaction (an enrolment, a removal, an import) first takes the
next value of ``feed.head`` (``UPDATE feed SET head = head + 1``), and stamps what it writes with it:
new faces carry it in ``faces.seq``, removed faces leave a tombstone ``(face_id, seq)`` in
``removed_faces`` (ids only: no name, no embedding). The row lock on ``feed`` is held until commit,
so writers commit in the order of their numbers, and a reader that has seen ``head = n`` in its
snapshot has seen every change numbered up to ``n``: reading ``seq > last_seen`` can never skip a
change another process committed in between (the defect of "load ids above the last one I saw",
whose ids are handed out before commit). PostgreSQL also ``NOTIFY``s readers at each commit.
A process that opens the gallery loads every face in one snapshot with the head it saw, then follows
the feed. Tombstones are kept (16 bytes each, ids only), so a reader however far behind catches up.

Both stores use the same SQL text with ``?`` placeholders; the PostgreSQL store rewrites them.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from facenet.errors import GalleryError
from facenet.gallery.policy import LEGACY_POLICY, parse_policy
from facenet.gallery.quantize import dequantize, quantize

STORAGES = ("float32", "int8")
URL_SCHEMES = ("postgresql://", "postgres://")
_NORM_TOLERANCE = 1e-2


@dataclass(frozen=True)
class Match:
    """One candidate person for a query face: their score under the gallery's policy (squared L2; for
    ``nearest``, the distance to their nearest face) and their nearest enrolled face."""

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


@dataclass
class Changes:
    """What happened after a feed position, read in one snapshot that ends at ``head``.

    ``ids``/``persons``/``vectors``: faces added (all faces for a full load); ``removed``: face ids
    deleted; ``names``: person id -> name for every person in ``persons``.
    """

    head: int
    ids: np.ndarray
    persons: np.ndarray
    vectors: np.ndarray
    removed: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    names: dict[int, str] = field(default_factory=dict)


def is_url(location) -> bool:
    """A PostgreSQL URL rather than a gallery file path."""
    return isinstance(location, str) and location.startswith(URL_SCHEMES)


def check_model(
    location: str, meta: dict, model_id: str | None, embedding_size: int | None, policy: str | None = None
) -> tuple[str, int, str, str]:
    """The (model id, embedding size, storage, policy) a store records, refusing another model's gallery, or
    another policy than the one asked for (``None``: any). A gallery without a policy predates them: nearest."""
    try:
        stored_model, stored_size, stored_storage = meta["model_id"], int(meta["embedding_size"]), meta["storage"]
    except (KeyError, ValueError) as exc:
        raise GalleryError(f"gallery {location} has no valid model record; restore it from an export") from exc
    if model_id is not None and model_id != stored_model:
        raise GalleryError(
            f"gallery {location} holds embeddings of model {stored_model!r} but model {model_id!r} "
            "is in use; embeddings of different models cannot be compared — use that model "
            "or another --gallery"
        )
    if embedding_size is not None and int(embedding_size) != stored_size:
        raise GalleryError(
            f"gallery {location} holds {stored_size}-D embeddings but the model in use makes "
            f"{embedding_size}-D ones; use another --gallery"
        )
    stored_policy = parse_policy(meta.get("policy", LEGACY_POLICY)).name
    if policy is not None and parse_policy(policy).name != stored_policy:
        raise GalleryError(
            f"gallery {location} scores people by policy {stored_policy!r}, chosen when it was "
            f"created, not {parse_policy(policy).name!r}; leave the policy out to use it, or "
            "create another gallery"
        )
    return stored_model, stored_size, stored_storage, stored_policy


def meta_rows(model_id: str, embedding_size: int, storage: str, policy: str | None) -> list[tuple[str, str]]:
    """The ``meta`` table of a new gallery: what its embeddings are, how it scores people, and a random
    ``gallery_id`` (an index snapshot of another gallery is never taken for this one's)."""
    return [
        ("model_id", model_id),
        ("embedding_size", str(embedding_size)),
        ("storage", storage),
        ("policy", parse_policy(policy).name),
        ("gallery_id", new_gallery_id()),
    ]


def new_gallery_id() -> str:
    return uuid.uuid4().hex


def copy_row(vector: list[tuple]) -> np.dtype:
    """One row of PostgreSQL's binary COPY of (id bigint, person bigint, vector): the field count, then each
    field's length and value; ``vector`` gives the vector's own fields (a bytea for the faces table in
    ``postgres``, pgvector's ``vector`` type for its side table in ``pgvector``)."""
    head = [("fields", ">i2"), ("id_len", ">i4"), ("id", ">i8"), ("person_len", ">i4"), ("person", ">i8")]
    return np.dtype([*head, ("vector_len", ">i4"), *vector])


class SQLStore:
    """SQL shared by the stores. Subclasses provide connections (``_read``, ``_write``) and may speed up
    ``_insert_faces`` and ``_fetch_faces``; they set ``location`` (shown in messages, never a password)."""

    location: str

    def __init__(self, model_id: str, embedding_size: int, storage: str, policy: str):
        self.model_id, self.embedding_size, self.storage, self.policy = model_id, embedding_size, storage, policy
        self.vector_bytes = embedding_size * (1 if storage == "int8" else 4)

    # -- to be provided by a store ---------------------------------------------------------------

    def _read(self):
        """Context manager: a cursor inside one read-only snapshot."""
        raise NotImplementedError

    def _write(self):
        """Context manager: a cursor inside one write transaction, committed at exit (rolled back on error)."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def wait_for_change(self, timeout: float) -> bool:
        """Block up to ``timeout`` s for a sign that another process wrote; True means "sync now"."""
        time.sleep(timeout)
        return True

    def export(self, path: str | os.PathLike) -> None:
        raise NotImplementedError

    # -- writing -------------------------------------------------------------------------------

    @contextmanager
    def _change(self):
        """A write transaction stamped with the next feed number: yields (cursor, seq)."""
        with self._write() as cur:
            seq = cur.execute("UPDATE feed SET head = head + 1 WHERE id = 1 RETURNING head").fetchone()[0]
            yield cur, seq
            self._announce(cur, seq)

    def _announce(self, cur, seq: int) -> None:
        """Tell other processes about change ``seq`` (delivered at commit); nothing to do on SQLite."""

    def enroll(self, records: Iterable[Record], merge: bool = True) -> None:
        """Write several people's faces in one transaction: all of them or none."""
        self.write_encoded(
            [(r.name, self.encode(r.embeddings), list(r.sources)) for r in map(self.check, records)], merge
        )

    def write_encoded(self, people: list[tuple[str, list[bytes], list[str]]], merge: bool) -> None:
        """``enroll`` for embeddings already in this store's byte format (copies between stores)."""
        now = time.time()
        with self._change() as (cur, seq):
            taken, faces = [], []
            for name, blobs, sources in people:
                row = cur.execute(
                    "INSERT INTO people (name, created) VALUES (?, ?) ON CONFLICT (name) DO NOTHING RETURNING id",
                    (name, now),
                ).fetchone()
                if row is None:
                    taken.append(name)
                    if not merge:
                        continue
                    row = cur.execute("SELECT id FROM people WHERE name = ?", (name,)).fetchone()
                faces += [(row[0], blob, str(source)) for blob, source in zip(blobs, sources)]
            if taken and not merge:
                raise GalleryError(
                    f"{len(taken)} name(s) already in gallery {self.location}: "
                    f"{', '.join(taken[:5])}; pass --merge to add their faces to them"
                )
            self._insert_faces(cur, faces, now, seq)

    def _insert_faces(self, cur, faces: list[tuple[int, bytes, str]], now: float, seq: int) -> None:
        """Insert (person id, stored vector, source) rows stamped with change ``seq``."""
        for person_id, blob, source in faces:
            face_id = cur.execute(
                "INSERT INTO faces (person_id, source, created, seq) VALUES (?, ?, ?, ?) RETURNING id",
                (person_id, source, now, seq),
            ).fetchone()[0]
            cur.execute("INSERT INTO embeddings (face_id, vector) VALUES (?, ?)", (face_id, blob))

    def remove(self, name: str) -> int:
        """Delete ``name`` with all their faces and embeddings; returns how many faces went."""
        with self._change() as (cur, seq):
            row = cur.execute("SELECT id FROM people WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise GalleryError(
                    f"no person named {name!r} in gallery {self.location}; `facenet gallery list` shows who is enrolled"
                )
            face_ids = [r[0] for r in cur.execute("SELECT id FROM faces WHERE person_id = ?", row).fetchall()]
            cur.execute(
                "INSERT INTO removed_faces (face_id, seq) SELECT id, ? FROM faces WHERE person_id = ?", (seq, row[0])
            )
            cur.execute("DELETE FROM people WHERE id = ?", row)
        return len(face_ids)

    # -- reading -------------------------------------------------------------------------------

    def head(self) -> int:
        with self._read() as cur:
            return cur.execute("SELECT head FROM feed WHERE id = 1").fetchone()[0]

    def changes(self, after: int | None) -> Changes:
        """Everything after feed position ``after`` (``None``: every face, for a first load)."""
        with self._read() as cur:
            head = cur.execute("SELECT head FROM feed WHERE id = 1").fetchone()[0]
            if after is None:
                names = dict(cur.execute("SELECT id, name FROM people").fetchall())
                return Changes(head, *self._fetch_faces(cur, "f.seq <= ?", (head,)), names=names)
            if head == after:
                empty = np.empty(0, np.int64)
                return Changes(head, empty, empty, np.empty((0, self.embedding_size), np.float32))
            window = (after, head)
            removed = np.array(
                [
                    r[0]
                    for r in cur.execute(
                        "SELECT face_id FROM removed_faces WHERE seq > ? AND seq <= ?", window
                    ).fetchall()
                ],
                np.int64,
            )
            names = dict(
                cur.execute(
                    "SELECT DISTINCT p.id, p.name FROM people p JOIN faces f ON f.person_id = p.id "
                    "WHERE f.seq > ? AND f.seq <= ?",
                    window,
                ).fetchall()
            )
            return Changes(head, *self._fetch_faces(cur, "f.seq > ? AND f.seq <= ?", window), removed, names)

    def _fetch_faces(self, cur, where: str, params: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(face ids, person ids, float32 vectors) of the faces matching ``where``, by id."""
        rows = cur.execute(
            "SELECT f.id, f.person_id, e.vector FROM faces f JOIN embeddings e ON e.face_id = f.id "
            f"WHERE {where} ORDER BY f.id",
            params,
        ).fetchall()
        ids = np.array([r[0] for r in rows], np.int64)
        persons = np.array([r[1] for r in rows], np.int64)
        return ids, persons, self.decode(b"".join(r[2] for r in rows), len(rows))

    def people(self, name: str | None = None) -> list[Person]:
        """Everyone enrolled (or just ``name``), by name, with their number of faces."""
        sql = (
            "SELECT p.name, count(f.id), p.created FROM people p LEFT JOIN faces f ON f.person_id = p.id "
            + ("WHERE p.name = ? " if name is not None else "")
            + "GROUP BY p.id, p.name, p.created ORDER BY p.name"
        )
        with self._read() as cur:
            return [Person(*row) for row in cur.execute(sql, (name,) if name is not None else ()).fetchall()]

    def encoded_people(self) -> Iterator[tuple[str, list[bytes], list[str]]]:
        """Each person as (name, embeddings in this store's byte format, source labels)."""
        with self._read() as cur:
            people = cur.execute("SELECT id, name FROM people ORDER BY id").fetchall()
            for person_id, name in people:
                rows = cur.execute(
                    "SELECT f.source, e.vector FROM faces f JOIN embeddings e ON e.face_id = f.id "
                    "WHERE f.person_id = ? ORDER BY f.id",
                    (person_id,),
                ).fetchall()
                yield name, [bytes(r[1]) for r in rows], [r[0] for r in rows]

    def records(self) -> Iterator[Record]:
        """Each person's faces as float32 unit rows with their source labels."""
        for name, blobs, sources in self.encoded_people():
            yield Record(name, self.decode(b"".join(blobs), len(blobs)), sources)

    def count(self) -> int:
        with self._read() as cur:
            return cur.execute("SELECT count(*) FROM faces").fetchone()[0]

    # -- for index snapshots (facenet.gallery.snapshot) -----------------------------------------

    def gallery_id(self) -> str:
        """This gallery's random identity (recorded at creation; a gallery older than it gets one now)."""
        with self._read() as cur:
            row = cur.execute("SELECT value FROM meta WHERE key = 'gallery_id'").fetchone()
        if row is not None:
            return row[0]
        with self._write() as cur:  # another process may do the same at once: the first one wins
            cur.execute(
                "INSERT INTO meta (key, value) VALUES ('gallery_id', ?) ON CONFLICT (key) DO NOTHING",
                (new_gallery_id(),),
            )
            return cur.execute("SELECT value FROM meta WHERE key = 'gallery_id'").fetchone()[0]

    def names(self) -> dict[int, str]:
        """Person id -> name, everyone."""
        with self._read() as cur:
            return dict(cur.execute("SELECT id, name FROM people").fetchall())

    def faces_upto(self, seq: int) -> tuple[int, int, int, np.ndarray]:
        """In one read: (head, count and sum of ids of the faces present that were added at or before feed
        position ``seq``, ids of the faces removed after it)."""
        with self._read() as cur:
            head = cur.execute("SELECT head FROM feed WHERE id = 1").fetchone()[0]
            count, total = cur.execute(
                "SELECT count(*), coalesce(sum(id), 0) FROM faces WHERE seq <= ?", (seq,)
            ).fetchone()
            removed = [r[0] for r in cur.execute("SELECT face_id FROM removed_faces WHERE seq > ?", (seq,)).fetchall()]
        return head, int(count), int(total), np.array(removed, np.int64)

    def stored_vectors(self, ids: Sequence[int]) -> dict[int, np.ndarray]:
        """face id -> float32 vector, for those of ``ids`` still present."""
        if not len(ids):
            return {}
        marks = ", ".join("?" * len(ids))
        with self._read() as cur:
            rows = cur.execute(
                f"SELECT face_id, vector FROM embeddings WHERE face_id IN ({marks})", tuple(int(i) for i in ids)
            ).fetchall()
        return {r[0]: self.decode(bytes(r[1]), 1)[0] for r in rows}

    # -- embeddings <-> bytes ------------------------------------------------------------------

    def check(self, rec: Record) -> Record:
        """A record with a clean name and (n, d) finite unit embeddings, or a GalleryError saying why not."""
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

    def encode(self, embeddings: np.ndarray) -> list[bytes]:
        rows = quantize(embeddings) if self.storage == "int8" else np.asarray(embeddings, "<f4")
        return [row.tobytes() for row in rows]

    def decode(self, data: bytes, n: int) -> np.ndarray:
        """``n`` stored vectors, concatenated, -> float32 (n, d) unit rows."""
        values = np.frombuffer(data, self.stored_dtype())
        if values.size != n * self.embedding_size:
            raise GalleryError(f"gallery {self.location} holds embeddings of the wrong size; restore it from an export")
        return self.from_stored(values.reshape(n, self.embedding_size))

    def stored_dtype(self) -> np.dtype:
        """How one vector component is stored: int8 codes or little-endian float32."""
        return np.dtype(np.int8) if self.storage == "int8" else np.dtype("<f4")

    def from_stored(self, values: np.ndarray) -> np.ndarray:
        """Stored (n, d) components -> float32 unit rows."""
        return dequantize(values) if self.storage == "int8" else values.astype(np.float32)
