"""Gallery aggregation policies (nearest, mean-of-K, template): exact against a NumPy brute force whatever
the search fetched, recorded in the gallery, old galleries read as nearest. Both stores: test_gallery_stores."""

import sqlite3

import numpy as np
import pytest
from test_gallery import D, brute_identify, unit

from facenet.errors import GalleryError
from facenet.gallery import Gallery, Record
from facenet.gallery.policy import parse_policy


def noisy_copies(rng, faces: np.ndarray, n: int) -> np.ndarray:
    """Queries near enrolled faces (as real probes are), so scores of close people are compared."""
    picked = faces[rng.integers(0, len(faces), n)] + 0.3 * unit(rng, n)
    return picked / np.linalg.norm(picked, axis=1, keepdims=True)


@pytest.mark.parametrize("policy", ["nearest", "mean-of-3", "template"])
@pytest.mark.parametrize("index", ["exact", "hnsw"])
def test_every_policy_matches_brute_force_through_changes(tmp_path, policy, index):
    rng = np.random.default_rng(11)
    # face counts from 1 to 9: a person's K nearest are rarely all among the few neighbours fetched first
    people = {f"p{i}": unit(rng, int(rng.integers(1, 10))) for i in range(40)}
    path = tmp_path / "g.db"
    with Gallery.open(path, "m1", D, index=index, policy=policy) as g, Gallery.open(path, "m1", D) as other:
        g.enroll_many([Record(n, e, [""] * len(e)) for n, e in people.items()])
        everyone = np.concatenate(list(people.values()))
        queries = np.concatenate([unit(rng, 10), noisy_copies(rng, everyone, 20)])
        for k in (1, 3, 7):
            assert_matches(g, people, queries, k)
        g.remove("p7")
        del people["p7"]
        more = unit(rng, 4)
        other.enroll("p8", more)  # another Gallery (process) adds faces: g learns of them from the feed
        other.enroll("newcomer", more[:2] * -1)
        people["p8"] = np.concatenate([people["p8"], more])
        people["newcomer"] = more[:2] * -1
        assert_matches(g, people, np.concatenate([queries, noisy_copies(rng, more, 5)]), 3)


def assert_matches(g, people, queries, k):
    results = g.identify(queries, k=k)
    for q, res in zip(queries, results):
        names, scores = brute_identify(people, q, k, g.policy)
        assert [m.name for m in res] == names
        np.testing.assert_allclose([m.distance for m in res], scores, atol=1e-5)
        for m in res:  # face_id: the person's nearest face, under every policy
            assert m.distance >= 0 and m.face_id > 0
    limit = float(np.median([r[0].distance for r in results]))  # open set: about half the queries unknown
    for full, res in zip(results, g.identify(queries, k=k, threshold=limit)):
        assert res == [m for m in full if m.distance < limit]


def test_mean_of_k_scores_from_all_faces_not_only_the_fetched_ones(tmp_path):
    """One person with many faces near the query (fetched first) and a few far ones: another person's
    three moderately close faces must win under mean-of-3, although none of them was among the first fetched."""
    rng = np.random.default_rng(3)
    q = unit(rng, 1)[0]
    crowd = np.stack([q + 0.15 * v for v in unit(rng, 2)] + [-q + 0.1 * v for v in unit(rng, 30)])
    steady = np.stack([q + 0.5 * v for v in unit(rng, 3)])
    people = {
        "crowd": crowd / np.linalg.norm(crowd, axis=1, keepdims=True),
        "steady": steady / np.linalg.norm(steady, axis=1, keepdims=True),
    }
    with Gallery.open(tmp_path / "g.db", "m1", D, policy="mean-of-3") as g:
        g.enroll_many([Record(n, e, [""] * len(e)) for n, e in people.items()])
        (res,) = g.identify(q[None], k=1)
    names, scores = brute_identify(people, q, 1, "mean-of-3")
    assert names == ["steady"] and res[0].name == "steady"
    assert res[0].distance == pytest.approx(scores[0], abs=1e-5)


def test_policy_is_recorded_checked_and_defaulted(tmp_path):
    path = tmp_path / "g.db"
    with Gallery.open(path, "m1", D, policy=" mean-of-3 ") as g:
        assert g.policy == "mean-of-3"
    assert dict(sqlite3.connect(path).execute("SELECT key, value FROM meta").fetchall())["policy"] == "mean-of-3"
    with Gallery.open(path, "m1", D) as g:  # no policy asked: the recorded one
        assert g.policy == "mean-of-3"
        g.export(tmp_path / "copy.db")
    with Gallery.open(tmp_path / "copy.db", create=False) as copy:
        assert copy.policy == "mean-of-3"
    with pytest.raises(GalleryError, match="policy 'mean-of-3', chosen when it was created, not 'template'"):
        Gallery.open(path, "m1", D, policy="template")
    for bad in ("closest", "mean-of-1", "mean-of-k", ""):
        with pytest.raises(GalleryError, match=r"choose one of: nearest, mean-of-K \(K >= 2"):
            Gallery.open(tmp_path / "new.db", "m1", D, policy=bad)
    assert not (tmp_path / "new.db").exists()  # a wrong name creates nothing
    with Gallery.open(tmp_path / "default.db", "m1", D) as g:
        assert g.policy == parse_policy(None).name


def test_a_gallery_written_before_policies_reads_as_nearest(tmp_path):
    rng = np.random.default_rng(5)
    people = {f"p{i}": unit(rng, 3) for i in range(6)}
    path = tmp_path / "old.db"
    with Gallery.open(path, "m1", D, policy="template") as g:
        g.enroll_many([Record(n, e, [""] * 3) for n, e in people.items()])
    conn = sqlite3.connect(path)
    conn.execute("DELETE FROM meta WHERE key = 'policy'")  # as every file written before this key existed
    conn.commit()
    conn.close()
    with Gallery.open(path, "m1", D) as g:
        assert g.policy == "nearest"
        queries = noisy_copies(rng, np.concatenate(list(people.values())), 5)
        assert_matches(g, people, queries, 2)


class StubModel:
    """Stands in for a model in ``facenet.enroll``: each photo (a path) maps to a fixed unit row."""

    name, embedding_size = "stub", D

    def __init__(self, rows: dict):
        self.rows = rows

    def embed(self, photos, batch_size=32):
        return np.stack([self.rows[str(p)] for p in photos])


def test_python_api_enrols_several_photos_at_once(tmp_path):
    import facenet

    rng = np.random.default_rng(2)
    rows = {str(tmp_path / f"ann{i}.jpg"): v for i, v in enumerate(unit(rng, 3))}
    model, path = StubModel(rows), tmp_path / "g.db"
    person = facenet.enroll("Ann", list(rows), gallery=path, model=model, policy="template")
    assert (person.name, person.faces) == ("Ann", 3)
    with Gallery.open(path, create=False) as g:
        assert g.policy == "template"
        assert [r.sources for r in g.records()] == [["ann0.jpg", "ann1.jpg", "ann2.jpg"]]
        ((match,),) = g.identify(unit(rng, 1), k=1)
    with pytest.raises(GalleryError, match="already in gallery"):
        facenet.enroll("Ann", list(rows)[:1], gallery=path, model=model, merge=False)
    assert match.name == "Ann"


@pytest.mark.parametrize("policy, comparisons", [("nearest", 5), ("mean-of-2", 2), ("template", 5)])
def test_open_set_threshold_counts_faces_or_people_as_the_policy_needs(tmp_path, policy, comparisons):
    rng = np.random.default_rng(4)
    with Gallery.open(tmp_path / "g.db", "m1", D, policy=policy) as g:
        g.enroll_many([Record("a", unit(rng, 3), [""] * 3), Record("b", unit(rng, 2), [""] * 2)])
        assert g.comparisons() == comparisons
