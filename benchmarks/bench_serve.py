"""The HTTP service under load, on 127.0.0.1 only: latency p50/p99 and throughput vs the same work
done in process without HTTP (the peer, measured in the same run).

A `facenet serve` child process is started on a free loopback port with a model (``--model FILE``,
or a fresh ``nns`` network at ``--input-size``), 20 people are enrolled, then ``--requests``
verify/identify requests (half each) are sent with at most ``--in-flight`` open at once, for each
value of ``--in-flight``. The peer runs the service's own verify/identify jobs in process, one
after another, so the ratio is what HTTP, multipart parsing and the worker queue cost (or gain). A last
round sends ``--overload`` requests at once to a server started with ``--max-pending 4`` and counts the 503
answers (no other 5xx allowed).

    .venv/bin/python benchmarks/bench_serve.py --requests 400 --in-flight 1,8,32
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from facenet.data.synthetic import SyntheticFaces
from facenet.embedder import load_embedder
from facenet.models import create_model
from facenet.models.modelfile import save_model
from facenet.serve.engine import Engine, Limits, Upload

HOST = "127.0.0.1"
KEY = "bench-key-0123456789abcdef"


def png(faces: SyntheticFaces, identity: int, index: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(faces.render(identity, index)).save(buf, "PNG")
    return buf.getvalue()


def start_server(
    model: Path, gallery: Path, max_pending: int, options=("--no-detect",)
) -> tuple[subprocess.Popen, str]:
    """``facenet serve`` on a free loopback port with ``options`` (default: inputs are face crops)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]
    env = {**os.environ, "FACENET_API_KEY": KEY}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "facenet.cli",
            "serve",
            "--host",
            HOST,
            "--port",
            str(port),
            "--model",
            str(model),
            "--gallery",
            str(gallery),
            *options,
            "--max-pending",
            str(max_pending),
            "--log-level",
            "error",
        ],
        env=env,
    )
    url = f"http://{HOST}:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not become ready")


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)


def workload(photos: list[bytes], n: int) -> list[dict]:
    out = []
    for i in range(n):
        a, b = photos[i % len(photos)], photos[(i * 7 + 3) % len(photos)]
        if i % 2:
            out.append(
                dict(
                    method="POST",
                    url="/api/verify",
                    files={"a": ("a.png", a, "image/png"), "b": ("b.png", b, "image/png")},
                )
            )
        else:
            out.append(dict(method="POST", url="/api/identify", files={"photo": ("q.png", a, "image/png")}))
    return out


async def burst(url: str, requests: list[dict], in_flight: int) -> tuple[list[int], list[float], float]:
    gate = asyncio.Semaphore(in_flight)

    async def one(client, req):
        async with gate:
            start = time.perf_counter()
            r = await client.request(**req)
            return r.status_code, time.perf_counter() - start

    limits = httpx.Limits(max_connections=in_flight, max_keepalive_connections=in_flight)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        t0 = time.perf_counter()
        results = await asyncio.gather(*(one(client, r) for r in requests))
        wall = time.perf_counter() - t0
    return [s for s, _ in results], [t for _, t in results], wall


def direct(model: Path, gallery: Path, photos: list[bytes], n: int) -> tuple[list[float], float]:
    """The peer: the service's own jobs (``Engine.verify`` / ``Engine.identify``) called in process,
    sequentially: the same decoding, model and gallery work, without HTTP, parsing or queueing.

    It runs on one worker thread, as in the server: on this 2-core machine PyTorch called from the
    main thread measured ~3x slower with long tails (OpenMP thread team contention)."""
    with ThreadPoolExecutor(max_workers=1) as worker:
        return worker.submit(_direct, model, gallery, photos, n).result()


def _direct(model: Path, gallery: Path, photos: list[bytes], n: int) -> tuple[list[float], float]:
    engine = Engine(load_embedder(model), gallery, Limits())
    engine._open_gallery()
    times = []
    try:
        t0 = time.perf_counter()
        for i in range(n):
            a, b = Upload("a.png", photos[i % len(photos)]), Upload("b.png", photos[(i * 7 + 3) % len(photos)])
            start = time.perf_counter()
            engine.verify([a, b], None) if i % 2 else engine.identify(a, 5, None)
            times.append(time.perf_counter() - start)
        wall = time.perf_counter() - t0
    finally:
        engine.gallery.close()
    return times, wall


def row(label: str, times: list[float], wall: float, n: int, errors: str) -> str:
    ms = np.array(times) * 1e3
    return f"| {label} | {n} | {np.percentile(ms, 50):.1f} | {np.percentile(ms, 99):.1f} | {n / wall:.1f} | {errors} |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model file (default: a fresh nns network)")
    ap.add_argument("--input-size", type=int, default=64, help="input size of the fresh nns network")
    ap.add_argument("--photo-size", type=int, default=160, help="side of the synthetic photos")
    ap.add_argument("--requests", type=int, default=400, help="requests per round (bounded)")
    ap.add_argument("--in-flight", default="1,8", help="comma-separated concurrency levels")
    ap.add_argument("--overload", type=int, default=64, help="requests sent at once to a --max-pending 4 server")
    args = ap.parse_args()
    faces = SyntheticFaces(40, seed=11, size=args.photo_size)
    photos = [png(faces, i, 5) for i in range(20, 40)] + [png(faces, i, 6) for i in range(20)]
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(args.model) if args.model else Path(tmp) / "model.safetensors"
        if not args.model:
            save_model(create_model("nns", input_size=args.input_size), model)
        gallery = Path(tmp) / "gallery.db"
        proc, url = start_server(model, gallery, max_pending=max(64, args.overload))
        lines = ["| path | requests | p50 ms | p99 ms | req/s | non-2xx |", "|---|---|---|---|---|---|"]
        try:
            for person in range(20):
                files = [("photos", (f"{j}.png", png(faces, person, j), "image/png")) for j in range(3)]
                r = httpx.post(
                    url + "/api/people",
                    data={"name": f"person {person}"},
                    files=files,
                    headers={"X-API-Key": KEY},
                    timeout=60,
                )
                r.raise_for_status()
            requests = workload(photos, args.requests)
            asyncio.run(burst(url, requests[:16], 4))  # warm-up
            http_rows = {}
            for level in [int(x) for x in args.in_flight.split(",")]:
                statuses, times, wall = asyncio.run(burst(url, requests, level))
                bad = sum(s != 200 for s in statuses)
                http_rows[level] = args.requests / wall
                lines.append(row(f"HTTP, {level} in flight", times, wall, args.requests, str(bad)))
        finally:
            stop(proc)
        times, wall = direct(model, gallery, photos, args.requests)
        lines.append(row("in process, sequential (peer)", times, wall, args.requests, "-"))
        peer = args.requests / wall

        proc, url = start_server(model, gallery, max_pending=4)
        try:
            statuses, times, wall = asyncio.run(burst(url, workload(photos, args.overload), args.overload))
        finally:
            stop(proc)
    print(
        f"model {model.name if args.model else f'nns@{args.input_size} (untrained)'}, "
        f"{args.photo_size}px photos, {os.cpu_count()} CPUs, torch threads default\n"
    )
    print("\n".join(lines))
    for level, rate in http_rows.items():
        print(f"\nthroughput HTTP ({level} in flight) / in process: {rate / peer:.2f}")
    others = sum(s >= 500 and s != 503 for s in statuses)
    print(
        f"\noverload: {args.overload} requests at once, --max-pending 4: {statuses.count(200)} x 200, "
        f"{statuses.count(503)} x 503 (Retry-After), {others} other 5xx"
    )


if __name__ == "__main__":
    main()
