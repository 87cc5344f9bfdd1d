"""Two networks together: LFW-protocol figures for each model and for their fusion, from `facenet evaluate` caches.

Fusion joins each photo's unit embeddings (one per model) and re-normalises: the squared L2 between
two fused embeddings is then the mean of the models' squared L2 distances (score averaging). Each
model is embedded once, by `facenet evaluate --cache FILE` (its own detector, recipe and flip
setting); this reads the caches and scores the same pairs the same way (10 folds, VAL at FAR 1e-3).

    facenet evaluate --model reid --pairs P --images I --cache /tmp/reid.npz
    facenet evaluate --model dlib --pairs P --images I --cache /tmp/dlib.npz
    python benchmarks/fusion_lfw.py --pairs P --images I --cache reid=/tmp/reid.npz --cache dlib=/tmp/dlib.npz
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np

from facenet.evaluate.metrics import kfold_metrics
from facenet.evaluate.pairs import read_pairs


def load_cache(path: Path) -> dict[str, np.ndarray]:
    """``<person>/<file>`` -> unit embedding, from an evaluate cache."""
    with np.load(path, allow_pickle=False) as data:
        return {
            "/".join(Path(p).parts[-2:]): row / np.linalg.norm(row) for p, row in zip(data["paths"], data["embeddings"])
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=Path, required=True)
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument(
        "--cache",
        action="append",
        required=True,
        metavar="NAME=FILE",
        help="a model's `facenet evaluate --cache` file (at least two)",
    )
    args = parser.parse_args()
    caches = {name: load_cache(Path(file)) for name, file in (c.split("=", 1) for c in args.cache)}
    pairs = read_pairs(args.pairs, args.images).pairs
    key = lambda path: "/".join(path.parts[-2:])  # noqa: E731
    pairs = [p for p in pairs if all(key(p.path1) in c and key(p.path2) in c for c in caches.values())]
    same, folds = np.array([p.same for p in pairs]), np.array([p.fold for p in pairs])

    def stack(names: tuple[str, ...], which: str) -> np.ndarray:
        rows = np.stack([np.concatenate([caches[n][key(getattr(p, which))] for n in names]) for p in pairs])
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)

    print(f"{len(pairs)} pairs")
    print(f"{'model':<34}{'accuracy':>18}{'VAL@1e-3':>18}{'AUC':>9}{'EER':>8}")
    for size in (1, 2):
        for names in itertools.combinations(caches, size):
            m = kfold_metrics(stack(names, "path1"), stack(names, "path2"), same, folds)
            print(
                f"{' + '.join(names):<34}{m.accuracy.mean() * 100:>11.2f}% +-{m.accuracy.std() * 100:.2f}"
                f"{m.val.mean() * 100:>11.2f}% +-{m.val.std() * 100:.2f}{m.roc.auc:>9.4f}{m.roc.eer * 100:>7.2f}%"
            )


if __name__ == "__main__":
    main()
