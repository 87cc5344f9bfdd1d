"""LFW accuracy against training images seen, for runs trained with `facenet train --snapshot-every N`.

Every snapshot (runs/X/snapshots/step-N.safetensors) and the final model of each run is measured on LFW
View 2, all 10 folds, clean pairs, with the protocol of `facenet evaluate` (central face, centre-crop
fallback). The runs must share one recipe and input size: each photo is then detected and cut once
(`--crops` keeps the cuts for later runs, as in benchmarks/occluded_lfw.py) and every model costs only
its embedding. Images seen = steps x the batch (P x K labelled + the unlabelled photos of each batch).
`--flip` adds the accuracy with flip test-time augmentation (the sum of the embeddings of the crop and
of its mirror image; `facenet evaluate --flip sum` mirrors the photo before detection instead). A run that
fine-tunes a model (`facenet train --init MODEL`) starts at that model.

    .venv/bin/python benchmarks/learning_curve.py runs/triplet runs/distill runs/both \\
        --crops results/crops/lfw --json curve.json --plot curve.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from occluded_lfw import cut, evaluate_pipeline  # noqa: E402  (the crop store shared with the occlusion benchmark)

from facenet.embedder import load_embedder  # noqa: E402
from facenet.evaluate.metrics import kfold_metrics  # noqa: E402
from facenet.evaluate.pairs import read_pairs  # noqa: E402


def run_models(run: Path) -> list[tuple[int, Path]]:
    """(images seen, model file) of a run's snapshots and its final model, in training order.

    A fine-tuning run (`--init MODEL`) starts its curve at that model, 0 images seen."""
    config = json.loads((run / "config.json").read_text())
    batch = config["identities_per_batch"] * config["faces_per_identity"] + (
        config.get("unlabelled_per_batch", 0) if config.get("unlabelled") else 0
    )
    models = [(int(p.stem.split("-")[1]), p) for p in sorted((run / "snapshots").glob("step-*.safetensors"))]
    if config.get("init"):
        models.insert(0, (0, Path(config["init"])))
    if (run / "model.safetensors").is_file():
        models.append((config["steps"], run / "model.safetensors"))
    if not models:
        raise SystemExit(f"{run}: no snapshots and no model yet")
    return [(steps * batch, path) for steps, path in models]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run folders of `facenet train`")
    parser.add_argument("--pairs", type=Path, default=Path("../shared/data/lfw/pairs.txt"))
    parser.add_argument("--images", type=Path, default=Path("../shared/data/lfw/images"))
    parser.add_argument("--crops", type=Path, default=None, help="crop store (see benchmarks/occluded_lfw.py)")
    parser.add_argument("--flip", action="store_true", help="add the accuracy with flip test-time augmentation")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--plot", type=Path, default=None, help="draw the curves into this image (matplotlib)")
    args = parser.parse_args(argv)

    curves = {run: run_models(run) for run in args.runs}
    first = next(iter(curves.values()))[0][1]
    crop, pipeline = evaluate_pipeline(first)
    pairs = read_pairs(args.pairs, args.images.resolve()).pairs  # absolute: the crop store is keyed by path
    photos = sorted({q for p in pairs for q in (p.path1, p.path2)})
    crops = cut(crop, pipeline, ((p, str(p)) for p in photos), args.crops, "none")
    scored = [p for p in pairs if p.path1 in crops and p.path2 in crops]
    same, folds = np.array([p.same for p in scored]), np.array([p.fold for p in scored])

    def measure(emb: dict):
        return kfold_metrics(
            np.stack([emb[p.path1] for p in scored]), np.stack([emb[p.path2] for p in scored]), same, folds
        )

    rows = []
    print(
        f"LFW View 2, {len(scored)} pairs, 10 folds\n\n| run | images seen | accuracy | VAL@FAR=1e-3 | AUC |"
        + (" accuracy, flip |" if args.flip else "")
        + "\n|---|---|---|---|---|"
        + ("---|" if args.flip else "")
    )
    for run, models in curves.items():
        for seen, path in models:
            model = load_embedder(path, detect=False)
            if [model.info.recipe, model.info.input_size] != pipeline:
                raise SystemExit(f"{path} cuts faces another way than {first}; measure it in a separate call")
            plain = model.embed_crops(list(crops.values()))
            m = measure(dict(zip(crops, plain)))
            rows.append(
                {
                    "run": str(run),
                    "model": str(path),
                    "images_seen": seen,
                    "accuracy": float(m.accuracy.mean()),
                    "std": float(m.accuracy.std()),
                    "val_at_1e-3": float(m.val.mean()),
                    "auc": float(m.roc.auc),
                }
            )
            line = (
                f"| {run.name} | {seen:,} | {100 * rows[-1]['accuracy']:.2f}% +- {100 * rows[-1]['std']:.2f} | "
                f"{100 * rows[-1]['val_at_1e-3']:.2f}% | {rows[-1]['auc']:.4f} |"
            )
            if args.flip:
                joined = plain + model.embed_crops([np.ascontiguousarray(c[:, ::-1]) for c in crops.values()])
                joined /= np.linalg.norm(joined, axis=1, keepdims=True)
                rows[-1]["flip_accuracy"] = float(measure(dict(zip(crops, joined))).accuracy.mean())
                line += f" {100 * rows[-1]['flip_accuracy']:.2f}% |"
            print(line, flush=True)
            if args.json:  # after every model: a long run stopped early keeps what it measured
                args.json.write_text(json.dumps(rows, indent=2))
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for run in curves:
            points = [(r["images_seen"], 100 * r["accuracy"]) for r in rows if r["run"] == str(run)]
            ax.plot(*zip(*points), marker="o", label=run.name)
        ax.set_xlabel("training images seen")
        ax.set_ylabel("LFW View 2 accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
    return 0


if __name__ == "__main__":
    sys.exit(main())
