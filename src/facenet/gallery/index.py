"""Vector search over the gallery's faces with FAISS.

Distances are squared L2 (FAISS's L2 indexes return squared distances, which is the project's unit).

* ``exact``: ``IndexFlatL2`` behind an id map; exact, supports removal directly.
* ``hnsw``: ``IndexHNSWFlat`` (graph, approximate, stores full vectors so its distances are exact
  for the candidates it returns). HNSW cannot delete, so removed ids go into a set that the graph
  search itself skips (a FAISS ID selector: no over-fetching, so the cost does not grow with the
  removals); once removed faces exceed a quarter of the index it is rebuilt from the live vectors.
  Removal is therefore visible on the very next query.
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
_REPLAY_UNDER_LOCK = 256  # journalled changes a finished build replays while holding the lock (the rest before)

log = logging.getLogger(__name__)


class FaceIndex:
    """Face ids -> vectors; ``search`` returns (squared distances, face ids), nearest first.

    Safe to use from several threads (one lock); the background builder is the only other thread."""

    def __init__(self, dim: int, kind: str = "auto", ef_search: int = HNSW_EF_SEARCH):
        if kind not in KINDS:
            raise GalleryError(f"unknown index kind {kind!r}; choose one of {', '.join(KINDS)}")
        self.dim, self.requested, self.ef_search = dim, kind, ef_search
        self._lock = threading.RLock()
        self._journal: list[tuple[str, np.ndarray, np.ndarray | None]] | None = None  # changes during a build
        self._builder: threading.Thread | None = None
        self._generation = 0  # a synchronous rebuild makes an in-flight background build obsolete
        self.on_built: Callable[[], None] | None = None  # called (on the builder thread) after a background swap
        self._removed: set[int] = set()
        self._skip = None
        self._build(np.empty(0, np.int64), np.empty((0, dim), np.float32))

    @property
    def kind(self) -> str:
        return self._kind

    @property
    def building(self) -> bool:
        """A background build is running (searches meanwhile use the previous index)."""
        return self._builder is not None

    def set_ef_search(self, ef: int) -> None:
        """HNSW breadth of search: higher = better recall, slower (no effect on other kinds)."""
        with self._lock:
            self.ef_search = ef
            self._skip = None
            if self._kind == "hnsw":
                faiss.downcast_index(self._index.index).hnsw.efSearch = ef

    def __len__(self) -> int:
        with self._lock:
            return self._index.ntotal - len(self._removed)

    def rebuild(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Replace the whole content now (a first load); a background build in flight is abandoned."""
        with self._lock:
            self._generation += 1
            self._journal, self._builder = None, None
            self._build(np.asarray(ids, np.int64), np.ascontiguousarray(vectors, np.float32))

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids = np.asarray(ids, np.int64)
        vectors = np.ascontiguousarray(vectors, np.float32)
        with self._lock:
            self._index.add_with_ids(vectors, ids)
            if self._journal is not None:
                self._journal.append(("add", ids, vectors))
            elif self.requested == "auto" and self._kind == "exact" and len(self) > AUTO_THRESHOLD:
                self._build_in_background()  # exact keeps answering (and growing) until HNSW is ready

    def remove(self, ids) -> None:
        ids = np.asarray(list(ids), np.int64)
        with self._lock:
            if self._kind != "hnsw":
                self._index.remove_ids(ids)
            else:
                self._removed.update(ids.tolist())
                self._skip = None  # the selector is rebuilt on the next search
            if self._journal is not None:
                self._journal.append(("remove", ids, None))
            elif self._kind == "hnsw" and len(self._removed) > REBUILD_FRACTION * max(self._index.ntotal, 1):
                self._build_in_background()

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """k nearest live faces per query; missing slots have id -1 and distance inf."""
        queries = np.ascontiguousarray(queries, np.float32)
        with self._lock:
            k = max(1, min(k, len(self)))
            if self._removed:
                dist, ids = self._index.search(queries, k, params=self._skip_removed())
            else:
                dist, ids = self._index.search(queries, k)
        dist = np.where(ids < 0, np.inf, np.maximum(dist, 0.0))
        return dist.astype(np.float32), ids

    def vectors(self, ids) -> np.ndarray:
        """The stored vectors of live faces ``ids`` (a gallery scores a candidate person from all their faces)."""
        ids = np.asarray(ids, np.int64)
        if not len(ids):
            return np.empty((0, self.dim), np.float32)
        with self._lock:
            return self._index.reconstruct_batch(ids)

    def wait_for_build(self, timeout: float | None = None) -> bool:
        """Block until no background build runs (True), or ``timeout`` s passed (False)."""
        builder = self._builder
        if builder is not None:
            builder.join(timeout)
        return self._builder is None

    # -- snapshots (facenet.gallery.snapshot) ----------------------------------------------------

    def serialize(self) -> tuple[str, np.ndarray, np.ndarray]:
        """(kind, FAISS bytes, removed ids) of the index now. An HNSW graph cannot drop a node, so the
        vectors of removed faces are zeroed in a copy first: their embeddings never reach the bytes."""
        with self._lock:
            index, removed = self._index, np.fromiter(self._removed, np.int64, len(self._removed))
            if len(removed):
                index = faiss.clone_index(index)
                inner = faiss.downcast_index(index.index)
                storage = faiss.downcast_index(inner.storage)
                stored = faiss.rev_swig_ptr(storage.get_xb(), inner.ntotal * self.dim).reshape(-1, self.dim)
                stored[np.isin(faiss.vector_to_array(index.id_map), removed)] = 0.0
            return self._kind, faiss.serialize_index(index), removed

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
            self._index, self._kind, self._removed, self._skip = index, kind, set(removed.tolist()), None
            if self.requested == "auto" and kind == "exact" and len(self) > AUTO_THRESHOLD:
                self._build_in_background()
            elif kind == "hnsw" and len(self._removed) > REBUILD_FRACTION * max(index.ntotal, 1):
                self._build_in_background()
        return self

    # -- internals -----------------------------------------------------------------------------

    def _skip_removed(self):
        """HNSW search parameters whose selector skips the removed faces (built once per set of removals)."""
        if self._skip is None:
            removed = faiss.IDSelectorBatch(np.fromiter(self._removed, np.int64, len(self._removed)))
            keep = faiss.IDSelectorNot(removed)
            params = faiss.SearchParametersHNSW(sel=keep, efSearch=self.ef_search)
            self._skip = (params, keep, removed)  # SWIG holds raw pointers: keep the Python objects alive
        return self._skip[0]

    def _choose(self, n: int) -> str:
        kind = self.requested
        if kind == "auto":
            kind = "hnsw" if n > AUTO_THRESHOLD else "exact"
        if kind == "ivf" and n < IVF_MIN_TRAIN:
            kind = "exact"
        return kind

    def _make(self, kind: str, ids: np.ndarray, vectors: np.ndarray):
        """A new FAISS index of ``kind`` holding ``vectors`` under ``ids`` (touches nothing of ``self``)."""
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
        return index

    def _build(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        kind = self._choose(len(ids))
        self._index, self._kind, self._removed, self._skip = self._make(kind, ids, vectors), kind, set(), None

    def _build_in_background(self) -> None:
        """Start building the index the live faces call for (the caller holds the lock); changes from now on
        are journalled for the builder to replay."""
        ids, vectors = self._live()
        self._journal = []
        generation = self._generation
        self._builder = threading.Thread(
            target=self._build_then_swap, args=(generation, ids, vectors), name="facenet-index-build", daemon=True
        )
        self._builder.start()

    def _build_then_swap(self, generation: int, ids: np.ndarray, vectors: np.ndarray) -> None:
        built = False
        try:
            kind = self._choose(len(ids))
            index = self._make(kind, ids, vectors)  # the slow part, without the lock: searches go on
            del ids, vectors
            removed: set[int] = set()
            while True:
                with self._lock:
                    if generation != self._generation:
                        return  # replaced by a synchronous rebuild meanwhile
                    journal = self._journal or []
                    if len(journal) <= _REPLAY_UNDER_LOCK:
                        _replay(index, kind, removed, journal)
                        self._index, self._kind, self._removed, self._skip = index, kind, removed, None
                        self._journal, self._builder = None, None
                        built = True
                        log.info("gallery index now %s over %d faces (built off the request path)", kind, len(self))
                        break
                    self._journal = []
                _replay(index, kind, removed, journal)  # a long backlog: replayed without the lock, then again
        except Exception:  # never leave the index stuck "building": the old one keeps answering
            log.exception("background index build failed; the previous index keeps answering")
            with self._lock:
                if generation == self._generation:
                    self._journal, self._builder = None, None
        if built and self.on_built is not None:
            self.on_built()

    def _live(self) -> tuple[np.ndarray, np.ndarray]:
        """Ids and vectors still present (exact and HNSW keep full vectors behind an id map)."""
        n = self._index.ntotal
        ids = faiss.vector_to_array(self._index.id_map).astype(np.int64)
        vectors = self._index.index.reconstruct_n(0, n) if n else np.empty((0, self.dim), np.float32)
        if self._removed:
            keep = ~np.isin(ids, np.fromiter(self._removed, np.int64, len(self._removed)))
            ids, vectors = ids[keep], vectors[keep]
        return ids, vectors


def _replay(index, kind: str, removed: set[int], journal) -> None:
    """Apply journalled adds and removals to a freshly built index (HNSW: removals become skipped ids)."""
    for op, ids, vectors in journal:
        if op == "add":
            index.add_with_ids(vectors, ids)
        elif kind == "hnsw":
            removed.update(ids.tolist())
        else:
            index.remove_ids(ids)
