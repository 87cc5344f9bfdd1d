"""Mask-aware matching on LFW (issue 24, item 2): a masked second photo against a clean first photo, compared
plainly, "as masked" (the clean side re-embedded with training-look masks drawn on its crop,
``facenet.occluder.masked_looks``), or by the mean of the two distances.

Why: the lever the issue names is comparing like with like; this measures whether it helps, first with an
oracle that knows which side is masked, then driven by the occluder detector (``facenet.occluder``), which
must also leave clean pairs alone (its false alarms turn clean pairs into masked comparisons).

Masks come from the held-out renderer (``facenet.evaluate.heldout_masks``, dlib-placed; the same masks as
``heldout_masked_lfw.py``) or from the project's own evaluation looks (``facenet.occlusion``, variant "eval",
placed from the model's landmarks on the clean photo). Every photo goes through the public whole-photo path
(``model.find_faces`` then the network, as ``facenet.embed``); a photo with no face found answers its pair
wrong. Accuracy is 10-fold: plain and as-masked comparisons get thresholds of their own, each fitted on
the other folds' pairs of its kind; one more row per mask scores the detector-driven comparison with the
model's own threshold for both kinds (what ``facenet.verify`` would do without one of its own for them).
AUC (over the scored pairs) is the finer measure on a few hundred pairs.

    PYTHONPATH=src .venv/bin/python benchmarks/mask_aware_lfw.py --limit 600 \\
        --occluder ~/faces/occluder-reid.safetensors --cache /tmp/mask_aware --json mask_aware.json
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from heldout_masked_lfw import RENDERERS, draw, spread

import facenet
from facenet.errors import NoFaceError
from facenet.evaluate.metrics import best_threshold, roc
from facenet.evaluate.pairs import read_pairs
from facenet.occluder import AS_MASKED_KINDS, OccluderDetector, masked_looks, to_mask

MATCHING = {"surgical": "mask", "n95": "n95", "cloth": "cloth_mask", "kn95": "n95"}  # held-out kind -> training look


@dataclass
class Face:
    plain: np.ndarray
    masked: np.ndarray  # the face as masked: the unit mean over its AS_MASKED_KINDS looks
    per_kind: dict  # one look's embedding
    occlusion: str  # the detector's class


def face_record(model, head, image) -> tuple[Face | None, object]:
    """The record of the face the public path finds in ``image`` and what was found (None: no face)."""
    try:
        found = model.find_faces(image)
    except NoFaceError:
        return None, None
    face = found.faces[0]
    plain, *looks = model.embed_crops([face.image, *masked_looks(model, face, found.size)])  # one batch
    label = head.classify(plain[None])[0][0] if head else None
    mean = np.mean(looks, axis=0)
    return Face(plain, mean / np.linalg.norm(mean), dict(zip(AS_MASKED_KINDS, looks)), label), found


def distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sum((a - b) ** 2))


def comparisons(first: Face | None, second: Face | None, masked_second: bool, look: str | None) -> dict:
    """Each method's (distance, compared as masked) for one pair; distance NaN where a face is missing."""
    if first is None or second is None:
        return dict.fromkeys(METHODS, (np.nan, False))
    plain = distance(first.plain, second.plain)
    out = {"plain": (plain, False)}
    as_masked_d = distance(first.masked, second.plain) if masked_second else plain
    out["oracle: as masked (3 looks)"] = (as_masked_d, masked_second)
    out["oracle: as masked (matching look)"] = (
        (distance(first.per_kind[look], second.plain), True) if masked_second else (plain, False)
    )
    out["oracle: fused"] = ((plain + as_masked_d) / 2, masked_second)
    both = distance(first.masked, second.masked) if masked_second else plain  # the same looks over both sides
    out["oracle: as masked, both sides"] = (both, masked_second)
    side = to_mask([first.occlusion, second.occlusion])
    if side is None:
        detected = plain
    else:  # the uncovered side's as-masked view against the covered side
        detected = distance(first.masked, second.plain) if side == 0 else distance(first.plain, second.masked)
    out["detector: as masked"] = (detected, side is not None)
    out["detector: fused"] = ((plain + detected) / 2, side is not None)
    return out


METHODS = (
    "plain",
    "oracle: as masked (3 looks)",
    "oracle: as masked (matching look)",
    "oracle: fused",
    "oracle: as masked, both sides",
    "detector: as masked",
    "detector: fused",
)


def fold_accuracy(
    d: np.ndarray, masked: np.ndarray, same: np.ndarray, folds: np.ndarray, fixed: float | None = None
) -> tuple[float, float, dict]:
    """10-fold accuracy (mean, std) and the mean threshold of each comparison kind: plain and as-masked
    comparisons each get the threshold best on the other folds' scored pairs of their kind (the pooled one
    where a kind has none there), or ``fixed`` for both; NaN distances count wrong."""
    scores, thresholds = [], {False: [], True: []}
    for fold in np.unique(folds):
        train, test = (folds != fold) & ~np.isnan(d), folds == fold
        pooled = best_threshold(d[train], same[train])[0] if fixed is None else fixed
        right = 0
        for kind in (False, True):
            fit = train & (masked == kind)
            threshold = best_threshold(d[fit], same[fit])[0] if fit.any() and fixed is None else pooled
            sel = test & (masked == kind) & ~np.isnan(d)
            right += np.sum((d[sel] < threshold) == same[sel])
            thresholds[kind].append(threshold)
        scores.append(right / test.sum())
    kinds = {"plain": float(np.mean(thresholds[False])), "as masked": float(np.mean(thresholds[True]))}
    return float(np.mean(scores)), float(np.std(scores)), kinds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=Path, default=Path("../shared/data/lfw/pairs.txt"))
    parser.add_argument("--images", type=Path, default=Path("../shared/data/lfw/images"))
    parser.add_argument("--model", default=None, help="model file (default: the installed default model)")
    parser.add_argument(
        "--occluder", type=Path, default=None, help="an occluder head (default: the shipped one; none: oracle only)"
    )
    parser.add_argument("--renderer", action="append", choices=sorted(RENDERERS), help="default: both")
    parser.add_argument("--kind", action="append", help="only these masks of the renderers (repeatable)")
    parser.add_argument("--limit", type=int, default=None, help="use N pairs spread evenly over the file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=None, help="folder keeping the face records between runs")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    pairs = spread(read_pairs(args.pairs, args.images).pairs, args.limit)
    model = facenet.load_model(args.model)
    if args.occluder:
        head = OccluderDetector.load(args.occluder)
        if head.model_id != model.name:
            parser.error(f"{args.occluder} belongs to model {head.model_id}, not {model.name}")
    else:
        from facenet.occluder import NoOccluderDetector, detector_for

        try:
            head = detector_for(model.name)
        except NoOccluderDetector:
            head = None  # the oracle's rows only
    same = np.array([p.same for p in pairs])
    folds = np.array([p.fold for p in pairs])

    def cached(name: str, make):
        file = args.cache / f"{name}.pkl" if args.cache else None
        if file and file.is_file():
            return pickle.loads(file.read_bytes())
        value = make()
        if file:
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_bytes(pickle.dumps(value))
        return value

    def clean_records():
        out = {}
        for path in sorted({q for p in pairs for q in (p.path1, p.path2)}):
            out[path] = face_record(model, head, str(path))
        return out

    start = time.perf_counter()
    clean = cached(f"clean-{len(pairs)}", clean_records)
    print(f"clean: {len(clean)} photos, {time.perf_counter() - start:.0f} s", file=sys.stderr)
    rows = []

    def measure(renderer: str, kind: str, second: dict, drawn: set) -> None:
        per_pair = [
            comparisons(clean[p.path1][0], second[p.path2], p.path2 in drawn, MATCHING.get(kind, kind)) for p in pairs
        ]
        for method, fixed in [(m, None) for m in METHODS] + [("detector: as masked", model.threshold)]:
            if (kind == "none" and method.startswith("oracle")) or (head is None and method.startswith("detector")):
                continue
            d = np.array([c[method][0] for c in per_pair])
            masked = np.array([c[method][1] for c in per_pair])
            mean, std, thresholds = fold_accuracy(d, masked, same, folds, fixed)
            scored = ~np.isnan(d)
            rows.append(
                {
                    "renderer": renderer,
                    "kind": kind,
                    "method": method + (", the model's threshold" if fixed else ""),
                    "thresholds": thresholds,
                    "pairs": len(pairs),
                    "accuracy": mean,
                    "std": std,
                    "auc": roc(d[scored], same[scored]).auc,  # one score for every scored pair, mixed kinds alike
                    "compared_as_masked": float(masked.mean()),
                    "masked_photos": len(drawn),
                    "detector_lower": float(np.mean([second[q].occlusion == "lower" for q in drawn if second[q]]))
                    if drawn and head
                    else None,
                }
            )
        if drawn:  # how the oracle's AUC moves with the weight of the plain distance in the fusion
            plain, masked = (np.array([c[m][0] for c in per_pair]) for m in METHODS[:2])
            scored = ~np.isnan(plain)
            weights[(renderer, kind)] = {
                w: roc(w * plain[scored] + (1 - w) * masked[scored], same[scored]).auc for w in (1, 0.75, 0.5, 0.25, 0)
            }
        if args.json:
            args.json.write_text(json.dumps({"rows": rows}, indent=2))

    weights = {}
    measure("-", "none", {p: r[0] for p, r in clean.items()}, set())
    for renderer in args.renderer or sorted(RENDERERS, reverse=True):
        for kind in [k for k in RENDERERS[renderer] if not args.kind or k in args.kind]:
            start = time.perf_counter()

            def masked_records(renderer=renderer, kind=kind):
                second, drawn = {}, set()
                for path in sorted({p.path2 for p in pairs}):
                    try:
                        found = clean[path][1]
                        landmarks = found.faces[0].detection.landmarks if found else None
                        photo = draw(renderer, kind, path, landmarks, args.seed)
                    except NoFaceError:  # nothing to draw on: the photo stays clean
                        second[path] = clean[path][0]
                        continue
                    drawn.add(path)
                    second[path] = face_record(model, head, photo)[0]
                return second, drawn

            second, drawn = cached(f"{renderer}-{kind}-{len(pairs)}", masked_records)
            measure(renderer, kind, second, drawn)
            print(f"{renderer} {kind}: {len(drawn)} masked, {time.perf_counter() - start:.0f} s", file=sys.stderr)

    print(f"\nLFW View 2, {len(pairs)} pairs, mask on the second photo\n")
    print("| renderer | mask | method | accuracy | AUC | compared as masked | thresholds: plain, as masked |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        t = r["thresholds"]
        print(
            f"| {r['renderer']} | {r['kind']} | {r['method']} | {r['accuracy']:.2%} +- {r['std']:.2%} | "
            f"{r['auc']:.4f} | {r['compared_as_masked']:.1%} | {t['plain']:.3f}, {t['as masked']:.3f} |"
        )
    for renderer, kind, lower in sorted(
        {(r["renderer"], r["kind"], r["detector_lower"]) for r in rows if r["detector_lower"] is not None}
    ):
        print(f"{renderer} {kind}: the detector calls {lower:.1%} of the masked faces found 'lower'")
    for (renderer, kind), aucs in weights.items():
        sweep = ", ".join(f"{w}: {auc:.4f}" for w, auc in aucs.items())
        print(f"{renderer} {kind}: oracle fusion's AUC by the weight of the plain distance: {sweep}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
