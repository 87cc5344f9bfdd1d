"""``facenet align SRC DST``: detect and crop/align every face of a folder-per-identity dataset."""

from __future__ import annotations

import argparse

from facenet.align import default_detector_name, list_detectors
from facenet.align.crop import MODES, TEMPLATES, WHICH, Recipe
from facenet.align.dataset import RECIPE_NAME, REPORT_NAME, AlignSettings, align_dataset


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "align",
        help="crop/align the faces of a dataset (one sub-folder per person)",
        description="Detect faces in SRC/<person>/<image> and write SRC's faces to DST/<person>/<image>.png. "
        "Resumable: existing outputs are skipped. Source files are never modified. "
        f"DST/{RECIPE_NAME} records the recipe; models trained on DST cut faces the same way.",
    )
    p.add_argument("src", help="dataset folder with one sub-folder per person")
    p.add_argument("dst", help="output folder (created; must not overlap SRC)")
    p.add_argument(
        "--detector",
        choices=list_detectors(),
        default=None,
        help="face detector (default: mtcnn when its weights are installed)",
    )
    p.add_argument("--size", type=int, default=160, help="output side in pixels (160 to evaluate, 182 to train)")
    p.add_argument(
        "--margin",
        type=float,
        default=None,
        help="margin relative to the face: crop mode, the box grows by this fraction of its size "
        "(default 0.3, about Sandberg's 32 px on LFW faces); similarity mode, the fraction of "
        "the output around the template (default 0.2)",
    )
    p.add_argument(
        "--mode",
        choices=MODES,
        default="crop",
        help="crop: box + margin (Sandberg's recipe); similarity: 5-landmark alignment",
    )
    p.add_argument(
        "--template",
        choices=list(TEMPLATES),
        default="facenet",
        help="similarity mode: landmark template (dlib = dlib's 150 px chip framing)",
    )
    p.add_argument("--which", choices=WHICH, default="largest", help="face(s) to keep when there are several")
    p.add_argument(
        "--fallback",
        choices=["center"],
        default=None,
        help="centre-crop images where no face is found (counted in the report)",
    )
    p.add_argument("--workers", type=int, default=1, help="parallel processes, each with its own detector")
    p.add_argument("--report", default=None, help=f"JSON report path (default DST/{REPORT_NAME})")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    margin = args.margin if args.margin is not None else (0.3 if args.mode == "crop" else 0.2)
    recipe = Recipe(
        detector=args.detector or default_detector_name(),
        mode=args.mode,
        margin=margin,
        template=args.template,
        which="largest" if args.which == "all" else args.which,
    )
    settings = AlignSettings(recipe=recipe, size=args.size, which=args.which, fallback=args.fallback)
    r = align_dataset(
        args.src, args.dst, settings, workers=args.workers, report_path=args.report, progress=not args.quiet
    )
    print(
        f"{r.images} images: {r.aligned} aligned ({r.faces_written} faces written), {r.skipped} already done, "
        f"{len(r.no_face)} without a face, {len(r.fallback_center)} centre-cropped, "
        f"{len(r.several_faces)} with several faces, {len(r.bad_image)} unreadable; "
        f"report: {args.report or f'{args.dst}/{REPORT_NAME}'}"
    )
    return 0
