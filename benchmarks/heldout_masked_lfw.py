"""LFW View 2 with masks the project never trained on: `facenet.evaluate.heldout_masks` on each pair's second photo.

Why: `facenet evaluate --occlude` draws its masks with `facenet.occlusion`, the renderer whose other looks
training augments with; this measures masks drawn another way (dlib's 68 landmarks, jaw-following
outlines, other looks), which training never sees. `--renderer eval` draws the project's own evaluation
looks instead (placed from the model's landmarks on the clean photo), through the same path.

For each `--kind`, the mask goes on the whole second photo of every pair, on the face `--which` picks
(largest, the API's default, or central, the one LFW labels: dlib's face for the held-out renderer, the
model's for the project's); photos with no face to draw on stay clean and are counted apart. Every photo
is then scored through the public API's whole-photo path (`model.find_faces(photo, which=...)`, then the
network, as `facenet.verify` does): a photo where the model finds no face answers its pair wrong (masked or
clean alike). Reported per kind: 10-fold accuracy (thresholds fitted on the other folds' scored pairs,
unscored pairs counted wrong), the share of masked photos whose face the model found, and the photos left
clean; the "none" row is the same pairs clean.

    PYTHONPATH=src .venv/bin/python benchmarks/heldout_masked_lfw.py --pairs ../shared/data/lfw/pairs.txt \\
        --images ../shared/data/lfw/images              # all 6,000 pairs, every kind
    ... --limit 200                                      # a quick look: 200 pairs spread over the 10 folds
    ... --which central                                  # the face LFW labels, in photos of several people
    ... --renderer eval --dlib                           # the project's looks; dlib's own pipeline beside
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

import facenet
from facenet.data.images import load_image
from facenet.errors import NoFaceError
from facenet.evaluate.heldout_masks import KINDS, mask_photo
from facenet.evaluate.metrics import kfold_metrics
from facenet.evaluate.pairs import read_pairs
from facenet.occlusion import occlude

# The masks each renderer draws: the held-out one's kinds, and the project's own evaluation looks of masks
RENDERERS = {"heldout": KINDS, "eval": ("mask", "cloth_mask", "n95")}


def scorer(embed) -> Callable:
    """``embed(photo)`` -> its embedding, or None where no face is found."""

    def score(photo) -> np.ndarray | None:
        try:
            return embed(photo)
        except NoFaceError:
            return None

    return score


def spread(pairs: list, limit: int | None) -> list:
    """``limit`` pairs spread evenly over the file (every fold, both kinds of pair); all without a limit."""
    return pairs[:: max(1, len(pairs) // limit)][:limit] if limit else pairs


def mask_seed(seed: int, path: Path) -> int:
    """The seed of the mask drawn on ``path``: the same photo gets the same mask in every run."""
    return zlib.crc32(f"{seed}:{path.name}".encode())


def draw(renderer: str, kind: str, path: Path, landmarks: np.ndarray | None, seed: int, which: str = "largest"):
    """The photo at ``path`` with a ``kind`` mask: the held-out renderer places it on dlib's ``which`` face,
    the project's (``facenet.occlusion``, "eval" looks) from the model's five ``landmarks`` of the face it chose
    in the clean photo. NoFaceError where there is no face to draw on."""
    pixels = load_image(path)
    if renderer == "heldout":
        return mask_photo(pixels, kind, seed=mask_seed(seed, path), which=which)
    if landmarks is None:
        raise NoFaceError(f"{path}: no face to draw on")
    return occlude(pixels, landmarks, kind, mask_seed(seed, path), "eval")


def accuracy(pairs: list, first: dict, second: dict) -> tuple[float, float]:
    """10-fold accuracy (mean, std) where a pair with a photo lacking an embedding counts as answered wrong."""
    folds = np.array([p.fold for p in pairs])
    scored = [i for i, p in enumerate(pairs) if first[p.path1] is not None and second[p.path2] is not None]
    per_fold = dict.fromkeys(np.unique(folds).tolist(), 0.0)
    if scored:
        m = kfold_metrics(
            np.stack([first[pairs[i].path1] for i in scored]),
            np.stack([second[pairs[i].path2] for i in scored]),
            np.array([pairs[i].same for i in scored]),
            folds[scored],
        )
        for fold, acc in zip(np.unique(folds[scored]).tolist(), m.accuracy):
            per_fold[fold] = acc * np.sum(folds[scored] == fold) / np.sum(folds == fold)
    values = np.array(list(per_fold.values()))
    return float(values.mean()), float(values.std())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=Path, default=Path("../shared/data/lfw/pairs.txt"))
    parser.add_argument("--images", type=Path, default=Path("../shared/data/lfw/images"))
    parser.add_argument("--model", default=None, help="model file (default: the installed default model)")
    parser.add_argument(
        "--renderer",
        choices=sorted(RENDERERS),
        default="heldout",
        help="heldout: the renderer training never sees (dlib-placed); eval: the project's own evaluation looks",
    )
    parser.add_argument(
        "--kind",
        action="append",
        choices=sorted({k for kinds in RENDERERS.values() for k in kinds}),
        help="mask kind of the renderer (repeatable; default: all of its kinds)",
    )
    parser.add_argument("--limit", type=int, default=None, help="use N pairs spread evenly over the file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--which",
        choices=("largest", "central"),
        default="largest",
        help="the face masked and compared in a photo with several: largest (the API's default) or central "
        "(the one LFW labels)",
    )
    parser.add_argument(
        "--dlib", action="store_true", help="also score dlib's own pipeline (HOG, 5-point chip, its network)"
    )
    args = parser.parse_args(argv)
    if any(kind not in RENDERERS[args.renderer] for kind in args.kind or ()):
        parser.error(f"the {args.renderer} renderer draws {', '.join(RENDERERS[args.renderer])}")

    pairs = spread(read_pairs(args.pairs, args.images).pairs, args.limit)
    model = facenet.load_model(args.model)
    landmarks: dict[str, np.ndarray] = {}  # of the face the model chose in each clean photo: the eval renderer's

    def embed_model(photo) -> np.ndarray:
        face = model.find_faces(photo, which=args.which).faces[0]
        if isinstance(photo, str):
            landmarks[photo] = face.detection.landmarks
        return model.embed_crops([face.image])[0]

    scorers = {args.model or "default": scorer(embed_model)}
    if args.dlib:
        from facenet.baselines.dlib_model import DlibEmbedder

        dlib = DlibEmbedder(normalize=True, on_no_face="drop")  # as a user meets it: no face, no answer
        scorers["dlib's pipeline"] = scorer(lambda photo: dlib.embed([photo])[0])
    paths = sorted({q for p in pairs for q in (p.path1, p.path2)})
    rows, clean = [], {}
    for name, score in scorers.items():
        start = time.perf_counter()
        clean[name] = {path: score(str(path)) for path in paths}
        mean, std = accuracy(pairs, clean[name], clean[name])
        missed = sum(e is None for e in clean[name].values())
        rows.append(
            {
                "kind": "none",
                "scorer": name,
                "pairs": len(pairs),
                "accuracy": mean,
                "std": std,
                "photos": len(paths),
                "face_found": 1 - missed / len(paths),
                "not_drawn": None,
            }
        )
        print(
            f"none, {name}: no face in {missed} of {len(paths)}, {time.perf_counter() - start:.0f} s", file=sys.stderr
        )
    for kind in args.kind or RENDERERS[args.renderer]:
        start = time.perf_counter()
        second: dict[str, dict] = {name: {} for name in scorers}
        masked, found, not_drawn = 0, dict.fromkeys(scorers, 0), 0
        for path in sorted({p.path2 for p in pairs}):
            try:
                photo = draw(args.renderer, kind, path, landmarks.get(str(path)), args.seed, args.which)
            except NoFaceError:  # nothing to draw on: the photo stays clean, counted apart
                not_drawn += 1
                for name in scorers:
                    second[name][path] = clean[name][path]
                continue
            masked += 1
            for name, score in scorers.items():
                second[name][path] = score(photo)
                found[name] += second[name][path] is not None
        for name in scorers:
            mean, std = accuracy(pairs, clean[name], second[name])
            rows.append(
                {
                    "kind": kind,
                    "scorer": name,
                    "pairs": len(pairs),
                    "accuracy": mean,
                    "std": std,
                    "photos": masked,
                    "face_found": found[name] / max(masked, 1),
                    "not_drawn": not_drawn,
                }
            )
        print(f"{kind}: {masked} masked, found {found}, {time.perf_counter() - start:.0f} s", file=sys.stderr)
        if args.json:  # after every kind: a long run stopped early keeps what it measured
            args.json.write_text(json.dumps({"renderer": args.renderer, "which": args.which, "rows": rows}, indent=2))

    print(f"\nLFW View 2, {len(pairs)} pairs, {args.renderer} mask on the second photo's {args.which} face\n")
    print("| mask | scorer | accuracy | face found | no face to draw on (left clean) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['kind']} | {r['scorer']} | {r['accuracy']:.4f} +- {r['std']:.4f} | {r['face_found']:.1%} of "
            f"{r['photos']} | {'-' if r['not_drawn'] is None else r['not_drawn']} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
