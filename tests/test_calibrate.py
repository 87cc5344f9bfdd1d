"""FAR calibration against a brute-force count, the impostor tail model against known quantiles, and the
open-set threshold and promise they give a gallery."""

import itertools

import numpy as np
import pytest
from scipy.stats import norm

from facenet.errors import DataError
from facenet.evaluate import calibrate as cal
from facenet.evaluate.calibrate import calibrate, fit_tail, openset_promise, openset_threshold
from facenet.models.modelfile import ModelInfo


def _unit(rng, n, d=8):
    emb = rng.normal(size=(n, d)).astype(np.float32)
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def _brute_force(emb, labels, groups=None):
    groups = np.zeros(len(labels)) if groups is None else groups
    impostor, genuine = [], {}  # genuine: (group, person) -> distances
    for i, j in itertools.combinations(range(len(emb)), 2):
        if groups[i] != groups[j]:
            continue
        d = float(np.sum((emb[i] - emb[j]) ** 2))
        if labels[i] == labels[j]:
            genuine.setdefault((groups[i], labels[i]), []).append(d)
        else:
            impostor.append(d)
    return np.array(impostor), genuine


@pytest.mark.parametrize("grouped", [False, True])
def test_measured_entries_match_a_brute_force_count(monkeypatch, grouped):
    monkeypatch.setattr(cal, "BLOCK", 64)  # several tiles, diagonal and not
    rng = np.random.default_rng(0)
    emb, labels = _unit(rng, 300), rng.integers(0, 40, 300)
    groups = rng.integers(0, 2, 300) if grouped else None  # pairs only within a group
    impostor, genuine = _brute_force(emb, labels, groups)
    result = calibrate(emb, labels, groups, fars=(1e-1, 1e-2, 1e-3, 1e-7), drop_mislabelled=False)
    details = result.details
    assert details["impostor_pairs"] == len(impostor)
    assert details["genuine_pairs"] == sum(len(d) for d in genuine.values())
    for key, threshold in result.thresholds.items():
        entry = details["entries"][key]
        if entry["kind"] == "measured":
            assert np.count_nonzero(impostor < threshold) == int(float(key) * len(impostor)) == entry["pairs_below"]
        per_person = [np.mean(np.array(d) < threshold) for d in genuine.values()]  # each person once
        assert entry["tar"] == pytest.approx(np.mean(per_person), abs=1e-4)
    assert details["entries"]["1e-01"]["kind"] == "measured"
    assert "1e-07" not in result.thresholds  # far beyond the smallest measured rate / EXTRAPOLATION: left out
    with pytest.raises(DataError, match="two different people"):
        calibrate(emb[:5], np.zeros(5))


def test_pairs_across_two_sets_match_a_brute_force_count(monkeypatch):
    """Masked against clean (issue 24): every (masked i, clean j) pair with i != j, counted each way round."""
    monkeypatch.setattr(cal, "BLOCK", 64)  # several tiles, diagonal and not
    rng = np.random.default_rng(1)
    clean, labels, groups = _unit(rng, 260), rng.integers(0, 30, 260), rng.integers(0, 2, 260)
    masked = _unit(rng, 260)
    impostor, genuine = [], {}
    for i, j in itertools.product(range(260), repeat=2):
        if i == j or groups[i] != groups[j]:
            continue
        d = float(np.sum((masked[i] - clean[j]) ** 2))
        if labels[i] == labels[j]:
            genuine.setdefault((groups[i], labels[i]), []).append(d)
        else:
            impostor.append(d)
    impostor = np.array(impostor)
    result = calibrate(masked, labels, groups, fars=(1e-1, 1e-2), drop_mislabelled=False, against=clean)
    assert result.details["impostor_pairs"] == len(impostor)
    assert result.details["genuine_pairs"] == sum(len(d) for d in genuine.values())
    for key, threshold in result.thresholds.items():
        assert np.count_nonzero(impostor < threshold) == int(float(key) * len(impostor))
        per_person = [np.mean(np.array(d) < threshold) for d in genuine.values()]
        assert result.details["entries"][key]["tar"] == pytest.approx(np.mean(per_person), abs=1e-4)
    with pytest.raises(DataError, match="shape"):
        calibrate(masked, labels, against=clean[:10])


def test_the_tail_model_recovers_known_quantiles_of_a_normal_distribution():
    """Distances from N(1.9, 0.2) (the shape of impostor distances): 10M draws measure down to 1e-5 (100 pairs);
    the model, fitted to the smallest 1,000, extrapolates two decades further to within 2x of the true rate."""
    rng = np.random.default_rng(1)
    n, truth = 10_000_000, norm(1.9, 0.2)
    smallest = np.sort(np.partition(truth.rvs(n, random_state=rng), 2000)[:2001])
    tail = fit_tail(smallest, n, bootstrap=30)
    assert tail.count == 1000
    for far in (1e-5, 1e-6, 1e-7):
        assert 1 / 2 < truth.cdf(tail.threshold(far)) / far < 2
        lo, hi = tail.interval(far)
        assert lo < truth.ppf(far) < hi
        assert tail.far(tail.threshold(far)) == pytest.approx(far, rel=1e-6)


def test_extrapolated_entries_say_so_and_stay_ordered():
    rng = np.random.default_rng(2)
    emb, labels = _unit(rng, 3000, d=16), np.arange(3000)  # 4.5M pairs: measured to ~2e-5
    result = calibrate(emb, labels, on="synthetic")  # one face each: nobody can be flagged as mislabelled
    kinds = {k: e["kind"] for k, e in result.details["entries"].items()}
    assert kinds["1e-04"] == "measured" and kinds["1e-06"] == "extrapolated" and "1e-08" not in kinds
    lo, hi = result.details["entries"]["1e-06"]["interval"]
    assert lo <= result.thresholds["1e-06"] <= hi
    values = [result.thresholds[k] for k in sorted(result.thresholds, key=float)]
    assert values == sorted(values)
    assert result.details["on"] == "synthetic" and result.details["tail"]["fitted_pairs"] >= cal.MIN_TAIL


def test_a_face_filed_under_the_wrong_name_is_left_out():
    """Ten people of 20 faces around their own centres; one face of person 0 filed under person 1. Only it is
    flagged, and without it the closest "impostor" pair is no longer a same-person pair."""
    rng = np.random.default_rng(3)
    centres = _unit(rng, 10, d=32)
    emb = centres.repeat(20, axis=0) + 0.15 * rng.normal(size=(200, 32)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    labels = np.arange(200) // 20
    labels[5] = 1  # a face of person 0 under person 1's name
    flagged = cal.probably_mislabelled(emb, labels)
    assert np.flatnonzero(flagged).tolist() == [5]
    kept = calibrate(emb, labels, fars=(1e-2,), bootstrap=0)
    assert kept.details["dropped_as_mislabelled"] == 1
    impostor, _ = _brute_force(emb[~flagged], labels[~flagged])
    assert kept.details["impostor_pairs"] == len(impostor)
    assert calibrate(emb, labels, fars=(1e-2,), drop_mislabelled=False, bootstrap=0).details["impostor_pairs"] > len(
        impostor
    )
    shuffled = rng.permutation(labels)  # a model that cannot tell these people apart: half the faces flagged
    weak = calibrate(emb, shuffled, fars=(1e-2,), bootstrap=0).details
    assert weak["flagged_as_mislabelled"] > 0.02 * 200 and weak["dropped_as_mislabelled"] == 0


def test_openset_threshold_divides_the_far_among_the_comparisons():
    table = {"1e-02": 0.30, "1e-03": 0.20, "1e-04": 0.10}
    assert openset_threshold(table, 1e-2, 1) == (0.30, True)
    assert openset_threshold(table, 1e-2, 10) == (pytest.approx(0.20), True)  # 1e-3 per comparison
    threshold, exact = openset_threshold(table, 1e-3, 3)
    assert exact and threshold == pytest.approx(0.20 - 0.10 * np.log10(3))  # log-linear between 1e-3 and 1e-4
    assert openset_threshold(table, 1e-3, 1000) == (0.10, False)  # beyond the calibration: the strictest
    with pytest.raises(DataError, match="no FAR calibration"):
        openset_threshold({}, 1e-3, 5)


def test_the_promise_says_what_a_gallery_of_its_size_gets():
    table = {f"1e-0{i}": 1.5 - 0.1 * i for i in range(2, 9)}
    entries = {
        k: {"kind": "measured", "tar": 0.99 - 0.02 * i} for i, k in enumerate(sorted(table, key=float, reverse=True))
    }
    info = ModelInfo(arch="x", embedding_size=8, far_thresholds=table, far_calibration={"entries": entries})
    small, large = openset_promise(info, 1e-2, 1_000), openset_promise(info, 1e-2, 1_000_000)
    assert small.met and large.met and large.threshold < small.threshold  # 1e-5 vs 1e-8 per comparison
    assert small.expected_far == 1e-2 and large.expected_tar < small.expected_tar
    beyond = openset_promise(info, 1e-3, 1_000_000)  # 1e-9 per comparison
    assert not beyond.met and beyond.threshold == table["1e-08"]
    assert beyond.expected_far == pytest.approx(1 - (1 - 1e-8) ** 1_000_000)
    assert "beyond this model's calibration" in beyond.note and beyond.as_dict()["note"] == beyond.note
    assert openset_promise(ModelInfo(arch="x", embedding_size=8), 1e-2, 10).calibrated is False


def test_the_python_api_answers_carry_the_promise(model_file, tmp_path):
    """``facenet.identify``: each face's answer says what the gallery's size gets (``Identified.open_set``)."""
    import dataclasses

    import facenet
    from facenet.data.synthetic import SyntheticFaces
    from facenet.embedder import FaceEmbedder
    from facenet.models.modelfile import load_model_file

    model, info = load_model_file(model_file)
    info = dataclasses.replace(info, far_thresholds={"1e-02": 0.5, "1e-03": 0.3})
    embedder = FaceEmbedder(model, info, detector=None)
    faces = SyntheticFaces(3, seed=1, size=48)
    gallery = tmp_path / "g.db"
    facenet.enroll("a", [faces.render(0, 0)], gallery=gallery, model=embedder, policy="nearest")
    (answer,) = facenet.identify(faces.render(0, 0), gallery=gallery, model=embedder)
    assert answer.known and answer.open_set.met and answer.open_set.comparisons == 1
    assert answer.open_set.threshold == 0.5 and answer.open_set.expected_far == 1e-2
    (answer,) = facenet.identify(faces.render(0, 0), gallery=gallery, model=embedder, far=1e-4)  # 1e-4 < 1e-3
    assert not answer.open_set.met and "beyond this model's calibration" in answer.open_set.note
