"""LFW pairs on dlib's own chips, embedded by dlib's C++ network and by the converted ``dlib_resnet``.

Each image is cut once by dlib's pipeline (HOG detector, 5-point shape predictor, 150 px chip, as in
``facenet evaluate --model dlib-cpp``); both networks embed that same chip. Any gap in accuracy is thus
the port's, not preprocessing's. Scored with the project's leave-one-fold-out protocol
(``facenet.evaluate.metrics.kfold_metrics``) over the pairs of the first ``--folds`` folds of View 2
(re-split into 10 folds when fewer are taken), with the largest difference between the two unit
descriptors over every image.

    .venv/bin/python benchmarks/lfw_network_equivalence.py --folds 3
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

LFW = Path(__file__).resolve().parents[2] / "shared" / "data" / "lfw"


def main(argv=None) -> int:
    from facenet.baselines.dlib_model import DlibEmbedder
    from facenet.data.images import standardise
    from facenet.embedder import ensure_default_model
    from facenet.evaluate.metrics import kfold_metrics
    from facenet.evaluate.pairs import read_pairs
    from facenet.models.modelfile import load_model_file

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lfw", type=Path, default=LFW, help="folder with pairs.txt and images/")
    ap.add_argument("--folds", type=int, default=10, help="use the pairs of the first N folds (default: all 10)")
    args = ap.parse_args(argv)
    if not (args.lfw / "pairs.txt").is_file():
        print(f"no LFW at {args.lfw}; pass --lfw", file=sys.stderr)
        return 2
    model, _ = load_model_file(ensure_default_model())
    dlib_side = DlibEmbedder(normalize=True)
    pairs = [p for p in read_pairs(args.lfw / "pairs.txt", args.lfw / "images").pairs if p.fold < args.folds]
    paths = sorted({q for p in pairs for q in (p.path1, p.path2)})
    theirs, ours = {}, {}
    from facenet.progress import progress_bar

    bar = progress_bar(len(paths), "dlib chips")
    for path in paths:
        bar.update()
        chip = dlib_side.chip(path)
        theirs[path] = np.asarray(dlib_side._encoder.compute_face_descriptor(chip), np.float32)
        with torch.inference_mode():
            ours[path] = model(standardise(chip[None], "dlib"))[0].numpy()
    bar.close()
    for table in (theirs,):
        for path, row in table.items():
            table[path] = row / np.linalg.norm(row)
    same = np.array([p.same for p in pairs])
    folds = np.array([p.fold for p in pairs]) if args.folds >= 2 else np.arange(len(pairs)) % 10
    print(
        f"{len(pairs)} pairs of folds 1-{args.folds}, {len(paths)} images, "
        f"{dlib_side.fallbacks} without a HOG face (centre box, as the dlib adapter does)"
    )
    print(f"{'network on dlib chips':28s} {'accuracy':>16s} {'VAL@1e-3':>9s} {'AUC':>7s} {'EER':>6s}")
    for name, table in (("dlib C++ network (peer)", theirs), ("converted network (ours)", ours)):
        m = kfold_metrics(
            np.stack([table[p.path1] for p in pairs]), np.stack([table[p.path2] for p in pairs]), same, folds
        )
        print(
            f"{name:28s} {100 * m.accuracy.mean():8.2f}% +- {100 * m.accuracy.std():.2f} "
            f"{100 * m.val.mean():8.2f}% {m.roc.auc:7.4f} {100 * m.roc.eer:5.2f}%"
        )
    diff = max(float(np.abs(theirs[p] - ours[p]).max()) for p in paths)
    print(f"largest |difference| between the two unit descriptors: {diff:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
