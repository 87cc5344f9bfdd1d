"""Occluded LFW for several project models at once: the protocol of `facenet evaluate --occlude`, with
the detection work done once per photo instead of once per model.

`facenet evaluate --occlude KIND` finds each second photo's landmarks, draws the occluder, then lets the
model's own pipeline find and cut the occluded face. Models that share a recipe and input size (the
pretrained default and every model fine-tuned from it) cut the very same crops, so this benchmark cuts
each clean and each occluded photo once, with the first model's pipeline (central face, centre-crop
fallback, as `facenet evaluate`), and embeds the crops with every model. Figures equal what `facenet
evaluate --model M --occlude KIND` reports for each model; rows = none and each occluder.

`--dlib` adds dlib's column: dlib's own pipeline (HOG detector, centre box where it finds no face, its
5-point chip) as `facenet evaluate --model dlib-cpp` runs it, the chips embedded by the converted network,
which gives dlib's C++ descriptors to 1e-4 (benchmarks/lfw_network_equivalence.py) at several times its
speed. Its "none" and "mask" rows reproduce `facenet evaluate --model dlib-cpp` (RESULTS.md).

    .venv/bin/python benchmarks/occluded_lfw.py --pairs ../shared/data/lfw/pairs.txt \\
        --images ../shared/data/lfw/images --model default --model runs/occ/model.safetensors --json occ.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

from facenet.align import get_detector
from facenet.baselines.dlib_model import DlibEmbedder
from facenet.embedder import load_embedder
from facenet.errors import FaceNetError
from facenet.evaluate.metrics import kfold_metrics
from facenet.evaluate.pairs import read_pairs
from facenet.fileio import atomic_write
from facenet.occlusion import KINDS, OccludingEmbedder


def cut(crop, pipeline: list, images, store: Path | None, tag: str) -> dict:
    """{path: crop} for every photo where ``crop(path, image)`` finds the face (no face: left out, as evaluate
    drops it). ``images`` yields (path, image); with ``store`` the crops are kept in ``store.<tag>.npz``
    (owner-only: faces) and read back by later runs of the same ``pipeline``, so other models cost only
    their embedding."""
    saved = store.with_name(f"{store.name}.{tag}.npz") if store else None
    key = json.dumps([*pipeline, tag], sort_keys=True)
    if saved and saved.is_file():
        with np.load(saved) as data:
            if str(data["key"]) == key:
                return {Path(p): c for p, c in zip(data["paths"], data["crops"])}
    crops = {}
    for path, image in images:
        try:
            crops[path] = crop(path, image)
        except FaceNetError:
            pass
    if saved:

        def write(tmp):
            with open(tmp, "wb") as fh:
                np.savez(
                    fh, key=np.array(key), paths=np.array([str(p) for p in crops]), crops=np.stack(list(crops.values()))
                )

        atomic_write(saved, write)
    return crops


def evaluate_pipeline(model) -> tuple:
    """How `facenet evaluate` cuts faces for ``model`` (a model file, or None for the default): its recipe,
    the central face, a centred crop where none is found. Returns (the crop function ``cut`` takes, the
    pipeline's identity: [recipe, input size])."""
    cutter = load_embedder(model, which="central")
    cutter.fallback_detector = get_detector("center")
    return (
        lambda path, image: cutter.find_faces(image, source=str(path)).faces[0].image,
        [cutter.info.recipe, cutter.info.input_size],
    )


DLIB_COLUMN = "dlib (its pipeline)"


class RememberedDetections:
    """A detector that remembers what it found in each photo (by its pixels): the occluders of every kind
    are placed from the same clean-photo landmarks, found once."""

    def __init__(self, detector):
        self.detector, self.found = detector, {}

    def detect(self, pixels: np.ndarray):
        key = hashlib.blake2b(pixels.tobytes(), digest_size=16).digest()
        if key not in self.found:
            self.found[key] = self.detector.detect(pixels)
        return self.found[key]


def _tag(pipeline: str, what: str) -> str:
    """The crop store's name for a pipeline's crops (ours keep the names earlier runs stored them under)."""
    return what if pipeline == "ours" else f"{pipeline}.{what}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=Path, default=Path("../shared/data/lfw/pairs.txt"))
    parser.add_argument("--images", type=Path, default=Path("../shared/data/lfw/images"))
    parser.add_argument("--model", action="append", default=[], help="model file or 'default' (repeatable)")
    parser.add_argument(
        "--clean-model",
        action="append",
        default=[],
        help="a model measured on the unoccluded pairs only (the 'none' row; repeatable)",
    )
    parser.add_argument("--kinds", nargs="*", choices=KINDS, default=list(KINDS))
    parser.add_argument("--side", choices=("one", "both"), default="one")
    parser.add_argument("--folds", type=int, default=None, help="use only the first N folds (quick looks)")
    parser.add_argument(
        "--crops",
        type=Path,
        default=None,
        help="keep the cut crops in CROPS.<occluder>.npz for later runs (other models then cost only their embedding)",
    )
    parser.add_argument(
        "--dlib",
        action="store_true",
        help="add dlib's column: its own HOG detector and chip, embedded by the converted network",
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    if not (args.model or args.dlib):
        parser.error("name a --model, or --dlib")
    models = {m: load_embedder(None if m == "default" else m, detect=False) for m in args.model + args.clean_model}
    # pipeline name -> (path, image -> crop; what identifies its crops); column -> (pipeline, embedder)
    pipelines, columns = {}, {}
    if models:
        first = next(iter(models.values()))
        for name, m in models.items():
            if (m.info.recipe, m.info.input_size) != (first.info.recipe, first.info.input_size):
                raise SystemExit(
                    f"{name} cuts faces another way than {args.model[0]}; compare such models with "
                    "`facenet evaluate` one by one"
                )
        pipelines["ours"] = evaluate_pipeline(None if args.model[0] == "default" else args.model[0])
        columns = {name: ("ours", m) for name, m in models.items()}
    if args.dlib:
        dlib_side = DlibEmbedder()
        pipelines["dlib"] = (lambda path, image: dlib_side.chip(image), ["dlib", "hog", "5-point chip", 150, 0.25])
        columns[DLIB_COLUMN] = ("dlib", load_embedder("dlib", detect=False))  # dlib's network, converted
    placer = RememberedDetections(get_detector("mtcnn"))  # every occluder is placed from one MTCNN pass per photo
    occluded_columns = [c for c in columns if c not in args.clean_model]

    pairs = read_pairs(args.pairs, args.images.resolve()).pairs  # absolute: the crop store is keyed by path
    if args.folds:
        pairs = [p for p in pairs if p.fold < args.folds]
    photos = sorted({q for p in pairs for q in (p.path1, p.path2)})
    clean_emb = {}
    for pipeline, (crop, identity) in pipelines.items():
        start = time.perf_counter()
        clean = cut(crop, identity, ((p, str(p)) for p in photos), args.crops, _tag(pipeline, "none"))
        print(
            f"{pipeline}: clean crops {len(clean)}/{len(photos)} in {time.perf_counter() - start:.0f} s",
            file=sys.stderr,
        )
        for name, (used, m) in columns.items():
            if used == pipeline:
                clean_emb[name] = dict(zip(clean, m.embed_crops(list(clean.values()))))
    rows = []
    for kind in ["none"] + list(args.kinds):
        if kind == "none":
            seconds = clean_emb
        else:
            occluding = OccludingEmbedder(next(iter(columns.values()))[1], kind, placer=placer)  # draws only
            targets = sorted({p.path2 for p in pairs} | ({p.path1 for p in pairs} if args.side == "both" else set()))
            seconds = {}
            for pipeline, (crop, identity) in pipelines.items():
                start = time.perf_counter()
                drawn = cut(
                    crop,
                    identity,
                    ((p, occluding.occluded(str(p), occluding.seed_for(str(p), 0))) for p in targets),
                    args.crops,
                    _tag(pipeline, f"{kind}-{args.side}"),
                )
                print(
                    f"{kind}, {pipeline}: {len(drawn)}/{len(targets)} occluded faces found in "
                    f"{time.perf_counter() - start:.0f} s ({occluding.unplaced} photos without landmarks stay "
                    "clean)",
                    file=sys.stderr,
                )
                occluding.unplaced = 0
                for name in occluded_columns:
                    if columns[name][0] == pipeline:
                        seconds[name] = dict(zip(drawn, columns[name][1].embed_crops(list(drawn.values()))))
        for name in columns if kind == "none" else occluded_columns:
            lefts = seconds[name] if args.side == "both" and kind != "none" else clean_emb[name]
            scored = [p for p in pairs if p.path1 in lefts and p.path2 in seconds[name]]
            m = kfold_metrics(
                np.stack([lefts[p.path1] for p in scored]),
                np.stack([seconds[name][p.path2] for p in scored]),
                np.array([p.same for p in scored]),
                np.array([p.fold for p in scored]),
            )
            rows.append(
                {
                    "occluder": kind,
                    "model": name,
                    "pairs": len(scored),
                    "accuracy": float(m.accuracy.mean()),
                    "std": float(m.accuracy.std()),
                    "val_at_1e-3": float(m.val.mean()),
                    "auc": m.roc.auc,
                }
            )
            print(
                f"{kind:11s} {name}: {rows[-1]['accuracy']:.4f} +- {rows[-1]['std']:.4f}  VAL@1e-3 "
                f"{rows[-1]['val_at_1e-3']:.4f}  ({len(scored)} pairs)",
                file=sys.stderr,
            )
        if args.json:  # after every occluder: a long run stopped early keeps what it measured
            args.json.write_text(json.dumps({"side": args.side, "rows": rows}, indent=2))
    if args.dlib:
        print(f"dlib's HOG found no face in {dlib_side.fallbacks} photos (centre box used)", file=sys.stderr)
    print(f"\nLFW View 2, occluder on {'both photos' if args.side == 'both' else 'the second photo'} of each pair\n")
    print("| occluder | " + " | ".join(columns) + " |\n|---|" + "---|" * len(columns))
    for kind in ["none"] + list(args.kinds):
        cells = [next((r for r in rows if r["occluder"] == kind and r["model"] == m), None) for m in columns]
        print(
            f"| {kind} | "
            + " | ".join(f"{c['accuracy']:.4f} (VAL {c['val_at_1e-3']:.3f})" if c else "-" for c in cells)
            + " |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
