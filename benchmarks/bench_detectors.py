"""Face detector backends on real LFW photos: detection rate and speed, in one run on the same images.

LFW photos hold one labelled face near (125, 125); "centred" counts images whose largest face
has its box centre within 30 px of that point (a proxy for "found the right face").

    .venv/bin/python benchmarks/bench_detectors.py --limit 1000 --threads 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import torch

from facenet.align import get_detector
from facenet.align.crop import select_faces
from facenet.data.images import load_image
from facenet.errors import FaceNetError

DEFAULT_LFW = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lfw" / "images"


def subset(lfw: Path, limit: int | None) -> list[Path]:
    """Deterministic, evenly spread subset of the sorted LFW file list (all of it without a limit)."""
    files = sorted(lfw.glob("*/*.jpg"))
    if limit and limit < len(files):
        step = len(files) / limit
        files = [files[int(i * step)] for i in range(limit)]
    return files


def run(detectors: dict, images: list, chunk: int = 50) -> list[dict]:
    """All backends over the same images, interleaved chunk by chunk so that load from other
    processes on a shared machine falls on every backend alike (fair speed ratios)."""
    rows = {
        name: dict(detector=name, images=len(images), found=0, none=0, several=0, centred=0, seconds=0.0)
        for name in detectors
    }
    for d in detectors.values():
        d.detect(images[0])  # warm-up (lazy allocations) outside the clock
    for k in range(0, len(images), chunk):
        for name, detector in detectors.items():
            r = rows[name]
            start = time.perf_counter()
            results = [detector.detect(image) for image in images[k : k + chunk]]
            r["seconds"] += time.perf_counter() - start
            for image, dets in zip(images[k : k + chunk], results):
                r["found"] += bool(dets)
                r["none"] += not dets
                r["several"] += len(dets) > 1
                if dets:
                    cx, cy = select_faces(dets, image.shape, "largest")[0].center
                    r["centred"] += (cx - 125) ** 2 + (cy - 125) ** 2 <= 30**2
    for r in rows.values():
        r["images_per_s"] = r["images"] / r["seconds"]
    return list(rows.values())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lfw", type=Path, default=DEFAULT_LFW, help="LFW images folder (one sub-folder per person)")
    ap.add_argument("--limit", type=int, default=None, help="evenly spread subset of N images (default: all 13,233)")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads for torch and OpenCV (default 2)")
    ap.add_argument("--detectors", default="center,yunet,dlib,mtcnn", help="comma-separated backends")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    files = subset(args.lfw, args.limit)
    if not files:
        print(f"no LFW images under {args.lfw}", file=sys.stderr)
        return 2
    images = [load_image(f) for f in files]
    detectors = {}
    for name in args.detectors.split(","):
        try:
            detectors[name] = get_detector(name)
        except FaceNetError as exc:
            print(f"{name}: skipped ({exc})", file=sys.stderr)
    rows = run(detectors, images)
    peer = next((r for r in rows if r["detector"] == "yunet"), None)
    print(
        f"{len(images)} LFW images, {args.threads} threads\n{'detector':8s} {'found %':>8s} {'none':>6s} "
        f"{'several':>8s} {'centred %':>10s} {'img/s':>8s} {'vs yunet':>9s}"
    )
    for r in rows:
        ratio = f"{r['images_per_s'] / peer['images_per_s']:.3f}x" if peer else "-"
        print(
            f"{r['detector']:8s} {100 * r['found'] / r['images']:8.2f} {r['none']:6d} {r['several']:8d} "
            f"{100 * r['centred'] / r['images']:10.2f} {r['images_per_s']:8.1f} {ratio:>9s}"
        )
    if args.json:
        args.json.write_text(json.dumps({"threads": args.threads, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
