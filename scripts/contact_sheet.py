"""A contact sheet of every occluder: one row per face, one column per kind.

Shows what `facenet evaluate --occlude KIND` measured (the *eval* looks; `--variant train` shows what
training draws instead). Made from your copy of LFW and written outside the repository by default: the
project never commits photos of people. `--synthetic` draws on the project's synthetic faces instead
(drawings of nobody), which is how the sheets in docs/ were made.

    .venv/bin/python scripts/contact_sheet.py --images ../shared/data/lfw/images --out build/occluders.jpg
    .venv/bin/python scripts/contact_sheet.py --synthetic --photos 4 --out docs/occluders-eval.jpg
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from facenet.align import get_detector
from facenet.align.crop import select_faces
from facenet.data.images import load_image
from facenet.occlusion import KINDS, VARIANTS, occlude

CELL = 160


def pick_photos(images: Path, count: int) -> list[Path]:
    """``count`` photos spread evenly over the people (sorted names: the same sheet every time)."""
    people = sorted(d for d in images.iterdir() if d.is_dir())
    chosen = [people[int(i * len(people) / count)] for i in range(count)]
    return [sorted(d.glob("*.jpg"))[0] for d in chosen]


def synthetic_faces(count: int):
    """Drawn faces (facenet.data.synthetic), several people and views, at a photo-like 250 px."""
    from facenet.data.synthetic import SyntheticFaces

    faces = SyntheticFaces(4 * count, seed=7, size=250)
    return (faces.render(i, i % 3) for i in range(4 * count))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=Path("../shared/data/lfw/images"))
    parser.add_argument("--out", type=Path, default=Path("build/occluders.jpg"))
    parser.add_argument("--photos", type=int, default=6, help="rows (photos of different people)")
    parser.add_argument("--variant", choices=VARIANTS, default="eval")
    parser.add_argument("--synthetic", action="store_true", help="draw on synthetic faces instead of photos")
    args = parser.parse_args(argv)

    detector = get_detector("mtcnn")
    columns = ("none",) + KINDS
    sheet = Image.new("RGB", (CELL * len(columns), 24 + CELL * args.photos), "white")
    draw = ImageDraw.Draw(sheet)
    for c, name in enumerate(columns):
        draw.text((c * CELL + 6, 6), name, fill="black")
    sources = synthetic_faces(args.photos) if args.synthetic else pick_photos(args.images, args.photos)
    r = 0
    for source in sources:
        if r == args.photos:
            break
        pixels = load_image(source)
        faces = select_faces(detector.detect(pixels), pixels.shape, "central")
        if not faces:
            print(f"no face found in {'a synthetic face' if args.synthetic else source}; skipped", file=sys.stderr)
            continue
        face = faces[0]
        x1, y1, x2, y2 = face.box
        side = 1.6 * max(x2 - x1, y2 - y1)
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        box = (int(cx - side / 2), int(cy - side / 2), int(cx + side / 2), int(cy + side / 2))
        for c, kind in enumerate(columns):
            drawn = pixels if kind == "none" else occlude(pixels, face.landmarks, kind, seed=r, variant=args.variant)
            cell = Image.fromarray(np.ascontiguousarray(drawn)).crop(box).resize((CELL, CELL), Image.BILINEAR)
            sheet.paste(cell, (c * CELL, 24 + r * CELL))
        r += 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.crop((0, 0, sheet.width, 24 + CELL * r)).save(args.out, quality=90)
    print(f"wrote {args.out} ({r} faces x {len(columns)} columns, {args.variant} looks)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
