import faiss
import numpy as np
import pytest

from facenet.errors import GalleryError
from facenet.gallery import index as index_mod
from facenet.gallery.index import FaceIndex


def unit(rng, n, d=32):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute(vectors, ids, queries, k):
    d = ((queries[:, None] - vectors[None]) ** 2).sum(-1)
    order = np.argsort(d, axis=1)[:, :k]
    return np.take_along_axis(d, order, 1), ids[order]


@pytest.mark.parametrize("kind", ["exact", "hnsw", "ivf"])
def test_search_and_removal_match_brute_force(kind):
    rng = np.random.default_rng(0)
    vectors, queries = unit(rng, 2000), unit(rng, 30)
    ids = np.arange(10, 2010, dtype=np.int64)
    idx = FaceIndex(32, kind, ef_search=256)
    idx.rebuild(ids[:1500], vectors[:1500])
    idx.add(ids[1500:], vectors[1500:])  # incremental, no retraining
    assert idx.kind == kind and len(idx) == 2000
    gone = set(rng.choice(ids, 300, replace=False).tolist())
    idx.remove(gone)
    keep = np.array([i not in gone for i in ids])
    ref_d, ref_i = brute(vectors[keep], ids[keep], queries, 5)
    dist, got = idx.search(queries, 5)
    assert not set(got.ravel().tolist()) & gone
    recall = np.mean(got[:, 0] == ref_i[:, 0])
    assert recall >= (1.0 if kind == "exact" else 0.85)
    exact_rows = got[:, 0] == ref_i[:, 0]
    np.testing.assert_allclose(dist[exact_rows, 0], ref_d[exact_rows, 0], atol=1e-4)  # squared L2


def test_hnsw_rebuilds_after_many_removals_and_pads_short_results():
    rng = np.random.default_rng(1)
    v = unit(rng, 40)
    idx = FaceIndex(32, "hnsw")
    idx.rebuild(np.arange(40), v)
    idx.remove(range(5))
    assert idx._built.removed  # filtered, not yet rebuilt
    idx.remove(range(5, 30))
    assert idx.wait_for_build(30)  # rebuilt off the caller's path
    assert not idx._built.removed and idx._built.index.ntotal == 10  # rebuilt from live vectors
    dist, got = idx.search(v[35:36], 20)
    assert sorted(got[0].tolist()) == list(range(30, 40))
    assert got[0, 0] == 35 and dist[0, 0] == pytest.approx(0, abs=1e-6)


def test_auto_switches_to_hnsw_past_threshold(monkeypatch):
    monkeypatch.setattr(index_mod, "AUTO_THRESHOLD", 50)
    rng = np.random.default_rng(2)
    v = unit(rng, 80)
    idx = FaceIndex(32, "auto")
    idx.rebuild(np.arange(30), v[:30])
    assert idx.kind == "exact"
    idx.add(np.arange(30, 80), v[30:])
    assert idx.wait_for_build(30)  # built in the background
    assert idx.kind == "hnsw" and len(idx) == 80
    assert isinstance(faiss.downcast_index(idx._built.index.index), faiss.IndexHNSWFlat)
    _, got = idx.search(v, 1)
    assert (got[:, 0] == np.arange(80)).mean() > 0.95


def test_small_ivf_falls_back_to_exact_and_unknown_kind_is_an_error():
    idx = FaceIndex(32, "ivf")
    assert idx.kind == "exact"
    with pytest.raises(GalleryError, match="unknown index kind"):
        FaceIndex(32, "annoy")


def test_hnsw_search_after_removals_fetches_only_k(monkeypatch):
    """Removed faces are skipped inside the graph search (an ID selector), not by over-fetching k + removed."""
    rng = np.random.default_rng(4)
    v = unit(rng, 400)
    idx = FaceIndex(32, "hnsw")
    idx.rebuild(np.arange(400), v)
    idx.remove(range(0, 80))  # 20%: below the rebuild point, so the selector is used
    asked = []
    inner_search = idx._built.index.search
    monkeypatch.setattr(idx._built.index, "search", lambda q, k, **kw: asked.append(k) or inner_search(q, k, **kw))
    dist, got = idx.search(v[100:110], 5)
    assert asked == [5] and not (set(got.ravel().tolist()) & set(range(80)))
    assert (got[:, 0] == np.arange(100, 110)).all()


def test_identify_with_fewer_people_than_k_searches_once(tmp_path, monkeypatch):
    from facenet.gallery import Gallery

    rng = np.random.default_rng(5)
    with Gallery.open(tmp_path / "g.db", "m", 32, policy="nearest") as gallery:  # it searches faces
        for person in range(3):
            gallery.enroll(f"p{person}", unit(rng, 30), [f"f{i}" for i in range(30)])
        gallery.sync()
        asked = []
        search = gallery._index.search
        monkeypatch.setattr(gallery._index, "search", lambda q, k: asked.append(k) or search(q, k))
        (matches,) = gallery.identify(unit(rng, 1), k=5)
    assert len(matches) == 3 and asked == [20]  # before: 20 -> 80 -> 90 (the whole gallery)


def test_switch_to_hnsw_happens_off_the_callers_path(monkeypatch, held_hnsw_build):
    """The add that crosses the threshold returns at once; searches answer (exactly) from the old index
    while HNSW is built; adds and removals made meanwhile are replayed onto the new one."""
    monkeypatch.setattr(index_mod, "AUTO_THRESHOLD", 50)
    started, release = held_hnsw_build
    rng = np.random.default_rng(6)
    v = unit(rng, 120)
    idx = FaceIndex(32, "auto")
    idx.rebuild(np.arange(40), v[:40])
    idx.add(np.arange(40, 60), v[40:60])  # crosses the threshold: returns although the build is held
    assert started.wait(30) and idx.building and idx.kind == "exact"
    _, got = idx.search(v[:60], 1)
    assert (got[:, 0] == np.arange(60)).all()  # answered by the exact index meanwhile
    idx.add(np.arange(60, 120), v[60:])
    idx.remove(range(0, 10))
    idx.remove(range(100, 110))
    _, got = idx.search(v[10:100], 1)
    assert (got[:, 0] == np.arange(10, 100)).all()
    release.set()
    assert idx.wait_for_build(30) and idx.kind == "hnsw" and len(idx) == 100
    live = np.r_[10:100, 110:120]
    dist, got = idx.search(v[live], 1)
    assert not set(got.ravel().tolist()) & (set(range(10)) | set(range(100, 110)))
    assert (got[:, 0] == live).mean() > 0.95


def test_serialized_hnsw_holds_no_removed_vectors():
    rng = np.random.default_rng(7)
    v = unit(rng, 200)
    idx = FaceIndex(32, "hnsw")
    idx.rebuild(np.arange(200), v)
    idx.remove(range(10))
    kind, data, removed = idx.serialize()
    assert kind == "hnsw" and sorted(removed.tolist()) == list(range(10))
    raw = data.tobytes()
    assert v[3].tobytes() not in raw and v[50].tobytes() in raw
    again = FaceIndex.deserialize(32, "hnsw", kind, data, removed)
    np.testing.assert_array_equal(again.search(v[10:], 3)[1], idx.search(v[10:], 3)[1])
    np.testing.assert_allclose(idx.vectors([3]), v[3:4])  # the live index still holds it (until a rebuild)


def test_new_hnsw_faces_are_searched_beside_the_graph_then_folded_in(monkeypatch):
    """Faces added to an HNSW index skip the graph insertion (an exact side index answers for them) until
    ``FRESH_FOLD_AT`` gather; a background fold then moves them into the graph; searches, removals and
    vectors give the same answers throughout (brute force over the live faces)."""
    monkeypatch.setattr(index_mod, "FRESH_FOLD_AT", 60)
    rng = np.random.default_rng(8)
    v, queries = unit(rng, 400), unit(rng, 20)
    ids = np.arange(1000, 1400, dtype=np.int64)
    idx = FaceIndex(32, "hnsw")
    idx.rebuild(ids[:300], v[:300])
    idx.add(ids[300:350], v[300:350])  # below the fold point: all fresh
    assert idx._built.fresh.ntotal == 50 and idx._built.index.ntotal == 300 and idx._folder is None
    idx.remove([1000, 1001, 1310, 1311])  # two in the graph, two fresh
    live = np.isin(ids[:350], [1000, 1001, 1310, 1311], invert=True)
    assert len(idx) == 346 and idx._built.fresh.ntotal == 48 and idx._built.removed == {1000, 1001}
    ref_d, ref_i = brute(v[:350][live], ids[:350][live], np.r_[queries, v[305:315]], 5)
    dist, got = idx.search(np.r_[queries, v[305:315]], 5)
    np.testing.assert_array_equal(got, ref_i)  # 346 faces: the graph search at ef 512 is exhaustive
    np.testing.assert_allclose(dist, ref_d, atol=1e-5)
    np.testing.assert_allclose(idx.vectors([1320, 5 + 1000, 1349]), v[[320, 5, 349]])

    idx.add(ids[350:], v[350:])  # 98 fresh: a fold starts
    assert idx.wait_for_build(30)
    assert idx._built.fresh.ntotal == 0 and idx._built.index.ntotal == 398 and len(idx) == 396  # 2 skipped
    live = np.isin(ids, [1000, 1001, 1310, 1311], invert=True)
    ref_d, ref_i = brute(v[live], ids[live], queries, 5)
    np.testing.assert_array_equal(idx.search(queries, 5)[1], ref_i)
    np.testing.assert_allclose(idx.vectors(ids[live]), v[live])


def test_a_rebuild_takes_the_fresh_faces_and_a_snapshot_holds_them(monkeypatch):
    monkeypatch.setattr(index_mod, "REBUILD_FRACTION", 0.1)
    rng = np.random.default_rng(9)
    v = unit(rng, 300)
    idx = FaceIndex(32, "hnsw")
    idx.rebuild(np.arange(200), v[:200])
    idx.add(np.arange(200, 250), v[200:250])  # fresh
    idx.remove(range(0, 25))  # > 10% of the graph: rebuilt in the background from graph + fresh faces
    idx.add(np.arange(250, 300), v[250:])  # during the build or after: fresh again either way
    assert idx.wait_for_build(30) and not idx._built.removed and len(idx) == 275
    assert idx._built.index.ntotal + idx._built.fresh.ntotal == 275
    kind, data, removed = idx.serialize()  # folds the fresh faces into the graph it writes
    assert idx._built.fresh.ntotal == 0 and idx._built.index.ntotal == 275
    again = FaceIndex.deserialize(32, "hnsw", kind, data, removed)
    assert len(again) == 275
    np.testing.assert_array_equal(again.search(v[25:], 1)[1][:, 0], np.arange(25, 300))


def test_a_fold_in_flight_neither_blocks_adds_nor_shows_twice():
    """While a fold inserts into the graph (holding only the graph's lock), an add returns; once the faces
    are in both the graph and the side index, searches, lengths and removals count each face once."""
    import threading

    rng = np.random.default_rng(10)
    v = unit(rng, 120)
    idx = FaceIndex(32, "hnsw")
    idx.rebuild(np.arange(100), v[:100])
    idx.add(np.arange(100, 110), v[100:110])
    built = idx._built
    with idx._lock:
        ids, vectors = built.take_fold(8)  # faces 100..107 now in flight
    with built.graph_lock:  # the fold inserting: an add from another thread does not wait for it
        adder = threading.Thread(target=idx.add, args=(np.arange(110, 120), v[110:120]))
        adder.start()
        adder.join(10)
        assert not adder.is_alive() and built.fresh.ntotal == 20
        built.index.add_with_ids(vectors, ids)
    assert len(idx) == 120
    dist, got = idx.search(v[100:120], 3)
    assert (got[:, 0] == np.arange(100, 120)).all()
    assert all(len(set(row)) == 3 for row in got.tolist())  # no face twice in a result
    live_ids, _ = built.live()
    assert sorted(live_ids.tolist()) == list(range(120))
    idx.remove([103])  # in flight: leaves the side index now, and is skipped in the graph once the fold ends
    with idx._lock:
        built.end_fold(ids)
    assert len(idx) == 119 and built.removed == {103} and built.fresh.ntotal == 12
    assert 103 not in idx.search(v[103:104], 5)[1].ravel().tolist()
    ref_d, ref_i = brute(np.delete(v, 103, 0), np.delete(np.arange(120), 103), v[::7], 4)
    np.testing.assert_array_equal(idx.search(v[::7], 4)[1], ref_i)


def test_adds_removals_and_searches_from_several_threads_while_folding(monkeypatch):
    """A writer enrols and removes while a reader searches and the folder folds: no result ever holds a face
    twice, and once everything settles the index answers as brute force over the live faces does."""
    import threading

    monkeypatch.setattr(index_mod, "FRESH_FOLD_AT", 16)
    monkeypatch.setattr(index_mod, "FOLD_SLICE", 3)
    rng = np.random.default_rng(11)
    v = unit(rng, 700)
    idx = FaceIndex(32, "hnsw")
    idx.rebuild(np.arange(200), v[:200])
    gone = set(range(0, 700, 9))
    done, twice = threading.Event(), []

    def write():
        queue = sorted(gone)
        for start in range(200, 700, 5):
            idx.add(np.arange(start, start + 5), v[start : start + 5])
            due = [i for i in queue if i < start + 5]
            queue = queue[len(due) :]
            idx.remove(due + due[-1:])  # the last one twice: a face already gone is not counted again
        done.set()

    def read():
        while not done.is_set():
            _, got = idx.search(v[rng.integers(0, 700, 4)], 8)
            twice.extend(row for row in got.tolist() if len({i for i in row if i >= 0}) != sum(i >= 0 for i in row))

    threads = [threading.Thread(target=write), threading.Thread(target=read)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert done.is_set() and not twice
    assert idx.wait_for_build(30) and idx._built.fresh.ntotal == 0
    live = np.array([i not in gone for i in range(700)])
    assert len(idx) == live.sum()
    ref_d, ref_i = brute(v[live], np.arange(700)[live], v[::11], 5)
    dist, got = idx.search(v[::11], 5)
    assert (got[:, 0] == ref_i[:, 0]).mean() > 0.95 and not set(got.ravel().tolist()) & gone
