"""Thresholds at fixed false-accept rates, and the open-set threshold they give for a gallery.

Verification's threshold maximises accuracy on balanced pairs; it is the wrong one for open-set
identification, where a stranger is compared with every enrolled person and is falsely accepted
if *any* of them is close enough: with N people the false-accept rate grows about N-fold. So a
model file also stores thresholds at fixed per-comparison false-accept rates (FAR), measured on
every pair of *different* identities among held-out faces (not only a few thousand protocol
pairs: FAR 1e-4 needs millions of pairs to be measured at all). For a gallery of N people and a
wanted FAR per stranger query, ``openset_threshold`` takes the per-comparison FAR / N
(union bound) and interpolates the stored table in log FAR.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from facenet.distances import squared_l2
from facenet.errors import DataError

CALIBRATED_FARS = (1e-2, 1e-3, 1e-4, 1e-5)
log = logging.getLogger(__name__)
DEFAULT_OPENSET_FAR = 1e-2  # chance that a stranger is taken for someone enrolled (LFW: RESULTS.md)
MAX_IMAGES = 8000  # 32M different-identity pairs at most: about 130 MB of distances


def far_key(far: float) -> str:
    return f"{far:.0e}"


def far_thresholds(embeddings: np.ndarray, labels: np.ndarray, fars=CALIBRATED_FARS, seed: int = 0) -> dict[str, float]:
    """Squared-L2 thresholds t with FAR(t) = share of different-identity pairs closer than t, per FAR.

    Uses every pair of images with different labels (a seeded sample of ``MAX_IMAGES`` images when
    there are more). A FAR smaller than one pair in the set is left out rather than guessed.
    """
    embeddings = np.asarray(embeddings, dtype=np.float32)
    labels = np.asarray(labels)
    if len(embeddings) > MAX_IMAGES:
        keep = np.sort(np.random.default_rng(seed).choice(len(embeddings), MAX_IMAGES, replace=False))
        embeddings, labels = embeddings[keep], labels[keep]
    negatives = _different_identity_distances(embeddings, labels)
    if len(negatives) == 0:
        raise DataError("FAR calibration needs faces of at least two different people")
    result = {}
    for far in fars:
        rank = far * len(negatives)
        if rank < 1:
            continue
        # the threshold below which a fraction `far` of the negatives falls: midpoint of two order statistics
        k = int(math.floor(rank))
        part = np.partition(negatives, (k - 1, k))
        result[far_key(far)] = float((part[k - 1] + part[k]) / 2)
    return result


def _different_identity_distances(embeddings: np.ndarray, labels: np.ndarray, chunk: int = 1024) -> np.ndarray:
    _, codes = np.unique(labels, return_inverse=True)
    embeddings = embeddings.astype(np.float64)
    parts = []
    for start in range(0, len(embeddings), chunk):
        rows = slice(start, start + chunk)
        d = squared_l2(embeddings[rows], embeddings[start:], pairwise=True)
        upper = np.triu(np.ones(d.shape, dtype=bool), k=1)  # each pair once, never an image with itself
        different = codes[rows, None] != codes[None, start:]
        parts.append(d[upper & different].astype(np.float32))
    return np.concatenate(parts)


def openset_threshold(table: dict[str, float], far: float, people: int) -> tuple[float, bool]:
    """The threshold for a gallery of ``people`` so a stranger is falsely accepted with probability ~``far``.

    Returns (threshold, exact): ``exact`` is False when the per-comparison FAR needed lies below the
    smallest calibrated one, so the strictest stored threshold is used and the real rate is higher.
    """
    if not table:
        raise DataError(
            "this model has no FAR calibration; run `facenet evaluate --write-thresholds` on "
            "labelled faces, or pass a threshold"
        )
    if not 0 < far < 1:
        raise DataError(f"FAR must be between 0 and 1, got {far}")
    points = sorted((float(k), v) for k, v in table.items())
    logs = np.log10([f for f, _ in points])
    values = np.array([t for _, t in points])
    wanted = math.log10(far / max(people, 1))
    if wanted < logs[0]:
        return float(values[0]), False
    return float(np.interp(wanted, logs, values)), True


def identification_threshold(embedder, people: int, far: float = DEFAULT_OPENSET_FAR) -> float:
    """The open-set threshold of ``embedder`` for a gallery of ``people``: a stranger is accepted with
    probability about ``far``. With several photos per person, pass what a stranger is compared with
    under the gallery's policy (``Gallery.comparisons``: its faces, or its people). Embedders without a FAR
    calibration (``info.far_thresholds``) fall back to their verification threshold, with a warning: it accepts
    strangers far more often."""
    info = getattr(embedder, "info", None)
    if info is None or not info.far_thresholds:
        log.warning(
            "model %s has no FAR calibration: identification uses the verification threshold, which "
            "accepts a stranger about as often as the number of people enrolled times its pair FAR; "
            "calibrate with `facenet evaluate --write-thresholds`",
            embedder.name,
        )
        return float(embedder.threshold)
    threshold, exact = openset_threshold(info.far_thresholds, far, people)
    if not exact:
        log.warning(
            "a stranger FAR of %g with %d people needs a per-pair FAR below the model's calibration; "
            "using its strictest threshold %.4f",
            far,
            people,
            threshold,
        )
    return threshold
