"""``facenet evaluate``: LFW-style pairs protocol for a model file or the dlib baseline."""

from __future__ import annotations

import argparse
from pathlib import Path

DLIB_MODELS = ("dlib", "dlib-raw")


def register(subparsers) -> None:
    from facenet.commands.core import add_model_options

    p = subparsers.add_parser(
        "evaluate", help="k-fold verification accuracy, VAL@FAR, AUC and EER on a pairs file (e.g. LFW)",
        description="Embed every image named in a pairs file once, then run the LFW View 2 protocol: "
                    "per fold, the threshold that maximises accuracy on the other folds; VAL at a target FAR; "
                    "AUC and EER over all pairs.")
    p.add_argument("--model", required=True,
                   help="model file, or 'dlib' (dlib's ResNet, unit rows) / 'dlib-raw' (dlib's raw descriptors)")
    p.add_argument("--pairs", required=True, type=Path, help="pairs file (LFW pairs.txt format)")
    p.add_argument("--images", required=True, type=Path, help="folder with <name>/<name>_<iiii>.<ext> images")
    p.add_argument("--ext", default="jpg", help="image file extension (default: jpg)")
    p.add_argument("--flip", choices=("none", "sum", "concat"), default="none",
                   help="horizontal-flip test-time augmentation (default: none)")
    p.add_argument("--distance", choices=("euclidean", "cosine"), default="euclidean",
                   help="squared L2 or angular distance (default: euclidean)")
    p.add_argument("--subtract-mean", action="store_true",
                   help="centre embeddings on the training folds' mean (affects cosine distance only)")
    p.add_argument("--folds", type=int, default=None,
                   help="re-split the pairs into this many folds (needed for header-less files)")
    p.add_argument("--far", type=float, default=1e-3, help="target FAR for VAL (default: 1e-3)")
    p.add_argument("--batch-size", type=int, default=32, help="images per embedding batch (default: 32)")
    add_model_options(p, model_option=False)
    p.add_argument("--cache", type=Path,
                   help="keep embeddings in this .npz file: an interrupted run resumes, a re-run embeds nothing")
    p.add_argument("--json", type=Path, help="write the results as JSON here")
    p.add_argument("--plots", type=Path, help="write roc.png and distances.png into this folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from facenet.evaluate.protocol import evaluate_pairs

    result = evaluate_pairs(_embedder(args), args.pairs, args.images, flip=args.flip, distance=args.distance,
                            subtract_mean=args.subtract_mean, batch_size=args.batch_size,
                            progress=not args.no_progress, folds=args.folds, ext=args.ext, far_target=args.far,
                            cache=args.cache)
    print(result.table())
    if args.json:
        result.save_json(args.json)
        print(f"results written to {args.json}")
    if args.plots:
        from facenet.evaluate.plots import plot_distance_histogram, plot_roc

        m = result.metrics
        plot_roc({f"{result.model} (AUC {m.roc.auc:.4f})": (m.roc.fpr, m.roc.tpr)}, args.plots / "roc.png",
                 title=f"ROC on {args.pairs.name}")
        plot_distance_histogram(m.distances, result.labels, result.threshold, args.plots / "distances.png",
                                title=f"{result.model}: {args.distance} distances on {args.pairs.name}")
        print(f"plots written to {args.plots}/roc.png and {args.plots}/distances.png")
    return 0


def _embedder(args: argparse.Namespace):
    from facenet.commands.core import embedder_from_args

    if args.model in DLIB_MODELS:
        from facenet.baselines.dlib_model import DlibEmbedder

        detector = None
        if args.detector:  # dlib's descriptor and 5-point chip inside another detector's box
            from facenet.align import get_detector

            detector = get_detector(args.detector)
        return DlibEmbedder(normalize=args.model == "dlib", detector=detector)
    # LFW-style data labels the person in the middle of the photo; the largest face is someone
    # else (or a ball) in about 3% of LFW images.
    return embedder_from_args(args, which="central")
