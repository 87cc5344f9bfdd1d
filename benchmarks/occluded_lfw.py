"""Occluded LFW for several project models at once: the protocol of `facenet evaluate --occlude`, with
the detection work done once per photo instead of once per model.

`facenet evaluate --occlude KIND` finds each second photo's landmarks, draws the occluder, then lets the
model's own pipeline find and cut the occluded face. Models that share a recipe and input size (the
pretrained default and every model fine-tuned from it) cut the very same crops, so this benchmark cuts
each clean and each occluded photo once, with the first model's pipeline (central face, centre-crop
fallback, as `facenet evaluate`), and embeds the crops with every model. Figures equal what `facenet
evaluate --model M --occlude KIND` reports for each model; rows = none and each occluder.

    .venv/bin/python benchmarks/occluded_lfw.py --pairs ../shared/data/lfw/pairs.txt \\
        --images ../shared/data/lfw/images --model default --model runs/occ/model.safetensors --json occ.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from facenet.align import get_detector
from facenet.embedder import load_embedder
from facenet.errors import FaceNetError
from facenet.evaluate.metrics import kfold_metrics
from facenet.evaluate.pairs import read_pairs
from facenet.fileio import atomic_write
from facenet.occlusion import KINDS, OccludingEmbedder


def cut(cutter, images, store: Path | None, tag: str) -> dict:
    """{path: crop} for every photo whose face the pipeline finds (no face: left out, as evaluate drops it).
    ``images`` yields (path, image); with ``store`` the crops are kept in ``store.<tag>.npz`` (owner-only:
    faces) and read back by later runs with the same recipe, so other models cost only their embedding."""
    saved = store.with_name(f"{store.name}.{tag}.npz") if store else None
    key = json.dumps([cutter.info.recipe, cutter.info.input_size, tag], sort_keys=True)
    if saved and saved.is_file():
        with np.load(saved) as data:
            if str(data["key"]) == key:
                return {Path(p): c for p, c in zip(data["paths"], data["crops"])}
    crops = {}
    for path, image in images:
        try:
            crops[path] = cutter.find_faces(image, source=str(path)).faces[0].image
        except FaceNetError:
            pass
    if saved:
        def write(tmp):
            with open(tmp, "wb") as fh:
                np.savez(fh, key=np.array(key), paths=np.array([str(p) for p in crops]),
                         crops=np.stack(list(crops.values())))

        atomic_write(saved, write)
    return crops


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=Path, default=Path("../shared/data/lfw/pairs.txt"))
    parser.add_argument("--images", type=Path, default=Path("../shared/data/lfw/images"))
    parser.add_argument("--model", action="append", required=True, help="model file or 'default' (repeatable)")
    parser.add_argument("--clean-model", action="append", default=[],
                        help="a model measured on the unoccluded pairs only (the 'none' row; repeatable)")
    parser.add_argument("--kinds", nargs="*", choices=KINDS, default=list(KINDS))
    parser.add_argument("--side", choices=("one", "both"), default="one")
    parser.add_argument("--folds", type=int, default=None, help="use only the first N folds (quick looks)")
    parser.add_argument("--crops", type=Path, default=None,
                        help="keep the cut crops in CROPS.<occluder>.npz for later runs (other models then cost only "
                             "their embedding)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    models = {m: load_embedder(None if m == "default" else m, detect=False) for m in args.model + args.clean_model}
    first = next(iter(models.values()))
    for name, m in models.items():
        if (m.info.recipe, m.info.input_size) != (first.info.recipe, first.info.input_size):
            raise SystemExit(f"{name} cuts faces another way than {args.model[0]}; compare such models with "
                             "`facenet evaluate` one by one")
    cutter = load_embedder(None if args.model[0] == "default" else args.model[0], which="central")
    cutter.fallback_detector = get_detector("center")
    pairs = read_pairs(args.pairs, args.images).pairs
    if args.folds:
        pairs = [p for p in pairs if p.fold < args.folds]
    photos = sorted({q for p in pairs for q in (p.path1, p.path2)})
    start = time.perf_counter()
    clean = cut(cutter, ((p, str(p)) for p in photos), args.crops, "none")
    print(f"clean crops: {len(clean)}/{len(photos)} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    clean_emb = {name: dict(zip(clean, m.embed_crops(list(clean.values())))) for name, m in models.items()}
    rows = []
    for kind in ["none"] + list(args.kinds):
        if kind == "none":
            seconds = clean_emb
        else:
            start = time.perf_counter()
            occluding = OccludingEmbedder(cutter, kind)
            targets = sorted({p.path2 for p in pairs} | ({p.path1 for p in pairs} if args.side == "both" else set()))
            drawn = cut(cutter, ((p, occluding.occluded(str(p), occluding.seed_for(str(p), 0))) for p in targets),
                        args.crops, f"{kind}-{args.side}")
            print(f"{kind}: {len(drawn)}/{len(targets)} occluded faces found in {time.perf_counter() - start:.0f} s"
                  f" ({occluding.unplaced} photos without landmarks stay clean)", file=sys.stderr)
            seconds = {name: dict(zip(drawn, models[name].embed_crops(list(drawn.values())))) for name in args.model}
        for name in models if kind == "none" else args.model:
            lefts = seconds[name] if args.side == "both" and kind != "none" else clean_emb[name]
            scored = [p for p in pairs if p.path1 in lefts and p.path2 in seconds[name]]
            m = kfold_metrics(np.stack([lefts[p.path1] for p in scored]), np.stack([seconds[name][p.path2] for p in scored]),
                              np.array([p.same for p in scored]), np.array([p.fold for p in scored]))
            rows.append({"occluder": kind, "model": name, "pairs": len(scored), "accuracy": float(m.accuracy.mean()),
                         "std": float(m.accuracy.std()), "val_at_1e-3": float(m.val.mean()), "auc": m.roc.auc})
            print(f"{kind:11s} {name}: {rows[-1]['accuracy']:.4f} +- {rows[-1]['std']:.4f}  VAL@1e-3 "
                  f"{rows[-1]['val_at_1e-3']:.4f}  ({len(scored)} pairs)", file=sys.stderr)
        if args.json:  # after every occluder: a long run stopped early keeps what it measured
            args.json.write_text(json.dumps({"side": args.side, "rows": rows}, indent=2))
    print(f"\nLFW View 2, occluder on {'both photos' if args.side == 'both' else 'the second photo'} of each pair\n")
    print("| occluder | " + " | ".join(models) + " |\n|---|" + "---|" * len(models))
    for kind in ["none"] + list(args.kinds):
        cells = [next((r for r in rows if r["occluder"] == kind and r["model"] == m), None) for m in models]
        print(f"| {kind} | " + " | ".join(f"{c['accuracy']:.4f} (VAL {c['val_at_1e-3']:.3f})" if c else "-"
                                         for c in cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
