"""Synthetic identities: procedurally drawn faces for tests, demos and the default training data.

Each identity has fixed *traits* (face and jaw shape, skin tone, eyes, brows, nose, mouth, hair,
ears, freckles, beard, ...); each image adds *nuisance* (pose, expression, lighting, colour
cast, background, clothes, blur, noise, JPEG artefacts, optional occlusions). The data is made
hard on purpose: skin, hair and eye colours come from small shared palettes, and lighting,
background and clothes change per image, so identity cannot be read off an image's mean
colour; it lives in the face's geometry.

Everything is deterministic: identity ``i``'s traits depend only on ``(seed, i)`` and image
``(i, k)`` only on ``(seed, i, k)``, so a larger dataset extends a smaller one. Faces are drawn
with Pillow on a 2x canvas and box-downsampled for anti-aliasing.
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from facenet.errors import DataError
from facenet.fileio import atomic_path
from facenet.progress import progress_bar

_SUPERSAMPLE = 2
_TRAIT_TAG, _IMAGE_TAG = 0x7A17, 0x1A6E  # keep the trait and image random streams apart

# Shared palettes: many identities share each colour, so colour alone cannot tell them apart.
SKIN_TONES = ((241, 194, 167), (224, 172, 138), (198, 134, 103), (160, 105, 75), (120, 80, 58), (88, 60, 45))
HAIR_COLOURS = (
    (20, 16, 14),
    (60, 40, 28),
    (110, 75, 45),
    (150, 70, 35),
    (215, 180, 110),
    (150, 150, 150),
    (235, 235, 230),
)
EYE_COLOURS = ((70, 45, 25), (40, 25, 15), (70, 110, 170), (80, 120, 70), (110, 120, 125), (120, 95, 50))
HAIR_STYLES = ("short", "long", "bald", "fringe", "side_part")
OCCLUSIONS = ("glasses", "sunglasses", "mask", "scarf", "hat")


@dataclass(frozen=True)
class Traits:
    """What stays the same in every image of one identity (lengths are fractions of the image side)."""

    face_w: float
    face_h: float
    jaw_w: float  # chin width as a fraction of face width
    jaw_drop: float
    skin: tuple[int, int, int]
    eye_y: float  # below face centre
    eye_gap: float  # distance between eye centres
    eye_w: float
    eye_h: float
    eye_colour: tuple[int, int, int]
    brow_gap: float
    brow_thick: float
    brow_arch: float
    brow_tilt: float
    nose_len: float
    nose_w: float
    nose_style: int
    mouth_y: float  # below the nose tip
    mouth_w: float
    lip_thick: float
    lip_colour: tuple[int, int, int]
    mouth_curve: float
    hair_colour: tuple[int, int, int]
    hair_style: str
    hairline: float  # 0 = hair down to the eyes' level, 1 = top of head
    hair_volume: float
    ear_size: float
    ear_y: float
    freckles: tuple[tuple[float, float], ...]
    beard: bool
    moustache: bool
    mole: tuple[float, float] | None


class SyntheticFaces:
    """``num_identities`` deterministic synthetic people; ``render(identity, index)`` draws one image."""

    def __init__(self, num_identities: int, seed: int = 0, size: int = 160, occlusion_prob: float = 0.0):
        if num_identities < 1:
            raise DataError(f"need at least one identity, got {num_identities}")
        if size < 16:
            raise DataError(f"image size must be at least 16 pixels, got {size}")
        if not 0.0 <= occlusion_prob <= 1.0:
            raise DataError(f"occlusion_prob must lie in [0, 1], got {occlusion_prob}")
        self.num_identities = num_identities
        self.seed = seed
        self.size = size
        self.occlusion_prob = occlusion_prob

    def traits(self, identity: int) -> Traits:
        """The fixed traits of ``identity`` (a function of ``(seed, identity)`` only)."""
        self._check(identity)
        r = np.random.default_rng([self.seed, identity, _TRAIT_TAG])
        u = r.uniform
        skin = _jitter(SKIN_TONES[r.integers(len(SKIN_TONES))], r, 6)
        hair = _jitter(HAIR_COLOURS[r.integers(len(HAIR_COLOURS))], r, 8)
        lip = tuple(int(c) for c in np.clip(np.array(skin) * [0.85, 0.62, 0.62] + [25, 0, 5], 0, 255))
        freckles = (
            tuple((float(x), float(y)) for x, y in r.uniform(-1, 1, (int(r.integers(12, 30)), 2)))
            if r.random() < 0.25
            else ()
        )
        return Traits(
            face_w=u(0.40, 0.54),
            face_h=u(0.54, 0.68),
            jaw_w=u(0.5, 0.95),
            jaw_drop=u(0.0, 0.07),
            skin=skin,
            eye_y=u(-0.06, 0.0),
            eye_gap=u(0.15, 0.23),
            eye_w=u(0.05, 0.075),
            eye_h=u(0.45, 0.75),
            eye_colour=_jitter(EYE_COLOURS[r.integers(len(EYE_COLOURS))], r, 10),
            brow_gap=u(0.035, 0.06),
            brow_thick=u(0.008, 0.024),
            brow_arch=u(-0.004, 0.02),
            brow_tilt=u(-0.012, 0.015),
            nose_len=u(0.07, 0.13),
            nose_w=u(0.035, 0.07),
            nose_style=int(r.integers(3)),
            mouth_y=u(0.035, 0.065),
            mouth_w=u(0.10, 0.19),
            lip_thick=u(0.008, 0.024),
            lip_colour=lip,
            mouth_curve=u(-0.008, 0.01),
            hair_colour=hair,
            hair_style=HAIR_STYLES[r.integers(len(HAIR_STYLES))],
            hairline=u(0.35, 0.8),
            hair_volume=u(0.015, 0.07),
            ear_size=u(0.05, 0.09),
            ear_y=u(-0.03, 0.03),
            freckles=freckles,
            beard=bool(r.random() < 0.2),
            moustache=bool(r.random() < 0.15),
            mole=(float(u(-0.8, 0.8)), float(u(-0.2, 0.8))) if r.random() < 0.3 else None,
        )

    def render(self, identity: int, index: int) -> np.ndarray:
        """Image ``index`` of ``identity`` as an H,W,3 uint8 RGB array (same arguments, same pixels)."""
        t = self.traits(identity)
        r = np.random.default_rng([self.seed, identity, index, _IMAGE_TAG])
        s = self.size * _SUPERSAMPLE
        layer = Image.new("RGBA", (s, s), (0, 0, 0, 0))
        occlusion = OCCLUSIONS[r.integers(len(OCCLUSIONS))] if r.random() < self.occlusion_prob else None
        _draw_person(ImageDraw.Draw(layer), t, r, s, occlusion)
        layer = _pose(layer, r, s)
        canvas = _background(r, s)
        canvas.paste(layer, (0, 0), layer)
        img = canvas.reduce(_SUPERSAMPLE)
        if r.random() < 0.4:
            img = img.filter(ImageFilter.GaussianBlur(float(r.uniform(0.3, 1.4)) * self.size / 160))
        out = _light(np.asarray(img, dtype=np.float32), r)
        if r.random() < 0.25:
            buf = io.BytesIO()
            Image.fromarray(out).save(buf, "JPEG", quality=int(r.integers(25, 85)))
            out = np.array(Image.open(buf).convert("RGB"))
        return out

    def _check(self, identity: int) -> None:
        if not 0 <= identity < self.num_identities:
            raise DataError(f"identity {identity} out of range 0..{self.num_identities - 1}")


def write_dataset(
    out_dir: str | Path,
    num_identities: int,
    images_per_identity: int,
    seed: int = 0,
    size: int = 160,
    occlusion_prob: float = 0.0,
    ext: str = "png",
) -> Path:
    """Write ``out_dir/id_00000/0000.png ...`` (one folder per identity) and return ``out_dir``.

    Resumable: files already present are kept (each was written atomically, so it is complete),
    and temporary files left by a killed run are removed first.
    """
    if ext not in ("png", "jpg"):
        raise DataError(f"image format must be 'png' or 'jpg', got {ext!r}")
    if images_per_identity < 1:
        raise DataError(f"need at least one image per identity, got {images_per_identity}")
    faces = SyntheticFaces(num_identities, seed=seed, size=size, occlusion_prob=occlusion_prob)
    out_dir = Path(out_dir)
    _remove_stale_temporaries(out_dir)
    total = num_identities * images_per_identity
    with progress_bar(total, "synthetic faces", unit="img") as bar:
        for identity in range(num_identities):
            folder = out_dir / f"id_{identity:05d}"
            for index in range(images_per_identity):
                path = folder / f"{index:04d}.{ext}"
                if not path.exists():
                    image = Image.fromarray(faces.render(identity, index))
                    with atomic_path(path) as tmp:
                        image.save(tmp, "PNG" if ext == "png" else "JPEG", quality=95)
                bar.update(1)
    return out_dir


_TEMPORARY = re.compile(r"^\.\d+\.(png|jpg)\..*\.tmp$")  # what fileio.atomic_path names its temporaries


def _remove_stale_temporaries(out_dir: Path) -> None:
    if not out_dir.is_dir():
        return
    for path in out_dir.glob("id_*/.*.tmp"):
        if _TEMPORARY.match(path.name):
            path.unlink(missing_ok=True)


def _jitter(colour, r: np.random.Generator, amount: float) -> tuple[int, int, int]:
    return tuple(int(c) for c in np.clip(np.array(colour) + r.uniform(-amount, amount, 3), 0, 255))


def _shade(colour, factor: float) -> tuple[int, int, int]:
    return tuple(int(min(255, c * factor)) for c in colour)


def _ellipse(d: ImageDraw.ImageDraw, cx: float, cy: float, rx: float, ry: float, fill, **kw) -> None:
    d.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=fill, **kw)


def _curve(x0: float, x1: float, y_end0: float, y_end1: float, y_mid: float, n: int = 7) -> list[tuple]:
    """Points of a quadratic curve from (x0, y_end0) to (x1, y_end1) that passes y_mid half-way."""
    ts = np.linspace(0.0, 1.0, n)
    ctrl = 2 * y_mid - (y_end0 + y_end1) / 2
    ys = (1 - ts) ** 2 * y_end0 + 2 * ts * (1 - ts) * ctrl + ts**2 * y_end1
    return list(zip(x0 + (x1 - x0) * ts, ys))


def _draw_person(d: ImageDraw.ImageDraw, t: Traits, r: np.random.Generator, s: int, occlusion: str | None) -> None:
    """Draw shoulders, neck, hair, head and features in a face-centred frame; pose is applied later."""
    yaw = float(r.uniform(-0.35, 0.35))
    smile = float(r.uniform(-0.3, 1.0))
    mouth_open = float(r.uniform(0, 1)) if r.random() < 0.3 else 0.0
    eye_open = 1.0 if r.random() < 0.7 else float(r.uniform(0.3, 1.0))
    clothes = tuple(int(c) for c in r.integers(0, 256, 3))

    cx, cy = 0.5 * s, 0.47 * s
    fw, fh = t.face_w * s * (1 - 0.15 * abs(yaw)) / 2, t.face_h * s / 2
    shift = yaw * 0.08 * s  # features slide towards the side the head turns to
    skin, hair = t.skin, t.hair_colour
    line = _shade(skin, 0.72)

    # body, neck, hair behind the head
    _ellipse(d, cx, cy + fh + 0.33 * s, 0.42 * s, 0.3 * s, clothes)
    d.rectangle((cx - 0.3 * fw, cy + 0.5 * fh, cx + 0.3 * fw, cy + fh + 0.1 * s), fill=_shade(skin, 0.85))
    vol = t.hair_volume * s
    if t.hair_style == "long":
        d.rounded_rectangle(
            (cx - fw - vol, cy - fh - vol, cx + fw + vol, cy + fh + 0.12 * s), radius=fw * 0.8, fill=hair
        )
    elif t.hair_style != "bald":
        _ellipse(d, cx, cy - 0.3 * fh, fw + vol, fh * 0.75 + vol, hair)
    # ears: the one on the far side shrinks as the head turns
    for side in (-1, 1):
        ear = t.ear_size * s * (1 + 0.8 * side * yaw)
        if ear > 0.01 * s:
            _ellipse(d, cx + side * fw * 0.97 + shift * 0.3, cy + t.ear_y * s, ear * 0.45, ear, _shade(skin, 0.93))
    # head: upper ellipse plus jaw ellipse
    _ellipse(d, cx, cy, fw, fh * 0.92, skin)
    _ellipse(d, cx + shift * 0.2, cy + 0.35 * fh + t.jaw_drop * s, fw * t.jaw_w, fh * 0.65, skin)
    if t.beard:
        d.chord(
            (
                cx - fw * t.jaw_w,
                cy + 0.35 * fh + t.jaw_drop * s - fh * 0.65,
                cx + fw * t.jaw_w,
                cy + 0.35 * fh + t.jaw_drop * s + fh * 0.65,
            ),
            20,
            160,
            fill=_shade(hair, 0.9),
        )
    # hair on top: a chord of the head ellipse down to the hairline
    if t.hair_style != "bald":
        top = cy - fh - vol * 0.5
        box = (cx - fw - vol * 0.6, top, cx + fw + vol * 0.6, top + 2 * (fh + vol * 0.5))
        drop = 0.15 if t.hair_style == "fringe" else 0.0
        alpha = math.degrees(math.asin(min(0.95, max(0.05, t.hairline - drop))))
        d.chord(box, round(180 + alpha), round(360 - alpha), fill=hair)  # float angles make Pillow 13 draw stray lines
        if t.hair_style == "side_part":
            d.polygon([(cx - fw, cy - 0.55 * fh), (cx + 0.2 * fw, cy - fh), (cx - 0.2 * fw, cy - 0.4 * fh)], fill=hair)
    for fx, fy in t.freckles:
        _ellipse(d, cx + shift + fx * fw * 0.55, cy + 0.15 * fh + fy * fh * 0.18, 0.004 * s, 0.004 * s, line)
    if t.mole is not None:
        _ellipse(
            d, cx + shift + t.mole[0] * fw * 0.6, cy + t.mole[1] * fh * 0.5, 0.006 * s, 0.006 * s, _shade(skin, 0.45)
        )

    # eyes and brows
    ey = cy + t.eye_y * s
    for side in (-1, 1):
        ex = cx + shift + side * t.eye_gap * s / 2
        ew = t.eye_w * s / 2 * (1 + 0.5 * side * yaw)
        eh = ew * t.eye_h * eye_open
        _ellipse(d, ex, ey, ew, max(eh, 0.002 * s), (240, 238, 232))
        iris = min(ew * 0.55, ew * t.eye_h)
        _ellipse(d, ex + shift * 0.15, ey, iris, min(iris, eh), t.eye_colour)
        _ellipse(d, ex + shift * 0.15, ey, iris * 0.45, min(iris * 0.45, eh), (15, 12, 10))
        d.arc((ex - ew, ey - eh, ex + ew, ey + eh), 190, 350, fill=line, width=max(1, int(0.006 * s)))
        by = ey - t.brow_gap * s
        bx0, bx1 = ex - side * ew * 1.1, ex + side * ew * 1.25
        d.line(
            _curve(bx0, bx1, by + t.brow_tilt * s, by - t.brow_tilt * s, by - t.brow_arch * s, 5),
            fill=_shade(hair, 0.8),
            width=max(1, int(t.brow_thick * s)),
            joint="curve",
        )

    # nose
    nx, ntop, ntip = cx + shift * 1.4, ey + 0.01 * s, ey + t.nose_len * s
    nw = t.nose_w * s / 2
    if t.nose_style == 0:
        d.line(
            [(nx - 0.1 * nw, ntop), (nx + 0.4 * nw, ntip), (nx - 0.5 * nw, ntip + 0.01 * s)],
            fill=line,
            width=max(1, int(0.007 * s)),
        )
    elif t.nose_style == 1:
        _ellipse(d, nx, ntip - 0.01 * s, nw, 0.02 * s, _shade(skin, 0.9))
    for side in (-1, 1):
        _ellipse(d, nx + side * nw * 0.5, ntip, nw * 0.28, nw * 0.16, _shade(skin, 0.5))

    # mouth: lips from two quadratic curves; smiling lifts the corners, opening shows a dark gap
    my = ntip + t.mouth_y * s
    mw = t.mouth_w * s / 2 * (1 + 0.15 * smile)
    mx = cx + shift * 1.1
    x0, x1 = mx - mw, mx + mw
    corner = my - smile * 0.018 * s
    mid = my + t.mouth_curve * s + smile * 0.008 * s
    gap = mouth_open * 0.035 * s
    lip = t.lip_thick * s
    upper = _curve(x0, x1, corner, corner, mid - lip * 1.2) + _curve(x1, x0, corner, corner, mid)[1:-1]
    lower = _curve(x0, x1, corner, corner, mid + gap) + _curve(x1, x0, corner, corner, mid + gap + lip * 1.4)[1:-1]
    if gap > 0:
        d.polygon(
            _curve(x0, x1, corner, corner, mid) + _curve(x1, x0, corner, corner, mid + gap)[1:-1], fill=(60, 20, 25)
        )
    d.polygon(upper, fill=t.lip_colour)
    d.polygon(lower, fill=t.lip_colour)
    if t.moustache:
        d.line(
            _curve(x0, x1, corner - 0.01 * s, corner - 0.01 * s, mid - lip * 1.2 - 0.015 * s, 5),
            fill=hair,
            width=max(1, int(0.018 * s)),
            joint="curve",
        )

    if occlusion is not None:
        _occlude(d, occlusion, r, s, cx + shift, cy, fw, fh, ey, t.eye_gap * s / 2, t.eye_w * s / 2, ntip, my)


def _occlude(d, kind: str, r, s, cx, cy, fw, fh, ey, half_gap, ew, ntip, my) -> None:
    colour = tuple(int(c) for c in r.integers(0, 256, 3))
    if kind in ("glasses", "sunglasses"):
        rad = ew * 1.45
        fill = (20, 20, 25) if kind == "sunglasses" else None
        for side in (-1, 1):
            _ellipse(d, cx + side * half_gap, ey, rad, rad * 0.85, fill, outline=colour, width=max(1, int(0.008 * s)))
        d.line([(cx - half_gap + rad, ey), (cx + half_gap - rad, ey)], fill=colour, width=max(1, int(0.008 * s)))
    elif kind == "mask":
        top = (ntip + ey) / 2
        d.rounded_rectangle((cx - fw * 0.85, top, cx + fw * 0.85, cy + fh * 1.05), radius=fw * 0.3, fill=colour)
    elif kind == "scarf":
        d.rectangle((cx - fw * 1.3, my + 0.01 * s, cx + fw * 1.3, cy + fh + 0.15 * s), fill=colour)
    else:  # hat
        d.chord((cx - fw * 1.05, cy - fh * 1.5, cx + fw * 1.05, cy - fh * 0.2), 180, 360, fill=colour)
        d.rectangle((cx - fw * 1.35, cy - fh * 0.88, cx + fw * 1.35, cy - fh * 0.78), fill=_shade(colour, 0.7))


def _pose(layer: Image.Image, r: np.random.Generator, s: int) -> Image.Image:
    """Rotate (in plane), scale and shift the drawn person about the face centre.

    Nearest-neighbour on the 2x canvas (Pillow's bilinear affine is ~20x slower); the box
    downsample afterwards smooths the edges.
    """
    angle = math.radians(float(np.clip(r.normal(0, 6), -15, 15)))
    scale = float(r.uniform(0.88, 1.12))
    tx, ty = r.uniform(-0.05, 0.05, 2) * s
    cx, cy = 0.5 * s, 0.47 * s
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
    ox, oy = cx + tx, cy + ty  # where the face centre lands; invert the map output -> input
    return layer.transform(
        (s, s), Image.AFFINE, (cos, sin, cx - cos * ox - sin * oy, -sin, cos, cy + sin * ox - cos * oy), Image.NEAREST
    )


def _background(r: np.random.Generator, s: int) -> Image.Image:
    """A plain colour, a two-colour gradient or a blotchy texture, all random per image."""
    kind = r.integers(3)
    if kind == 0:
        shape = (1, 1)
    elif kind == 1:
        shape = (2, 1) if r.random() < 0.5 else (1, 2)
    else:
        cells = int(r.integers(3, 9))
        shape = (cells, cells)
    small = r.integers(0, 256, (*shape, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((s, s), Image.BILINEAR)


def _light(img: np.ndarray, r: np.random.Generator) -> np.ndarray:
    """Exposure, contrast, colour cast, a directional light gradient and sensor noise."""
    h, w = img.shape[:2]
    gain = math.exp(r.uniform(-0.5, 0.35))
    contrast = r.uniform(0.7, 1.3)
    cast = np.clip(r.normal(1.0, 0.12, 3), 0.7, 1.3).astype(np.float32)
    theta = r.uniform(0, 2 * math.pi)
    strength = r.uniform(0, 0.5)
    sigma = r.uniform(0, 9)
    field = 1 + strength * (
        math.cos(theta) * np.linspace(-1, 1, w, dtype=np.float32)[None, :]
        + math.sin(theta) * np.linspace(-1, 1, h, dtype=np.float32)[:, None]
    )
    mean = float(img.mean())
    out = img * ((gain * contrast) * cast)  # exposure, contrast and cast: one per-channel affine map
    out += (mean * (1 - contrast) * gain) * cast
    out *= field[:, :, None]
    if sigma > 1:  # luminance noise, uniform with standard deviation sigma (cheaper than Gaussian)
        out += (r.random((h, w, 1), dtype=np.float32) - 0.5) * np.float32(sigma * math.sqrt(12))
    return np.clip(out, 0, 255, out=out).astype(np.uint8)
