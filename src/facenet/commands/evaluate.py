"""``facenet evaluate``: LFW-style pairs protocol for a model file or the dlib baseline."""

from __future__ import annotations

import argparse
from pathlib import Path

DLIB_MODELS = ("dlib-cpp", "dlib-cpp-raw")


def register(subparsers) -> None:
    from facenet.commands.core import add_model_options

    p = subparsers.add_parser(
        "evaluate",
        help="k-fold verification accuracy, VAL@FAR, AUC and EER on a pairs file (e.g. LFW)",
        description="Embed every image named in a pairs file once, then run the LFW View 2 protocol: "
        "per fold, the threshold that maximises accuracy on the other folds; VAL at a target FAR; "
        "AUC and EER over all pairs.",
    )
    p.add_argument(
        "--model",
        required=True,
        help="model file; 'default' (the installed default model, as `train --init default`); a "
        "shipped model's name, 'reid' or 'dlib' (dlib's network, converted); or dlib's own C++ "
        "pipeline as the peer: 'dlib-cpp' (unit rows) / 'dlib-cpp-raw' (dlib's raw descriptors)",
    )
    p.add_argument("--pairs", required=True, type=Path, help="pairs file (LFW pairs.txt format)")
    p.add_argument("--images", required=True, type=Path, help="folder with <name>/<name>_<iiii>.<ext> images")
    p.add_argument("--ext", default="jpg", help="image file extension (default: jpg)")
    p.add_argument(
        "--flip",
        choices=("none", "sum", "concat"),
        default="none",
        help="horizontal-flip test-time augmentation (default: none)",
    )
    p.add_argument(
        "--distance",
        choices=("euclidean", "cosine"),
        default="euclidean",
        help="squared L2 or angular distance (default: euclidean)",
    )
    p.add_argument(
        "--subtract-mean",
        action="store_true",
        help="centre embeddings on the training folds' mean (affects cosine distance only)",
    )
    p.add_argument(
        "--folds", type=int, default=None, help="re-split the pairs into this many folds (needed for header-less files)"
    )
    p.add_argument("--far", type=float, default=1e-3, help="target FAR for VAL (default: 1e-3)")
    from facenet.occlusion import KINDS  # numpy and OpenCV only: cheap for --help

    p.add_argument(
        "--occlude",
        default=None,
        choices=KINDS,
        metavar="KIND",
        help=f"draw an occluder on the photos first: {', '.join(KINDS)} (placed from MTCNN's "
        "landmarks; see `facenet occlude`)",
    )
    p.add_argument(
        "--occlude-side",
        choices=("one", "both"),
        default="one",
        help="occlude the second photo of each pair (a masked probe against a clean enrolment "
        "photo; default) or both photos",
    )
    p.add_argument("--batch-size", type=int, default=32, help="images per embedding batch (default: 32)")
    p.add_argument(
        "--on-no-face",
        choices=("center", "drop"),
        default="center",
        help="photos where the detector finds no face: embed a centred crop (counted in the report) "
        "or drop their pairs; the same policy for every model, dlib included (default: center)",
    )
    p.add_argument(
        "--write-thresholds",
        action="store_true",
        help="store the calibrated thresholds into the model file: the verification threshold (mean "
        "of the per-fold best) and thresholds at fixed FARs over every pair of different people "
        "among the images (for open-set identification). Refused, the file untouched, where the best "
        "threshold is 0 or below (a model that sees the photos all alike)",
    )
    add_model_options(p, model_option=False)
    p.add_argument(
        "--cache",
        type=Path,
        help="keep embeddings in this .npz file: an interrupted run resumes, a re-run embeds nothing",
    )
    p.add_argument("--json", type=Path, help="write the results as JSON here")
    p.add_argument("--plots", type=Path, help="write roc.png and distances.png into this folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from facenet.errors import FaceNetError
    from facenet.evaluate.protocol import evaluate_pairs

    if args.model == "default":
        from facenet.embedder import ensure_default_model

        args.model = str(ensure_default_model())
    if args.write_thresholds:  # checked before the evaluation, which can take an hour
        if args.model in DLIB_MODELS or Path(args.model).suffix == ".onnx":
            raise FaceNetError("--write-thresholds needs a facenet model file (.safetensors) to write into")
        if args.occlude:  # thresholds fitted to occluded pairs would misjudge every ordinary photo
            raise FaceNetError("--write-thresholds calibrates on unoccluded photos; run it without --occlude")
        # every command compares one unit embedding per photo by squared L2: calibrate exactly that
        other = [
            opt
            for opt, on in (
                ("--distance cosine", args.distance != "euclidean"),
                ("--flip", args.flip != "none"),
                ("--subtract-mean", args.subtract_mean),
            )
            if on
        ]
        if other:
            raise FaceNetError(
                f"--write-thresholds stores squared-L2 thresholds between single embeddings, as every "
                f"command compares them; run it without {', '.join(other)}"
            )

    result = evaluate_pairs(
        _embedder(args),
        args.pairs,
        args.images,
        flip=args.flip,
        distance=args.distance,
        subtract_mean=args.subtract_mean,
        batch_size=args.batch_size,
        progress=not args.no_progress,
        folds=args.folds,
        ext=args.ext,
        far_target=args.far,
        cache=args.cache,
        occlude=args.occlude,
        occlude_side=args.occlude_side,
    )
    print(result.table())
    if args.write_thresholds:
        _write_thresholds(args, result)
    if args.json:
        result.save_json(args.json)
        print(f"results written to {args.json}")
    if args.plots:
        from facenet.evaluate.plots import plot_distance_histogram, plot_roc

        m = result.metrics
        plot_roc(
            {f"{result.model} (AUC {m.roc.auc:.4f})": (m.roc.fpr, m.roc.tpr)},
            args.plots / "roc.png",
            title=f"ROC on {args.pairs.name}",
        )
        plot_distance_histogram(
            m.distances,
            result.labels,
            result.threshold,
            args.plots / "distances.png",
            title=f"{result.model}: {args.distance} distances on {args.pairs.name}",
        )
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
        return DlibEmbedder(normalize=args.model == "dlib-cpp", detector=detector, on_no_face=args.on_no_face)
    # LFW-style data labels the person in the middle of the photo; the largest face is someone
    # else (or a ball) in about 3% of LFW images.
    args.which = "central"
    embedder = embedder_from_args(args)
    if args.on_no_face == "center" and embedder.detector is not None:
        from facenet.align import get_detector

        embedder.fallback_detector = get_detector("center")
    return embedder


def _write_thresholds(args: argparse.Namespace, result) -> None:
    """Rewrite the model file's metadata (weights untouched) with thresholds measured in this run."""
    import dataclasses

    import numpy as np

    from facenet.embedder import model_file
    from facenet.errors import FaceNetError
    from facenet.evaluate.calibrate import calibrate
    from facenet.models.modelfile import check_thresholds, load_model_file, save_model

    paths = sorted(result.embeddings)
    on = f"{args.pairs.name} images ({len(paths)} images of {len({p.parent for p in paths})} people)"
    calibration = calibrate(
        np.stack([result.embeddings[p] for p in paths]), np.array([p.parent.name for p in paths]), on=on
    )
    table = calibration.thresholds
    path = model_file(args.model)
    model, info = load_model_file(path)
    threshold = round(result.threshold, 4)
    if threshold <= 0:  # only identical embeddings would match: a model that sees these photos all alike
        raise FaceNetError(
            f"the best threshold on these pairs is {threshold:.4f} (AUC {result.metrics.roc.auc:.2f}): the model "
            f"does not tell same from different people on them, so {path} keeps its thresholds"
        )
    check_thresholds(threshold, table)  # before the file is touched
    info = dataclasses.replace(
        info,
        threshold=threshold,
        far_thresholds=table,
        far_calibration=calibration.details,
        provenance={**info.provenance, "thresholds": f"facenet evaluate on {on}"},
    )
    save_model(model, path, info)
    entries = calibration.details["entries"]
    far_text = ", ".join(f"FAR {k}: {v:.4f} ({entries[k]['kind']})" for k, v in table.items())
    print(f"thresholds written to {path}: verification {info.threshold:.4f}; {far_text}")
