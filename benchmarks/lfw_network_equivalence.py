"""LFW View 2 with dlib's own chips, embedded by dlib's C++ network and by the converted ``dlib_resnet``.

Both sides see identical pixels (dlib's HOG detector, 5-point shape predictor and 150 px chip, as in
``facenet evaluate --model dlib``), so any gap in accuracy is the network port's, not preprocessing's.
The 10-fold protocol is the project's (``facenet.evaluate``); the table also gives the largest
difference between the two descriptors over every image.

    .venv/bin/python benchmarks/lfw_network_equivalence.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from facenet.baselines.dlib_model import DlibEmbedder

LFW = Path(__file__).resolve().parents[2] / "shared" / "data" / "lfw"


class DlibChipsOurNetwork(DlibEmbedder):
    """dlib's pipeline up to the chip; the descriptor from the project's converted network."""

    def __init__(self, model):
        super().__init__(normalize=True)
        self.model = model
        self.name = "dlib chips + dlib_resnet (ours)"

    def _descriptor(self, rgb: np.ndarray) -> np.ndarray:
        from facenet.data.images import standardise

        chip = np.asarray(self._dlib.get_face_chip(rgb, self._predictor(rgb, self._face_box(rgb)), 150, 0.25))
        with torch.inference_mode():
            return self.model.prelogits(standardise(chip[None], "dlib"))[0].numpy()


def main(argv=None) -> int:
    from facenet.embedder import ensure_default_model
    from facenet.evaluate.protocol import embed_paths, evaluate_pairs
    from facenet.evaluate.pairs import read_pairs
    from facenet.models.modelfile import load_model_file

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lfw", type=Path, default=LFW, help="folder with pairs.txt and images/")
    ap.add_argument("--cache-dir", type=Path, default=None, help="keep each side's embeddings here (.npz)")
    args = ap.parse_args(argv)
    if not (args.lfw / "pairs.txt").is_file():
        print(f"no LFW at {args.lfw}; pass --lfw", file=sys.stderr)
        return 2
    model, _ = load_model_file(ensure_default_model())
    sides = {"dlib C++ network (peer)": DlibEmbedder(normalize=True), "converted network (ours)": DlibChipsOurNetwork(model)}
    results = {}
    for name, embedder in sides.items():
        cache = args.cache_dir / f"{embedder.name.split()[0]}-{len(results)}.npz" if args.cache_dir else None
        results[name] = (evaluate_pairs(embedder, args.lfw / "pairs.txt", args.lfw / "images", cache=cache,
                                        progress=False), cache)
    pairs = read_pairs(args.lfw / "pairs.txt", args.lfw / "images")
    paths = sorted({p for pair in pairs.pairs for p in (pair.path1, pair.path2)})
    embedded = [embed_paths(embedder, paths, "none", 32, False, cache)[0]
                for embedder, (_, cache) in zip(sides.values(), results.values())] if args.cache_dir else None
    print(f"{'network on dlib chips':28s} {'accuracy':>16s} {'VAL@1e-3':>9s} {'AUC':>7s} {'EER':>6s}")
    for name, (result, _) in results.items():
        m = result.metrics
        print(f"{name:28s} {100 * result.accuracy:8.2f}% +- {100 * result.accuracy_std:.2f} "
              f"{100 * m.val.mean():8.2f}% {m.roc.auc:7.4f} {100 * m.roc.eer:5.2f}%")
    if embedded:
        diff = max(float(np.abs(embedded[0][p] - embedded[1][p]).max()) for p in paths if p in embedded[0])
        print(f"largest |difference| between the unit descriptors over {len(paths)} images: {diff:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
