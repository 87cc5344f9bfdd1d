"""`facenet serve` starting on a gallery of a million faces: is the process live at once, and how long until ready?

A gallery of ``--faces`` faces for the installed default model is written once (random unit rows, 200 a
person: the start-up cost is the load and the index build, not the rows' values), then `facenet serve` is
started on it as a real uvicorn process on loopback, and /healthz and /readyz are polled every 0.2 s from
the moment the process starts. The peer is the same gallery loaded in this process with no server
(``Gallery.open`` + ``sync``): the server's time to ready divided by it says what serving adds.

    .venv/bin/python benchmarks/bench_serve_startup.py --faces 1000000 --gallery /tmp/startup-1m.db
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # live.py, shared with the tests
from bench_gallery_stores import cpu_name  # noqa: E402
from live import Server, big_gallery  # noqa: E402

from facenet.embedder import load_embedder  # noqa: E402
from facenet.gallery import Gallery  # noqa: E402
from facenet.paths import default_model_path  # noqa: E402


def in_process_load(path: Path, model: Path) -> float:
    """Seconds to open the gallery and build its index, with no server around it."""
    embedder = load_embedder(model, detect=False, backend="torch")
    start = time.perf_counter()
    with Gallery.open(path, embedder.name, embedder.embedding_size, create=False) as g:
        g.sync()
    return time.perf_counter() - start


def poll_server(path: Path, model: Path, tmp: Path, limit_s: float) -> dict:
    """Poll a starting server: when it first answered /healthz, each /healthz latency, when /readyz said 200."""
    started = time.perf_counter()
    server = Server(tmp, model, gallery=str(path), wait=False, extra=("--public",), key=False)
    health, first_live, ready_at, not_ready = [], None, None, 0
    try:
        while time.perf_counter() - started < limit_s:
            if server.proc.poll() is not None:
                raise SystemExit(f"server exited:\n{server.log.read_text()}")
            t = time.perf_counter()
            try:
                status = httpx.get(server.url + "/healthz", timeout=10).status_code
            except httpx.TransportError:  # still importing and loading the model
                time.sleep(0.05)
                continue
            health.append((status, time.perf_counter() - t))
            first_live = first_live or time.perf_counter() - started
            if httpx.get(server.url + "/readyz", timeout=10).status_code == 200:
                ready_at = time.perf_counter() - started
                break
            not_ready += 1
            time.sleep(0.2)
    finally:
        server.stop()
    latencies = np.array([s for _, s in health])
    return {
        "live_s": first_live,
        "ready_s": ready_at,
        "probes": len(health),
        "probes_not_200": sum(status != 200 for status, _ in health),
        "readyz_503": not_ready,
        "healthz_median_s": float(np.median(latencies)) if len(latencies) else None,
        "healthz_max_s": float(latencies.max()) if len(latencies) else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--faces", type=int, default=1_000_000)
    parser.add_argument("--gallery", type=Path, help="gallery file to write once and reuse (default: a temporary one)")
    parser.add_argument("--limit", type=float, default=1800, help="seconds to wait for /readyz (default 1800)")
    args = parser.parse_args()
    model = default_model_path()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.gallery or Path(tmp) / "big.db"
        if not path.exists():
            t = time.perf_counter()
            big_gallery(path, model, args.faces)
            print(f"wrote {args.faces:,} faces to {path} in {time.perf_counter() - t:.0f} s")
        peer = in_process_load(path, model)
        r = poll_server(path, model, Path(tmp), args.limit)
    print(f"CPU: {cpu_name()}; {args.faces:,} faces, model {model.name}")
    print(f"{'what':<44}{'seconds':>10}")
    print(f"{'in-process load + index (peer)':<44}{peer:>10.1f}")
    print(f"{'server: first /healthz answer':<44}{r['live_s']:>10.1f}")
    ready = f"{r['ready_s']:>10.1f}" if r["ready_s"] else f"{'> ' + str(args.limit):>10}"
    print(f"{'server: /readyz 200':<44}{ready}")
    print(f"{'/healthz latency while loading, median':<44}{r['healthz_median_s']:>10.3f}")
    print(f"{'/healthz latency while loading, max':<44}{r['healthz_max_s']:>10.3f}")
    print(f"probes: {r['probes']}, not 200: {r['probes_not_200']}, /readyz 503 answers: {r['readyz_503']}")
    if r["ready_s"]:
        print(f"ratio server ready / in-process load: {r['ready_s'] / peer:.2f}x")


if __name__ == "__main__":
    main()
