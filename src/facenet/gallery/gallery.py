"""The gallery: a store (SQLite file or PostgreSQL server) with an in-memory FAISS index on top.

Identification is open-set: ``identify(..., threshold=t)`` keeps only people whose score is
below ``t``; an empty result list means "unknown". A person with several photos is scored by the
gallery's policy, recorded when it was created (``facenet.gallery.policy``: nearest face, mean of
the K nearest faces, or distance to the person's template). Without a threshold the search is
closed-set (always the k best-scored people).

Scores are exact: FAISS only proposes candidate people (those owning the faces nearest the query);
each candidate is then scored from ALL their faces, so a score never depends on how many neighbours
the search fetched. Fetching stops once the k-th best score is no larger than the farthest face
fetched: everyone not yet seen has all their faces at least that far, so no policy could rank them
higher (``nearest`` and ``mean-of-K`` scores are never below a person's nearest face). ``template``
searches one template per person instead, in a second index of the same kind, kept in step with the
feed like the faces: a person who gains or loses faces gets a new template under a new key (HNSW
cannot delete, it skips removed keys, so a key is never reused).

Every process keeps its own index and brings it up to date from the store's change feed (see
``facenet.gallery.store``) before it answers: one cheap query of the feed's head, and when another
process (a CLI, another ``facenet serve`` replica) wrote since, the faces it added and the ids it
removed — never skipping a change, whoever made it and in whatever order transactions overlapped.
A process starts from the index snapshot saved with the gallery when there is a valid one, and catches up
through the feed from the position it was taken at (``facenet.gallery.snapshot``). Index builds after the
first load (the switch to HNSW, the rebuild after many removals) happen off the request path
(``facenet.gallery.index``).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from facenet.distances import squared_l2
from facenet.errors import GalleryError
from facenet.gallery import snapshot
from facenet.gallery.index import KINDS, FaceIndex
from facenet.gallery.policy import parse_policy, templates
from facenet.gallery.sqlite import SQLiteStore
from facenet.gallery.store import STORAGES, Match, Person, Record, SQLStore, is_url

_ROUNDING = 1e-5  # FAISS and NumPy may round the same float32 distance differently by this much
# -- pgvector (facenet.gallery.pgvector): the search runs in PostgreSQL, the process keeps no index --
PGVECTOR = "pgvector"
INDEXES = (*KINDS, PGVECTOR)  # what ``index`` (and the CLI's --index) accepts


def open_store(
    location: str | os.PathLike,
    model_id: str | None = None,
    embedding_size: int | None = None,
    create: bool = True,
    storage: str = "float32",
    policy: str | None = None,
) -> SQLStore:
    """The store at ``location``: a ``postgresql://`` URL or a gallery file path (see ``Gallery.open``)."""
    if storage not in STORAGES:
        raise GalleryError(f"unknown storage {storage!r}; choose float32 or int8")
    if policy is not None:
        parse_policy(policy)  # a wrong name fails before anything is opened or created
    if is_url(location):
        from facenet.gallery.postgres import PostgresStore  # psycopg only when a URL asks for it

        return PostgresStore.open(str(location), model_id, embedding_size, create, storage, policy)
    return SQLiteStore.open(location, model_id, embedding_size, create, storage, policy)


class Gallery:
    """Enrol, list, remove and identify people; see the module docstring for the guarantees."""

    def __init__(self, store: SQLStore, index: str = "auto"):
        self.store = store
        self.scorer = parse_policy(store.policy)
        self._index_kind = index
        self._index: FaceIndex | None = None  # built on the first query (or ``sync``), then kept in step
        self._templates: FaceIndex | None = None  # policy "template": one vector per person
        self._template_of: dict[int, int] = {}  # person -> key of their current template in ``_templates``
        self._template_owner: dict[int, int] = {}  # template key -> person
        self._next_template_key = 0
        self._seq: int | None = None  # the feed position the index reflects
        self._face_person: dict[int, int] = {}
        self._person_faces: dict[int, set[int]] = {}  # faces in the index per person: who can be found, from what
        self._names: dict[int, str] = {}
        self._lock = threading.RLock()  # sync's changes vs a snapshot's copy (taken on another thread)
        self.snapshots = True  # load/write index snapshots (``facenet.gallery.snapshot``)
        self._snapshot_seq: int | None = None  # feed position of the last snapshot loaded or written
        self._changed_since_snapshot = 0  # faces added or removed since
        self._removals_seen = 0  # counts removals made or seen: a snapshot copied before one is not kept
        self._gallery_id: str | None = None  # read on the gallery's thread (an SQLite connection is bound to it)
        self._writer = snapshot.Writer(self)
        self._closing = False
        self._pgvector = None  # pgvector hook: a PgvectorSearch that replaces the in-process index
        if index == PGVECTOR:
            from facenet.gallery.pgvector import PgvectorSearch

            self._pgvector = PgvectorSearch(store, self.scorer)
            self.snapshots = False  # no in-process index: nothing to snapshot

    @classmethod
    def open(
        cls,
        location: str | os.PathLike,
        model_id: str | None = None,
        embedding_size: int | None = None,
        create: bool = True,
        storage: str = "float32",
        index: str = "auto",
        policy: str | None = None,
    ) -> Gallery:
        """Open (or create) the gallery at ``location`` for embeddings of model ``model_id``.

        ``location`` is a file path (SQLite) or a ``postgresql://user@host/db`` URL. ``model_id``/
        ``embedding_size`` of ``None`` accept whatever the gallery holds (listing, export); creating one
        needs both. ``storage`` ("float32" or "int8") only matters on creation; ``index`` is the FAISS
        index kind (see ``facenet.gallery.index``), or "pgvector" for a PostgreSQL gallery searched inside the
        database, no copy in this process (see ``facenet.gallery.pgvector``). ``policy`` (see
        ``facenet.gallery.policy``) is recorded on creation (``None``: the default); opening a gallery with
        another policy than asked is an error.
        """
        if index not in INDEXES:  # before anything is opened
            raise GalleryError(f"unknown index kind {index!r}; choose one of {', '.join(INDEXES)}")
        if index == PGVECTOR and not is_url(location):
            raise GalleryError(
                "index pgvector searches inside PostgreSQL: it needs a postgresql:// gallery, not the file "
                f"{location}; use another index ({', '.join(KINDS)})"
            )
        store = open_store(location, model_id, embedding_size, create, storage, policy)
        try:
            return cls(store, index)
        except BaseException:
            store.close()
            raise

    @property
    def location(self) -> str:
        """The file path or the URL (without password) of the store."""
        return self.store.location

    path = location  # the name older callers use

    @property
    def model_id(self) -> str:
        return self.store.model_id

    @property
    def embedding_size(self) -> int:
        return self.store.embedding_size

    @property
    def storage(self) -> str:
        return self.store.storage

    @property
    def policy(self) -> str:
        """How a person with several faces is scored (recorded in the gallery; ``facenet.gallery.policy``)."""
        return self.scorer.name

    def close(self) -> None:
        """Close the store, first finishing a snapshot being written, and writing one when enough changed."""
        self._closing = True  # a background build ending now writes no snapshot after the store is gone
        try:
            self._writer.wait()
            if (
                self.snapshots
                and self._index is not None
                and self._changed_since_snapshot >= snapshot.CHANGES_BEFORE_CLOSE
                and len(self._face_person) >= snapshot.MIN_FACES
            ):
                snapshot.save(self)
        except Exception as exc:  # an optimisation: never keeps the gallery from closing
            snapshot.log.warning("gallery %s: index snapshot not written at close: %s", self.location, exc)
        self.store.close()

    def write_snapshot(self) -> tuple:
        """Bring the index up to date, let a background build finish, and write its snapshot now, whatever
        the gallery's size (``facenet gallery snapshot``); returns (path, snapshot, bytes)."""
        self.sync()
        if self._gallery_id is None:
            self._gallery_id = self.store.gallery_id()
        for index in (self._index, self._templates):
            if index is not None:
                index.wait_for_build()
        self._writer.wait()
        written = snapshot.save(self)
        if written is None:
            raise GalleryError(
                f"gallery {self.location}: someone was removed while the snapshot was written; try again"
            )
        return written

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- writing -------------------------------------------------------------------------------

    def enroll(self, name: str, embeddings: np.ndarray, sources: Sequence[str] | None = None) -> Person:
        """Add faces to ``name`` (created if new) in one transaction; returns the person's new totals."""
        sources = [""] * len(np.atleast_2d(embeddings)) if sources is None else sources
        self.enroll_many([Record(name, embeddings, sources)])
        return self.person(name)

    def enroll_many(self, records: Iterable[Record], merge: bool = True) -> None:
        """Enrol several people in one transaction (bulk loads, imports): all of them or none.

        With ``merge=False`` a name already in the gallery is an error (nothing is written).
        """
        self.store.enroll(records, merge)  # the index learns of it from the feed, before the next search

    def remove(self, name: str) -> int:
        """Delete ``name`` with all their faces and embeddings; returns how many faces went. An index snapshot
        holding their faces is deleted before this returns (``facenet.gallery.snapshot``)."""
        removed = self.store.remove(name)  # likewise leaves the index on the next search
        self._removals_seen += 1  # before the deletion: a snapshot being written now is deleted by its writer
        snapshot.discard(snapshot.snapshot_path(self.location))  # whoever wrote it
        return removed

    def export(self, path: str | os.PathLike) -> None:
        """Write a self-contained gallery file (SQLite, owner-only) holding everyone in this gallery."""
        self.store.export(path)

    def import_(self, location: str | os.PathLike, merge: bool = False) -> int:
        """Add every person of the gallery at ``location`` (same model required); returns faces added."""
        with Gallery.open(location, self.model_id, self.embedding_size, create=False) as other:
            records = list(other.records())
        self.enroll_many(records, merge=merge)
        return sum(len(r.embeddings) for r in records)

    # -- reading -------------------------------------------------------------------------------

    def people(self) -> list[Person]:
        """Everyone enrolled, by name, with their number of faces."""
        return self.store.people()

    def person(self, name: str) -> Person:
        """One enrolled person by name (an indexed lookup: its cost does not grow with the gallery)."""
        found = self.store.people(name.strip())
        if not found:
            raise GalleryError(f"no person named {name.strip()!r} in gallery {self.location}")
        return found[0]

    def records(self) -> Iterator[Record]:
        """Each person's faces as float32 unit rows with their source labels."""
        return self.store.records()

    def __len__(self) -> int:
        """Number of faces."""
        return self.store.count()

    def comparisons(self) -> int:
        """What a stranger's query amounts to in single-photo comparisons under this gallery's policy: the
        gallery size the open-set threshold is set for (``facenet.evaluate.calibrate.identification_threshold``)."""
        if self._pgvector is not None:  # pgvector hook
            return self._pgvector.comparisons()
        self.sync()  # counted from the index kept in step, not by a query over every person
        return self.scorer.comparisons(len(self._person_faces), len(self._face_person))

    def identify(
        self, queries: np.ndarray, k: int = 5, threshold: float | np.ndarray | None = None
    ) -> list[list[Match]]:
        """For each query row, up to ``k`` people best-scored first, strictly closer than ``threshold`` (as
        verification decides, ``facenet.api.compare``): one for every query, or one each (a masked face has
        its own); ``[]`` means unknown (open set)."""
        queries = np.atleast_2d(np.asarray(queries, np.float32))
        if queries.ndim != 2 or queries.shape[1] != self.embedding_size:
            raise GalleryError(f"queries must be (n, {self.embedding_size}) embeddings, got shape {queries.shape}")
        if self._pgvector is not None:  # pgvector hook: candidates from the database, scored from the store
            results = self._pgvector.identify(queries, k)
        else:
            results = self._nearest_people(queries, k)
        if threshold is None:
            return results
        limits = np.broadcast_to(np.asarray(threshold, np.float64), (len(queries),))
        return [[m for m in r if m.distance < limit] for r, limit in zip(results, limits)]

    def _nearest_people(self, queries: np.ndarray, k: int) -> list[list[Match]]:
        self.sync()
        if not self._person_faces or k < 1:
            return [[] for _ in queries]
        wanted = min(k, len(self._person_faces))  # with fewer people than k, all of them is a full answer
        if self.scorer.uses_template:
            index, owner = _built(self._templates), self._template_owner.__getitem__
        else:
            index, owner = _built(self._index), self._face_person.__getitem__
        total = len(index)
        fetch = min(total, 4 * k)
        while True:
            dist, ids = index.search(queries, fetch)
            results = [
                self._score(q, list(dict.fromkeys(owner(i) for i in row.tolist() if i >= 0)))[:wanted]
                for q, row in zip(queries, ids)
            ]
            if fetch >= total or all(
                len(r) == wanted and r[-1].distance <= _farthest(d) + _ROUNDING for r, d in zip(results, dist)
            ):
                break
            fetch = min(total, fetch * 4)
        return results

    def wait_for_change(self, timeout: float) -> bool:
        """Block up to ``timeout`` s until another process may have written (then ``sync``); safe to call from
        a thread other than the one using the gallery."""
        return self.store.wait_for_change(timeout)

    def sync(self) -> int:
        """Bring the index up to date with the store's change feed (the first time: from the index snapshot
        if a valid one exists, else loading every face); returns the feed position it now reflects."""
        if self._pgvector is not None:  # pgvector hook: nothing held here, nothing to load or snapshot
            return self._pgvector.sync()
        with self._lock:
            return self._sync()

    def _sync(self) -> int:
        if self._index is not None and self.store.head() == self._seq:
            return self._seq  # the common case, one cheap query
        rebuilt = False
        if self.snapshots and self._gallery_id is None:
            self._gallery_id = self.store.gallery_id()
        if self._index is None and self.snapshots:
            snapshot.load(self)  # sets the index and ``_seq`` when a valid snapshot exists
        changes = self.store.changes(self._seq)
        changed: set[int] = set()  # people who gained or lost faces: their templates are stale
        if self._index is None:
            self._index = FaceIndex(self.embedding_size, self._index_kind)
            self._index.rebuild(changes.ids, changes.vectors)
            self._index.on_built = self._snapshot_later
            rebuilt = True
        else:
            gone = [f for f in changes.removed.tolist() if f in self._face_person]
            if gone:
                self._index.remove(gone)
                for face_id in gone:
                    person = self._face_person.pop(face_id)
                    changed.add(person)
                    self._person_faces[person].discard(face_id)
                    if not self._person_faces[person]:
                        del self._person_faces[person]
            if len(changes.ids):
                self._index.add(changes.ids, changes.vectors)
            self._changed_since_snapshot += len(gone) + len(changes.ids)
        changed |= self._note_owners(changes.ids, changes.persons)
        if self.scorer.uses_template:
            self._update_templates(changed)
        self._names.update(changes.names)
        self._seq = changes.head
        if self.snapshots and len(changes.removed):  # a snapshot on disk may hold someone now removed
            self._removals_seen += 1
            snapshot.discard(snapshot.snapshot_path(self.location), before=self._seq)
        if self.snapshots and (rebuilt or len(changes.removed)) and not self._index.building:
            self._snapshot_later()
        return self._seq

    def _install(self, index: FaceIndex, ids: np.ndarray, persons: np.ndarray, seq: int) -> None:
        """Take ``index`` (holding faces ``ids`` of ``persons``, at feed position ``seq``) as this gallery's
        index: from a snapshot, before catching up (``facenet.gallery.snapshot.load``)."""
        self._index, self._seq, self._snapshot_seq = index, seq, seq
        index.on_built = self._snapshot_later
        self._face_person, self._person_faces = {}, {}
        people = self._note_owners(ids, persons)
        self._names = self.store.names()
        if self.scorer.uses_template:
            self._update_templates(people)

    def _note_owners(self, ids: np.ndarray, persons: np.ndarray) -> set[int]:
        """Record that faces ``ids`` in the index belong to ``persons``; returns the people concerned."""
        for face_id, person in zip(ids.tolist(), persons.tolist()):
            self._face_person[face_id] = person
            self._person_faces.setdefault(person, set()).add(face_id)
        return set(persons.tolist())

    def _snapshot_later(self) -> None:
        """Write a snapshot on the background writer (automatic ones: from ``snapshot.MIN_FACES`` faces)."""
        if self.snapshots and not self._closing and len(self._face_person) >= snapshot.MIN_FACES:
            self._writer.later()

    # -- internals -----------------------------------------------------------------------------

    def _score(self, query: np.ndarray, people: list[int]) -> list[Match]:
        """``people`` scored by the policy from all their faces (and templates), best first."""
        if not people:
            return []
        faces = [np.fromiter(self._person_faces[p], np.int64) for p in people]
        distances = squared_l2(query, _built(self._index).vectors(np.concatenate(faces)))
        to_template = (
            squared_l2(query, _built(self._templates).vectors([self._template_of[p] for p in people]))
            if self.scorer.uses_template
            else [None] * len(people)
        )
        matches, start = [], 0
        for person, ids, template_distance in zip(people, faces, to_template):
            mine = distances[start : start + len(ids)]
            start += len(ids)
            matches.append(
                Match(self._names[person], self.scorer.score(mine, template_distance), int(ids[np.argmin(mine)]))
            )
        return sorted(matches, key=lambda m: m.distance)

    def _update_templates(self, people: set[int]) -> None:
        """Recompute the templates of ``people`` from their faces now in the index (dropped when none are)."""
        if self._templates is None:
            self._templates = FaceIndex(self.embedding_size, self._index_kind)
        stale = [self._template_of.pop(p) for p in people if p in self._template_of]
        if stale:
            self._templates.remove(stale)
            for key in stale:
                del self._template_owner[key]
        present = [p for p in people if p in self._person_faces]
        if present:
            faces = [np.fromiter(self._person_faces[p], np.int64) for p in present]
            rows_of = np.repeat(present, [len(f) for f in faces])
            owners, vectors = templates(_built(self._index).vectors(np.concatenate(faces)), rows_of)
            keys = np.arange(self._next_template_key, self._next_template_key + len(owners), dtype=np.int64)
            self._next_template_key += len(owners)
            self._template_of.update(zip(owners.tolist(), keys.tolist()))
            self._template_owner.update(zip(keys.tolist(), owners.tolist()))
            self._templates.add(keys, vectors)


def _built(index: FaceIndex | None) -> FaceIndex:
    """An index that ``sync`` builds (the templates' too, for a template policy) before any search reads it."""
    assert index is not None, "sync() builds the indexes before a search"
    return index


def _farthest(dist: np.ndarray) -> float:
    """The largest distance a search returned (missing slots are inf)."""
    found = dist[np.isfinite(dist)]
    return float(found.max()) if len(found) else np.inf
