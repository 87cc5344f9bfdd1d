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
from PIL import Image

from facenet.data.synthetic import SyntheticFaces

KEY = "live-test-key-0123456789"
FACES = SyntheticFaces(8, seed=5, size=64)
HOST = "127.0.0.1"  # loopback only


def png(identity: int, index: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(FACES.render(identity, index)).save(buf, "PNG")
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Server:
    """`facenet serve` in a child process, on a free loopback port."""

    def __init__(self, tmp: Path, model: Path, env_key: bool = False, gallery: str | None = None,
                 extra: tuple[str, ...] = (), wait: bool = True):
        self.gallery = gallery or tmp / "gallery.db"
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        env = {**os.environ, "XDG_DATA_HOME": str(tmp / "xdg"), "PYTHONUNBUFFERED": "1"}
        cmd = [sys.executable, "-m", "facenet.cli", "serve", "--host", HOST, "--port", str(self.port),
               "--model", str(model), "--gallery", str(self.gallery), "--no-detect", "--log-level", "warning", *extra]
        if env_key:
            env["FACENET_API_KEY"] = KEY
        else:
            env.pop("FACENET_API_KEY", None)
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



async def burst(url: str, requests: list[dict], in_flight: int = 8, timeout: float = 60.0):
    """Send ``requests`` (httpx.request kwargs) with at most ``in_flight`` open at once; (status, seconds) each."""
    gate = asyncio.Semaphore(in_flight)

    async def one(client, req):
        async with gate:
            start = time.perf_counter()
            response = await client.request(**req)
            return response.status_code, time.perf_counter() - start

    async with httpx.AsyncClient(base_url=url, timeout=timeout) as client:
        return await asyncio.gather(*(one(client, r) for r in requests))
