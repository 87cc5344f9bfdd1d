"""Do faces found on the reduced copy keep the boxes found at full size? LFW photos upscaled 8x (2000 px).

For each photo, the default model's finder (reduced copy: 750 px for a 2000 px photo at the default
`--min-face`) and the same finder at full resolution (``min_face=None``) find every face; for each face
of at least 100 px at full size, the largest corner difference of the nearest reduced-copy box, as a
fraction of the face's width. The peer is the detector's own repeatability: the same full-size photo
as lossless pixels against JPEG q90.

    .venv/bin/python benchmarks/box_stability.py --images ../shared/data/lfw/images --people 40
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
from fullsize_photos import jpeg
from PIL import Image

import facenet
from facenet.align.finder import FaceFinder


def corner_error(a, b) -> float:
    """Largest corner difference between two boxes, as a fraction of the width of ``b``."""
    return float(np.abs(np.subtract(a, b)).max() / (b[2] - b[0]))


def nearest_errors(found, reference) -> list[float]:
    return [min(corner_error(d.box, face.box) for d in found) for face in reference if found]


def reaches_past(box, side: int) -> bool:
    """Whether the face's square (O-Net's input, the box's longer side around its centre) leaves the photo:
    MTCNN settles such a face on the square moved inside the photo (``_square_within``)."""
    half = max(box[2] - box[0], box[3] - box[1]) / 2
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return min(cx, cy) - half < 0 or max(cx, cy) + half > side


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, required=True, help="LFW's images folder")
    parser.add_argument("--people", type=int, default=40, help="one photo each, spread over the alphabet")
    args = parser.parse_args()
    model = facenet.load_model()
    finder = model.finder()
    full_size = FaceFinder(finder.detector, finder.recipe, finder.input_size, min_face=None)
    names = sorted(p.name for p in args.images.iterdir())
    reduced, repeat, border, unreliable = [], [], [], []
    for person in names[:: max(1, len(names) // args.people)][: args.people]:
        big = Image.open(args.images / person / f"{person}_0001.jpg").convert("RGB").resize((2000, 2000), Image.BICUBIC)
        data, lossless = jpeg(big), io.BytesIO()
        big.save(lossless, "PNG")
        found = [f for f in full_size.find(data, "all").faces if f.detection.width >= 100]
        faces = [f.detection for f in found]
        reduced += nearest_errors(finder.find(data, "all").detections, faces)
        border += [reaches_past(face.box, 2000) for face in faces]
        unreliable += [bool(f.notes) for f in found]
        repeat += nearest_errors(full_size.find(lossless.getvalue(), "all").detections, faces)
    print(
        f"{args.people} LFW photos upscaled 8x to 2000 px, {len(reduced)} faces of at least 100 px, detector "
        f"{finder.detector.name}"
    )
    print(f"{'boxes against full size (JPEG q90)':<44}{'median':>8}{'90th':>8}{'worst':>8}{'within 1%':>11}")
    for label, errors in (("reduced copy", reduced), ("full size, lossless pixels (peer)", repeat)):
        e = np.array(errors)
        print(f"{label:<44}{np.median(e):>8.2%}{np.percentile(e, 90):>8.2%}{e.max():>8.2%}{np.mean(e < 0.01):>11.0%}")
    e, border = np.array(reduced), np.array(border)
    print(
        f"reduced copy: {border.sum()} faces whose square reaches past the photo (settled on it moved inside), worst "
        f"{e[border].max() if border.any() else float('nan'):.2%}; the other {(~border).sum()}: worst "
        f"{e[~border].max():.2%}, {np.mean(e[~border] < 0.01):.0%} within 1%; faces over 1%: "
        + ", ".join(f"{x:.2%}{' (border)' if b else ''}" for x, b in zip(e, border) if x >= 0.01)
    )
    unreliable = np.array(unreliable)
    print(
        f"faces whose answer is reliable (no note): {(~unreliable).sum()}, worst {e[~unreliable].max():.2%}, "
        f"{np.mean(e[~unreliable] < 0.01):.0%} within 1%; marked unreliable (mostly outside the photo): "
        + ", ".join(f"{x:.2%}" for x in e[unreliable])
    )


if __name__ == "__main__":
    main()
