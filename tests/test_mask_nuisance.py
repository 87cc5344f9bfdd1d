"""benchmarks/mask_nuisance.py: the whitening against the mask's directions (issue 24, tried)."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import mask_nuisance  # noqa: E402


def test_whitening_turns_the_floored_covariance_into_the_identity():
    rng = np.random.default_rng(0)
    diffs = rng.normal(size=(500, 6)) * [5.0, 1.0, 1.0, 0.5, 0.1, 0.1]
    covariance = np.cov(diffs.T)
    floor = 0.1
    w = mask_nuisance.whitening(covariance, floor)
    floored = covariance + floor * np.linalg.eigvalsh(covariance).max() * np.eye(6)
    np.testing.assert_allclose(w @ floored @ w, np.eye(6), atol=1e-9)
    # the direction the nuisance moves along most shrinks the most
    top = np.linalg.eigh(covariance)[1][:, -1]
    low = np.linalg.eigh(covariance)[1][:, 0]
    assert np.linalg.norm(w @ top) < np.linalg.norm(w @ low)


def test_mapped_embeddings_are_unit_and_none_keeps_them():
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(20, 6))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    assert mask_nuisance.mapped(emb, None) is emb
    out = mask_nuisance.mapped(emb, mask_nuisance.whitening(np.cov(rng.normal(size=(50, 6)).T), 0.1))
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-9)


def test_masked_openset_split_enrols_the_first_photos_of_people_with_more_than_five():
    import masked_openset

    paths = [
        Path(f"/lfw/{name}/{name}_{i:04d}.jpg") for name, n in (("Ann", 7), ("Bob", 5), ("Cy", 6)) for i in range(n)
    ]
    known, enrol, owners, probes, truth, strangers = masked_openset.split(paths)
    assert list(known) == ["Ann", "Cy"]
    assert enrol == [0, 1, 2, 3, 4, 12, 13, 14, 15, 16] and list(owners) == [0] * 5 + [1] * 5
    assert probes == [5, 6, 17] and list(truth) == [0, 0, 1]
    assert list(strangers) == [7, 8, 9, 10, 11]


def test_identify_counts_a_photo_without_a_face_as_neither_named_nor_accepted():
    import masked_openset

    rng = np.random.default_rng(2)
    faces = rng.normal(size=(6, 4))
    owners = np.array([0, 0, 1, 1, 2, 2])
    emb = np.vstack([faces[[0, 3, 5]] + 0.01, rng.normal(size=(2, 4))])  # 3 known probes, then 2 strangers
    found = np.array([True, False, True, True, False])
    truth = np.array([0, 1, 2])
    right, known, strangers = masked_openset.identify(emb, found, 3, faces, owners, truth, "nearest")
    assert list(right) == [True, False, True]
    assert np.isinf(known[1]) and np.isinf(strangers[1]) and np.isfinite(known[[0, 2]]).all()
    d = ((emb[3] - faces) ** 2).sum(axis=1)
    assert strangers[0] == pytest.approx(d.min())


def test_cohort_scores_are_z_scores_against_the_querys_own_cohort_distances():
    """masked_openset's cohort-normalised scores, by brute force: the best person's distance, less the mean of
    the query's distances to the cohort, over their standard deviation; the ranking stays the raw one."""
    import masked_openset

    rng = np.random.default_rng(3)
    faces, cohort = rng.normal(size=(6, 4)), rng.normal(size=(50, 4))
    owners = np.array([0, 0, 1, 1, 2, 2])
    emb = np.vstack([faces[[1, 2]] + 0.05, rng.normal(size=(3, 4))])  # 2 known probes, then 3 strangers
    found, truth = np.ones(5, bool), np.array([0, 1])
    raw = masked_openset.identify(emb, found, 2, faces, owners, truth, "nearest")
    right, known, strangers = masked_openset.identify(emb, found, 2, faces, owners, truth, "nearest", cohort)
    assert list(right) == list(raw[0]) == [True, True]
    for query, score in zip(emb, np.concatenate([known, strangers])):
        to_cohort = ((query - cohort) ** 2).sum(axis=1)
        best = ((query - faces) ** 2).sum(axis=1).min()
        assert score == pytest.approx((best - to_cohort.mean()) / to_cohort.std(), rel=1e-4)
