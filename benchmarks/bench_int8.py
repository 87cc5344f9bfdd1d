"""int8 embeddings (128 bytes per 128-D face) vs float32: LFW verification accuracy, same embeddings.

No trained facenet model ships with the project, so the embeddings are dlib's pretrained ResNet
(L2-normalised, the project's baseline) on an evenly spread subset of LFW View 2 pairs (every fold
kept). Each embedding is stored as ``facenet.gallery.quantize`` codes and read back; accuracy is the
10-fold protocol on the same pairs for both, plus the error int8 adds to squared-L2 distances.

    .venv/bin/python benchmarks/bench_int8.py --pairs-per-fold 60
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from facenet.evaluate.metrics import kfold_metrics
from facenet.evaluate.pairs import read_pairs
from facenet.gallery.quantize import dequantize, quantize

DEFAULT_LFW = (
    Path(os.environ.get("FACENET_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) / "lfw"
)


def subset(pair_set, per_fold: int):
    """``per_fold`` pairs from each fold, half matched and half mismatched, evenly spread."""
    chosen = []
    for fold in range(pair_set.n_folds):
        for same in (True, False):
            group = [p for p in pair_set.pairs if p.fold == fold and p.same == same]
            step = max(1, len(group) // max(1, per_fold // 2))
            chosen.extend(group[::step][: per_fold // 2])
    return chosen


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lfw", type=Path, default=DEFAULT_LFW, help="LFW folder with pairs.txt and images/")
    ap.add_argument("--pairs-per-fold", type=int, default=30, help="pairs per fold (600 = all 6,000; default 30)")
    ap.add_argument(
        "--cache",
        type=Path,
        help="embeddings cache of `facenet evaluate --model dlib-cpp --cache FILE` (skips embedding)",
    )
    args = ap.parse_args(argv)
    if not (args.lfw / "pairs.txt").is_file():
        print(f"skipped: LFW not found at {args.lfw}")
        return 0
    from facenet.baselines.dlib_model import DlibEmbedder

    pairs = subset(read_pairs(args.lfw / "pairs.txt", args.lfw / "images"), args.pairs_per_fold)
    images = sorted({p for pair in pairs for p in (pair.path1, pair.path2)})
    row = {path: i for i, path in enumerate(images)}
    start = time.perf_counter()
    if args.cache:
        with np.load(args.cache, allow_pickle=False) as cache:
            cached = dict(zip(cache["paths"].tolist(), cache["embeddings"]))
        embeddings = np.stack([cached[str(path)] for path in images])
    else:
        embeddings = DlibEmbedder(normalize=True).embed(images)
    took = time.perf_counter() - start
    i1 = np.array([row[p.path1] for p in pairs])
    i2 = np.array([row[p.path2] for p in pairs])
    same = np.array([p.same for p in pairs])
    folds = np.array([p.fold for p in pairs])

    codes = quantize(embeddings)
    restored = dequantize(codes)
    results = {}
    for name, e in (("float32", embeddings), ("int8", restored)):
        m = kfold_metrics(e[i1], e[i2], same, folds)
        results[name] = m
    d32 = np.sum((embeddings[i1] - embeddings[i2]) ** 2, axis=1)
    d8 = np.sum((restored[i1] - restored[i2]) ** 2, axis=1)
    err = np.abs(d8 - d32)

    print(
        f"dlib ResNet embeddings (L2-normalised) of {len(images)} LFW images in {took:.0f} s; "
        f"{len(pairs)} pairs over {len(set(folds.tolist()))} folds"
    )
    print(f"{'storage':8s} {'bytes/face':>10s} {'accuracy':>16s} {'VAL@FAR=1e-3':>14s} {'AUC':>8s}")
    for name, m in results.items():
        size = codes.itemsize * codes.shape[1] if name == "int8" else embeddings.itemsize * embeddings.shape[1]
        print(
            f"{name:8s} {size:10d} {m.accuracy.mean():9.4f}+-{m.accuracy.std():.4f} "
            f"{m.val.mean():14.4f} {m.roc.auc:8.4f}"
        )
    flips = int(np.sum((d32 < results["float32"].thresholds.mean()) != (d8 < results["float32"].thresholds.mean())))
    print(
        f"int8 - float32 accuracy: {results['int8'].accuracy.mean() - results['float32'].accuracy.mean():+.4f}; "
        f"|squared-L2 error| mean {err.mean():.5f}, max {err.max():.5f}; "
        f"decisions changed at the mean threshold: {flips} of {len(pairs)}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
