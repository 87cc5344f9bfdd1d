"""FAR thresholds against a brute-force count, and the open-set threshold they give a gallery."""

import itertools

import numpy as np
import pytest

from facenet.errors import DataError
from facenet.evaluate.calibrate import far_thresholds, openset_threshold


def test_far_thresholds_match_a_brute_force_count():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(300, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    labels = rng.integers(0, 40, 300)
    negatives = np.array(
        [np.sum((emb[i] - emb[j]) ** 2) for i, j in itertools.combinations(range(300), 2) if labels[i] != labels[j]]
    )
    table = far_thresholds(emb, labels, fars=(1e-1, 1e-2, 1e-3, 1e-6))
    assert set(table) == {"1e-01", "1e-02", "1e-03"}  # 1e-6 of ~44k pairs is not measurable: left out
    for key, threshold in table.items():
        assert np.count_nonzero(negatives < threshold) == int(float(key) * len(negatives))
    with pytest.raises(DataError, match="two different people"):
        far_thresholds(emb[:5], np.zeros(5))


def test_openset_threshold_divides_the_far_among_the_people():
    table = {"1e-02": 0.30, "1e-03": 0.20, "1e-04": 0.10}
    assert openset_threshold(table, 1e-2, 1) == (0.30, True)
    assert openset_threshold(table, 1e-2, 10) == (pytest.approx(0.20), True)  # 1e-3 per comparison
    threshold, exact = openset_threshold(table, 1e-3, 3)
    assert exact and threshold == pytest.approx(0.20 - 0.10 * np.log10(3))  # log-linear between 1e-3 and 1e-4
    assert openset_threshold(table, 1e-3, 1000) == (0.10, False)  # beyond the calibration: the strictest
    with pytest.raises(DataError, match="no FAR calibration"):
        openset_threshold({}, 1e-3, 5)
