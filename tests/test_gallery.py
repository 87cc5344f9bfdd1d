import os
import sqlite3

import numpy as np
import pytest

from facenet.errors import GalleryError
from facenet.gallery import Gallery, Record
from facenet.gallery.quantize import dequantize, quantize
from facenet.gallery.sqlite import APPLICATION_ID

D = 16


def unit(rng, n, d=D):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_score(faces: np.ndarray, q: np.ndarray, policy: str = "nearest") -> float:
    """Independent reference for one person's score, by NumPy: min squared L2 over all faces, the mean of the
    K smallest, or the squared L2 to the normalised mean face."""
    if policy == "template":
        mean = faces.astype(np.float64).mean(0)
        return float(((mean / np.linalg.norm(mean) - q) ** 2).sum())
    d = np.sort(((faces - q) ** 2).sum(1))
    return float(d[: 1 if policy == "nearest" else int(policy.rsplit("-", 1)[1])].mean())


def brute_identify(people: dict, q: np.ndarray, k: int, policy: str = "nearest"):
    """Independent reference: the k best-scored people (see ``brute_score``) and their scores."""
    scores = sorted((brute_score(e, q, policy), name) for name, e in people.items())
    return [name for _, name in scores[:k]], [d for d, _ in scores[:k]]


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_new_file_is_owner_only_and_recognised(tmp_path):
    path = tmp_path / "g.db"
    with Gallery.open(path, "m1", D):
        pass
    assert (os.stat(path).st_mode & 0o777) == 0o600
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
    conn.close()


@pytest.mark.parametrize("storage", ["float32", "int8"])
@pytest.mark.parametrize("index", ["exact", "hnsw"])
def test_identify_matches_brute_force_and_survives_reopen(tmp_path, rng, storage, index):
    people = {f"p{i}": unit(rng, int(rng.integers(1, 5))) for i in range(40)}
    path = tmp_path / "g.db"
    with Gallery.open(path, "m1", D, storage=storage, index=index) as g:
        for name, emb in people.items():
            g.enroll(name, emb, [f"{name}_{j}.jpg" for j in range(len(emb))])
    queries = unit(rng, 20)
    with Gallery.open(path, "m1", D, index=index) as g:
        assert g.storage == storage
        assert {p.name: p.faces for p in g.people()} == {n: len(e) for n, e in people.items()}
        results = g.identify(queries, k=3)
        policy = g.policy  # the default one
    if storage == "int8":  # the reference searches what the gallery stores (test_quantize: how close it is)
        people = {n: dequantize(quantize(e)) for n, e in people.items()}
    for q, res in zip(queries, results):
        names, dists = brute_identify(people, q, 3, policy)
        assert [m.name for m in res] == names
        np.testing.assert_allclose([m.distance for m in res], dists, atol=1e-4)


def test_open_set_unknown_and_several_photos(tmp_path, rng):
    alice = unit(rng, 3)
    with Gallery.open(tmp_path / "g.db", "m1", D, policy="nearest") as g:
        g.enroll("alice", alice, ["a", "b", "c"])
        g.enroll("bob", unit(rng, 1), ["x"])
        near = alice[2] + 0.01 * rng.standard_normal(D).astype(np.float32)
        near /= np.linalg.norm(near)
        far = -alice.mean(0)
        far /= np.linalg.norm(far)
        res = g.identify(np.stack([near, far]), k=5, threshold=0.5)
        assert [m.name for m in res[0]] == ["alice"]  # bob is beyond the threshold
        assert res[1] == []  # unknown
        # the nearest of alice's three photos decides
        ids = {r.face_id for r in [res[0][0]]}
        assert len(ids) == 1
        assert res[0][0].distance == pytest.approx(float(((alice[2] - near) ** 2).sum()), abs=1e-5)


def test_enroll_adds_to_existing_person_and_is_visible_next_query(tmp_path, rng):
    with Gallery.open(tmp_path / "g.db", "m1", D, policy="nearest") as g:
        g.enroll("a", unit(rng, 1), ["1"])
        assert g.identify(unit(rng, 1), k=5)[0][0].name == "a"
        q = unit(rng, 1)
        person = g.enroll("a", q, ["2"])
        assert person.faces == 2
        g.enroll("b", -q, ["3"])
        res = g.identify(q, k=5)[0]
        assert res[0].name == "a" and res[0].distance == pytest.approx(0, abs=1e-6)
        assert [m.name for m in res] == ["a", "b"]
        assert g.remove("a") == 2
        assert [m.name for m in g.identify(q, k=5)[0]] == ["b"]
        with pytest.raises(GalleryError, match="no person named"):
            g.remove("a")


def test_model_mismatch_is_refused(tmp_path, rng):
    path = tmp_path / "g.db"
    with Gallery.open(path, "model-A", D) as g:
        g.enroll("a", unit(rng, 1), ["1"])
    with pytest.raises(GalleryError, match="model-A.*model-B"):
        Gallery.open(path, "model-B", D)
    with pytest.raises(GalleryError, match="16-D.*32-D"):
        Gallery.open(path, "model-A", 32)


@pytest.mark.parametrize("content", [b"", b"hello, not a database" * 10, b"SQLite format 3\x00" + bytes(200)])
def test_foreign_or_corrupt_file_is_refused_and_untouched(tmp_path, content):
    path = tmp_path / "g.db"
    if content == b"":  # a real SQLite database of another application
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE t (x)")
        conn.execute("INSERT INTO t VALUES (1)")
        conn.commit()
        conn.close()
    else:
        path.write_bytes(content)
    before = path.read_bytes()
    with pytest.raises(GalleryError, match="not a facenet gallery|another application"):
        Gallery.open(path, "m1", D)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.db"]


def test_damaged_gallery_is_a_gallery_error(tmp_path, rng):
    path = tmp_path / "g.db"
    with Gallery.open(path, "m1", D) as g:
        g.enroll("a", unit(rng, 1), ["1"])
    data = bytearray(path.read_bytes())
    data[100:] = b"\xff" * (len(data) - 100)
    path.write_bytes(bytes(data))
    with pytest.raises(GalleryError, match="damaged|model record"):
        Gallery.open(path, "m1", D)


def test_bad_input_is_rejected_without_writing(tmp_path, rng):
    with Gallery.open(tmp_path / "g.db", "m1", D) as g:
        with pytest.raises(GalleryError, match="unit"):
            g.enroll("a", 2 * unit(rng, 2), ["1", "2"])
        with pytest.raises(GalleryError, match=r"\(n>=1, 16\)"):
            g.enroll("a", unit(rng, 2, 8), ["1", "2"])
        with pytest.raises(GalleryError, match="source labels"):
            g.enroll("a", unit(rng, 2), ["1"])
        with pytest.raises(GalleryError, match="name"):
            g.enroll("  ", unit(rng, 1), ["1"])
        with pytest.raises(GalleryError, match="queries"):
            g.identify(unit(rng, 1, 8))
        assert g.people() == [] and len(g) == 0
        assert g.identify(unit(rng, 2)) == [[], []]


def test_open_without_create(tmp_path):
    with pytest.raises(GalleryError, match="no gallery"):
        Gallery.open(tmp_path / "missing.db", create=False)
    assert not (tmp_path / "missing.db").exists()


@pytest.mark.parametrize("storage", ["float32", "int8"])
def test_removed_bytes_leave_the_disk(tmp_path, rng, storage):
    path = tmp_path / "g.db"
    secret = unit(rng, 3)
    with Gallery.open(path, "m1", D, storage=storage) as g:
        g.enroll("keep", unit(rng, 2), ["k1", "k2"])
        g.enroll("Zebediah Secretname", secret, ["s1", "s2", "s3"])
        blobs = [
            bytes(r)
            for (r,) in g.store._conn.execute(
                "SELECT e.vector FROM embeddings e JOIN faces f ON f.id = e.face_id "
                "JOIN people p ON p.id = f.person_id WHERE p.name = 'Zebediah Secretname'"
            )
        ]
        assert len(blobs) == 3
        g.remove("Zebediah Secretname")
        raw = b"".join(p.read_bytes() for p in tmp_path.iterdir())
        assert b"Zebediah" not in raw
        assert not any(b in raw for b in blobs)
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert b"Zebediah" not in raw and not any(b in raw for b in blobs)


def test_export_import_roundtrip_and_conflicts(tmp_path, rng):
    a, b = unit(rng, 2), unit(rng, 1)
    with Gallery.open(tmp_path / "src.db", "m1", D) as g:
        g.enroll("a", a, ["a1", "a2"])
        g.enroll("b", b, ["b1"])
        g.export(tmp_path / "out.db")
    assert (os.stat(tmp_path / "out.db").st_mode & 0o777) == 0o600
    with Gallery.open(tmp_path / "dst.db", "m1", D) as dst:
        dst.enroll("a", unit(rng, 1), ["other"])
        with pytest.raises(GalleryError, match="already in gallery.*--merge"):
            dst.import_(tmp_path / "out.db")
        assert {p.name: p.faces for p in dst.people()} == {"a": 1}  # nothing half-imported
        assert dst.import_(tmp_path / "out.db", merge=True) == 3
        assert {p.name: p.faces for p in dst.people()} == {"a": 3, "b": 1}
        recs = {r.name: r for r in dst.records()}
        np.testing.assert_array_equal(recs["a"].embeddings[1:], a)
        assert list(recs["a"].sources) == ["other", "a1", "a2"]
    with Gallery.open(tmp_path / "other.db", "m2", D) as g2:
        with pytest.raises(GalleryError, match="model 'm1'.*'m2'"):
            g2.import_(tmp_path / "out.db")


def test_enroll_many_is_all_or_nothing(tmp_path, rng):
    with Gallery.open(tmp_path / "g.db", "m1", D) as g:
        good = Record("good", unit(rng, 1), ["1"])
        bad = Record("bad", unit(rng, 1, 8), ["1"])
        with pytest.raises(GalleryError):
            g.enroll_many([good, bad])
        assert g.people() == []
