"""The scalable ``graph`` clustering method, incremental assignment, BCubed scores and the O(n) manifest."""

import json

import numpy as np
import pytest
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from test_cluster import identities

from facenet.cluster import (
    _relabel,
    assign_incremental,
    cluster_embeddings,
    clustering_scores,
    graph_threshold,
    knn_graph,
    write_clusters,
)
from facenet.errors import DataError
from facenet.models.modelfile import ModelInfo


@pytest.mark.parametrize("algorithm", ["leiden", "components"])
@pytest.mark.parametrize("index", ["exact", "ivf"])
def test_graph_separates_well_separated_people_exactly(algorithm, index):
    x, y = identities(n_ids=40, per_id=70, noise=0.4)  # 2,800 faces: enough for the IVF index
    x = np.vstack([x, -x[:1]])  # a lone face, far from everyone
    labels = cluster_embeddings(x, "graph", threshold=0.8, graph_algorithm=algorithm, index=index)
    assert labels[-1] == -1
    scores = clustering_scores(labels[:-1], y)
    assert scores["f_measure"] == 1.0 and scores["bcubed_f"] == 1.0 and scores["nmi"] == pytest.approx(1.0)
    assert sorted(np.bincount(labels[:-1])) == [70] * 40


def test_components_equal_those_of_the_brute_force_thresholded_graph():
    """With k at least every face's number of neighbours under the threshold, the kNN graph is the full
    thresholded graph: its components are those of the brute-force n x n one."""
    x, _ = identities(n_ids=6, per_id=15, noise=1.2, seed=4)  # noisy: clusters touch and chain
    threshold = 1.0
    d2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    adjacency = (d2 < threshold) & ~np.eye(len(x), dtype=bool)
    assert 0 < adjacency.sum(1).max() < len(x) - 1
    want = _relabel(connected_components(coo_matrix(adjacency), directed=False)[1], 1)
    got = cluster_embeddings(
        x, "graph", threshold=threshold, k=len(x), graph_algorithm="components", index="exact", min_size=1
    )
    np.testing.assert_array_equal(got, want)
    rows, cols, dist = knn_graph(x, threshold, k=len(x), index="exact")
    assert {(int(a), int(b)) for a, b in zip(rows, cols)} == set(zip(*np.nonzero(adjacency)))
    np.testing.assert_allclose(dist, d2[rows, cols], atol=1e-5)


def test_leiden_splits_two_groups_joined_by_one_stray_pair():
    """Components merge two people that one close pair connects; Leiden keeps them apart."""
    x, y = identities(n_ids=2, per_id=30, noise=0.3, seed=1)
    bridge = (x[0] + x[30]) / np.linalg.norm(x[0] + x[30])  # a face between the two people
    x = np.vstack([x, bridge])
    threshold = float(((bridge - x[0]) ** 2).sum()) + 0.05
    comps = cluster_embeddings(x, "graph", threshold=threshold, graph_algorithm="components")
    leiden = cluster_embeddings(x, "graph", threshold=threshold, graph_algorithm="leiden")
    assert len(set(comps[:-1])) == 1
    assert clustering_scores(leiden[:-1], y)["f_measure"] == 1.0


def test_graph_is_deterministic_and_checks_its_input():
    x, _ = identities(n_ids=5, per_id=10, noise=0.9, seed=3)
    a = cluster_embeddings(x, "graph", threshold=1.2, seed=7)
    np.testing.assert_array_equal(a, cluster_embeddings(x, "graph", threshold=1.2, seed=7))
    with pytest.raises(DataError, match="graph algorithm"):
        cluster_embeddings(x, "graph", graph_algorithm="louvain")
    with pytest.raises(DataError, match="index"):
        cluster_embeddings(x, "graph", index="hnsw")
    assert cluster_embeddings(np.zeros((0, 4)), "graph").shape == (0,)
    assert list(cluster_embeddings(x[:1], "graph")) == [-1]


def test_graph_threshold_comes_from_the_far_table():
    info = ModelInfo("nns", 128, threshold=1.4, far_thresholds={"1e-04": 1.1, "1e-05": 1.0, "1e-06": 0.9})
    assert graph_threshold(info) == pytest.approx(0.9)
    assert graph_threshold(info, 1e-5) == pytest.approx(1.0)
    assert graph_threshold(ModelInfo("nns", 128, threshold=1.3)) == 1.3  # no table: the verification one


def test_incremental_assignment():
    x, y = identities(n_ids=6, per_id=20, noise=0.3, seed=2)
    old = np.arange(len(x)) % 20 < 15  # 15 photos of each person clustered first
    old_labels = cluster_embeddings(x[old], "graph", threshold=0.8)
    stranger, _ = identities(n_ids=1, per_id=4, noise=0.3, seed=99)
    lone = -x[:1]  # matches nobody
    new = np.vstack([x[~old], stranger, lone])
    kept, labels = assign_incremental(x[old], old_labels, new, threshold=0.8)
    np.testing.assert_array_equal(kept, old_labels)  # nothing re-clustered
    # each new face of a known person joins that person's existing cluster
    cluster_of = {person: old_labels[y[old] == person][0] for person in range(6)}
    np.testing.assert_array_equal(labels[:30], [cluster_of[p] for p in y[~old]])
    # the stranger's faces make one new cluster numbered after the existing ones; the lone face stays out
    assert len(set(labels[30:34])) == 1 and labels[30] == old_labels.max() + 1
    assert labels[-1] == -1


def test_incremental_new_face_can_pair_with_an_old_unclustered_one():
    x, _ = identities(n_ids=3, per_id=2, noise=0.2, seed=5)
    old_labels = np.array([0, 0, 1, 1, -1, -1])  # the third person's two faces were never clustered
    extra, _ = identities(n_ids=3, per_id=2, noise=0.2, seed=5)
    kept, labels = assign_incremental(x, old_labels, extra[4:5] * 0.999 + x[4:5] * 0.001, threshold=0.5)
    assert list(kept[:4]) == [0, 0, 1, 1] and kept[4] == kept[5] == labels[0] == 2
    with pytest.raises(DataError):
        assign_incremental(x, old_labels[:3], x, threshold=0.5)


def brute_bcubed(pred, true):
    pred = [p if p >= 0 else -(i + 1) for i, p in enumerate(pred)]
    n = len(pred)
    precision = np.mean(
        [sum(pred[j] == pred[i] and true[j] == true[i] for j in range(n)) / pred.count(pred[i]) for i in range(n)]
    )
    recall = np.mean(
        [
            sum(pred[j] == pred[i] and true[j] == true[i] for j in range(n)) / sum(t == true[i] for t in true)
            for i in range(n)
        ]
    )
    return precision, recall, 2 * precision * recall / (precision + recall)


def test_bcubed_matches_its_definition():
    rng = np.random.default_rng(1)
    true = list(rng.integers(0, 6, 80))
    pred = np.where(rng.random(80) < 0.6, true, rng.integers(-1, 7, 80))
    p, r, f = brute_bcubed(list(pred), true)
    s = clustering_scores(pred, true)
    assert s["bcubed_precision"] == pytest.approx(p)
    assert s["bcubed_recall"] == pytest.approx(r)
    assert s["bcubed_f"] == pytest.approx(f)


def test_write_clusters_groups_in_file_order_and_can_skip_sheets(tmp_path):
    files = [tmp_path / f"f{i}.jpg" for i in range(7)]
    for f in files:
        Image.new("RGB", (8, 8), "red").save(f)
    labels = [1, -1, 0, 1, 0, -1, 2]
    manifest = write_clusters(tmp_path / "a", files, labels, thumb=8)
    assert list(manifest["clusters"]) == ["0", "1", "2"]
    assert manifest["clusters"] == {
        "0": [str(files[2]), str(files[4])],
        "1": [str(files[0]), str(files[3])],
        "2": [str(files[6])],
    }
    assert manifest["unclustered"] == [str(files[1]), str(files[5])]
    assert json.loads((tmp_path / "a" / "manifest.json").read_text()) == manifest
    assert len(list((tmp_path / "a").glob("*.png"))) == 4
    assert write_clusters(tmp_path / "b", files, labels, sheets=False) == manifest
    assert [p.name for p in (tmp_path / "b").iterdir()] == ["manifest.json"]
    assert write_clusters(tmp_path / "c", [], []) == {"clusters": {}, "unclustered": []}


@pytest.fixture
def colour_photos(tmp_path, monkeypatch):
    from test_gallery_cli import FakeEmbedder

    from facenet.commands import cluster as cluster_cmd

    monkeypatch.setattr(cluster_cmd, "embedder_from_args", lambda args: FakeEmbedder())

    def make(folder, **colours):
        (tmp_path / folder).mkdir(exist_ok=True)
        for name, colour in colours.items():
            Image.new("RGB", (32, 32), colour).save(tmp_path / folder / f"{name}.png")
        return tmp_path / folder

    return make


def test_cli_graph_then_new_photos_join_the_earlier_clusters(colour_photos, tmp_path, capsys):
    from facenet.cli import main

    first = colour_photos("a", r1=(250, 10, 10), r2=(240, 30, 20), g1=(10, 250, 10))
    out = tmp_path / "out"
    assert main(["cluster", str(first), "--out", str(out)]) == 0  # graph is the default method
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest == {
        "clusters": {"0": [str(first / "r1.png"), str(first / "r2.png")]},
        "unclustered": [str(first / "g1.png")],
    }
    state = np.load(out / "embeddings.npz")
    assert list(state["labels"]) == [-1, 0, 0] and state["embeddings"].shape == (3, 8)
    # later: one more red photo, a second green one and a blue one; the first photos are not embedded again
    second = colour_photos("b", r3=(230, 20, 20), g2=(20, 240, 20), b1=(10, 10, 250))
    out2 = tmp_path / "out2"
    assert main(["cluster", str(second), str(first), "--previous", str(out), "--out", str(out2)]) == 0
    assert "3 face(s) from" in capsys.readouterr().out
    manifest = json.loads((out2 / "manifest.json").read_text())
    assert manifest["clusters"] == {
        "0": [str(first / "r1.png"), str(first / "r2.png"), str(second / "r3.png")],
        "1": [str(first / "g1.png"), str(second / "g2.png")],  # the old lone face and a new one: a new cluster
    }
    assert manifest["unclustered"] == [str(second / "b1.png")]
    assert sorted(p.name for p in out2.glob("*.png")) == ["cluster_0.png", "cluster_1.png", "unclustered.png"]


def test_cli_clusters_embedding_shards(tmp_path, capsys):
    from facenet.cli import main

    x, y = identities(n_ids=3, per_id=4, noise=0.2)
    np.save(tmp_path / "a.npy", x[:6])
    (tmp_path / "a.rows.csv").write_text(
        "image,face,faces,x1,y1,x2,y2,score\n" + "".join(f"p{i}.jpg,0,1,0,0,1,1,\n" for i in range(6))
    )
    np.savez(tmp_path / "b.npz", embeddings=x[6:], paths=np.array([f"p{i}.jpg" for i in range(6, 12)]))
    out = tmp_path / "out"
    args = ["cluster", "--embeddings", str(tmp_path / "a.npy"), str(tmp_path / "b.npz"), "--out", str(out)]
    assert main([*args, "--threshold", "0.5", "--no-sheets", "--model", "unused"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(manifest["clusters"].values()) == [[f"p{i}.jpg" for i in range(p * 4, p * 4 + 4)] for p in range(3)]
    assert sorted(p.name for p in out.iterdir()) == ["embeddings.npz", "manifest.json"]
    (tmp_path / "a.rows.csv").unlink()
    assert main([*args, "--threshold", "0.5"]) == 2
    assert "rows file" in capsys.readouterr().err
