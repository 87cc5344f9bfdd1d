"""The project's one distance between embeddings: squared L2 ([0, 4] for unit vectors), in NumPy.

Thresholds, galleries, clustering, evaluation and the service all compare it, so it is computed in
one place (training's torch version is ``facenet.losses.miners.pairwise_sq_dists``), beside the one
default threshold.
"""

from __future__ import annotations

import numpy as np

DEFAULT_THRESHOLD = 1.1  # squared L2 of a model not yet calibrated; evaluation replaces it with a measured one


def squared_l2(a, b, pairwise: bool = False) -> np.ndarray:
    """Squared L2 distances, in the inputs' precision (at least float32).

    By default row by row: ``a[i]`` with ``b[i]``, or one row with each of many (NumPy broadcasting
    over the last axis). ``pairwise``: the (len(a), len(b)) matrix of every row of ``a`` with every row
    of ``b``, as |a|^2 + |b|^2 - 2ab so no (len(a), len(b), d) array is made; rounding below 0 is cut.
    """
    a, b = np.asarray(a), np.asarray(b)
    dtype = np.result_type(a, b, np.float32)
    a, b = a.astype(dtype, copy=False), b.astype(dtype, copy=False)
    if not pairwise:
        return np.sum((a - b) ** 2, axis=-1)
    d = np.sum(a * a, axis=1)[:, None] + np.sum(b * b, axis=1)[None, :] - 2 * (a @ b.T)
    return np.maximum(d, 0)
