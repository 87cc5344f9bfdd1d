"""Photos of the size people take, made on the fly from LFW's 250 px thumbnails (never saved to the repository).

- ``portrait``: one person filling most of the frame, as a phone portrait does.
- ``group``: several people side by side on one canvas, each face about a tenth of the photo's
  height (a 12 MP group photo's faces are 250-400 px wide).

Both stand on a blurred, stretched copy of the first photo, so the background has texture but no face.
Used by ``bench_fullsize.py`` and by the tests of the face-finding path.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

from PIL import Image, ImageFilter

LFW_FACE_SIDE = 100  # px: the labelled face in an LFW thumbnail is about this wide (MTCNN box median 92x124)


def canvas_size(megapixels: float, aspect: float = 4 / 3) -> tuple[int, int]:
    """(width, height) of a landscape photo of ``megapixels`` at ``aspect``."""
    height = math.sqrt(megapixels * 1e6 / aspect)
    return round(height * aspect), round(height)


def _background(photo: Image.Image, size: tuple[int, int]) -> Image.Image:
    small = photo.resize((32, 24), Image.BILINEAR).filter(ImageFilter.GaussianBlur(3))
    return small.resize(size, Image.BICUBIC)


def portrait(path: str | Path, megapixels: float) -> Image.Image:
    """The LFW photo upscaled to 90% of a portrait-orientation photo's width, centred."""
    photo = Image.open(path).convert("RGB")
    width, height = canvas_size(megapixels)
    width, height = height, width  # portrait orientation, as phones take people
    side = round(0.9 * width)
    canvas = _background(photo, (width, height))
    canvas.paste(photo.resize((side, side), Image.BICUBIC), ((width - side) // 2, (height - side) // 2))
    return canvas


def group(paths: list[str | Path], megapixels: float, face_fraction: float = 0.1) -> tuple[Image.Image, list[tuple]]:
    """The LFW photos side by side, each face ``face_fraction`` of the photo's height; returns the
    photo and where each thumbnail went (x1, y1, x2, y2), left to right in the order given."""
    photos = [Image.open(p).convert("RGB") for p in paths]
    width, height = canvas_size(megapixels)
    side = round(250 * face_fraction * height / LFW_FACE_SIDE)
    if side * len(photos) > width:
        raise ValueError(f"{len(photos)} people of {side} px do not fit side by side in {width} px")
    canvas = _background(photos[0], (width, height))
    gap = (width - side * len(photos)) // (len(photos) + 1)
    placed = []
    for i, photo in enumerate(photos):
        x, y = gap + i * (side + gap), (height - side) // 2
        canvas.paste(photo.resize((side, side), Image.BICUBIC), (x, y))
        placed.append((x, y, x + side, y + side))
    return canvas, placed


def jpeg(image: Image.Image, quality: int = 90, **options) -> bytes:
    """The photo as JPEG bytes, as a camera would store it."""
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality, **options)
    return out.getvalue()
