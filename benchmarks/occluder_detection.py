"""The occluder detectors (``facenet.occluder``) measured: precision and recall per class of the head (where one
is trained: ``scripts/train_occluder.py``), and of the rule facenet compares by, ``lower_face_covered`` (the mask
sensitivity under the model's calibrated cut: "masked" or not).

1. Evaluation looks on LFW: ``--lfw-photos`` LFW photos (a seeded sample), each clean and with every
   occluder of ``facenet.occlusion`` in its *evaluation* variant (the detector is trained on the training
   looks only, on LFW-free faces). Expected class: clean and cap shadow ``none``; mask, cloth mask,
   N95, scarf, hand ``lower``; sunglasses ``eyes``. The occluder is placed from the landmarks found on
   the clean photo; the face is then found and cut again on the occluded photo, as in use.
2. Real photos: every face the default model's finder chooses in RWMFD part 1 (real masked photos; every
   photo holds a masked face: expected ``lower``) against ``--lfw-clean`` clean LFW photos and ``--pubfig``
   clean PubFig83 photos (expected ``none``). Precision of ``lower`` here depends on the mix (counts are
   printed).

RWMFD part 1: X-zhangyang/Real-World-Masked-Face-Dataset @ b6772855cc581f42b851dc53b78d4ba852cc3860,
folder RWMFD_part_1 (see benchmarks/masked_detection.py).

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/occluder_detection.py \\
        --lfw ../shared/data/lfw/images --rwmfd ~/rwmfd/RWMFD_part_1 \\
        --pubfig ~/faces-src/Face-Recognition/train --workers 2 --cache ~/faces/occluder_eval.npz
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

SUFFIXES = {".jpg", ".jpeg", ".png"}


def _work(job):
    """Embed the looks of (set, index, path, kinds) items in one process: (set, expected, kind, rows, mask
    sensitivity)."""
    import torch

    torch.set_num_threads(1)
    import facenet
    from facenet.data.images import load_image
    from facenet.errors import FaceNetError
    from facenet.occluder import CLASS_OF_KIND, mask_sensitivity, occluded_crops

    model = facenet.load_model()
    finder = model.finder()
    sets, expected, kinds_out, crops = [], [], [], []
    for name, index, path, kinds in job:
        try:
            pixels = load_image(path)
        except FaceNetError:
            continue
        for kind, crop in zip(kinds, occluded_crops(finder, pixels, kinds, seed=index, variant="eval")):
            if crop is None:
                continue
            sets.append(name)
            kinds_out.append(kind or "clean")
            expected.append("lower" if name == "rwmfd" else "none" if kind is None else CLASS_OF_KIND[kind])
            crops.append(crop)
    rows = model.embed_crops(crops) if crops else np.zeros((0, model.embedding_size), np.float32)
    return sets, expected, kinds_out, rows, mask_sensitivity(model, crops, rows)


def main(argv=None) -> int:
    from facenet.occlusion import KINDS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lfw", type=Path, required=True, help="LFW's images/ folder (one folder per person)")
    ap.add_argument("--rwmfd", type=Path, default=None, help="RWMFD_part_1 folder (real masked photos)")
    ap.add_argument("--lfw-photos", type=int, default=300, help="LFW photos given every evaluation look (300)")
    ap.add_argument("--lfw-clean", type=int, default=1000, help="clean LFW photos against RWMFD (1000)")
    ap.add_argument("--rwmfd-limit", type=int, default=None, help="evenly spread subset of RWMFD photos")
    ap.add_argument("--pubfig", type=Path, default=None, help="PubFig83's train/ folder (clean photos against RWMFD)")
    ap.add_argument("--pubfig-clean", type=int, default=1000, help="clean PubFig83 photos, evenly spread (1000)")
    ap.add_argument("--workers", type=int, default=1, help="processes (one thread each)")
    ap.add_argument("--cache", type=Path, default=None, help="keep the embedded looks here (.npz) and reuse them")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import facenet
    from facenet.occluder import CLASSES, NoOccluderDetector, detector_for

    model = facenet.load_model(detect=False)
    start = time.perf_counter()
    if args.cache and args.cache.is_file():
        saved = np.load(args.cache)
        sets, expected, kinds, rows, sensitivity = (
            saved[k] for k in ("sets", "expected", "kinds", "rows", "sensitivity")
        )
        rw_photos = int(saved["rw_photos"])
    else:
        lfw = sorted(p for p in args.lfw.glob("*/*") if p.suffix.lower() in SUFFIXES)
        order = np.random.default_rng(args.seed).permutation(len(lfw))
        looks = [None, *KINDS]
        items = [("lfw-eval", i, str(lfw[j]), looks) for i, j in enumerate(order[: args.lfw_photos])]
        clean = order[args.lfw_photos : args.lfw_photos + args.lfw_clean]
        items += [("lfw-clean", i, str(lfw[j]), [None]) for i, j in enumerate(clean)]
        rw = sorted(p for p in args.rwmfd.rglob("*") if p.suffix.lower() in SUFFIXES) if args.rwmfd else []
        if args.rwmfd_limit:
            rw = rw[:: max(1, len(rw) // args.rwmfd_limit)][: args.rwmfd_limit]
        rw_photos = len(rw)
        items += [("rwmfd", i, str(p), [None]) for i, p in enumerate(rw)]
        pubfig = sorted(p for p in args.pubfig.rglob("*") if p.suffix.lower() in SUFFIXES) if args.pubfig else []
        pubfig = pubfig[:: max(1, len(pubfig) // args.pubfig_clean)][: args.pubfig_clean]
        items += [("pubfig-clean", i, str(p), [None]) for i, p in enumerate(pubfig)]
        jobs = [items[w :: args.workers] for w in range(args.workers)]
        if args.workers == 1:
            results = [_work(jobs[0])]
        else:
            from multiprocessing import get_context

            with get_context("spawn").Pool(args.workers) as pool:
                results = pool.map(_work, jobs)
        sets, expected, kinds = (np.concatenate([np.asarray(r[k], dtype="<U12") for r in results]) for k in range(3))
        rows = np.concatenate([r[3] for r in results])
        sensitivity = np.concatenate([r[4] for r in results])
        if args.cache:
            args.cache.parent.mkdir(parents=True, exist_ok=True)
            np.savez(
                args.cache,
                sets=sets,
                expected=expected,
                kinds=kinds,
                rows=rows,
                sensitivity=sensitivity,
                rw_photos=rw_photos,
            )
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_embedding import machine_line

    print(machine_line(0))
    print(f"model {model.name}; looks embedded in {time.perf_counter() - start:.0f} s")
    below = model.info.masked["covered_below"]
    masked = np.where(sensitivity < below, "masked", "not")
    truth = np.where(expected == "lower", "masked", "not")
    real = (sets == "rwmfd") | (sets == "lfw-clean") | (sets == "pubfig-clean")
    ev = sets == "lfw-eval"
    print(f"\nlower_face_covered (mask sensitivity under {below}): the share called masked")
    for name, selected in [(f"LFW, look {k}", ev & (kinds == k)) for k in ("clean", *KINDS)] + [
        (name, sets == name) for name in ("rwmfd", "lfw-clean", "pubfig-clean")
    ]:
        if selected.any():
            print(f"  {name:24s} {int(selected.sum()):5d} faces: {100 * (masked[selected] == 'masked').mean():5.1f}%")
    _table("masked or not, all evaluation looks (scarf and hand count as masked)", truth[ev], masked[ev], ("masked",))
    for clean_set in ("lfw-clean", "pubfig-clean"):
        pair = (sets == "rwmfd") | (sets == clean_set)
        if (sets == clean_set).any():
            _table(f"masked or not, RWMFD vs {clean_set}", truth[pair], masked[pair], ("masked", "not"))
    try:
        head = detector_for(model.name)
    except NoOccluderDetector as exc:
        print(f"\nno occluder head: {exc}")
        return 0
    predicted = np.array([c for c, _ in head.classify(rows)]) if len(rows) else np.array([], dtype="<U8")

    print(f"\n1. Evaluation looks on {args.lfw_photos} LFW photos (faces found after drawing: per look)")
    print(f"{'look':12s} {'expected':>8s} {'faces':>6s} " + " ".join(f"{c:>7s}" for c in CLASSES))
    for kind in ("clean", *KINDS):
        sel = ev & (kinds == kind)
        n = int(sel.sum())
        shares = " ".join(f"{100 * (predicted[sel] == c).mean() if n else 0:6.1f}%" for c in CLASSES)
        print(f"{kind:12s} {str(expected[sel][0]) if n else '-':>8s} {n:6d} {shares}")
    _table("all evaluation looks", expected[ev], predicted[ev], CLASSES)

    n_rw, n_clean = int((sets == "rwmfd").sum()), int((sets == "lfw-clean").sum())
    print(
        f"\n2. Real photos: RWMFD part 1, a face found in {n_rw} of {rw_photos} photos (expected lower); "
        f"{n_clean} clean LFW faces (expected none)"
    )
    for name in ("rwmfd", "lfw-clean"):
        sel = sets == name
        if sel.any():
            shares = ", ".join(f"{c} {100 * (predicted[sel] == c).mean():.1f}%" for c in CLASSES)
            print(f"  {name:10s} {int(sel.sum()):5d} faces: {shares}")
    if real.any():
        _table("RWMFD vs clean LFW", expected[real], predicted[real], CLASSES)
        p_lower = head.probabilities(rows)[:, CLASSES.index("lower")]
        masked, clean = p_lower[sets == "rwmfd"], p_lower[sets == "lfw-clean"]
        print("\n'lower' when its probability is at least t (RWMFD recall; clean LFW faces called lower):")
        for t in (0.5, 0.7, 0.8, 0.9, 0.95):
            recall, alarms = 100 * (masked >= t).mean(), 100 * (clean >= t).mean()
            print(f"  t={t:4.2f}  recall {recall:5.1f}%  false alarms {alarms:5.1f}%")
    return 0


def _table(title: str, expected: np.ndarray, predicted: np.ndarray, classes) -> None:
    print(f"\n{title}: {len(expected)} faces, accuracy {100 * (expected == predicted).mean():.1f}%")
    print(f"{'class':8s} {'faces':>6s} {'called':>6s} {'precision':>9s} {'recall':>7s}")
    for c in classes:
        truth, call = expected == c, predicted == c
        tp = int((truth & call).sum())
        precision = f"{100 * tp / call.sum():8.1f}%" if call.any() else f"{'-':>9s}"
        recall = f"{100 * tp / truth.sum():6.1f}%" if truth.any() else f"{'-':>7s}"
        print(f"{c:8s} {int(truth.sum()):6d} {int(call.sum()):6d} {precision} {recall}")


if __name__ == "__main__":
    sys.exit(main())
