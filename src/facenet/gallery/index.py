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

Default efSearch = 512, measured by ``benchmarks/bench_gallery.py --n 1000000 --threads 2`` (2 cores
of an otherwise idle 16-core machine, random unit 128-D faces): queries that are noisy copies of an
enrolled face reach recall@1 0.998 at p50 3.8 ms (ef 128: 0.894 at 0.8 ms); unstructured random
queries only 0.55 (they have no meaningful nearest neighbour), NumPy brute force 181 ms.
"""

from __future__ import annotations

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


class FaceIndex:
    """Face ids -> vectors; ``search`` returns (squared distances, face ids), nearest first."""

    def __init__(self, dim: int, kind: str = "auto", ef_search: int = HNSW_EF_SEARCH):
        if kind not in KINDS:
            raise GalleryError(f"unknown index kind {kind!r}; choose one of {', '.join(KINDS)}")
        self.dim, self.requested, self.ef_search = dim, kind, ef_search
        self._removed: set[int] = set()
        self._build(np.empty(0, np.int64), np.empty((0, dim), np.float32))

    @property
    def kind(self) -> str:
        return self._kind

    def set_ef_search(self, ef: int) -> None:
        """HNSW breadth of search: higher = better recall, slower (no effect on other kinds)."""
        self.ef_search = ef
        self._skip = None
        if self._kind == "hnsw":
            faiss.downcast_index(self._index.index).hnsw.efSearch = ef

    def __len__(self) -> int:
        return self._index.ntotal - len(self._removed)

    def rebuild(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Replace the whole content (used on open and after many removals)."""
        self._build(np.asarray(ids, np.int64), np.ascontiguousarray(vectors, np.float32))

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids = np.asarray(ids, np.int64)
        vectors = np.ascontiguousarray(vectors, np.float32)
        if self.requested == "auto" and self._kind == "exact" and len(self) + len(ids) > AUTO_THRESHOLD:
            old_ids, old_vectors = self._live()
            self._build(np.concatenate([old_ids, ids]), np.concatenate([old_vectors, vectors]))
            return
        self._index.add_with_ids(vectors, ids)

    def remove(self, ids) -> None:
        ids = np.asarray(list(ids), np.int64)
        if self._kind != "hnsw":
            self._index.remove_ids(ids)
            return
        self._removed.update(ids.tolist())
        self._skip = None  # the selector is rebuilt on the next search
        if len(self._removed) > REBUILD_FRACTION * max(self._index.ntotal, 1):
            self._build(*self._live())

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """k nearest live faces per query; missing slots have id -1 and distance inf."""
        queries = np.ascontiguousarray(queries, np.float32)
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
        return self._index.reconstruct_batch(ids)

    def _skip_removed(self):
        """HNSW search parameters whose selector skips the removed faces (built once per set of removals)."""
        if self._skip is None:
            removed = faiss.IDSelectorBatch(np.fromiter(self._removed, np.int64, len(self._removed)))
            keep = faiss.IDSelectorNot(removed)
            params = faiss.SearchParametersHNSW(sel=keep, efSearch=self.ef_search)
            self._skip = (params, keep, removed)  # SWIG holds raw pointers: keep the Python objects alive
        return self._skip[0]

    def _build(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        kind = self.requested
        if kind == "auto":
            kind = "hnsw" if len(ids) > AUTO_THRESHOLD else "exact"
        if kind == "ivf" and len(ids) < IVF_MIN_TRAIN:
            kind = "exact"
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
        self._index, self._kind, self._removed, self._skip = index, kind, set(), None

    def _live(self) -> tuple[np.ndarray, np.ndarray]:
        """Ids and vectors still present (exact and HNSW keep full vectors behind an id map)."""
        n = self._index.ntotal
        ids = faiss.vector_to_array(self._index.id_map).astype(np.int64)
        vectors = self._index.index.reconstruct_n(0, n) if n else np.empty((0, self.dim), np.float32)
        if self._removed:
            keep = ~np.isin(ids, np.fromiter(self._removed, np.int64, len(self._removed)))
            ids, vectors = ids[keep], vectors[keep]
        return ids, vectors
