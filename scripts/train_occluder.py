"""Train the occluder detector (``facenet.occluder``) for the default model: a small MLP over its embeddings.

Data: the CelebA sample (Nikhil4902/CelebA_Dataset @ 22ed0908a96e6bf3fe626700a628d0ad26d8dd0b,
``Datasets/``; LFW-free; the held-out identities of ``scripts/prepare_training_data.py`` are left out,
which needs ``identity_CelebA.txt`` from that repository's newest commit) and, with ``--pubfig``,
PubFig83 (LucasPieroo/Face-Recognition @ 0a7b6eff405c04f31b7492b4247eb75f182582df, ``train/``: other
photos, other cameras). PubFig83 shares people with LFW (none of its photos are LFW's): harmless for a
detector that learns occluders, not identities, but its LFW figures are not on people it never saw.
Each photo gives several looks, all drawn
with ``facenet.occlusion``'s *training* variant (the evaluation looks are never seen): clean (``none``),
one lower-face occluder (mask, cloth mask, N95, scarf, hand in turn: ``lower``), sunglasses (``eyes``)
and, on every third photo, a cap's shadow (``none``). The occluder is placed from the landmarks the
default model's finder gives on the clean photo; the crop is then cut by the same finder from the
occluded photo, as a real masked photo would be. A fifth of the photos (by photo) is kept back to
report accuracy; the head is then fitted on all of them. Everything is seeded: the same command gives
the same file.

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python scripts/train_occluder.py \\
        --celeba ~/faces-src/celeba/Datasets --identities ~/faces-src/celeba/identity_CelebA.txt \\
        --photos 1500 --pubfig ~/faces-src/pubfig/train --pubfig-photos 4000 --workers 2 --cache ~/faces/occluder_cache

writes ``src/facenet/models/weights/occluder-reid.safetensors`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

LOWER = ("mask", "cloth_mask", "n95", "scarf", "hand")
HELD_OUT_CELEBA = (7206, 7209, 7237, 7271, 7395, 7429)  # as scripts/prepare_training_data.py
PUBFIG_OFFSET = 1_000_000  # PubFig83's photos are numbered (and seeded) from here
DEFAULT_OUT = (
    Path(__file__).resolve().parents[1] / "src" / "facenet" / "models" / "weights" / "occluder-reid.safetensors"
)


def looks_of(index: int) -> list[str | None]:
    """The looks drawn on photo number ``index``: None is the clean photo."""
    looks: list[str | None] = [None, LOWER[index % len(LOWER)], "sunglasses"]
    if index % 3 == 0:
        looks.append("cap_shadow")
    return looks


def photos_of(celeba: Path, identities: Path, count: int, seed: int) -> list[Path]:
    identity = dict(line.split() for line in identities.read_text().splitlines() if line.strip())
    photos = [
        p
        for p in sorted(celeba.glob("*/celeb_*/*.jpg"))
        if p.name in identity and int(identity[p.name]) not in HELD_OUT_CELEBA
    ]
    order = np.random.default_rng(seed).permutation(len(photos))
    return [photos[i] for i in sorted(order[:count])]


def pubfig_photos(root: Path, count: int, seed: int) -> list[Path]:
    """A seeded sample of PubFig83's photos (``train/<person>/*.jpg``)."""
    photos = sorted(root.glob("*/*.jpg"))
    order = np.random.default_rng(seed).permutation(len(photos))
    return [photos[i] for i in sorted(order[:count])]


def _work(job: tuple[int, list[tuple[int, str]]]) -> tuple[list[int], list[str], np.ndarray]:
    """Embed every look of the given (index, path) photos in one process: (indices, labels, embeddings)."""
    import torch

    torch.set_num_threads(1)
    import facenet
    from facenet.data.images import load_image
    from facenet.errors import FaceNetError
    from facenet.occluder import CLASS_OF_KIND, occluded_crops

    _, chunk = job
    model = facenet.load_model()
    finder = model.finder()
    idx, labels, crops = [], [], []
    for index, path in chunk:
        try:
            pixels = load_image(path)
        except FaceNetError:
            continue
        kinds = looks_of(index)
        for kind, crop in zip(kinds, occluded_crops(finder, pixels, kinds, seed=index, variant="train")):
            if crop is not None:
                idx.append(index)
                labels.append("none" if kind is None else CLASS_OF_KIND[kind])
                crops.append(crop)
    rows = model.embed_crops(crops) if crops else np.zeros((0, model.embedding_size), np.float32)
    return idx, labels, rows


def embed_looks(photos: list[Path], workers: int, offset: int = 0):
    """Every look of ``photos``; photo i is numbered (and seeded) ``offset + i``."""
    from multiprocessing import get_context

    jobs = [(w, [(offset + i, str(p)) for i, p in enumerate(photos) if i % workers == w]) for w in range(workers)]
    if workers == 1:
        results = [_work(jobs[0])]
    else:
        with get_context("spawn").Pool(workers) as pool:
            results = pool.map(_work, jobs)
    idx = np.concatenate([np.asarray(r[0], np.int64) for r in results])
    labels = np.concatenate([np.asarray(r[1], dtype="<U8") for r in results])
    rows = np.concatenate([r[2] for r in results])
    return idx, labels, rows


def fit(rows: np.ndarray, y: np.ndarray, c: float, hidden: int, seed: int):
    """The head's layers [(weight, bias), ...]: multinomial logistic regression, or an MLP with ``hidden`` units."""
    if hidden:
        from sklearn.neural_network import MLPClassifier

        clf = MLPClassifier((hidden,), alpha=1.0 / c, max_iter=2000, random_state=seed).fit(rows, y)
        return [(w.T, b) for w, b in zip(clf.coefs_, clf.intercepts_)]
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=c, max_iter=5000).fit(rows, y)
    return [(clf.coef_, clf.intercept_)]


def main(argv=None) -> int:
    from facenet.occluder import CLASSES, OccluderDetector

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--celeba", type=Path, required=True, help="the CelebA sample's Datasets/ folder")
    ap.add_argument("--identities", type=Path, required=True, help="identity_CelebA.txt")
    ap.add_argument("--photos", type=int, default=1500, help="photos to draw looks on (default 1500)")
    ap.add_argument("--workers", type=int, default=1, help="processes (one thread each)")
    ap.add_argument("--pubfig", type=Path, default=None, help="PubFig83's train/ folder (a second source)")
    ap.add_argument("--pubfig-photos", type=int, default=4000, help="PubFig83 photos to draw looks on (default 4000)")
    ap.add_argument("--cache", type=Path, default=None, help="keep each source's embedded looks in this folder")
    ap.add_argument("--C", type=float, default=100.0, help="inverse regularisation strength (default 100)")
    ap.add_argument("--hidden", type=int, default=128, help="hidden units (default 128; 0: logistic regression)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)

    import facenet

    model_id = facenet.load_model(detect=False).name
    start = time.perf_counter()
    sources = [("celeba", args.photos, 0, lambda: photos_of(args.celeba, args.identities, args.photos, args.seed))]
    if args.pubfig:
        sources.append(
            (
                "pubfig83",
                args.pubfig_photos,
                PUBFIG_OFFSET,
                lambda: pubfig_photos(args.pubfig, args.pubfig_photos, args.seed),
            )
        )
    parts = []
    for name, count, offset, listing in sources:
        cached = args.cache / f"{name}-{count}.npz" if args.cache else None
        if cached and cached.is_file():
            saved = np.load(cached)
            parts.append((saved["idx"], saved["labels"], saved["rows"]))
            continue
        parts.append(embed_looks(listing(), args.workers, offset))
        if cached:
            cached.parent.mkdir(parents=True, exist_ok=True)
            np.savez(cached, idx=parts[-1][0], labels=parts[-1][1], rows=parts[-1][2])
    idx, labels, rows = (np.concatenate([p[k] for p in parts]) for k in range(3))
    y = np.array([CLASSES.index(str(v)) for v in labels])
    print(
        f"{len(rows)} looks of {len(set(idx.tolist()))} photos in {time.perf_counter() - start:.0f} s; per class:",
        {c: int((y == k).sum()) for k, c in enumerate(CLASSES)},
    )

    held = np.random.default_rng(args.seed).random(int(idx.max()) + 1) < 0.2  # by photo
    test = held[idx]
    check = OccluderDetector(fit(rows[~test], y[~test], args.C, args.hidden, args.seed), model_id)
    guess = check.probabilities(rows[test]).argmax(axis=1)
    accuracy = float((guess == y[test]).mean())
    print(f"held-back photos' looks: {test.sum()}, accuracy {accuracy:.4f}")
    for k, c in enumerate(CLASSES):
        tp = int(((guess == k) & (y[test] == k)).sum())
        print(
            f"  {c:6s} precision {tp / max(1, (guess == k).sum()):.4f} recall {tp / max(1, (y[test] == k).sum()):.4f}"
        )

    about = {
        "data": f"{' + '.join(f'{n} {c}' for n, c, _, _ in sources)} photos ({len(set(idx.tolist()))} with a face), "
        f"{len(rows)} looks (facenet.occlusion train variant; held-out CelebA identities left out)",
        "head": f"mlp {args.hidden}" if args.hidden else "logistic regression",
        "C": args.C,
        "seed": args.seed,
        "heldback_accuracy": round(accuracy, 4),
        "trained_by": "scripts/train_occluder.py",
    }
    head = OccluderDetector(fit(rows, y, args.C, args.hidden, args.seed), model_id, about)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    head.save(args.out, half=bool(args.hidden))  # float16: 66 KB for 128 hidden units
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes) for {model_id}:", json.dumps(about))
    return 0


if __name__ == "__main__":
    sys.exit(main())
