"""Photo file -> embedding, end to end (decode + detect + align + embed), against dlib on the same LFW photos.

Ours: ``FaceEmbedder`` with a detector (MTCNN, YuNet) and Inception-ResNet-v1 or nns on ONNX Runtime
(weights are random: speed does not depend on them). Peer: dlib's own pipeline (HOG detector, 5-point
chip, ResNet descriptor) through the project's dlib adapter, the pipeline of ``face_recognition``.

    .venv/bin/python benchmarks/bench_end_to_end.py --limit 100
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
LFW = HERE.parent.parent / "shared" / "data" / "lfw" / "images"


def lfw_sample(root: Path, limit: int) -> list[Path]:
    """Evenly spread photos, the same every run."""
    photos = sorted(root.rglob("*.jpg"))
    step = max(1, len(photos) // limit)
    return photos[::step][:limit]


def parse_lfw_args(ap: argparse.ArgumentParser, argv) -> argparse.Namespace | None:
    """Add --images and --threads, parse, apply the thread count; None (said on stderr) without LFW."""
    ap.add_argument("--images", type=Path, default=LFW, help="LFW images folder (default: ../shared/data/lfw/images)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not args.images.is_dir():
        print(f"no LFW images at {args.images}; pass --images", file=sys.stderr)
        return None
    return args


def timed(embedder, photos: list[Path], batch: int) -> float:
    embedder.embed(photos[:2])  # warm-up: lazy model loads, ONNX export
    start = time.perf_counter()
    for i in range(0, len(photos), batch):
        embedder.embed(photos[i : i + batch])
    return len(photos) / (time.perf_counter() - start)


def main(argv=None) -> int:
    from facenet.align import get_detector
    from facenet.baselines.dlib_model import DlibEmbedder
    from facenet.embedder import load_embedder
    from facenet.errors import FaceNetError
    from facenet.models import create_model
    from facenet.models.modelfile import save_model

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=100, help="photos to embed (default 100)")
    ap.add_argument("--batch", type=int, default=32, help="photos per embed() call (default 32)")
    args = parse_lfw_args(ap, argv)
    if args is None:
        return 2
    sys.path.insert(0, str(HERE))
    from bench_embedding import machine_line

    photos = lfw_sample(args.images, args.limit)
    print(machine_line(args.threads))
    print(f"{len(photos)} LFW photos (250x250 JPEG), {args.batch} per call\n")
    rows = [("dlib HOG + ResNet (peer)", timed(DlibEmbedder(), photos, args.batch))]
    with tempfile.TemporaryDirectory() as tmp:
        for arch in ("inception_resnet_v1", "nns"):
            path = Path(tmp) / f"{arch}.safetensors"
            save_model(create_model(arch), path)
            for detector in ("mtcnn", "yunet"):
                try:
                    embedder = load_embedder(path, detector=get_detector(detector), backend="onnx")
                except FaceNetError as exc:
                    print(f"skipping {detector}: {exc}")
                    continue
                rows.append((f"ours: {detector} + {arch} (ONNX Runtime)", timed(embedder, photos, args.batch)))
    peer = rows[0][1]
    print(f"{'pipeline':48s} {'photos/s':>9s} {'x dlib':>7s}")
    for name, rate in rows:
        print(f"{name:48s} {rate:9.1f} {rate / peer:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
