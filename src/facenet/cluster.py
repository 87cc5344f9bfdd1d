"""Grouping faces by identity from their embeddings, and scoring a grouping against the truth.

All thresholds are squared L2 (the project's unit): two faces closer than ``threshold`` are
"the same person" as far as the method is concerned.

* ``agglomerative``: SciPy hierarchical clustering (``average`` linkage by default, or
  ``complete``) on squared-L2 distances, cut at ``threshold`` — the paper's clustering.
* ``dbscan``: scikit-learn DBSCAN with ``eps = sqrt(threshold)`` (same neighbourhoods).
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

METHODS = ("agglomerative", "dbscan", "chinese_whispers")
UNCLUSTERED = "unclustered"


def cluster_embeddings(
    emb: np.ndarray,
    method: str = "agglomerative",
    threshold: float = DEFAULT_THRESHOLD,
    linkage: str = "average",
    min_size: int = 2,
    seed: int = 0,
) -> np.ndarray:
    """Cluster label per row (int64), ``-1`` for faces in no cluster of at least ``min_size``.

    ``threshold``: squared L2; pass the model's (``embedder.threshold``), the default is an uncalibrated one."""
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
    out = np.full(len(raw), -1, np.int64)
    values, counts = np.unique(raw[raw >= 0], return_counts=True)
    kept = sorted((-c, v) for v, c in zip(values, counts) if c >= min_size)  # largest first, ties by value
    for new, (_, value) in enumerate(kept):
        out[raw == value] = new
    return out


def clustering_scores(pred: Sequence[int], true: Sequence) -> dict[str, float]:
    """Pairwise precision, recall and F-measure, and NMI; each ``-1`` in ``pred`` counts as its own singleton."""
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
    return {
        "precision": float(precision),
        "recall": float(recall),
        "f_measure": float(f),
        "nmi": float(normalized_mutual_info_score(true, pred)),
    }


def write_clusters(
    out_dir: str | os.PathLike,
    files: Sequence[str | os.PathLike],
    labels: Sequence[int],
    thumb: int = 96,
    columns: int = 8,
    crops: Sequence | None = None,
) -> dict:
    """Write ``manifest.json`` (cluster -> files, ``unclustered`` for -1) and one contact sheet per group.

    Returns the manifest. Contact sheets are PNG grids (``cluster_<n>.png``, ``unclustered.png``) of
    the face crops that were clustered (``crops``, H,W,3 uint8, one per file) — not the whole photos,
    where the face used may be one of several — each captioned with its file name. Without ``crops``
    the photos themselves are shown. They show faces, so they are written owner-only like every face file.
    """
    if len(files) != len(labels) or (crops is not None and len(crops) != len(files)):
        raise DataError(
            f"{len(files)} files but {len(labels)} labels" + (f" and {len(crops)} crops" if crops is not None else "")
        )
    out_dir = Path(out_dir)
    groups: dict[str, list[int]] = {}
    for label in sorted(set(int(x) for x in labels), key=lambda x: (x < 0, x)):
        key = UNCLUSTERED if label < 0 else str(label)
        groups[key] = [i for i, lab in enumerate(labels) if int(lab) == label]
    names = {k: [str(files[i]) for i in members] for k, members in groups.items()}
    manifest = {
        "clusters": {k: v for k, v in names.items() if k != UNCLUSTERED},
        "unclustered": names.get(UNCLUSTERED, []),
    }
    for key, members in groups.items():
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
