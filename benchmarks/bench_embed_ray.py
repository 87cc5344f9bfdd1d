"""`facenet embed --out DIR/`: photos/s in one process against Ray on this machine (issue 25, item 2).

The same photos, the same model and options, in the same run, one engine after the other (``--repeats``
rounds, alternating):

- ``one process``: ``facenet embed PHOTOS --out DIR/`` as users run it (its default ``--workers``: the cores
  but one decode and detect ahead of the network), a process of its own; the wall time includes the start
  (imports, model load).
- ``Ray local, N actors``: a process of its own that starts a local Ray (``ray.init(num_cpus=cores)``, timed
  apart: *Ray start*), then ``facenet.ray_embed.embed_on_ray(..., actors=N)`` (each actor loads the model once:
  included), then shuts Ray down; the wall time is the whole process's.

photos/s = photos / wall seconds of the whole process (start included, as a user waits for it); "work photos/s"
leaves out the Ray start (and the one-process run's model load is still in). Both engines' shard directories are
read back and compared: the same rows, the largest embedding difference printed.

Sets: ``lfw`` (``--photos`` LFW thumbnails, 250 px, spread over the sorted list) and ``fullsize``
(``--fullsize`` of them upscaled to ``--megapixels`` portraits, JPEG q90, made into a private temporary folder
and deleted; ``fullsize_photos.portrait``). Photos and embeddings are never printed.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_embed_ray.py --photos 600 --fullsize 60 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
LFW = HERE.parent.parent / "shared" / "data" / "lfw" / "images"
sys.path.insert(0, str(HERE))

from machine import cpu_name  # noqa: E402

RAY_DRIVER = """
import json, sys, time
t0 = time.perf_counter()
import ray
from facenet.ray_embed import embed_on_ray
spec = json.loads(sys.argv[1])
t1 = time.perf_counter()
ray.init(num_cpus=spec["cpus"], include_dashboard=False, configure_logging=False)
t2 = time.perf_counter()
done = embed_on_ray(spec["photos"], spec["out"], spec["model"], actors=spec["actors"], batch_size=spec["batch"],
                    progress=False)
t3 = time.perf_counter()
ray.shutdown()
print(json.dumps({"imports": t1 - t0, "ray_start": t2 - t1, "embed": t3 - t2, "photos": done.run.photos}))
"""


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), *filter(None, [os.environ.get("PYTHONPATH")])])}


def one_process(photos: list[str], out: Path, model: str | None, batch: int) -> dict:
    cmd = [sys.executable, "-m", "facenet.cli", "embed", *photos, "--out", f"{out}/", "--batch-size", str(batch)]
    cmd += ["--model", model] if model else []
    start = time.perf_counter()
    subprocess.run(cmd, env=_env(), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return {"wall": time.perf_counter() - start}


def on_ray(photos: list[str], out: Path, model: str | None, actors: int, batch: int) -> dict:
    spec = {"photos": photos, "out": str(out), "model": model, "actors": actors, "batch": batch,
            "cpus": os.cpu_count()}  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", RAY_DRIVER, json.dumps(spec)], env=_env(), check=True, capture_output=True, text=True
    )
    wall = time.perf_counter() - start
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    return {"wall": wall, **figures}


def compare(a: Path, b: Path) -> float:
    """The largest embedding difference between two shard directories of the same photos (same rows asserted)."""
    import numpy as np

    from facenet.shards import read_shards

    x, y = read_shards(a), read_shards(b)
    assert x.paths == y.paths and [s.path for s in x.skipped] == [s.path for s in y.skipped], "different rows"
    return float(np.abs(x.embeddings - y.embeddings).max()) if len(x) else 0.0


def lfw_photos(n: int) -> list[str]:
    everything = sorted(str(p) for p in LFW.glob("*/*.jpg"))
    step = max(1, len(everything) // n)
    return everything[::step][:n]


def fullsize_set(photos: list[str], megapixels: float, folder: Path) -> list[str]:
    from fullsize_photos import jpeg, portrait

    folder.mkdir(mode=0o700)
    made = []
    for i, path in enumerate(photos):
        target = folder / f"photo{i:04d}.jpg"
        target.write_bytes(jpeg(portrait(path, megapixels)))
        made.append(str(target))
    return made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=600, help="LFW photos (default 600)")
    parser.add_argument("--fullsize", type=int, default=0, help="also this many upscaled photos (default none)")
    parser.add_argument("--megapixels", type=float, default=12.0, help="size of the upscaled photos (default 12)")
    parser.add_argument("--actors", type=int, default=2, help="Ray actors (default 2)")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of (one process, Ray) (default 1)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--model", default=None, help="model (default: the installed default)")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-embed-ray-") as tmp:
        base = lfw_photos(args.photos)
        sets = [("lfw", base)]
        if args.fullsize:
            sets.append(("fullsize", fullsize_set(base[: args.fullsize], args.megapixels, Path(tmp) / "fullsize")))
        results = []
        for name, photos in sets:
            for round_ in range(args.repeats):
                one_dir, ray_dir = Path(tmp) / f"{name}-one-{round_}", Path(tmp) / f"{name}-ray-{round_}"
                one = one_process(photos, one_dir, args.model, args.batch_size)
                ray = on_ray(photos, ray_dir, args.model, args.actors, args.batch_size)
                diff = compare(one_dir, ray_dir)
                load = os.getloadavg()[0]
                results.append({"set": name, "round": round_ + 1, "photos": len(photos), "one": one, "ray": ray,
                                "max_diff": diff, "load": load})  # fmt: skip
                shutil.rmtree(one_dir), shutil.rmtree(ray_dir)
                print(f"{name} round {round_ + 1}: one process {one['wall']:.1f} s, Ray {ray['wall']:.1f} s "
                      f"(start {ray['ray_start']:.1f} s), largest difference {diff:.2g}", file=sys.stderr)  # fmt: skip

    print(f"CPU: {cpu_name()} ({os.cpu_count()} cores); Ray local, {args.actors} actors; batch {args.batch_size}")
    print()
    print("| set | round | photos | one process s | photos/s | Ray s (start) | photos/s | work photos/s | Ray / one "
          "| largest diff | load |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        n, one, ray = r["photos"], r["one"]["wall"], r["ray"]["wall"]
        work, start = r["ray"]["embed"], r["ray"]["ray_start"]
        cells = [r["set"], r["round"], n, f"{one:.1f}", f"{n / one:.2f}", f"{ray:.1f} ({start:.1f})", f"{n / ray:.2f}"]
        cells += [f"{n / work:.2f}", f"{one / ray:.2f}x", f"{r['max_diff']:.2g}", f"{r['load']:.1f}"]
        print("| " + " | ".join(map(str, cells)) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": cpu_name(), "results": results}, indent=1))


if __name__ == "__main__":
    main()
