"""The service over a PostgreSQL gallery whose server goes away and comes back: 503 with Retry-After for
the gallery endpoints meanwhile (verify keeps working), nothing lost, and recovery without a restart."""

import io
import time

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("httpx")
pytest.importorskip("psycopg")

import pgcluster  # noqa: E402
from test_serve import started  # noqa: E402

from facenet.data.synthetic import SyntheticFaces  # noqa: E402
from facenet.embedder import FaceEmbedder  # noqa: E402
from facenet.models.modelfile import load_model_file  # noqa: E402
from facenet.serve import create_app  # noqa: E402
from facenet.serve.security import Keys  # noqa: E402

KEY = "test-key-0123456789abcdef"
FACES = SyntheticFaces(4, seed=7, size=64)


def photo(identity: int, index: int = 0):
    buf = io.BytesIO()
    Image.fromarray(FACES.render(identity, index)).save(buf, "PNG")
    return ("p.png", buf.getvalue(), "image/png")


@pytest.mark.slow
def test_database_outage_is_503_then_the_service_recovers(model_file):
    if pgcluster.missing_reason():
        pytest.skip(pgcluster.missing_reason())
    model, info = load_model_file(model_file)
    embedder = FaceEmbedder(model, info, detector=None)
    with pgcluster.Cluster() as cluster:
        url = cluster.create_database()
        with started(create_app(embedder, url, keys=Keys(admin=KEY)), headers={"X-API-Key": KEY}) as client:
            enrol = dict(url="/api/people", headers={"X-API-Key": KEY})
            assert client.post(**enrol, data={"name": "ann"}, files=[("photos", photo(0))]).status_code == 201
            cluster.pause()
            for response in (
                client.post("/api/identify", files={"photo": photo(0)}),
                client.post(**enrol, data={"name": "bob"}, files=[("photos", photo(1))]),
                client.delete("/api/people/ann", headers={"X-API-Key": KEY}),
            ):
                assert response.status_code == 503, response.text
                assert response.headers["retry-after"] and response.json()["code"] == "gallery_unavailable"
            assert client.post("/api/verify", files={"a": photo(2), "b": photo(2, 1)}).status_code == 200
            cluster.resume()
            deadline = time.monotonic() + 30
            while (r := client.post("/api/identify", files={"photo": photo(0)})).status_code != 200:
                assert r.status_code == 503 and time.monotonic() < deadline, r.text
                time.sleep(0.5)
            assert [m["name"] for m in r.json()["matches"]][:1] == ["ann"]
            assert np.isclose(r.json()["matches"][0]["distance"], 0, atol=1e-5)
            assert [p["name"] for p in client.get("/api/people").json()["people"]] == ["ann"]  # bob never half-made
