"""Vector search over the gallery's faces with FAISS.

Distances are squared L2 (FAISS's L2 indexes return squared distances, which is the project's unit).

* ``exact``: ``IndexFlatL2`` behind an id map; exact, supports removal directly.
* ``hnsw``: ``IndexHNSWFlat`` (graph, approximate, stores full vectors so its distances are exact
  for the candidates it returns). HNSW cannot delete, so removed ids go into a set that the graph
  search itself skips (a FAISS ID selector: no over-fetching, so the cost does not grow with the
  removals); once removed faces exceed a quarter of the index it is rebuilt from the live vectors.
  Removal is therefore visible on the very next query. Inserting into the graph costs about a
  millisecond per face at 100,000 faces (and grows with the graph), so new faces first go to a small
  exact index searched beside the graph (``fresh``) and are folded into the graph on a background
  thread once ``FRESH_FOLD_AT`` have gathered, ``FOLD_SLICE`` at a time: enrolment costs what it costs
  in a small gallery; a query meeting a fold waits while a slice goes in (RESULTS.md: +2 ms at the median).
* ``ivf``: ``IndexIVFFlat`` trained once on the faces present when it is built (needs at least
  ``IVF_MIN_TRAIN`` faces, otherwise exact search is used); later faces go to the trained lists
  without retraining; removal is direct.
* ``auto``: exact below ``AUTO_THRESHOLD`` faces, HNSW above; an exact index that grows past the
  threshold is rebuilt as HNSW.

**Builds never stall a caller.** The exact -> HNSW switch of ``auto`` and the HNSW rebuild after many
removals run on a background thread (``facenet-index-build``) from a copy of the live vectors, while
``search`` keeps answering from the index it has (which keeps taking adds and removals). The adds and
removals made meanwhile are journalled and replayed onto the new index, the last few under the lock,
and the new index replaces the old one atomically: no query ever sees a half-built index or misses a
change. ``rebuild`` (a first load) is synchronous: nothing is answered before it. ``wait_for_build``
blocks until a background build is done (tests, snapshots, benchmarks).

Default efSearch = 512, measured by ``benchmarks/bench_gallery.py --n 1000000 --threads 2`` (2 cores
of an otherwise idle 16-core machine, random unit 128-D faces): queries that are noisy copies of an
enrolled face reach recall@1 0.998 at p50 3.8 ms (ef 128: 0.894 at 0.8 ms); unstructured random
queries only 0.55 (they have no meaningful nearest neighbour), NumPy brute force 181 ms.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import faiss
import numpy as np

from facenet.errors import GalleryError

KINDS = ("auto", "exact", "hnsw", "ivf")
AUTO_THRESHOLD = 50_000
IVF_MIN_TRAIN = 1_000
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 512
REBUILD_FRACTION = 0.25
FRESH_FOLD_AT = 256  # new faces searched exactly beside the HNSW graph before a background fold starts
FRESH_MAX = 10_000  # beyond this (a bulk load, or faces arriving faster than folded) adds go to the graph
FOLD_SLICE = 8  # faces folded per hold of the graph's lock (~1 ms each at 100,000 faces)
FOLD_PAUSE = 0.0005  # s between slices: locks are not fair, so a waiting search gets its turn
_REPLAY_UNDER_LOCK = 256  # journalled changes a finished build replays while holding the lock (the rest before)

log = logging.getLogger(__name__)


class _Built:
    """One built FAISS index and what goes with it: for HNSW, the faces added since the graph was built
    (``fresh``: exact, searched beside the graph), the removed ids its search skips, and the faces being
    folded into it. The caller holds the index's lock; the graph itself also has its own (``graph_lock``),
    the only one the folder holds while it inserts, so adding faces never waits for an insertion."""

    def __init__(self, kind: str, index, dim: int):
        self.kind, self.index = kind, index
        self.fresh = faiss.IndexIDMap2(faiss.IndexFlatL2(dim))
        self.removed: set[int] = set()
        self.skip: tuple | None = None  # (search parameters skipping ``removed``, what they point to), on demand
        self.graph_lock = threading.Lock()
        self.graph_count = index.ntotal  # faces in the graph, those of a fold in flight not yet counted
        self.folding: np.ndarray | None = None  # ids of the fold in flight (still in ``fresh`` until it ends)

    def __len__(self) -> int:
        return self.graph_count - len(self.removed) + self.fresh.ntotal

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if self.kind == "hnsw" and self.fresh.ntotal + len(ids) <= FRESH_MAX:
            self.fresh.add_with_ids(vectors, ids)
            return
        self.insert(ids, vectors)  # a bulk load, or fresh faces arriving faster than they are folded: pay now
        self.graph_count += len(ids)

    def insert(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Into the index itself (the graph, for HNSW), under the graph's lock only."""
        with self.graph_lock:
            self.index.add_with_ids(vectors, ids)

    def remove(self, ids: np.ndarray) -> None:
        if self.kind != "hnsw":
            self.index.remove_ids(ids)
            self.graph_count = self.index.ntotal
            return
        fresh = self._in_fresh(ids)
        if fresh.any():
            self.fresh.remove_ids(ids[fresh])
        rest = ids[~fresh]
        if len(rest):  # only faces the graph holds (one removed twice, or never added, is not)
            with self.graph_lock:
                self._skip(np.array([i for i in rest.tolist() if i not in self.removed and self._holds(i)], np.int64))

    def take_fold(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The first ``n`` fresh faces, now the fold in flight (they stay searchable in ``fresh``)."""
        n = min(n, self.fresh.ntotal)
        self.folding = faiss.vector_to_array(self.fresh.id_map)[:n].astype(np.int64)
        return self.folding, self.fresh.index.reconstruct_n(0, n)

    def end_fold(self, ids: np.ndarray) -> None:
        """The fold of ``ids`` reached the graph: drop them from ``fresh`` (one removed meanwhile is now a
        removed graph face)."""
        fresh = self._in_fresh(ids)
        self.fresh.remove_ids(ids[fresh])
        self.graph_count += len(ids)
        self.folding = None
        if not fresh.all():
            self._skip(ids[~fresh])

    def fold_all(self) -> None:
        """Every fresh face into the graph now (no fold in flight: the caller made sure)."""
        ids, vectors = self.take_fold(self.fresh.ntotal)
        self.insert(ids, vectors)
        self.end_fold(ids)

    def search(self, queries: np.ndarray, k: int, ef_search: int) -> tuple[np.ndarray, np.ndarray]:
        with self.graph_lock:
            if self.removed:
                dist, ids = self.index.search(queries, k, params=self._skip_removed(ef_search))
            else:
                dist, ids = self.index.search(queries, k)
        if not self.fresh.ntotal:
            return dist, ids
        if self.folding is not None:  # a fold in flight may have reached the graph: ``fresh`` answers for it
            ids = np.where(np.isin(ids, self.folding), -1, ids)
        fresh_dist, fresh_ids = self.fresh.search(queries, min(k, self.fresh.ntotal))
        dist, ids = np.concatenate([dist, fresh_dist], 1), np.concatenate([ids, fresh_ids], 1)
        dist = np.where(ids < 0, np.inf, dist)
        order = np.argsort(dist, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(dist, order, 1), np.take_along_axis(ids, order, 1)

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        fresh = self._in_fresh(ids)
        out = np.empty((len(ids), self.index.d), np.float32)
        if fresh.any():
            out[fresh] = self.fresh.reconstruct_batch(ids[fresh])
        if not fresh.all():
            with self.graph_lock:
                out[~fresh] = self.index.reconstruct_batch(ids[~fresh])
        return out

    def live(self) -> tuple[np.ndarray, np.ndarray]:
        """Ids and vectors still present (exact and HNSW keep full vectors behind an id map)."""
        with self.graph_lock:
            n = self.index.ntotal
            ids = faiss.vector_to_array(self.index.id_map).astype(np.int64)
            vectors = self.index.index.reconstruct_n(0, n) if n else np.empty((0, self.index.d), np.float32)
        skip = self.removed | (set(self.folding.tolist()) if self.folding is not None else set())
        if skip:  # removed, or in a fold in flight (``fresh`` holds those)
            keep = ~np.isin(ids, np.fromiter(skip, np.int64, len(skip)))
            ids, vectors = ids[keep], vectors[keep]
        if self.fresh.ntotal:
            ids = np.concatenate([ids, faiss.vector_to_array(self.fresh.id_map).astype(np.int64)])
            vectors = np.concatenate([vectors, self.fresh.index.reconstruct_n(0, self.fresh.ntotal)])
        return ids, vectors

    def _in_fresh(self, ids: np.ndarray) -> np.ndarray:
        if not self.fresh.ntotal:
            return np.zeros(len(ids), bool)
        return np.isin(ids, faiss.vector_to_array(self.fresh.id_map))

    def _holds(self, face_id: int) -> bool:
        """Whether the graph holds ``face_id`` (its id map answers in O(1), by raising when it does not)."""
        try:
            self.index.reconstruct(face_id)
        except RuntimeError:
            return False
        return True

    def _skip(self, ids: np.ndarray) -> None:
        if len(ids):
            self.removed.update(ids.tolist())
            self.skip = None

    def _skip_removed(self, ef_search: int):
        """HNSW search parameters whose selector skips the removed faces (built once per set of removals)."""
        if self.skip is None:
            removed = faiss.IDSelectorBatch(np.fromiter(self.removed, np.int64, len(self.removed)))
            keep = faiss.IDSelectorNot(removed)
            params = faiss.SearchParametersHNSW(sel=keep, efSearch=ef_search)
            self.skip = (params, keep, removed)  # SWIG holds raw pointers: keep the Python objects alive
        return self.skip[0]


class FaceIndex:
    """Face ids -> vectors; ``search`` returns (squared distances, face ids), nearest first.

    Safe to use from several threads (one lock); the background builder and folder are the only others."""

    def __init__(self, dim: int, kind: str = "auto", ef_search: int = HNSW_EF_SEARCH):
        if kind not in KINDS:
            raise GalleryError(f"unknown index kind {kind!r}; choose one of {', '.join(KINDS)}")
        self.dim, self.requested, self.ef_search = dim, kind, ef_search
        self._lock = threading.RLock()
        self._journal: list[tuple[str, np.ndarray, np.ndarray | None]] | None = None  # changes during a build
        self._builder: threading.Thread | None = None
        self._folder: threading.Thread | None = None
        self._generation = 0  # a synchronous rebuild makes an in-flight background build obsolete
        self.on_built: Callable[[], None] | None = None  # called (on the builder thread) after a background swap
        self._built = self._make(self._choose(0), np.empty(0, np.int64), np.empty((0, dim), np.float32))

    @property
    def kind(self) -> str:
        return self._built.kind

    @property
    def building(self) -> bool:
        """A background build is running (searches meanwhile use the previous index)."""
        return self._builder is not None

    def set_ef_search(self, ef: int) -> None:
        """HNSW breadth of search: higher = better recall, slower (no effect on other kinds)."""
        with self._lock:
            self.ef_search = ef
            self._built.skip = None
            if self._built.kind == "hnsw":
                with self._built.graph_lock:
                    faiss.downcast_index(self._built.index.index).hnsw.efSearch = ef

    def __len__(self) -> int:
        with self._lock:
            return len(self._built)

    def rebuild(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Replace the whole content now (a first load); a background build in flight is abandoned."""
        ids, vectors = np.asarray(ids, np.int64), np.ascontiguousarray(vectors, np.float32)
        with self._lock:
            self._generation += 1
            self._journal, self._builder = None, None
            self._built = self._make(self._choose(len(ids)), ids, vectors)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids = np.asarray(ids, np.int64)
        vectors = np.ascontiguousarray(vectors, np.float32)
        with self._lock:
            self._built.add(ids, vectors)
            if self._journal is not None:
                self._journal.append(("add", ids, vectors))
            elif self._build_due():
                self._build_in_background()  # the old index keeps answering (and growing) until the new is ready
            elif self._built.fresh.ntotal >= FRESH_FOLD_AT:
                self._fold_in_background()

    def remove(self, ids) -> None:
        ids = np.asarray(list(ids), np.int64)
        with self._lock:
            self._built.remove(ids)
            if self._journal is not None:
                self._journal.append(("remove", ids, None))
            elif self._build_due():
                self._build_in_background()

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """k nearest live faces per query; missing slots have id -1 and distance inf."""
        queries = np.ascontiguousarray(queries, np.float32)
        with self._lock:
            k = max(1, min(k, len(self._built)))
            dist, ids = self._built.search(queries, k, self.ef_search)
        dist = np.where(ids < 0, np.inf, np.maximum(dist, 0.0))
        return dist.astype(np.float32), ids

    def vectors(self, ids) -> np.ndarray:
        """The stored vectors of live faces ``ids`` (a gallery scores a candidate person from all their faces)."""
        ids = np.asarray(ids, np.int64)
        if not len(ids):
            return np.empty((0, self.dim), np.float32)
        with self._lock:
            return self._built.vectors(ids)

    def wait_for_build(self, timeout: float | None = None) -> bool:
        """Block until no background build or fold runs (True), or ``timeout`` s passed (False)."""
        for thread in (self._builder, self._folder):
            if thread is not None:
                thread.join(timeout)
        return self._builder is None and self._folder is None

    def wait_for_fold(self) -> None:
        """Block until no background fold runs (one may start again with the next add)."""
        folder = self._folder
        if folder is not None:
            folder.join()

    # -- snapshots (facenet.gallery.snapshot) ----------------------------------------------------

    def serialize(self) -> tuple[str, np.ndarray, np.ndarray]:
        """(kind, FAISS bytes, removed ids) of the index now, fresh faces folded into the graph first. An HNSW
        graph cannot drop a node, so the vectors of removed faces are zeroed in a copy: their embeddings never
        reach the bytes."""
        while True:
            self.wait_for_fold()  # without the lock: the fold needs it to end
            with self._lock:
                if self._folder is not None:
                    continue  # a new fold started meanwhile
                built = self._built
                if built.fresh.ntotal:
                    built.fold_all()
                index, removed = built.index, np.fromiter(built.removed, np.int64, len(built.removed))
                if len(removed):
                    index = faiss.clone_index(index)
                    inner = faiss.downcast_index(index.index)
                    storage = faiss.downcast_index(inner.storage)
                    stored = faiss.rev_swig_ptr(storage.get_xb(), inner.ntotal * self.dim).reshape(-1, self.dim)
                    stored[np.isin(faiss.vector_to_array(index.id_map), removed)] = 0.0
                return built.kind, faiss.serialize_index(index), removed

    @classmethod
    def deserialize(
        cls, dim: int, requested: str, kind: str, data: np.ndarray, removed: np.ndarray, ef_search: int = HNSW_EF_SEARCH
    ) -> FaceIndex:
        """An index from ``serialize``'s output (checked by the caller); a switch or rebuild it is due for
        starts in the background."""
        self = cls(dim, requested, ef_search)
        index = faiss.deserialize_index(np.ascontiguousarray(data, np.uint8))
        if index.d != dim or not isinstance(index, faiss.IndexIDMap2) and kind != "ivf":
            raise GalleryError(f"index snapshot holds a {type(index).__name__} of {index.d} dimensions, not {dim}")
        if kind == "hnsw":
            faiss.downcast_index(index.index).hnsw.efSearch = ef_search
        with self._lock:
            self._built = _Built(kind, index, dim)
            self._built.removed = set(removed.tolist())
            if self._build_due():
                self._build_in_background()
        return self

    # -- internals -----------------------------------------------------------------------------

    def _choose(self, n: int) -> str:
        kind = self.requested
        if kind == "auto":
            kind = "hnsw" if n > AUTO_THRESHOLD else "exact"
        if kind == "ivf" and n < IVF_MIN_TRAIN:
            kind = "exact"
        return kind

    def _build_due(self) -> bool:
        """The index now calls for a new one (the caller holds the lock): ``auto``'s exact index has grown past
        ``AUTO_THRESHOLD``, or an HNSW graph holds more than ``REBUILD_FRACTION`` removed faces."""
        built = self._built
        if self.requested == "auto" and built.kind == "exact" and len(built) > AUTO_THRESHOLD:
            return True
        return built.kind == "hnsw" and len(built.removed) > REBUILD_FRACTION * max(built.graph_count, 1)

    def _make(self, kind: str, ids: np.ndarray, vectors: np.ndarray) -> _Built:
        """A new index of ``kind`` holding ``vectors`` under ``ids`` (touches nothing of ``self``)."""
        if kind == "exact":
            index = faiss.IndexIDMap2(faiss.IndexFlatL2(self.dim))
        elif kind == "hnsw":
            inner = faiss.IndexHNSWFlat(self.dim, HNSW_M)
            inner.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
            inner.hnsw.efSearch = self.ef_search
            index = faiss.IndexIDMap2(inner)
        else:
            nlist = int(np.clip(4 * np.sqrt(len(ids)), 1, len(ids) // 39))
            index = faiss.IndexIVFFlat(faiss.IndexFlatL2(self.dim), self.dim, nlist)
            index.train(vectors)
            index.nprobe = min(nlist, max(16, nlist // 16))
            index.set_direct_map_type(faiss.DirectMap.Hashtable)  # vectors by id (``vectors``), removal kept
        if len(ids):
            index.add_with_ids(vectors, ids)
        return _Built(kind, index, self.dim)

    def _build_in_background(self) -> None:
        """Start building the index the live faces call for (the caller holds the lock); changes from now on
        are journalled for the builder to replay."""
        ids, vectors = self._built.live()
        self._journal = []
        generation = self._generation
        self._builder = threading.Thread(
            target=self._build_then_swap, args=(generation, ids, vectors), name="facenet-index-build", daemon=True
        )
        self._builder.start()

    def _build_then_swap(self, generation: int, ids: np.ndarray, vectors: np.ndarray) -> None:
        built = False
        try:
            new = self._make(self._choose(len(ids)), ids, vectors)  # the slow part, without the lock
            del ids, vectors
            while True:
                with self._lock:
                    if generation != self._generation:
                        return  # replaced by a synchronous rebuild meanwhile
                    journal = self._journal or []
                    if len(journal) <= _REPLAY_UNDER_LOCK:
                        _replay(new, journal)
                        self._built, self._journal, self._builder = new, None, None
                        built = True
                        log.info("gallery index now %s over %d faces (built off the request path)", new.kind, len(new))
                        if new.fresh.ntotal >= FRESH_FOLD_AT:
                            self._fold_in_background()
                        break
                    self._journal = []
                _replay(new, journal)  # a long backlog: replayed without the lock, then again
        except Exception:  # never leave the index stuck "building": the old one keeps answering
            log.exception("background index build failed; the previous index keeps answering")
            with self._lock:
                if generation == self._generation:
                    self._journal, self._builder = None, None
        if built and self.on_built is not None:
            self.on_built()

    def _fold_in_background(self) -> None:
        """Start folding the fresh faces into the HNSW graph (the caller holds the lock)."""
        if self._folder is None:
            self._folder = threading.Thread(target=self._fold, name="facenet-index-fold", daemon=True)
            self._folder.start()

    def _fold(self) -> None:
        """Fold ``FOLD_SLICE`` faces at a time until none is left, inserting them into the graph under the
        graph's lock only (adds go on meanwhile); a build started meanwhile takes the fresh faces with it
        (and restarts the folding when it is done)."""
        try:
            while True:
                with self._lock:
                    built = self._built
                    if built.kind != "hnsw" or not built.fresh.ntotal or self._journal is not None:
                        self._folder = None
                        return
                    ids, vectors = built.take_fold(FOLD_SLICE)
                built.insert(ids, vectors)  # the slow part: adds and removals go on meanwhile
                with self._lock:
                    built.end_fold(ids)
                time.sleep(FOLD_PAUSE)
        except Exception:  # the fresh faces stay searchable where they are
            log.exception("folding new faces into the HNSW graph failed; they stay in the exact side index")
            with self._lock:
                self._folder = None


def _replay(built: _Built, journal) -> None:
    """Apply journalled adds and removals to a freshly built index (HNSW: adds go to its fresh faces)."""
    for op, ids, vectors in journal:
        if op == "add":
            built.add(ids, vectors)
        else:
            built.remove(ids)
