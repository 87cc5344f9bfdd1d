"""Grouping faces by identity from their embeddings, and scoring a grouping against the truth.

All thresholds are squared L2 (the project's unit): two faces closer than ``threshold`` are
"the same person" as far as the method is concerned.

* ``agglomerative``: SciPy hierarchical clustering (``average`` linkage by default, or
  ``complete``) on squared-L2 distances, cut at ``threshold`` — the paper's clustering.
* ``dbscan``: scikit-learn DBSCAN with ``eps = sqrt(threshold)`` (same neighbourhoods).
* ``graph`` (the CLI's default): the k-nearest-neighbour graph of the faces (FAISS: exact search up to
  ``EXACT_UP_TO`` faces, an inverted-file index above), pruned at ``threshold``, then split into
  communities by Leiden (``leidenalg`` on ``igraph``; ``graph_algorithm="leiden"``) or kept as its
  connected components (``"components"``). Memory O(n k): no n x n matrix; 1,000,000 faces fit in
  a few GB (RESULTS.md, "Clustering at scale"). Its threshold is stricter than the verification one:
  ``graph_threshold`` (the model's FAR-table distance at per-pair FAR ``GRAPH_FAR``).
* ``chinese_whispers``: label propagation on the graph of pairs closer than ``threshold``
  (Biemann 2006, as in dlib's face clustering); each node adopts the label most common among its
  neighbours, in a seeded random order, until nothing changes.

Labels are renumbered by cluster size (0 = largest); clusters with fewer than ``min_size``
members (singletons by default, and DBSCAN noise) get ``-1``, "unclustered".
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from facenet.distances import DEFAULT_THRESHOLD
from facenet.errors import DataError
from facenet.fileio import atomic_write

METHODS = ("graph", "agglomerative", "dbscan", "chinese_whispers")
GRAPH_ALGORITHMS = ("leiden", "components")
INDEXES = ("auto", "exact", "ivf")
EXACT_UP_TO = 20_000  # ``index="auto"``: exact kNN search up to this many faces, IVF above (RESULTS.md: at
# 100,000 faces on 2 cores exact search takes ~110 s, IVF ~20 s and finds 99.4% of the edges)
DEFAULT_K = 10  # neighbours per face in the graph
_QUERY_BATCH = 16_384  # faces searched at a time (bounds the distance buffer of exact search)
UNCLUSTERED = "unclustered"


def cluster_embeddings(
    emb: np.ndarray,
    method: str = "agglomerative",
    threshold: float = DEFAULT_THRESHOLD,
    linkage: str = "average",
    min_size: int = 2,
    seed: int = 0,
    k: int = DEFAULT_K,
    graph_algorithm: str = "leiden",
    index: str = "auto",
) -> np.ndarray:
    """Cluster label per row (int64), ``-1`` for faces in no cluster of at least ``min_size``.

    ``threshold``: squared L2; pass the model's (``embedder.threshold``), the default is an uncalibrated one.
    ``k``, ``graph_algorithm`` and ``index`` only matter to ``method="graph"`` (``graph_clusters``), which wants
    a stricter threshold than the verification one: ``graph_threshold(embedder)`` (the CLI's default)."""
    if method == "graph":
        emb = _check(emb, method)
        return _relabel(graph_clusters(emb, threshold, k, graph_algorithm, index, seed), min_size)
    emb = np.asarray(emb, np.float64)
    if emb.ndim != 2:
        raise DataError(f"embeddings must be a 2-D array (n, d), got shape {emb.shape}")
    if method not in METHODS:
        raise DataError(f"unknown clustering method {method!r}; choose one of {', '.join(METHODS)}")
    if len(emb) == 0:
        return np.empty(0, np.int64)
    if len(emb) == 1:
        raw = np.zeros(1, np.int64)
    elif method == "agglomerative":
        raw = _agglomerative(emb, threshold, linkage)
    elif method == "dbscan":
        from sklearn.cluster import DBSCAN

        raw = DBSCAN(eps=math.sqrt(threshold), min_samples=max(1, min_size)).fit_predict(emb)
    else:
        raw = chinese_whispers(emb, threshold, seed)
    return _relabel(raw, min_size)


def _check(emb, method: str) -> np.ndarray:
    emb = np.ascontiguousarray(emb, np.float32)
    if emb.ndim != 2:
        raise DataError(f"embeddings must be a 2-D array (n, d), got shape {emb.shape}")
    if method not in METHODS:
        raise DataError(f"unknown clustering method {method!r}; choose one of {', '.join(METHODS)}")
    return emb


def knn_graph(
    emb: np.ndarray,
    threshold: float,
    k: int = DEFAULT_K,
    index: str = "auto",
    queries: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Edges ``(rows, cols, squared distances)`` from each query (default: each face of ``emb``, itself
    left out) to its ``k`` nearest faces of ``emb`` that are closer than ``threshold``.

    ``index``: ``exact`` (FAISS flat L2, brute force in batches), ``ivf`` (FAISS inverted lists over
    ``4 sqrt(n)`` k-means cells, ``IVF_NPROBE`` of them searched), ``auto`` = exact up to ``EXACT_UP_TO``
    faces. Memory: the index (a copy of ``emb``) plus O(n k) for the edges."""
    import faiss

    if index not in INDEXES:
        raise DataError(f"unknown index {index!r}; choose one of {', '.join(INDEXES)}")
    emb = np.ascontiguousarray(emb, np.float32)
    self_search = queries is None
    queries = emb if queries is None else np.ascontiguousarray(queries, np.float32)
    n, dim = emb.shape
    empty = (np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32))
    if n == 0 or len(queries) == 0 or k < 1:
        return empty
    kind = index if index != "auto" else ("exact" if n <= EXACT_UP_TO else "ivf")
    if kind == "ivf" and n < 40 * IVF_MIN_CELLS:
        kind = "exact"
    if kind == "exact":
        faiss_index = faiss.IndexFlatL2(dim)
    else:
        nlist = int(max(IVF_MIN_CELLS, 4 * math.sqrt(n)))
        faiss_index = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim), dim, nlist)
        rng = np.random.default_rng(0)
        sample = emb[np.sort(rng.choice(n, min(n, 40 * nlist), replace=False))]
        faiss_index.cp.min_points_per_centroid = 1  # no warning for the 40-per-cell sample
        faiss_index.cp.niter = IVF_TRAIN_ITERATIONS
        faiss_index.train(sample)
        del sample
        faiss_index.nprobe = IVF_NPROBE
    faiss_index.add(emb)
    want = min(k + int(self_search), n)
    parts = []
    for start in range(0, len(queries), _QUERY_BATCH):
        d2, nn = faiss_index.search(queries[start : start + _QUERY_BATCH], want)
        rows = np.repeat(np.arange(start, start + len(nn), dtype=np.int64), want).reshape(nn.shape)
        keep = (nn >= 0) & (d2 < threshold)
        if self_search:
            keep &= nn != rows
        parts.append((rows[keep], nn[keep].astype(np.int64), d2[keep].astype(np.float32)))
    del faiss_index
    return tuple(np.concatenate(p) for p in zip(*parts))  # type: ignore[return-value]


IVF_MIN_CELLS = 64
IVF_NPROBE = 8  # cells searched per face
IVF_TRAIN_ITERATIONS = 10  # k-means iterations for the cells


def graph_clusters(
    emb: np.ndarray,
    threshold: float,
    k: int = DEFAULT_K,
    algorithm: str = "leiden",
    index: str = "auto",
    seed: int = 0,
) -> np.ndarray:
    """Raw community per face (not renumbered) of the pruned kNN graph (``knn_graph``), by Leiden or as
    connected components; a face with no neighbour closer than ``threshold`` is its own community."""
    if algorithm not in GRAPH_ALGORITHMS:
        raise DataError(f"unknown graph algorithm {algorithm!r}; choose one of {', '.join(GRAPH_ALGORITHMS)}")
    n = len(emb)
    rows, cols, d2 = knn_graph(emb, threshold, k, index)
    return _communities(n, rows, cols, d2, threshold, algorithm, seed)


def _communities(n, rows, cols, d2, threshold, algorithm, seed) -> np.ndarray:
    # one undirected edge per pair (kNN lists are not symmetric), kept at its smallest distance
    lo, hi = np.minimum(rows, cols), np.maximum(rows, cols)
    key = lo * n + hi
    order = np.lexsort((d2, key))
    key, d2 = key[order], d2[order]
    first = np.ones(len(key), bool)
    first[1:] = key[1:] != key[:-1]
    key, d2 = key[first], d2[first]
    lo, hi = key // n, key % n
    del rows, cols, order, first, key
    if algorithm == "components":
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        graph = coo_matrix((np.ones(len(lo), np.int8), (lo, hi)), shape=(n, n)).tocsr()
        return connected_components(graph, directed=False)[1].astype(np.int64)
    import igraph
    import leidenalg

    graph = igraph.Graph(n=n, edges=np.column_stack([lo, hi]), directed=False)
    weights = (1.0 - d2 / threshold).astype(np.float64)  # 1 for identical faces, 0 at the threshold
    partition = leidenalg.find_partition(
        graph, leidenalg.ModularityVertexPartition, weights=weights, n_iterations=-1, seed=seed
    )
    return np.asarray(partition.membership, np.int64)


GRAPH_FAR = 1e-6  # the per-pair FAR whose calibrated threshold prunes the graph (RESULTS.md, "Clustering at scale")


def graph_threshold(info, far: float = GRAPH_FAR) -> float:
    """The pruning distance of ``method="graph"`` for a model (its ``ModelInfo`` or an embedder with ``info``):
    the squared L2 at per-pair false-accept rate ``far`` in its FAR table (log-interpolated; the strictest entry
    below the table), or its verification threshold for a model without a FAR table."""
    from facenet.evaluate.calibrate import openset_threshold

    info = getattr(info, "info", None) or info
    table = getattr(info, "far_thresholds", None)
    if not table:
        return float(getattr(info, "threshold", DEFAULT_THRESHOLD))
    return openset_threshold(table, far, 1)[0]


def assign_incremental(
    old_emb: np.ndarray,
    old_labels: Sequence[int],
    new_emb: np.ndarray,
    threshold: float,
    k: int = DEFAULT_K,
    min_size: int = 2,
    graph_algorithm: str = "leiden",
    index: str = "auto",
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """New faces join an existing clustering without re-clustering it: ``(old labels, new labels)``.

    Each new face searches its ``k`` nearest old faces; one with neighbours closer than ``threshold`` in
    existing clusters joins the cluster with the largest summed edge weight (``1 - d^2 / threshold``). The
    rest, with the old unclustered faces (``-1``) they are close to, are clustered among themselves (the
    pruned kNN graph, as ``graph_clusters``) into new clusters numbered after the existing ones; groups
    smaller than ``min_size`` stay unclustered. Existing cluster numbers never change; old unclustered faces
    may join a new cluster. Cost: O((new + old unclustered) k) searches, not a re-clustering."""
    old_emb = np.ascontiguousarray(old_emb, np.float32)
    new_emb = np.ascontiguousarray(new_emb, np.float32)
    old_labels = np.asarray(old_labels, np.int64).copy()
    if len(old_labels) != len(old_emb):
        raise DataError(f"{len(old_emb)} old embeddings but {len(old_labels)} old labels")
    if new_emb.ndim != 2 or (len(old_emb) and new_emb.shape[1] != old_emb.shape[1]):
        raise DataError(f"new embeddings of shape {new_emb.shape} do not match the old ones {old_emb.shape}")
    new_labels = np.full(len(new_emb), -1, np.int64)
    if len(new_emb) == 0:
        return old_labels, new_labels
    rows, cols, d2 = knn_graph(old_emb, threshold, k, index, queries=new_emb)
    clustered = old_labels[cols] >= 0
    if clustered.any():
        r, lab = rows[clustered], old_labels[cols[clustered]]
        weight = 1.0 - d2[clustered] / threshold
        key = r * (old_labels.max() + 1) + lab  # (new face, cluster) -> summed weight
        keys, inverse = np.unique(key, return_inverse=True)
        score = np.bincount(inverse, weights=weight)
        face, cluster = keys // (old_labels.max() + 1), keys % (old_labels.max() + 1)
        best = np.lexsort((-score, face))  # per face, highest score first
        face, cluster = face[best], cluster[best]
        first = np.ones(len(face), bool)
        first[1:] = face[1:] != face[:-1]
        new_labels[face[first]] = cluster[first]
    # the rest: new faces not placed, plus the old unclustered faces they reached
    rest = np.flatnonzero(new_labels < 0)
    if len(rest):
        reached = np.unique(cols[np.isin(rows, rest) & (old_labels[cols] < 0)])
        pool = np.vstack([new_emb[rest], old_emb[reached]])
        raw = _relabel(graph_clusters(pool, threshold, k, graph_algorithm, index, seed), min_size)
        offset = old_labels.max(initial=-1) + 1
        found = raw >= 0
        new_labels[rest[found[: len(rest)]]] = raw[: len(rest)][found[: len(rest)]] + offset
        joined = found[len(rest) :]
        old_labels[reached[joined]] = raw[len(rest) :][joined] + offset
    return old_labels, new_labels


def _agglomerative(emb: np.ndarray, threshold: float, linkage: str) -> np.ndarray:
    from scipy.cluster.hierarchy import fcluster
    from scipy.cluster.hierarchy import linkage as scipy_linkage
    from scipy.spatial.distance import pdist

    if linkage not in ("average", "complete", "single"):
        raise DataError(f"unknown linkage {linkage!r}; choose average, complete or single")
    tree = scipy_linkage(pdist(emb, "sqeuclidean"), method=linkage)
    return fcluster(tree, t=threshold, criterion="distance")


def chinese_whispers(emb: np.ndarray, threshold: float, seed: int = 0, max_iter: int = 100) -> np.ndarray:
    """Chinese whispers on the unweighted graph of pairs with squared distance below ``threshold``."""
    from sklearn.neighbors import radius_neighbors_graph

    graph = radius_neighbors_graph(emb, radius=math.sqrt(threshold), mode="connectivity", include_self=False)
    indptr, indices = graph.indptr, graph.indices
    labels = np.arange(len(emb))
    rng = np.random.default_rng(seed)
    for _ in range(max_iter):
        changed = False
        for node in rng.permutation(len(emb)):
            neighbours = indices[indptr[node] : indptr[node + 1]]
            if len(neighbours) == 0:
                continue
            values, counts = np.unique(labels[neighbours], return_counts=True)
            best = values[counts == counts.max()]
            new = labels[node] if labels[node] in best else best[rng.integers(len(best))]
            if new != labels[node]:
                labels[node], changed = new, True
        if not changed:
            break
    return labels


def _relabel(raw: np.ndarray, min_size: int) -> np.ndarray:
    """O(n log n): one ``unique`` and a lookup table (not one pass over the faces per cluster)."""
    raw = np.asarray(raw)
    out = np.full(len(raw), -1, np.int64)
    valid = raw >= 0
    values, inverse, counts = np.unique(raw[valid], return_inverse=True, return_counts=True)
    order = np.lexsort((values, -counts))  # largest first, ties by value
    order = order[counts[order] >= min_size]
    table = np.full(len(values), -1, np.int64)
    table[order] = np.arange(len(order))
    out[valid] = table[inverse]
    return out


def clustering_scores(pred: Sequence[int], true: Sequence) -> dict[str, float]:
    """Pairwise precision, recall and F-measure, BCubed precision, recall and F (Bagga & Baldwin 1998: per
    face, the share of its predicted cluster that is its person, and of its person that is in its cluster,
    averaged over faces), and NMI; each ``-1`` in ``pred`` counts as its own singleton."""
    from sklearn.metrics import normalized_mutual_info_score
    from sklearn.metrics.cluster import contingency_matrix

    pred = np.asarray(pred).copy()
    if len(pred) != len(true):
        raise DataError(f"{len(pred)} predicted labels but {len(true)} true labels")
    noise = pred < 0
    pred[noise] = pred.max(initial=0) + 1 + np.arange(noise.sum())
    table = contingency_matrix(true, pred, sparse=True)
    pairs = lambda n: (n * (n - 1) // 2).sum()  # noqa: E731
    same_both = pairs(table.data.astype(np.int64))
    same_pred = pairs(np.asarray(table.sum(axis=0)).ravel().astype(np.int64))
    same_true = pairs(np.asarray(table.sum(axis=1)).ravel().astype(np.int64))
    precision = same_both / same_pred if same_pred else 1.0
    recall = same_both / same_true if same_true else 1.0
    f = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    # BCubed: a cell of n faces (person, cluster) gives each of them n / |cluster| and n / |person|
    coo = table.tocoo()
    cells = coo.data.astype(np.float64)
    cluster_size = np.asarray(table.sum(axis=0)).ravel()[coo.col]
    person_size = np.asarray(table.sum(axis=1)).ravel()[coo.row]
    total = max(len(pred), 1)
    b_precision = float((cells**2 / cluster_size).sum() / total)
    b_recall = float((cells**2 / person_size).sum() / total)
    b_f = 2 * b_precision * b_recall / (b_precision + b_recall) if b_precision + b_recall else 0.0
    return {
        "precision": float(precision),
        "recall": float(recall),
        "f_measure": float(f),
        "bcubed_precision": b_precision,
        "bcubed_recall": b_recall,
        "bcubed_f": float(b_f),
        "nmi": float(normalized_mutual_info_score(true, pred)),
    }


def write_clusters(
    out_dir: str | os.PathLike,
    files: Sequence[str | os.PathLike],
    labels: Sequence[int],
    thumb: int = 96,
    columns: int = 8,
    crops: Sequence | None = None,
    sheets: bool = True,
) -> dict:
    """Write ``manifest.json`` (cluster -> files, ``unclustered`` for -1) and one contact sheet per group.

    Returns the manifest. Contact sheets are PNG grids (``cluster_<n>.png``, ``unclustered.png``) of
    the face crops that were clustered (``crops``, H,W,3 uint8, one per file) — not the whole photos,
    where the face used may be one of several — each captioned with its file name. Without ``crops``
    the photos themselves are shown. They show faces, so they are written owner-only like every face file.
    ``sheets=False`` writes the manifest only. O(n): one sort groups the faces.
    """
    if len(files) != len(labels) or (crops is not None and len(crops) != len(files)):
        raise DataError(
            f"{len(files)} files but {len(labels)} labels" + (f" and {len(crops)} crops" if crops is not None else "")
        )
    out_dir = Path(out_dir)
    labels = np.asarray(labels, np.int64).reshape(-1)
    groups: dict[str, np.ndarray] = {}
    if len(labels):  # one stable sort: each group's members in file order, clusters in label order, -1 last
        keys = np.where(labels < 0, labels.max(initial=0) + 1, labels)
        order = np.argsort(keys, kind="stable")
        _, starts = np.unique(keys[order], return_index=True)
        for start, end in zip(starts, np.append(starts[1:], len(order))):
            value = int(labels[order[start]])
            groups[UNCLUSTERED if value < 0 else str(value)] = order[start:end]
    names = {k: [str(files[i]) for i in members] for k, members in groups.items()}
    manifest = {
        "clusters": {k: v for k, v in names.items() if k != UNCLUSTERED},
        "unclustered": names.get(UNCLUSTERED, []),
    }
    for key, members in groups.items() if sheets else ():
        tiles = [crops[i] if crops is not None else files[i] for i in members]
        sheet = contact_sheet(tiles, thumb, columns, captions=[Path(files[i]).name for i in members])
        name = UNCLUSTERED if key == UNCLUSTERED else f"cluster_{key}"
        atomic_write(out_dir / f"{name}.png", lambda tmp, sheet=sheet: sheet.save(tmp, format="PNG"))
    text = json.dumps(manifest, indent=2)
    atomic_write(out_dir / "manifest.json", lambda tmp: tmp.write_text(text + "\n"))
    return manifest


CAPTION = 14  # pixels of file name under each tile


def contact_sheet(images: Sequence, thumb: int = 96, columns: int = 8, captions: Sequence[str] | None = None):
    """A Pillow grid of thumbnails of ``images`` (paths or H,W,3 uint8 arrays; unreadable files become grey
    tiles), each with its caption (a file name, shortened to fit) underneath when ``captions`` is given."""
    from PIL import Image, ImageDraw, ImageOps

    columns = max(1, min(columns, len(images)))
    rows = max(1, math.ceil(len(images) / columns))
    cell = thumb + (CAPTION if captions else 0)
    sheet = Image.new("RGB", (columns * thumb, rows * cell), "white")
    draw = ImageDraw.Draw(sheet)
    for i, image in enumerate(images):
        x, y = (i % columns) * thumb, (i // columns) * cell
        try:
            if isinstance(image, np.ndarray):
                tile = Image.fromarray(image).convert("RGB").resize((thumb, thumb), Image.BILINEAR)
            else:
                with Image.open(image) as img:
                    tile = ImageOps.fit(ImageOps.exif_transpose(img).convert("RGB"), (thumb, thumb))
        except (OSError, ValueError):
            tile = Image.new("RGB", (thumb, thumb), "grey")
        sheet.paste(tile, (x, y))
        if captions:
            text = captions[i]
            while len(text) > 1 and draw.textlength(text, font_size=10) > thumb - 2:
                text = text[:-2] + "…"
            draw.text((x + 1, y + thumb + 1), text, fill="black", font_size=10)
    return sheet
