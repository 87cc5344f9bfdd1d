"""`facenet serve` as real child processes on loopback ports, and bounded bursts of requests to them
(shared by the live-service tests, the replica tests and benchmarks/bench_replicas.py)."""

import asyncio
import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from facenet.data.synthetic import SyntheticFaces
from facenet.embedder import load_embedder
from facenet.gallery import Gallery, Record

KEY = "live-test-key-0123456789"
FACES = SyntheticFaces(8, seed=5, size=64)
HOST = "127.0.0.1"  # loopback only


def png(identity: int, index: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(FACES.render(identity, index)).save(buf, "PNG")
    return buf.getvalue()


def big_gallery(path: Path, model: Path | str, faces: int, per_person: int = 200) -> None:
    """``faces`` faces for ``model``, enrolled fast: ``per_person`` random unit rows a person, repeated (what a
    start-up measures is the load, not the rows)."""
    embedder = load_embedder(model, detect=False, backend="torch")
    rows = np.random.default_rng(0).standard_normal((per_person, embedder.embedding_size)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    people = (Record(f"p{i}", rows, ["x.png"] * per_person) for i in range(faces // per_person))
    with Gallery.open(path, embedder.name, embedder.embedding_size, policy="nearest") as g:
        g.enroll_many(people, merge=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Server:
    """`facenet serve` in a child process, on a free loopback port."""

    def __init__(
        self,
        tmp: Path,
        model: Path,
        env_key: bool = False,
        gallery: str | None = None,
        extra: tuple[str, ...] = (),
        wait: bool = True,
        key: bool = True,
        rate_limit: str = "none",
    ):
        """The admin key ``KEY`` from a file (``env_key``: from $FACENET_API_KEY; not ``key``: no key at all);
        no rate limit unless one is given, since the tests send bursts from one address."""
        self.gallery = gallery or tmp / "gallery.db"
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        env = {**os.environ, "XDG_DATA_HOME": str(tmp / "xdg"), "PYTHONUNBUFFERED": "1"}
        cmd = [
            sys.executable,
            "-m",
            "facenet.cli",
            "serve",
            "--host",
            HOST,
            "--port",
            str(self.port),
            "--model",
            str(model),
            "--gallery",
            str(self.gallery),
            "--no-detect",
            "--log-level",
            "warning",
            "--rate-limit",
            rate_limit,
            *extra,
        ]
        for name in ("FACENET_API_KEY", "FACENET_READ_KEY", "FACENET_PUBLIC"):
            env.pop(name, None)
        if key and env_key:
            env["FACENET_API_KEY"] = KEY
        elif key:
            key_file = tmp / "key.txt"
            key_file.write_text(KEY + "\n")
            cmd += ["--api-key-file", str(key_file)]
        self.log = tmp / f"server-{self.port}.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise AssertionError(f"server not ready within 90 s:\n{self.log.read_text()}")

    def stop(self) -> int:
        """SIGTERM, as a service manager stops it; uvicorn finishes, then re-raises the signal (-15)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


async def burst(
    url: str, requests: list[dict], in_flight: int = 8, timeout: float = 60.0, tolerate_disconnect: bool = False
):
    """Send ``requests`` (httpx.request kwargs) with at most ``in_flight`` open at once; (status, seconds) each
    (status 0: connection lost, only with ``tolerate_disconnect``)."""
    gate = asyncio.Semaphore(in_flight)

    async def one(client, req):
        async with gate:
            start = time.perf_counter()
            try:
                response = await client.request(**req)
            except httpx.TransportError:
                if not tolerate_disconnect:
                    raise
                return 0, time.perf_counter() - start  # the server went away (a test killed it)
            return response.status_code, time.perf_counter() - start

    async with httpx.AsyncClient(base_url=url, timeout=timeout) as client:
        return await asyncio.gather(*(one(client, r) for r in requests))


def enrol_request(name: str, photos: list[bytes], key: str = KEY) -> dict:
    """httpx.request kwargs that enrol ``name`` with ``photos`` (PNG bytes); a taken name is an error."""
    return dict(
        method="POST",
        url="/api/people",
        data={"name": name},
        headers={"X-API-Key": key},
        files=[("photos", (f"{name}-{i}.png", p, "image/png")) for i, p in enumerate(photos)],
    )


def identify_request(photo: bytes, top_k: int = 5, threshold: float = 4.0, key: str = KEY) -> dict:
    """httpx.request kwargs that search the gallery for ``photo``; with the admin key, as wide as asked."""
    return dict(
        method="POST",
        url="/api/identify",
        data={"top_k": str(top_k), "threshold": str(threshold)},
        headers={"X-API-Key": key},
        files={"photo": ("q.png", photo, "image/png")},
    )


def propagation_lag(servers: list[Server], people: list[tuple[str, bytes]], timeout: float = 10.0) -> np.ndarray:
    """For each (name, photo): enrol on ``servers[i]``, then ask ``servers[i + 1]`` (round robin) until it names
    that photo's person; seconds from the 201 (the commit) to the first such answer, which includes that one
    identify request (embedding the photo, HTTP)."""
    lags = []
    with httpx.Client(timeout=60) as client:
        for i, (name, photo) in enumerate(people):
            writer, reader = servers[i % len(servers)], servers[(i + 1) % len(servers)]
            r = client.request(**{**enrol_request(name, [photo]), "url": writer.url + "/api/people"})
            assert r.status_code == 201, r.text
            committed = time.perf_counter()
            while True:
                r = client.request(**{**identify_request(photo, 1, 1e-4), "url": reader.url + "/api/identify"})
                assert r.status_code == 200, r.text
                if [m["name"] for m in r.json()["matches"]] == [name]:
                    break
                assert time.perf_counter() - committed < timeout, f"{name} not visible on a second replica"
            lags.append(time.perf_counter() - committed)
    return np.array(lags)
