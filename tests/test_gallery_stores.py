"""Both stores (SQLite file, PostgreSQL server) behind one Gallery: the same answers as brute force, a change
feed that never skips another process's commits, real removal, schema and model checks."""

import os
import sqlite3
import threading
import time

import numpy as np
import pytest
from test_gallery import D, brute_identify, unit  # one brute-force reference for both gallery test files

from facenet.errors import GalleryError, GalleryUnavailableError
from facenet.gallery import Gallery, Record
from facenet.gallery.quantize import dequantize, quantize


def assert_brute(gallery, people, queries, k=3, atol=1e-4):
    for q, res in zip(queries, gallery.identify(queries, k=k)):
        names, dists = brute_identify(people, q, k, gallery.policy)
        assert [m.name for m in res] == names
        np.testing.assert_allclose([m.distance for m in res], dists, atol=atol)


@pytest.mark.parametrize(
    "storage, policy", [("float32", "nearest"), ("int8", "nearest"), ("float32", "mean-of-3"), ("int8", "template")]
)
def test_enrol_remove_identify_matches_brute_force_and_fresh_load(gallery_location, storage, policy):
    rng = np.random.default_rng(0)
    people = {f"p{i}": unit(rng, int(rng.integers(1, 5))) for i in range(60)}
    queries = unit(rng, 25)
    atol = 1e-4
    with Gallery.open(gallery_location, "m1", D, storage=storage, index="exact", policy=policy) as g:
        g.enroll_many([Record(n, e, [f"{n}_{j}" for j in range(len(e))]) for n, e in list(people.items())[:30]])
        g.identify(queries[:1])  # the index is loaded; the rest arrives through the feed
        for name, emb in list(people.items())[30:]:
            g.enroll(name, emb, [f"{name}_{j}" for j in range(len(emb))])
        more = unit(rng, 3)  # faces added to someone already enrolled: their score (and template) must follow
        g.enroll("p5", more, ["p5_more"] * 3)
        people["p5"] = np.concatenate([people["p5"], more])
        for name in ("p3", "p31", "p59"):
            assert g.remove(name) == len(people.pop(name))
        if storage == "int8":  # the reference searches what the gallery stores
            people = {n: dequantize(quantize(e)) for n, e in people.items()}
        assert_brute(g, people, queries, atol=atol)
    with Gallery.open(gallery_location, "m1", D, index="exact") as fresh:  # a first load (bulk fetch)
        assert fresh.policy == policy  # recorded on creation, in the file or in PostgreSQL
        assert fresh.storage == storage and len(fresh) == sum(len(e) for e in people.values())
        assert {p.name: p.faces for p in fresh.people()} == {n: len(e) for n, e in people.items()}
        assert_brute(fresh, people, queries, atol=atol)
        records = {r.name: r for r in fresh.records()}
    with pytest.raises(GalleryError, match=f"policy {policy!r}.*not 'mean-of-2'"):
        Gallery.open(gallery_location, "m1", D, policy="mean-of-2")
        assert list(records["p0"].sources) == [f"p0_{j}" for j in range(len(people["p0"]))]


@pytest.mark.parametrize("policy", ["nearest", "template"])
def test_a_process_that_enrolled_itself_still_sees_what_others_enrolled(gallery_location, policy):
    """The review's defect: A enrols, B enrols, A enrols again; A must still find B's face. With templates, A's
    template of a person must follow the faces B adds to them."""
    rng = np.random.default_rng(1)
    a_faces, b_face, a_more = unit(rng, 2), unit(rng, 1), unit(rng, 1)
    with Gallery.open(gallery_location, "m1", D, policy=policy) as a, Gallery.open(gallery_location, "m1", D) as b:
        a.enroll("a1", a_faces[:1])
        assert a.identify(a_faces[:1], k=1)[0][0].name == "a1"  # A has its index loaded
        b.enroll("from-b", b_face)
        a.enroll("a2", a_more)  # A's own, later write must not hide B's earlier one
        found = a.identify(b_face, k=1)[0]
        assert found and found[0].name == "from-b" and found[0].distance == pytest.approx(0, abs=1e-6)
        b.identify(a_more, k=1)
        a.remove("a2")
        assert {m.name for m in b.identify(a_more, k=3)[0]} == {"a1", "from-b"}  # removal reaches B's index
        assert len(b._index) == 2
        b.enroll("a1", a_more)  # B adds a face to A's person
        people = {"a1": np.concatenate([a_faces[:1], a_more]), "from-b": b_face}
        assert_brute(a, people, np.concatenate([a_faces, a_more]), k=2)


def test_changes_committed_out_of_order_are_not_skipped(pg_url):
    """Two writers overlap: the first holds its transaction open while the second waits; a reader that syncs in
    between and after sees both (with ids handed out before commit, "ids above the last seen" would skip one)."""
    rng = np.random.default_rng(2)
    first, second = unit(rng, 1), unit(rng, 1)
    with (
        Gallery.open(pg_url, "m1", D) as a,
        Gallery.open(pg_url, "m1", D) as b,
        Gallery.open(pg_url, "m1", D) as reader,
    ):
        reader.sync()
        second_done = threading.Event()
        with a.store._change() as (cur, seq):
            person = cur.execute("INSERT INTO people (name, created) VALUES (?, 0) RETURNING id", ("first",)).fetchone()
            a.store._insert_faces(cur, [(person[0], a.store.encode(first)[0], "x")], 0.0, seq)
            writer = threading.Thread(target=lambda: (b.enroll("second", second), second_done.set()))
            writer.start()
            time.sleep(0.3)
            assert not second_done.is_set()  # writers are serialised on the feed
            assert reader.identify(first, k=5) == [[]]  # nothing committed yet
        writer.join(10)
        assert second_done.is_set()
        assert {m.name for m in reader.identify(first, k=5)[0]} == {"first", "second"}
        assert reader.identify(second, k=1)[0][0].name == "second"


def test_removal_is_real_in_postgres(pg_url):
    import psycopg

    rng = np.random.default_rng(3)
    with Gallery.open(pg_url, "m1", D) as g:
        g.enroll("keep", unit(rng, 1))
        g.enroll("Zebediah Secretname", unit(rng, 3))
        g.remove("Zebediah Secretname")
        with pytest.raises(GalleryError, match="no person named"):
            g.remove("Zebediah Secretname")
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM people WHERE name LIKE 'Zeb%'").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM faces").fetchone()[0] == 1
        assert conn.execute("SELECT count(*) FROM embeddings").fetchone()[0] == 1
        tombstones = conn.execute("SELECT * FROM removed_faces").fetchall()
        assert len(tombstones) == 3 and all(len(t) == 2 for t in tombstones)  # ids and feed numbers only


def test_postgres_refuses_other_models_newer_schemas_and_foreign_tables(pg_cluster):
    import psycopg

    url = pg_cluster.create_database()
    with Gallery.open(url, "model-A", D) as g:
        g.enroll("a", unit(np.random.default_rng(4), 1))
    with pytest.raises(GalleryError, match="model-A.*model-B"):
        Gallery.open(url, "model-B", D)
    with pytest.raises(GalleryError, match="16-D.*32-D"):
        Gallery.open(url, "model-A", 32)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE facenet_schema SET version = 99")
    with pytest.raises(GalleryError, match="newer facenet"):
        Gallery.open(url, "model-A", D)

    foreign = pg_cluster.create_database()
    with psycopg.connect(foreign, autocommit=True) as conn:
        conn.execute("CREATE TABLE people (x int)")
    with pytest.raises(GalleryError, match="another application"):
        Gallery.open(foreign, "model-A", D)
    with psycopg.connect(foreign) as conn:
        assert (
            conn.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'").fetchone()[0]
            == 1
        )  # untouched
    with pytest.raises(GalleryError, match="no gallery in database"):
        Gallery.open(pg_cluster.create_database(), create=False)


def test_unreachable_server_is_a_clear_error():
    import pgcluster

    url = f"postgresql://facenet:secret-pw@127.0.0.1:{pgcluster.free_port()}/nothing"
    with pytest.raises(GalleryUnavailableError, match="cannot be reached") as err:
        Gallery.open(url, "m1", D)
    assert "secret-pw" not in str(err.value)


def test_export_from_postgres_is_an_owner_only_sqlite_gallery(pg_url, tmp_path):
    rng = np.random.default_rng(5)
    a = unit(rng, 2)
    with Gallery.open(pg_url, "m1", D, storage="int8") as g:
        g.enroll("a", a, ["a1", "a2"])
        g.export(tmp_path / "out.db")
        exported = {r.name: r for r in g.records()}
    assert (os.stat(tmp_path / "out.db").st_mode & 0o777) == 0o600
    with Gallery.open(tmp_path / "out.db", "m1", D) as copy:
        assert copy.storage == "int8"
        got = {r.name: r for r in copy.records()}
    np.testing.assert_array_equal(got["a"].embeddings, exported["a"].embeddings)  # byte for byte
    assert list(got["a"].sources) == ["a1", "a2"]


def test_sqlite_version_1_file_is_migrated_and_keeps_its_faces(tmp_path):
    from facenet.gallery.sqlite import _MIGRATIONS, APPLICATION_ID

    path = tmp_path / "old.db"
    rng = np.random.default_rng(6)
    vectors = unit(rng, 3)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
    conn.execute("PRAGMA user_version=1")
    conn.executescript(_MIGRATIONS[0])
    conn.executemany(
        "INSERT INTO meta VALUES (?, ?)", [("model_id", "m1"), ("embedding_size", str(D)), ("storage", "float32")]
    )
    conn.execute("INSERT INTO people (name, created) VALUES ('old', 0)")
    for i, v in enumerate(vectors):
        conn.execute("INSERT INTO faces (person_id, source, created) VALUES (1, ?, 0)", (f"s{i}",))
        conn.execute("INSERT INTO embeddings VALUES (?, ?)", (i + 1, v.astype("<f4").tobytes()))
    conn.close()
    with Gallery.open(path, "m1", D) as g:
        assert g.identify(vectors[1:2], k=1)[0][0].distance == pytest.approx(0, abs=1e-6)
        g.enroll("new", unit(rng, 1))
        assert {p.name for p in g.people()} == {"old", "new"}
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == 2


def test_another_process_enrolling_in_between_is_seen(gallery_location):
    """The same defect across real processes: a long-lived gallery that enrolled itself, a second process
    (as `facenet gallery enroll` beside `facenet serve`) enrolling, then this one enrolling again."""
    from test_gallery_crash import start_writer

    rng = np.random.default_rng(7)
    mine, more = unit(rng, 1, 128), unit(rng, 1, 128)
    with Gallery.open(gallery_location, "model-x", 128, policy="nearest") as g:  # a face is at 0 from its owner
        g.enroll("mine", mine)
        assert g.identify(mine, k=1)[0][0].name == "mine"
        child = start_writer(gallery_location, "other", 1, faces=3)
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        g.enroll("more", more)
        theirs = next(r for r in g.records() if r.name == "other_0").embeddings
        for face in theirs:
            found = g.identify(face, k=1)[0][0]
            assert found.name == "other_0" and found.distance == pytest.approx(0, abs=1e-5)
        assert len(g._index) == 5


def test_missing_server_binaries_give_a_clear_skip_reason(monkeypatch):
    import pgcluster

    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setenv("FACENET_PG_BINDIR", "/nonexistent")
    monkeypatch.setattr(pgcluster.glob, "glob", lambda pattern: [])
    assert "initdb, pg_ctl) not found" in pgcluster.missing_reason()
    assert "apt-get install postgresql-15" in pgcluster.missing_reason()
