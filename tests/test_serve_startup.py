"""`facenet serve` starting on a big gallery, as a real uvicorn process on loopback: the socket opens at once,
/healthz answers within a second while the gallery loads, /readyz says 503 until every face is in the index.
Started without any key, it answers 401 to the gallery's endpoints and says how to set the keys."""

import time

import httpx
import pytest
from live import KEY, Server, big_gallery, png

pytestmark = pytest.mark.slow
FACES = 60_000  # past the exact index's limit: an HNSW build of about 10 s on two loaded cores


def test_healthz_answers_while_a_big_gallery_loads(tmp_path, model_file):
    gallery = tmp_path / "big.db"
    big_gallery(gallery, model_file, FACES)
    server = Server(tmp_path, model_file, gallery=str(gallery), key=False, wait=False)
    try:
        deadline = time.monotonic() + 120
        health, readiness = [], []
        while time.monotonic() < deadline:
            assert server.proc.poll() is None, server.log.read_text()
            start = time.monotonic()
            try:
                status = httpx.get(server.url + "/healthz", timeout=5).status_code
            except httpx.TransportError:  # the process is still importing and loading the model
                time.sleep(0.1)
                continue
            health.append((status, time.monotonic() - start))
            ready = httpx.get(server.url + "/readyz", timeout=5)
            readiness.append(ready.status_code)
            if ready.status_code == 200:
                break
            assert ready.status_code == 503 and ready.json()["code"] == "not_ready" and ready.headers["retry-after"]
            time.sleep(0.2)
        assert readiness and readiness[-1] == 200, (readiness, server.log.read_text())
        assert readiness.count(503) >= 3, readiness  # the load was seen from outside, for a second or more
        assert all(status == 200 for status, _ in health)
        slowest = max(seconds for _, seconds in health)
        assert slowest < 1.0, f"/healthz took {slowest:.2f} s while the gallery loaded"

        # no key configured: the gallery is closed, and the start-up output says how to open it
        for r in (
            httpx.get(server.url + "/api/people", timeout=30),
            httpx.post(
                server.url + "/api/identify",
                timeout=30,
                headers={"X-API-Key": KEY},
                files={"photo": ("q.png", png(0, 0), "image/png")},
            ),
        ):
            assert r.status_code == 401 and r.json()["code"] == "no_api_key", r.text
        log = server.log.read_text()
        assert "FACENET_API_KEY" in log and "FACENET_READ_KEY" in log and "--public" in log
    finally:
        server.stop()
