"""A linear map against the mask, tried for masked probes against clean enrolments (issue 24; not adopted).

A mask moves a face's embedding along a few directions whatever the person. Drawn on LFW-free crops
(PubFig83 and Glint people not named in LFW, ``scripts/prepare_training_data.py``'s aligned folders) in
``facenet.occlusion``'s *training* looks (mask, cloth mask, N95; placed from the crop template's
landmarks), the (masked - clean) embedding differences give those directions' covariance C; every
embedding, gallery and probe alike, is then mapped by (C + floor * max eigenvalue)^-1/2 and normalised,
so the directions a mask moves along count less. Measured on ``masked_openset.py``'s split and cache (LFW
half B, never trained on; the held-out renderer and the evaluation look): DIR at a *measured* 1% stranger
rate and rank-1, for clean and masked probes, with and without the map (the FAR table does not apply to
mapped embeddings, so no asked rate here). With ``--pairs-cache`` (``mask_aware_lfw.py``'s cache), also the
AUC of LFW View 2 pairs with each cached mask on the second photo, and of the same pairs clean.

    .venv/bin/python benchmarks/masked_openset.py ...   # first: it embeds half B under each mask
    .venv/bin/python benchmarks/mask_nuisance.py --faces ~/faces/aligned --lfw ../shared/data/lfw/images \\
        --cache /tmp/masked_openset --json /tmp/masked_openset/nuisance.json \
        --pairs-cache /tmp/h24_ma300 --pairs-limit 300     # mask_aware_lfw.py's cache of 300 pairs
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import face_sets
import numpy as np
from masked_openset import MASKS, embeddings, identify, masked_probes, split
from openset_scale import dir_at

import facenet
from facenet.align.crop import template_points
from facenet.occlusion import occlude

TRAINING_LOOKS = ("mask", "cloth_mask", "n95")


def nuisance_covariance(embedder, faces: Path, count: int, seed: int) -> np.ndarray:
    """Covariance of (masked - clean) embeddings of ``count`` LFW-free aligned crops, one training look each."""
    paths, _, _, _ = face_sets.faces_not_in_lfw(faces, ("pubfig83", "glint"))
    pick = np.random.default_rng(seed).choice(len(paths), min(count, len(paths)), replace=False)
    size = embedder.info.input_size
    recipe = embedder.recipe
    points = template_points(size, recipe.margin, recipe.template)  # where the aligned crop put the landmarks
    clean = [face_sets.read_crop(paths[i], size) for i in pick]
    masked = [occlude(c, points, TRAINING_LOOKS[n % 3], seed=n, variant="train") for n, c in enumerate(clean)]
    return np.cov((embedder.embed_crops(masked) - embedder.embed_crops(clean)).T)


def whitening(covariance: np.ndarray, floor: float) -> np.ndarray:
    values, vectors = np.linalg.eigh(covariance)
    return vectors @ np.diag(1 / np.sqrt(values + floor * values.max())) @ vectors.T


def mapped(embeddings: np.ndarray, matrix: np.ndarray | None) -> np.ndarray:
    if matrix is None:
        return embeddings
    out = embeddings @ matrix
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def pair_aucs(cache: Path, limit: int, maps: dict, images: Path) -> list[dict]:
    """Per map and cached mask: AUC of the pairs with the mask on the second photo, and of them clean."""
    import pickle
    import sys

    import mask_aware_lfw
    from heldout_masked_lfw import spread

    from facenet.evaluate.metrics import roc
    from facenet.evaluate.pairs import read_pairs

    sys.modules["__main__"].Face = mask_aware_lfw.Face  # the records were pickled by that script's main
    pairs = spread(read_pairs(images.parent / "pairs.txt", images).pairs, limit)  # LFW View 2
    same = np.array([p.same for p in pairs])
    clean = {path: record[0] for path, record in pickle.loads((cache / f"clean-{limit}.pkl").read_bytes()).items()}
    rows = []
    for file in sorted(cache.glob(f"*-{limit}.pkl")):
        if file.name.startswith("clean-"):
            continue
        second = pickle.loads(file.read_bytes())
        second = second[0] if isinstance(second, tuple) else second
        usable = [i for i, p in enumerate(pairs) if None not in (clean[p.path1], clean[p.path2], second[p.path2])]
        for name, matrix in maps.items():
            first = mapped(np.stack([clean[pairs[i].path1].plain for i in usable]), matrix)
            masked = mapped(np.stack([second[pairs[i].path2].plain for i in usable]), matrix)
            plain = mapped(np.stack([clean[pairs[i].path2].plain for i in usable]), matrix)
            row = {
                "map": name,
                "mask": file.stem.rsplit("-", 1)[0],
                "pairs": len(usable),
                "auc_masked": roc(np.sum((first - masked) ** 2, axis=1), same[usable]).auc,
                "auc_clean": roc(np.sum((first - plain) ** 2, axis=1), same[usable]).auc,
            }
            rows.append(row)
            print(f"{name:<11} pairs, {row['mask']:<17} AUC {row['auc_masked']:.4f}  clean {row['auc_clean']:.4f}")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--faces", type=Path, required=True, help="the aligned folders of scripts/prepare_training_data.py")
    ap.add_argument("--lfw", type=Path, required=True, help="LFW's images folder")
    ap.add_argument("--cache", type=Path, required=True, help="masked_openset.py's cache")
    ap.add_argument("--train", type=int, default=3000, help="LFW-free crops the map is learnt from")
    ap.add_argument("--floors", default="0.3,0.1,0.03", help="eigenvalue floors tried (share of the largest)")
    ap.add_argument("--policy", default="template")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pairs-cache", type=Path, help="mask_aware_lfw.py's cache: also score its LFW pairs")
    ap.add_argument("--pairs-limit", type=int, default=300, help="the --limit that cache was made with")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    embedder = facenet.load_model(detect=False)
    covariance = nuisance_covariance(embedder, args.faces, args.train, args.seed)
    paths = face_sets.lfw_photos(args.lfw, "b")
    _, enrol, owners, probes, truth, strangers = split(paths)
    clean, clean_found, _ = embeddings("clean", "none", paths, args)
    enrolled = clean_found[enrol]
    tested = probes + list(strangers)
    views = {
        f"{renderer} {kind}": masked_probes(renderer, kind, paths, tested, clean, clean_found, args)[:2]
        for renderer, kind in MASKS
    }
    rows = []
    maps = {"none": None} | {f"floor {f}": whitening(covariance, float(f)) for f in args.floors.split(",")}
    for name, matrix in maps.items():
        faces = mapped(clean[enrol][enrolled], matrix)
        for view, (emb, found) in views.items():
            right, known_score, stranger_score = identify(
                mapped(emb, matrix), found, len(probes), faces, owners[enrolled], truth, args.policy
            )
            row = {
                "map": name,
                "probes": view,
                "dir_at_measured_1pct": dir_at(right, known_score, stranger_score),
                "rank1": float(right.mean()),
            }
            rows.append(row)
            print(f"{name:<11} {view:<17} DIR@measured 1% {row['dir_at_measured_1pct']:.3f}  rank-1 {row['rank1']:.3f}")
    pairs = pair_aucs(args.pairs_cache, args.pairs_limit, maps, args.lfw) if args.pairs_cache else []
    if args.json:
        args.json.write_text(
            json.dumps({"model": embedder.info.id, "train": args.train, "rows": rows, "pairs": pairs}, indent=1)
        )


if __name__ == "__main__":
    main()
