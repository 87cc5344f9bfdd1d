"""Several `facenet serve` replicas over one PostgreSQL gallery, on loopback ports: propagation lag and a
mixed burst.

A throwaway PostgreSQL cluster (durable settings) and N replicas serving a small untrained model (the
model's quality does not matter here; ``--no-detect``, photos are synthetic face crops). Then:

* lag: enrol one photo on replica i, ask replica i+1 (round robin) to identify it until it names the
  person; time from the 201 to that answer (it includes that one identify request) — p50 / p99;
* burst: enrolments, identifications and removals at once, spread over every replica (bounded: at most
  4 requests in flight per replica); statuses counted, 5xx must be 0; afterwards every replica must
  answer the same identifications identically.

    .venv/bin/python benchmarks/bench_replicas.py --replicas 3 --lag-samples 100
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from facenet.data.synthetic import SyntheticFaces
from facenet.models import create_model
from facenet.models.modelfile import save_model

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / "tests"), str(Path(__file__).resolve().parent)]
import pgcluster  # noqa: E402
from bench_gallery_stores import DURABLE, cpu_name  # noqa: E402
from live import KEY, Server, burst, enrol_request, identify_request, propagation_lag  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--replicas", type=int, default=3, choices=(2, 3, 4))
    ap.add_argument("--lag-samples", type=int, default=100)
    ap.add_argument("--burst", type=int, default=240, help="requests in the mixed burst")
    args = ap.parse_args()
    faces = SyntheticFaces(1000, seed=21, size=64)

    def photo(identity: int, index: int = 0) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(faces.render(identity, index)).save(buf, "PNG")
        return buf.getvalue()

    print(f"# CPU: {cpu_name()}; load average before: {os.getloadavg()[0]:.2f}", flush=True)
    with tempfile.TemporaryDirectory() as tmp, pgcluster.Cluster(DURABLE) as cluster:
        model = Path(tmp) / "tiny.safetensors"
        save_model(create_model("nns", input_size=48), model)
        url = cluster.create_database()
        t0 = time.perf_counter()
        servers = [
            Server(Path(tmp), model, gallery=url, extra=("--backend", "torch"), wait=False)
            for _ in range(args.replicas)
        ]
        try:
            for server in servers:
                server.wait_ready()
            print(f"{args.replicas} replicas ready in {time.perf_counter() - t0:.1f} s", flush=True)
            lags = propagation_lag(servers, [(f"lag{i}", photo(i)) for i in range(args.lag_samples)]) * 1e3

            # the mixed burst: a third enrolments of new people, a sixth removals of the lag people, the rest
            # identifications, dealt round robin over the replicas
            kinds = ["enrol", "identify", "identify", "enrol", "remove", "identify"]
            requests = []
            for i in range(args.burst):
                kind = kinds[i % len(kinds)]
                if kind == "enrol":
                    person = 500 + i % 500
                    requests.append(enrol_request(f"b{i}", [photo(person, 1 + i // 500), photo(person, 9)]))
                elif kind == "remove":
                    requests.append(
                        dict(method="DELETE", url=f"/api/people/lag{i // len(kinds)}", headers={"X-API-Key": KEY})
                    )
                else:
                    requests.append(identify_request(photo(i % args.lag_samples, 2)))

            async def spread():
                groups = [requests[r :: len(servers)] for r in range(len(servers))]
                return await asyncio.gather(*(burst(s.url, g, in_flight=4) for s, g in zip(servers, groups)))

            t0 = time.perf_counter()
            results = [x for group in asyncio.run(spread()) for x in group]
            burst_s = time.perf_counter() - t0
            statuses = Counter(status for status, _ in results)
            replies = []
            for server in servers:
                with httpx.Client(base_url=server.url, timeout=60) as client:
                    replies.append(
                        [client.request(**identify_request(photo(i, 3))).json()["matches"] for i in range(0, 1000, 25)]
                    )
            identical = all(r == replies[0] for r in replies)
        finally:
            for server in servers:
                server.stop()
    print(f"\n# load average after: {os.getloadavg()[0]:.2f}")
    print(
        "| replicas | lag p50 (ms) | lag p99 (ms) | lag max (ms) | burst requests | burst s | statuses | 5xx | "
        "replicas identical after |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {args.replicas} | {np.percentile(lags, 50):.1f} | {np.percentile(lags, 99):.1f} | {lags.max():.1f} | "
        f"{len(requests)} | {burst_s:.1f} | {dict(sorted(statuses.items()))} | "
        f"{sum(n for s, n in statuses.items() if s >= 500)} | {identical} |"
    )


if __name__ == "__main__":
    main()
