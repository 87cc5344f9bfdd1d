"""Image decoding and standardisation: anything image-like in, H,W,3 uint8 RGB out.

Decoding is strict on purpose: a truncated, empty, oversized or non-image input raises
``BadImageError`` naming the source, instead of yielding a half-grey face that silently
poisons an embedding.

Choices:
- Transparency (RGBA, LA, palette with a transparent colour) is composited over **black**,
  so whatever colour data hides under fully transparent pixels never reaches the model.
- 16-bit greyscale (``I;16``/``I``) is scaled to 8 bit by ``round(v / 257)`` (65535 -> 255);
  Pillow's own ``convert("RGB")`` clips instead of scaling.
- EXIF orientation is applied (``ImageOps.exif_transpose``), so phone photos come out upright.
- Animated images (GIF, WebP, ...) give their first frame.

Big photos: ``open_photo`` decodes a photo once at a reduced *working size* (JPEGs through
libjpeg's DCT scaling, Pillow's draft mode: a 1/4-scale decode costs a fraction of a full one)
and decodes finer copies only when a caller asks for one, so a 48 MP photo costs about what a
3 MP one does unless its faces are small.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from facenet.errors import BadImageError, DataError

if TYPE_CHECKING:
    import torch

# Photos above this are refused before decoding (decompression bombs; a full decode of 100 MP is 300 MB).
DEFAULT_MAX_PIXELS = 100_000_000
# The project refuses photos over its own limit itself, with its own message; Pillow's warning for
# photos over its 89 MP (which it turns into an error at twice that) would reach terminals and logs raw.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
# The one list of file suffixes every command and dataset treats as images (what load_image decodes).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm"})
STANDARDISATIONS = ("fixed", "prewhiten", "unit", "dlib")
# dlib's input layer (input_rgb_image): per-channel mean RGB removed, then divided by 256.
DLIB_MEAN_RGB = (122.782, 117.001, 104.298)

_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError)  # what Pillow's decoders raise on bad data

ImageLike = Any  # str | os.PathLike | bytes | PIL.Image.Image | np.ndarray


def load_image(src: ImageLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode ``src`` (path, bytes, PIL image or numpy array) to an H,W,3 uint8 RGB array.

    ``max_pixels`` refuses larger images before decoding them (decompression bombs); raise it
    for genuinely huge photos (Pillow refuses those above 179 MP whatever it is). Raises ``BadImageError`` for
    anything that is not a usable image.
    An array that is already H,W,3 uint8 is returned as it is (no copy).
    """
    return open_photo(src, max_pixels=max_pixels).pixels


@dataclass
class Photo:
    """One photo, decoded at a working size, with finer copies decoded on demand.

    ``pixels`` is the working copy (H,W,3 uint8 RGB, upright) and ``scale`` its size relative to
    the full-resolution photo (1.0: the photo itself). Coordinates map between the two by
    ``x_full = (x + 0.5) / scale - 0.5``. ``size`` is the full photo's (width, height), upright.
    """

    name: str
    size: tuple[int, int]
    pixels: np.ndarray
    scale: float
    _levels: list = field(default_factory=list, repr=False)  # [(scale, pixels)] decoded so far, finest first
    _data: bytes | None = field(default=None, repr=False)  # the encoded JPEG, for finer decodes

    def at_least(self, scale: float) -> tuple[np.ndarray, float]:
        """The coarsest copy decoded so far with at least ``scale`` of the full resolution (decoding a
        finer one when none is), and its exact scale; ``scale`` >= 1 gives the full photo."""
        scale = min(scale, 1.0)
        for level_scale, pixels in reversed(self._levels):
            if level_scale >= scale * 0.999:
                return pixels, level_scale
        pixels = _decode(self._data, self.name, scale) if self._data is not None else self._levels[0][1]
        level = (pixels.shape[1] / self.size[0], pixels)
        self._levels.append(level)
        self._levels.sort(key=lambda lv: -lv[0])
        return level[1], level[0]


def open_photo(src: ImageLike, shorter_side: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> Photo:
    """Decode ``src`` with its shorter side reduced to at most ``shorter_side`` px (``None``: full size).

    JPEGs are decoded straight at the nearest larger DCT scale (1/2, 1/4, 1/8), then area-resized
    to the working size; other formats are decoded whole and resized. The decoded levels are kept,
    so ``Photo.at_least`` rarely decodes again. Raises ``BadImageError`` like ``load_image``. A
    ``Photo`` already opened at that working size is returned as it is.
    """
    if isinstance(src, Photo) and (shorter_side is None or min(src.pixels.shape[:2]) <= shorter_side):
        return src
    if isinstance(src, np.ndarray):
        return _reduced(_from_array(src, "<array>"), "<array>", shorter_side)
    if isinstance(src, Image.Image):
        return _reduced(_from_pil(src, "<PIL image>", max_pixels), "<PIL image>", shorter_side)
    if isinstance(src, (bytes, bytearray, memoryview)):
        name = "<bytes>"
        data = bytes(src)
    elif isinstance(src, (str, os.PathLike)):
        name = str(src)
        data = _read_file(Path(src))
    else:
        raise BadImageError(
            f"cannot read an image from a {type(src).__name__}; "
            "pass a file path, bytes, a PIL image or an H,W,3 numpy array"
        )
    if not data:
        raise BadImageError(f"{name}: empty file; re-download or re-export the image")
    upright_size, is_jpeg = _header(data, name, max_pixels)
    scale = 1.0 if shorter_side is None else min(1.0, shorter_side / min(upright_size))
    if not is_jpeg or scale >= 1.0:
        return _reduced(_decode(data, name, 1.0, max_pixels), name, shorter_side)
    decoded = _decode(data, name, scale, max_pixels)
    photo = _reduced(decoded, name, shorter_side, full_size=upright_size)
    photo._data = data
    return photo


def _reduced(
    pixels: np.ndarray, name: str, shorter_side: int | None, full_size: tuple[int, int] | None = None
) -> Photo:
    """A Photo whose finest decoded level is ``pixels`` (the full photo unless ``full_size`` says otherwise),
    with its working copy area-resized so that the shorter side is at most ``shorter_side``."""
    import cv2

    h, w = pixels.shape[:2]
    size = full_size or (w, h)
    levels = [(w / size[0], pixels)]
    if shorter_side is not None and min(w, h) > shorter_side:
        factor = shorter_side / min(w, h)
        small = cv2.resize(pixels, (max(1, round(w * factor)), max(1, round(h * factor))), interpolation=cv2.INTER_AREA)
        levels.append((small.shape[1] / size[0], small))
    scale, working = levels[-1]
    return Photo(name, size, working, scale, levels)


def _header(data: bytes, name: str, max_pixels: int) -> tuple[tuple[int, int], bool]:
    """(width, height) once the EXIF orientation is applied (5-8 turn the photo by 90 degrees), and
    whether it is a JPEG, from the header alone (nothing decoded yet)."""
    with _opened(data, name, max_pixels) as img:
        (width, height), orientation = img.size, img.getexif().get(0x0112, 1)
        return (height, width) if orientation in (5, 6, 7, 8) else (width, height), img.format == "JPEG"


def _decode(data: bytes, name: str, scale: float, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode to RGB; a JPEG at the coarsest DCT scale that keeps at least ``scale`` of its size."""
    with _opened(data, name, max_pixels) as img:
        if scale < 1.0 and img.format == "JPEG":
            w, h = img.size
            img.draft(img.mode if img.mode in ("RGB", "L") else None, (math.ceil(w * scale), math.ceil(h * scale)))
        return _from_pil(img, name, max_pixels)


@contextlib.contextmanager
def _opened(data: bytes, name: str, max_pixels: int):
    """``Image.open`` on encoded bytes, with Pillow's errors turned into ``BadImageError``."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
            if w * h > max_pixels:
                raise BadImageError(f"{name}: {w}x{h} image exceeds the {max_pixels}-pixel limit; shrink it")
            yield img
    except BadImageError:
        raise
    except UnidentifiedImageError:
        raise BadImageError(
            f"{name}: not a recognised image format; use JPEG, PNG, WebP, BMP, GIF, TIFF or PPM/PGM"
        ) from None
    except Image.DecompressionBombError:
        raise BadImageError(
            f"{name}: image is too large to decode safely; shrink it below "
            f"{min(max_pixels, 2 * Image.MAX_IMAGE_PIXELS)} pixels"
        ) from None
    except _DECODE_ERRORS as exc:
        raise BadImageError(f"{name}: corrupt image header ({exc}); re-download or re-export it") from None


def expand_image_paths(inputs: list[str]) -> list[Path]:
    """Files as given; directories expand to the images below them, sorted."""
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                raise BadImageError(f"no images found in folder {path}")
            paths.extend(found)
        elif path.exists():
            paths.append(path)
        else:
            raise BadImageError(f"no such file or folder: {path}")
    return paths


def fit_to_input(image: ImageLike, size: int) -> np.ndarray:
    """Centre-crop an (already face-cropped) image to a square and resize it to ``size`` x ``size``.

    Resizing uses Pillow's bilinear filter, which widens its support when shrinking and so
    averages like area sampling: no aliasing on big inputs, smooth upsampling on small ones.
    """
    if size < 1:
        raise DataError(f"input size must be a positive number of pixels, got {size}")
    array = load_image(image)
    h, w = array.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = array[top : top + side, left : left + side]
    if side == size:
        return np.ascontiguousarray(square)
    return np.array(Image.fromarray(square).resize((size, size), Image.BILINEAR))


def to_batch(images: Sequence[np.ndarray]) -> torch.Tensor:
    """Stack same-size H,W,3 uint8 crops into an N,3,H,W uint8 tensor."""
    if len(images) == 0:
        raise BadImageError("no images to batch; pass at least one H,W,3 uint8 crop")
    shapes = {np.shape(im) for im in images}
    if len(shapes) != 1:
        raise BadImageError(
            f"crops in a batch must share one size, got {sorted(shapes)}; resize them first (fit_to_input)"
        )
    (shape,) = shapes
    if len(shape) != 3 or shape[2] != 3:
        raise BadImageError(f"crops must be H,W,3 RGB arrays, got shape {shape}; decode them with load_image")
    import torch  # here, not at module level: decoding photos (and `facenet --help`) must not pay for torch

    stacked = np.stack([np.asarray(im, dtype=np.uint8) for im in images])
    return torch.from_numpy(stacked).permute(0, 3, 1, 2).contiguous()


def standardise(batch: torch.Tensor | np.ndarray, method: str = "fixed") -> torch.Tensor:
    """Map pixel values 0..255 to the network's input range; returns float32 N,3,H,W.

    ``batch`` is a torch tensor N,3,H,W (uint8 or float, values 0..255) or a numpy N,H,W,3 uint8
    array. Methods: ``"fixed"`` (x - 127.5) / 128, what the published weights expect;
    ``"prewhiten"`` per image (x - mean) / max(std, 1/sqrt(numel)) as in Sandberg's facenet;
    ``"unit"`` x / 255; ``"dlib"`` (x - DLIB_MEAN_RGB) / 256, what dlib's face ResNet expects.
    """
    import torch

    if method not in STANDARDISATIONS:
        raise DataError(f"unknown standardisation {method!r}; choose one of {', '.join(STANDARDISATIONS)}")
    if isinstance(batch, np.ndarray):
        if batch.ndim != 4 or batch.shape[3] != 3:
            raise BadImageError(f"numpy batch must be N,H,W,3, got shape {batch.shape}")
        batch = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2)
    if batch.ndim != 4 or batch.shape[1] != 3:
        raise BadImageError(f"tensor batch must be N,3,H,W, got shape {tuple(batch.shape)}")
    x = batch.to(torch.float32)
    if method == "fixed":
        return (x - 127.5) / 128.0
    if method == "unit":
        return x / 255.0
    if method == "dlib":
        return (x - torch.tensor(DLIB_MEAN_RGB).view(1, 3, 1, 1)) / 256.0
    flat = x.reshape(x.shape[0], -1)
    mean = flat.mean(dim=1).view(-1, 1, 1, 1)
    std = flat.std(dim=1, unbiased=False)
    std = torch.clamp(std, min=1.0 / flat.shape[1] ** 0.5).view(-1, 1, 1, 1)
    return (x - mean) / std


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise BadImageError(f"{path}: no such file; check the path") from None
    except IsADirectoryError:
        raise BadImageError(f"{path}: is a directory, not an image file") from None
    except OSError as exc:
        raise BadImageError(f"{path}: cannot read ({exc.strerror or exc}); check permissions") from None


def _from_pil(img: Image.Image, name: str, max_pixels: int) -> np.ndarray:
    w, h = img.size
    if w * h > max_pixels:
        raise BadImageError(f"{name}: {w}x{h} image exceeds the {max_pixels}-pixel limit; shrink it")
    if w == 0 or h == 0:
        raise BadImageError(f"{name}: image has zero size ({w}x{h})")
    try:
        img.seek(0)
        img.load()  # decode now so truncated data fails here (LOAD_TRUNCATED_IMAGES is False)
        if img.getexif().get(0x0112, 1) != 1:  # exif_transpose copies even an upright photo: 3-4 ms per 3 MP
            img = ImageOps.exif_transpose(img)
        return _to_rgb(img)
    except _DECODE_ERRORS as exc:
        raise BadImageError(f"{name}: corrupt or truncated image ({exc}); re-download or re-export it") from None


def _to_rgb(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode == "I" or mode.startswith("I;16"):  # 16-bit greyscale PNG/TIFF
        return _from_array(np.clip(np.asarray(img), 0, 65535).astype(np.uint16), "<decoded>")
    if mode == "F":
        return _from_array(np.asarray(img), "<decoded>")
    if (mode == "P" and "transparency" in img.info) or mode in ("PA", "LA", "La", "RGBa"):
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode == "RGBA":
        return _from_array(np.asarray(img), "<decoded>")
    return np.array(img if mode == "RGB" else img.convert("RGB"))  # convert("RGB") copies an RGB photo


def _from_array(array: np.ndarray, name: str) -> np.ndarray:
    """Validate and convert a numpy image (H,W / H,W,1 / H,W,3 / H,W,4; uint8, uint16 or float 0..1)."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise BadImageError(
            f"{name}: array of shape {array.shape} is not an image; expected H,W (grey), H,W,3 (RGB) or H,W,4 (RGBA)"
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise BadImageError(f"{name}: image has zero size ({array.shape[1]}x{array.shape[0]})")
    array = _to_uint8(array, name)
    if array.ndim == 2:
        return np.repeat(array[:, :, None], 3, axis=2)
    if array.shape[2] == 4:
        alpha = array[:, :, 3:4].astype(np.uint16)
        return ((array[:, :, :3] * alpha + 127) // 255).astype(np.uint8)
    return np.ascontiguousarray(array)


def _to_uint8(array: np.ndarray, name: str) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        return ((array.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise BadImageError(f"{name}: float image contains NaN or infinity")
        if array.min() < -1e-3 or array.max() > 1 + 1e-3:
            raise BadImageError(
                f"{name}: float images must hold values in [0, 1] "
                f"(got {array.min():.3g}..{array.max():.3g}); divide 0..255 data by 255"
            )
        return np.rint(np.clip(array, 0, 1) * 255).astype(np.uint8)
    raise BadImageError(f"{name}: unsupported pixel type {array.dtype}; use uint8, uint16 or float in [0, 1]")
