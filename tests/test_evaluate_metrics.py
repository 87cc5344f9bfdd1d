import numpy as np
import pytest
from scipy.interpolate import interp1d
from scipy.optimize import brentq
from sklearn.metrics import roc_auc_score, roc_curve

from facenet.errors import DataError
from facenet.evaluate.metrics import best_threshold, kfold_metrics, pair_distances, rates, roc, threshold_at_far


def _random_pairs(n=400, seed=0):
    rng = np.random.default_rng(seed)
    same = rng.random(n) < 0.5
    d = np.where(same, rng.normal(0.8, 0.3, n), rng.normal(1.4, 0.3, n))
    return np.round(d, 2), same  # rounding creates ties, which both sides must handle


def test_roc_matches_sklearn_points_and_auc():
    d, same = _random_pairs()
    r = roc(d, same)
    fpr, tpr, _ = roc_curve(same, -d, drop_intermediate=False)
    np.testing.assert_allclose(r.fpr, fpr)
    np.testing.assert_allclose(r.tpr, tpr)
    assert r.auc == pytest.approx(roc_auc_score(same, -d), abs=1e-12)


def test_eer_matches_root_of_interpolated_roc():
    d, same = _random_pairs(seed=1)
    fpr, tpr, _ = roc_curve(same, -d, drop_intermediate=False)
    expected = brentq(lambda x: 1.0 - x - interp1d(fpr, tpr)(x), 0.0, 1.0)  # Sandberg's definition
    assert roc(d, same).eer == pytest.approx(expected, abs=1e-9)


def test_best_threshold_matches_brute_force_sweep():
    d, same = _random_pairs(seed=2)
    threshold, accuracy = best_threshold(d, same)
    grid = np.concatenate([np.unique(d) + 1e-9, [d.min() - 1]])
    brute = max(np.mean((d < t) == same) for t in grid)
    assert accuracy == pytest.approx(brute)
    assert np.mean((d < threshold) == same) == pytest.approx(accuracy)


def test_threshold_at_far_interpolates_between_mismatched_distances():
    neg = np.arange(1, 11) / 10.0  # 0.1 .. 1.0: FAR is k/10 at the (k+1)-th value
    d = np.concatenate([neg, [0.05, 0.15]])
    same = np.array([False] * 10 + [True, True])
    assert threshold_at_far(d, same, 0.25) == pytest.approx(0.35)
    assert threshold_at_far(d, same, 0.0) == pytest.approx(0.1)
    assert rates(d, same, 0.35) == (1.0, 0.3)


def test_kfold_by_hand():
    # fold 0: same 0.10 0.20 0.35, different 0.25 0.50 0.60
    # fold 1: same 0.10 0.20 0.70, different 0.40 0.50 0.60
    d = np.array([0.10, 0.20, 0.35, 0.25, 0.50, 0.60, 0.10, 0.20, 0.70, 0.40, 0.50, 0.60])
    same = np.array([1, 1, 1, 0, 0, 0] * 2, dtype=bool)
    folds = np.repeat([0, 1], 6)
    emb1, emb2 = np.zeros((12, 2)), np.stack([np.sqrt(d), np.zeros(12)], axis=1)  # squared L2 = d
    m = kfold_metrics(emb1, emb2, same, folds)
    # fold 0 is tested with the threshold fitted on fold 1: cut between 0.2 and 0.4 -> 0.3, 4/6 right
    # fold 1 with fold 0's: 0.225 and 0.425 both give 5/6; the smaller wins -> 5/6 right
    np.testing.assert_allclose(m.thresholds, [0.3, 0.225])
    np.testing.assert_allclose(m.accuracy, [4 / 6, 5 / 6])
    np.testing.assert_allclose(m.distances, d)
    # VAL@FAR=1e-3: threshold just above the smallest training mismatch (0.40 + 0.001 * 0.1 / (1/3) ; 0.25 + ...)
    t0 = 0.40 + 3e-3 * 0.10
    t1 = 0.25 + 3e-3 * 0.25
    np.testing.assert_allclose(m.val, [np.mean(d[:3] < t0), np.mean(d[6:9] < t1)])
    np.testing.assert_allclose(m.far, [np.mean(d[3:6] < t0), np.mean(d[9:12] < t1)])


def test_subtract_mean_changes_cosine_but_not_euclidean():
    rng = np.random.default_rng(3)
    e1, e2 = rng.normal(1.0, 1.0, (20, 4)), rng.normal(1.0, 1.0, (20, 4))
    same, folds = np.arange(20) % 2 == 0, np.arange(20) // 10
    plain = kfold_metrics(e1, e2, same, folds)
    centred = kfold_metrics(e1, e2, same, folds, subtract_mean=True)
    np.testing.assert_allclose(plain.distances, centred.distances)
    cos = kfold_metrics(e1, e2, same, folds, distance="cosine", subtract_mean=True)
    mean0 = np.concatenate([e1[10:], e2[10:]]).mean(axis=0)  # fold 0 is centred on fold 1's mean
    a, b = e1[:10] - mean0, e2[:10] - mean0
    expected = np.arccos(np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)) / np.pi
    np.testing.assert_allclose(cos.distances[:10], expected)


def test_pair_distances():
    a = np.array([[1.0, 0.0], [1.0, 0.0]])
    b = np.array([[0.0, 1.0], [-2.0, 0.0]])
    np.testing.assert_allclose(pair_distances(a, b), [2.0, 9.0])
    np.testing.assert_allclose(pair_distances(a, b, "cosine"), [0.5, 1.0])
    with pytest.raises(DataError):
        pair_distances(a, b, "manhattan")


def test_single_fold_is_refused():
    with pytest.raises(DataError, match="--folds"):
        kfold_metrics(np.zeros((4, 2)), np.ones((4, 2)), np.array([1, 0, 1, 0], bool), np.zeros(4))


def test_plots_write_pngs(tmp_path):
    from PIL import Image

    from facenet.evaluate.plots import plot_distance_histogram, plot_roc

    d, same = _random_pairs(seed=4)
    r = roc(d, same)
    plot_roc({"a": (r.fpr, r.tpr), "b": (r.fpr, np.sqrt(r.tpr))}, tmp_path / "roc.png")
    plot_distance_histogram(d, same, 1.1, tmp_path / "sub" / "hist.png")
    for name in ("roc.png", "sub/hist.png"):
        with Image.open(tmp_path / name) as im:
            assert im.format == "PNG" and im.size[0] > 100
