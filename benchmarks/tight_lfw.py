"""LFW re-framed as ID photos and profile pictures are: the face fills the photo, the top of the head cut off.

LFW's 250 px thumbnails hold the face loosely in the middle (about 100 px wide), which is what
detectors, crop recipes and fallbacks are usually tuned to. This writes a copy of the LFW images a
pairs file names, each cut to a square of 1.0-1.3 face widths around the face and shifted down by
up to 15% of its side (so MTCNN's box runs past the top edge of most photos, as it does on tightly
framed photos), at native resolution, JPEG quality 95. The cut is seeded by the file name: the same
set on every machine. Written outside the repository; never commit it.

    python benchmarks/tight_lfw.py --images ../shared/data/lfw/images --pairs ../shared/data/lfw/pairs.txt \\
        --out /tmp/lfw-tight
    facenet evaluate --model MODEL --pairs ../shared/data/lfw/pairs.txt --images /tmp/lfw-tight
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np
from fullsize_photos import LFW_FACE_SIDE
from PIL import Image

SIDE_RANGE = (1.0, 1.3)  # crop side, in face widths
DOWN_SHIFT = 0.15  # largest downward shift of the crop, as a fraction of its side (cuts the top of the head)


def tight_box(name: str, width: int, height: int) -> tuple[int, int, int, int]:
    """The (left, top, right, bottom) square cut for the LFW photo ``name``, seeded by the name."""
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little"))
    side = rng.uniform(*SIDE_RANGE) * LFW_FACE_SIDE
    cx, cy = width / 2, height / 2 + rng.uniform(0, DOWN_SHIFT) * side
    left, top = round(cx - side / 2), round(cy - side / 2)
    return left, top, left + round(side), top + round(side)


def pair_images(pairs: Path) -> set[str]:
    """Relative paths ``<name>/<name>_<iiii>.jpg`` of every image a LFW-format pairs file names."""
    names = set()
    for line in pairs.read_text().splitlines()[1:]:
        parts = line.split()
        if len(parts) == 3:
            names |= {f"{parts[0]}/{parts[0]}_{int(parts[i]):04d}.jpg" for i in (1, 2)}
        elif len(parts) == 4:
            names |= {
                f"{parts[0]}/{parts[0]}_{int(parts[1]):04d}.jpg",
                f"{parts[2]}/{parts[2]}_{int(parts[3]):04d}.jpg",
            }
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, required=True, help="LFW images folder (<name>/<name>_<iiii>.jpg)")
    parser.add_argument("--pairs", type=Path, required=True, help="pairs file naming the images to re-frame")
    parser.add_argument("--out", type=Path, required=True, help="folder to write the re-framed copy to")
    args = parser.parse_args()
    names = sorted(pair_images(args.pairs))
    for relative in names:
        with Image.open(args.images / relative) as photo:
            cut = photo.convert("RGB").crop(tight_box(relative, *photo.size))
        target = args.out / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        cut.save(target, quality=95)
    print(f"{len(names)} photos re-framed tightly into {args.out}")


if __name__ == "__main__":
    main()
