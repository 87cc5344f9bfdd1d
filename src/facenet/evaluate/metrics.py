"""The LFW View 2 protocol: k-fold accuracy, VAL@FAR, ROC / AUC / EER.

A pair is predicted "same" when its distance is strictly below the threshold.

Threshold choice (documented because published numbers depend on it): instead of
Sandberg's fixed grid ``np.arange(0, 4, 0.001)``, every fold sweeps *all* distinct cut
points of its training distances (midpoints between consecutive sorted values, plus one
below and one above the range), so the best training accuracy is found exactly, whatever
the distance's scale (raw dlib descriptors, angular distance, ...). Among equally good
cuts the smallest threshold wins, as with ``np.argmax`` over an ascending grid.

VAL@FAR: on the training folds, FAR(t) = share of mismatched pairs with distance < t,
taken at each distinct mismatched distance and linearly interpolated to find the t where
FAR equals the target (Sandberg's ``calculate_val`` does the same on its grid); VAL and
FAR are then measured with that t on the held-out fold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from facenet.distances import squared_l2
from facenet.errors import DataError

DISTANCES = ("euclidean", "cosine")


def pair_distances(emb1: np.ndarray, emb2: np.ndarray, distance: str = "euclidean") -> np.ndarray:
    """Row-wise distance: squared L2 ("euclidean"), or the angle / pi in [0, 1] ("cosine", Sandberg's metric 1)."""
    emb1 = np.asarray(emb1, dtype=np.float64)
    emb2 = np.asarray(emb2, dtype=np.float64)
    if distance == "euclidean":
        return squared_l2(emb1, emb2)
    if distance == "cosine":
        norms = np.linalg.norm(emb1, axis=1) * np.linalg.norm(emb2, axis=1)
        cos = np.sum(emb1 * emb2, axis=1) / np.maximum(norms, 1e-12)
        return np.arccos(np.clip(cos, -1.0, 1.0)) / np.pi
    raise DataError(f"unknown distance {distance!r}; choose one of {', '.join(DISTANCES)}")


def _cuts(distances: np.ndarray, same: np.ndarray):
    """Sorted cut points and, for each, the matched/mismatched counts strictly below it."""
    order = np.argsort(distances, kind="stable")
    d, s = distances[order], same[order]
    tp = np.concatenate([[0], np.cumsum(s)])
    fp = np.concatenate([[0], np.cumsum(~s)])
    # a cut after position k-1 is real only where the next value differs (ties stay together)
    keep = np.concatenate([[True], d[1:] > d[:-1], [True]])
    below = np.concatenate([[d[0] - 1.0], d])
    above = np.concatenate([d, [d[-1] + 1.0]])
    thresholds = (below + above) / 2  # midpoints; 0.5 beyond either end
    return thresholds[keep], tp[keep], fp[keep]


def best_threshold(distances: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """(threshold, accuracy) maximising accuracy of ``distance < threshold`` on these pairs."""
    distances, same = np.asarray(distances, dtype=np.float64), np.asarray(same, dtype=bool)
    thresholds, tp, fp = _cuts(distances, same)
    accuracy = (tp + (np.count_nonzero(~same) - fp)) / len(same)
    k = int(np.argmax(accuracy))
    return float(thresholds[k]), float(accuracy[k])


def threshold_at_far(distances: np.ndarray, same: np.ndarray, far_target: float) -> float:
    """The threshold whose false-accept rate on these pairs is ``far_target`` (linear interpolation)."""
    neg = np.sort(np.asarray(distances, dtype=np.float64)[~np.asarray(same, dtype=bool)])
    if not len(neg):
        raise DataError("VAL@FAR needs mismatched pairs in the training folds")
    values = np.unique(neg)
    far = np.searchsorted(neg, values, side="left") / len(neg)  # share strictly below each value
    return float(np.interp(far_target, far, values))


def rates(distances: np.ndarray, same: np.ndarray, threshold: float) -> tuple[float, float]:
    """(VAL, FAR) = true-accept and false-accept rates of ``distance < threshold``."""
    accept = np.asarray(distances) < threshold
    same = np.asarray(same, dtype=bool)
    val = np.count_nonzero(accept & same) / max(np.count_nonzero(same), 1)
    far = np.count_nonzero(accept & ~same) / max(np.count_nonzero(~same), 1)
    return float(val), float(far)


@dataclass
class Roc:
    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray
    auc: float
    eer: float


def roc(distances: np.ndarray, same: np.ndarray) -> Roc:
    """ROC of ``distance < t`` over all cut points; AUC by trapezoids; EER where FAR = 1 - TAR."""
    distances, same = np.asarray(distances, dtype=np.float64), np.asarray(same, dtype=bool)
    n_pos, n_neg = np.count_nonzero(same), np.count_nonzero(~same)
    if not n_pos or not n_neg:
        raise DataError("a ROC needs both matched and mismatched pairs")
    thresholds, tp, fp = _cuts(distances, same)
    tpr, fpr = tp / n_pos, fp / n_neg
    auc = float(np.trapezoid(tpr, fpr))
    # along the curve fpr + tpr - 1 strictly increases, and is linear on each segment, so this is exact
    eer = float(np.interp(0.0, fpr + tpr - 1.0, fpr))
    return Roc(fpr, tpr, thresholds, auc, eer)


@dataclass
class FoldMetrics:
    accuracy: np.ndarray  # per held-out fold
    thresholds: np.ndarray  # best-accuracy threshold fitted on the other folds
    val: np.ndarray  # per fold, at the threshold interpolated to far_target on the other folds
    far: np.ndarray
    far_target: float
    distances: np.ndarray  # every pair's distance as measured for its held-out fold
    roc: Roc


def kfold_metrics(
    emb1: np.ndarray,
    emb2: np.ndarray,
    same: np.ndarray,
    folds: np.ndarray,
    distance: str = "euclidean",
    subtract_mean: bool = False,
    far_target: float = 1e-3,
) -> FoldMetrics:
    """Leave-one-fold-out evaluation of embedding pairs (rows of ``emb1`` / ``emb2``).

    ``subtract_mean`` centres embeddings on the training folds' mean before measuring
    (Sandberg's option; it changes cosine distances only, squared L2 is shift-invariant).
    """
    emb1, emb2 = np.asarray(emb1, dtype=np.float64), np.asarray(emb2, dtype=np.float64)
    same, folds = np.asarray(same, dtype=bool), np.asarray(folds)
    fold_ids = np.unique(folds)
    if len(fold_ids) < 2:
        raise DataError(
            "the k-fold protocol needs at least 2 folds (a threshold is fitted on the others); "
            "re-split the pairs, e.g. with --folds 10"
        )
    fixed = None if subtract_mean else pair_distances(emb1, emb2, distance)
    out = {k: np.empty(len(fold_ids)) for k in ("accuracy", "thresholds", "val", "far")}
    stitched = np.empty(len(same))
    for i, fold in enumerate(fold_ids):
        test = folds == fold
        train = ~test
        if subtract_mean:
            mean = np.concatenate([emb1[train], emb2[train]]).mean(axis=0)
            dist = pair_distances(emb1 - mean, emb2 - mean, distance)
        else:
            dist = fixed
        threshold, _ = best_threshold(dist[train], same[train])
        out["thresholds"][i] = threshold
        out["accuracy"][i] = np.mean((dist[test] < threshold) == same[test])
        out["val"][i], out["far"][i] = rates(
            dist[test], same[test], threshold_at_far(dist[train], same[train], far_target)
        )
        stitched[test] = dist[test]
    return FoldMetrics(far_target=far_target, distances=stitched, roc=roc(stitched, same), **out)
