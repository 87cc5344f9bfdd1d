import itertools
import json
import os

import numpy as np
import pytest
from PIL import Image

from facenet.cluster import cluster_embeddings, clustering_scores, write_clusters
from facenet.distances import DEFAULT_THRESHOLD
from facenet.errors import DataError


def identities(n_ids=8, per_id=12, d=64, noise=0.25, seed=0):
    """Well-separated identities: random unit centres (pairwise d^2 ~ 2) plus small noise."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_ids, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = np.repeat(np.arange(n_ids), per_id)
    x = centres[labels] + noise / np.sqrt(d) * rng.standard_normal((len(labels), d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels


def brute_pairwise(pred, true):
    pred = [p if p >= 0 else -(i + 1) for i, p in enumerate(pred)]  # noise: own singleton
    pairs = list(itertools.combinations(range(len(pred)), 2))
    sp = {(i, j) for i, j in pairs if pred[i] == pred[j]}
    st = {(i, j) for i, j in pairs if true[i] == true[j]}
    p, r = len(sp & st) / len(sp), len(sp & st) / len(st)
    return p, r, 2 * p * r / (p + r)


@pytest.mark.parametrize("method", ["agglomerative", "dbscan", "chinese_whispers"])
def test_methods_recover_separated_identities(method):
    x, y = identities()
    outlier = -x[:1]  # far from everything
    labels = cluster_embeddings(np.vstack([x, outlier]), method=method, threshold=0.8)
    assert labels[-1] == -1  # a lone face is unclustered
    scores = clustering_scores(labels[:-1], y)
    assert scores["f_measure"] == pytest.approx(1.0) and scores["nmi"] == pytest.approx(1.0)
    assert sorted(np.bincount(labels[:-1])) == [12] * 8


def test_threshold_and_linkage_matter():
    x, y = identities(n_ids=4, per_id=6)
    # above the between-identity distance (~2) everything merges
    assert set(cluster_embeddings(x, threshold=3.0)) == {0}
    # below the within-identity distance nothing merges
    assert set(cluster_embeddings(x, threshold=1e-4)) == {-1}
    complete = cluster_embeddings(x, threshold=0.8, linkage="complete")
    assert clustering_scores(complete, y)["f_measure"] == pytest.approx(1.0)


def test_chinese_whispers_is_deterministic_with_seed():
    x, _ = identities(n_ids=5, per_id=10, noise=0.9, seed=3)
    a = cluster_embeddings(x, "chinese_whispers", threshold=1.2, seed=7)
    b = cluster_embeddings(x, "chinese_whispers", threshold=1.2, seed=7)
    np.testing.assert_array_equal(a, b)


def test_scores_match_brute_force_pair_counting():
    rng = np.random.default_rng(1)
    true = rng.integers(0, 5, 60)
    pred = np.where(rng.random(60) < 0.7, true, rng.integers(-1, 6, 60))
    p, r, f = brute_pairwise(pred, true)
    s = clustering_scores(pred, true)
    assert s["precision"] == pytest.approx(p) and s["recall"] == pytest.approx(r)
    assert s["f_measure"] == pytest.approx(f)
    assert 0 < s["nmi"] < 1


def test_bad_input_is_a_data_error():
    with pytest.raises(DataError, match="unknown clustering method"):
        cluster_embeddings(np.zeros((3, 4)), method="kmeans")
    with pytest.raises(DataError, match="2-D"):
        cluster_embeddings(np.zeros(3))
    assert cluster_embeddings(np.zeros((0, 4))).shape == (0,)


def test_manifest_and_contact_sheets(tmp_path):
    files = []
    for i, colour in enumerate(["red", "red", "blue", "green"]):
        path = tmp_path / f"img{i}.jpg"
        Image.new("RGB", (40, 30), colour).save(path)
        files.append(path)
    out = tmp_path / "out"
    manifest = write_clusters(out, files, [0, 0, -1, 1], thumb=20, columns=8)
    assert manifest == json.loads((out / "manifest.json").read_text())
    assert manifest["clusters"] == {"0": [str(files[0]), str(files[1])], "1": [str(files[3])]}
    assert manifest["unclustered"] == [str(files[2])]
    sheet = Image.open(out / "cluster_0.png")
    assert sheet.size == (40, 20 + 14)  # tiles, each captioned with its file name
    assert sheet.getpixel((5, 5))[0] > 200 and sheet.getpixel((25, 5))[0] > 200  # two red tiles
    assert Image.open(out / "unclustered.png").getpixel((5, 5))[2] > 200  # blue
    assert sorted(p.name for p in out.iterdir()) == [
        "cluster_0.png",
        "cluster_1.png",
        "manifest.json",
        "unclustered.png",
    ]
    assert all((os.stat(p).st_mode & 0o777) == 0o600 for p in out.iterdir())


def test_the_default_threshold_is_the_one_an_uncalibrated_model_has():
    """cluster_embeddings defaulted to 1.0 while a model not yet calibrated has 1.1: one named constant now."""
    from facenet.models.modelfile import ModelInfo

    x = np.array([[1.0, 0.0], [0.475, np.sqrt(1 - 0.475**2)]])  # squared L2 1.05: between 1.0 and 1.1
    assert ModelInfo("nns", 128).threshold == DEFAULT_THRESHOLD
    assert list(cluster_embeddings(x)) == list(cluster_embeddings(x, threshold=DEFAULT_THRESHOLD)) == [0, 0]
