"""Verification on a folder of aligned face crops (one sub-folder per person), for several models in one run.

Balanced pairs (every positive pair up to 3,000, as many negatives, seeded: the same pairs for every
model) among the folder's photos, scored by the 10-fold protocol of ``facenet evaluate``: accuracy,
VAL@FAR=1e-3, AUC. ``--occlude KIND`` draws an occluder (its evaluation looks) on the second photo of
each pair, placed from the landmarks of the crops' recipe template (the crops are similarity-aligned,
so the five landmarks sit on the template). Used to measure fine-tuning on a user's people (issue 17)
and occlusion robustness on photos that are not LFW's (issue 13).

    .venv/bin/python benchmarks/folder_verification.py --images ~/faces/user_rest \\
        --model default --model runs/ft/model.safetensors [--occlude mask] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from facenet.align.crop import template_points
from facenet.align.dataset import read_recipe
from facenet.data.folder import FolderDataset
from facenet.data.images import fit_to_input, load_image
from facenet.embedder import load_embedder
from facenet.evaluate.metrics import kfold_metrics
from facenet.occlusion import KINDS, occlude
from facenet.train.data import held_out_pairs


def crops_landmarks(folder: Path, size: int) -> np.ndarray:
    recipe = read_recipe(folder)
    if not recipe or recipe.get("mode") != "similarity":
        raise SystemExit(f"{folder} has no similarity-aligned recipe.json; --occlude needs landmark-aligned crops")
    return template_points(size, float(recipe["margin"]), recipe["template"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", required=True, type=Path, help="folder of aligned crops, one sub-folder per person")
    parser.add_argument(
        "--model",
        action="append",
        required=True,
        help="model file, or 'default' for the installed default (repeatable)",
    )
    parser.add_argument("--pairs", type=int, default=6000, help="pairs at most (half of them positive)")
    parser.add_argument(
        "--occlude", choices=KINDS, default=None, help="occluder drawn on the second photo of each pair"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the table as JSON")
    args = parser.parse_args(argv)

    data = FolderDataset(args.images, min_images=1)
    pairs = held_out_pairs(data.labels, args.pairs, args.seed)
    used = np.unique(np.concatenate([pairs.first, pairs.second]))
    second = set(pairs.second.tolist())
    rows = []
    for spec in args.model:
        embedder = load_embedder(None if spec == "default" else spec, detect=False)
        size = embedder.info.input_size
        landmarks = crops_landmarks(args.images, size) if args.occlude else None
        clean = embedder.embed([load_image(data.path(i)) for i in used])
        emb = {i: e for i, e in zip(used.tolist(), clean)}
        occluded = dict(emb)
        if args.occlude:
            chosen = sorted(second)
            drawn = [
                occlude(fit_to_input(load_image(data.path(i)), size), landmarks, args.occlude, seed=i) for i in chosen
            ]
            occluded.update(zip(chosen, embedder.embed(drawn)))
        e1 = np.stack([emb[i] for i in pairs.first.tolist()])
        e2 = np.stack([occluded[i] for i in pairs.second.tolist()])
        m = kfold_metrics(e1, e2, pairs.same, pairs.folds)
        rows.append(
            {
                "model": spec,
                "accuracy": float(m.accuracy.mean()),
                "std": float(m.accuracy.std()),
                "val_at_1e-3": float(m.val.mean()),
                "auc": m.roc.auc,
            }
        )
        print(
            f"{spec}: accuracy {rows[-1]['accuracy']:.4f} +- {rows[-1]['std']:.4f}, VAL@1e-3 "
            f"{rows[-1]['val_at_1e-3']:.4f}, AUC {m.roc.auc:.4f}",
            file=sys.stderr,
        )
    print(
        f"\n{args.images}: {len(data.classes)} people, {len(used)} photos in {len(pairs.same)} pairs"
        f"{f', {args.occlude} on the second photo' if args.occlude else ''}\n"
    )
    print("| model | accuracy | VAL@FAR=1e-3 | AUC |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['accuracy']:.4f} +- {r['std']:.4f} | {r['val_at_1e-3']:.4f} | {r['auc']:.4f} |")
    if args.json:
        args.json.write_text(json.dumps({"images": str(args.images), "occlude": args.occlude, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
