"""``facenet occlude SRC DST --kind mask``: draw occluders on the faces of photos (for tests and demos)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from facenet.occlusion import KINDS, VARIANTS  # numpy and OpenCV only: cheap for --help


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "occlude",
        help="draw masks, sunglasses, scarves, hands or cap shadows on the faces of photos",
        description="Find the faces in SRC (a photo or a folder) and draw the occluder on each, placed from the "
        "face's five landmarks so it follows pose and scale; writes PNGs to DST with the same relative "
        "names. Deterministic for a given --seed. Sources are never modified.",
    )
    p.add_argument("src", help="a photo or a folder of photos")
    p.add_argument("dst", help="output folder")
    p.add_argument("--kind", choices=KINDS, default="mask", help="occluder (default: mask, a surgical mask)")
    p.add_argument(
        "--variant",
        choices=VARIANTS,
        default="eval",
        help="set of looks: eval (what `facenet evaluate --occlude` draws) or train (what training "
        "augmentation draws); the two share no colour or pattern",
    )
    p.add_argument("--detector", default="mtcnn", help="detector whose landmarks place the occluder (default: mtcnn)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image

    from facenet.align import FaceFinder, Recipe, get_detector
    from facenet.data.images import expand_image_paths
    from facenet.errors import DataError, FaceNetError
    from facenet.fileio import atomic_write
    from facenet.occlusion import occlude

    src, dst = Path(args.src).resolve(), Path(args.dst).resolve()
    if dst == src or src in dst.parents:
        raise DataError(f"output folder {dst} lies inside the source {src}; choose a separate folder")
    detector = get_detector(args.detector)
    finder = FaceFinder(detector, Recipe(), 160)  # detection only: the occluders are drawn on the full photo
    photos = expand_image_paths([str(src)])
    written, skipped = 0, []
    for i, photo in enumerate(photos):
        try:
            opened, faces, _ = finder.locate(photo)
            pixels = opened.at_least(1.0)[0].copy()
        except FaceNetError as exc:
            skipped.append(f"{photo}: {exc}")
            continue
        if not faces:
            skipped.append(f"{photo}: no face found by the {detector.name} detector")
            continue
        for j, face in enumerate(faces):
            pixels = occlude(
                pixels, face.landmarks, args.kind, seed=args.seed * 100003 + i * 17 + j, variant=args.variant
            )
        rel = photo.relative_to(src) if src.is_dir() else Path(photo.name)
        out = (dst / rel).with_suffix(".png")
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(out, lambda tmp, im=np.ascontiguousarray(pixels): Image.fromarray(im).save(tmp, "PNG"))
        written += 1
    for line in skipped:
        print(f"facenet occlude: skipped {line}", file=sys.stderr)
    print(f"{written} photo(s) written to {dst} with a {args.kind}; {len(skipped)} skipped")
    return 0 if written else 2
