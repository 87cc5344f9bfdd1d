"""Three `facenet serve` replicas over one PostgreSQL gallery, on loopback ports: bounded concurrent bursts of
enrol / identify / remove spread across them; afterwards every replica answers like a brute-force search over
what was committed; no enrolment lost or doubled; SIGKILL of a replica in the middle of enrolments leaves no
half-written person while the others keep serving; propagation lag between replicas."""

import asyncio
import io
import signal
import threading
import time

import numpy as np
import pytest
from PIL import Image

httpx = pytest.importorskip("httpx")
psycopg = pytest.importorskip("psycopg")

from live import KEY, Server, burst, enrol_request, identify_request, propagation_lag  # noqa: E402
from test_gallery import brute_identify  # noqa: E402

from facenet.data.synthetic import SyntheticFaces  # noqa: E402
from facenet.gallery.policy import DEFAULT_POLICY  # noqa: E402

pytestmark = pytest.mark.slow
FACES = SyntheticFaces(64, seed=11, size=64)
REPLICAS = 3


def photo(identity: int, index: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(FACES.render(identity, index)).save(buf, "PNG")
    return buf.getvalue()


def run_burst(servers, requests, tolerate_disconnect=False):
    """Spread ``requests`` round robin over ``servers``, all at once; statuses in request order."""

    async def all_servers():
        groups = [requests[i :: len(servers)] for i in range(len(servers))]
        results = await asyncio.gather(
            *(burst(s.url, g, in_flight=4, tolerate_disconnect=tolerate_disconnect) for s, g in zip(servers, groups))
        )
        statuses = [None] * len(requests)
        for i, res in enumerate(results):
            statuses[i :: len(servers)] = [status for status, _ in res]
        return statuses

    return asyncio.run(all_servers())


def answers(server, queries: list[bytes]) -> list[list[tuple[str, float]]]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        out = []
        for q in queries:
            r = client.request(**identify_request(q))
            assert r.status_code == 200, r.text
            out.append([(m["name"], round(m["distance"], 4)) for m in r.json()["matches"]])
        return out


def embed(server, photos: list[bytes]) -> np.ndarray:
    rows = []
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for start in range(0, len(photos), 20):
            files = [("photos", (f"{i}.png", p, "image/png")) for i, p in enumerate(photos[start : start + 20])]
            r = client.post("/api/embed", files=files)
            assert r.status_code == 200, r.text
            rows += r.json()["embeddings"]
    return np.array(rows, np.float32)


def people_in_database(url: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        assert (
            conn.execute(
                "SELECT count(*) FROM faces f LEFT JOIN embeddings e ON e.face_id = f.id WHERE e.face_id IS NULL"
            ).fetchone()[0]
            == 0
        )  # no face without its embedding
        return dict(
            conn.execute(
                "SELECT p.name, count(f.id) FROM people p LEFT JOIN faces f ON f.person_id = p.id GROUP BY p.name"
            ).fetchall()
        )


@pytest.fixture(scope="module")
def replicas(tmp_path_factory, model_file, pg_cluster):
    url = pg_cluster.create_database()
    tmp = tmp_path_factory.mktemp("replicas")
    servers = [Server(tmp, model_file, gallery=url, extra=("--backend", "torch"), wait=False) for _ in range(REPLICAS)]
    try:
        for server in servers:  # they started together: the schema was created once, under its lock
            server.wait_ready()
        yield url, servers, tmp
    finally:
        for server in servers:
            assert server.stop() in (0, -signal.SIGTERM), server.log.read_text()
            assert "Traceback" not in server.log.read_text(), server.log.read_text()


def test_bursts_across_replicas_leave_every_replica_identical(replicas):
    url, servers, _ = replicas
    enrolled = {f"p{i:02d}": [photo(i, 0), photo(i, 1)] for i in range(36)}
    queries = [photo(i, 3) for i in range(40)]  # 36 people enrolled at some point, 4 never
    first = [enrol_request(n, p) for n, p in list(enrolled.items())[:24]]
    assert run_burst(servers, first + [identify_request(q) for q in queries[:24]]) == [201] * 24 + [200] * 24
    removed = [f"p{i:02d}" for i in range(8)]
    second = [dict(method="DELETE", url=f"/api/people/{n}", headers=first[0]["headers"]) for n in removed] + [
        enrol_request(n, p) for n, p in list(enrolled.items())[24:]
    ]
    statuses = run_burst(servers, second + [identify_request(q) for q in queries[24:]])
    assert statuses == [200] * 8 + [201] * 12 + [200] * 16
    for name in removed:
        del enrolled[name]

    assert people_in_database(url) == {n: 2 for n in enrolled}  # nothing lost, nothing doubled
    replies = [answers(s, queries) for s in servers]
    assert replies[0] == replies[1] == replies[2]  # every replica answers every identify identically
    for server in servers:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            assert {
                p["name"]: p["faces"] for p in client.get("/api/people", headers={"X-API-Key": KEY}).json()["people"]
            } == {n: 2 for n in enrolled}

    # and those answers are a brute-force search (under the default policy) over what is committed
    faces = embed(servers[0], [p for ps in enrolled.values() for p in ps])
    people = {n: faces[2 * i : 2 * i + 2] for i, n in enumerate(enrolled)}  # two photos each
    for q, reply in zip(embed(servers[0], queries), replies[0]):
        names, scores = brute_identify(people, q, 5, DEFAULT_POLICY)
        assert [n for n, _ in reply] == names
        np.testing.assert_allclose([d for _, d in reply], scores, atol=1e-3)


def test_propagation_lag_between_replicas(replicas):
    _, servers, _ = replicas
    lags = propagation_lag(servers, [(f"lag{i:02d}", photo(40 + i, 0)) for i in range(20)])
    print(
        f"\npropagation lag over {len(lags)} enrolments (201 on one replica -> named by the next): "
        f"p50 {np.percentile(lags, 50) * 1000:.1f} ms, p99 {np.percentile(lags, 99) * 1000:.1f} ms"
    )
    assert lags.max() < 5.0


def test_sigkill_of_a_replica_mid_enrolment_leaves_no_half_person(replicas, model_file):
    url, servers, tmp = replicas
    victim = Server(tmp, model_file, gallery=url, extra=("--backend", "torch"))
    big = {f"k{i:02d}": [photo(i % 40, j) for j in range(6)] for i in range(24)}
    outcome = {}

    def enrol_on_victim():
        outcome["statuses"] = run_burst(
            [victim], [enrol_request(n, p) for n, p in big.items()], tolerate_disconnect=True
        )

    writer = threading.Thread(target=enrol_on_victim)
    writer.start()
    deadline = time.monotonic() + 60
    while sum(n.startswith("k") for n in people_in_database(url)) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    victim.proc.send_signal(signal.SIGKILL)  # in the middle of the burst of enrolments
    survivors = run_burst(servers, [identify_request(photo(i, 4)) for i in range(24)])
    writer.join(60)
    assert victim.proc.wait(10) == -signal.SIGKILL
    assert survivors == [200] * 24  # the others kept serving

    in_db = people_in_database(url)
    answered = {n for n, status in zip(big, outcome["statuses"]) if status == 201}
    assert answered <= set(in_db)  # every 201 is committed
    assert all(in_db[n] == 6 for n in big if n in in_db)  # and nobody is half there
    assert 3 <= len(in_db.keys() & big.keys()) < len(big)  # the kill did land among the enrolments
    replies = [answers(s, [photo(i, 5) for i in range(0, 40, 4)]) for s in servers]
    assert replies[0] == replies[1] == replies[2]
