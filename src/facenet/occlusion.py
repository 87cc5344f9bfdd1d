"""Occluders drawn on real photos from a face's five landmarks: masks, sunglasses, scarves, hands, cap shadows.

Everything is placed in the face's own frame — origin between the eyes, x along the eye line, unit
= the distance between the eyes, y towards the mouth — so an occluder follows the face's position,
size and roll. Edges are blurred and the colour layer is shaded (light from above, cloth texture,
a soft shadow), so the result reads as a photo rather than a sticker. Every choice (colour,
pattern, size jitter, which side a hand covers) comes from one seed: the same seed gives the same
pixels.

Two disjoint sets of looks (``variant``): ``"eval"`` — what ``facenet evaluate --occlude`` draws —
and ``"train"`` — what training augmentation draws — with different colour palettes, patterns and
shape proportions, so accuracy on occluded faces measures robustness, not memory of one renderer.
"""

from __future__ import annotations

import zlib

import cv2
import numpy as np

from facenet.errors import FaceNetError

KINDS = ("mask", "cloth_mask", "n95", "sunglasses", "scarf", "hand", "cap_shadow")
VARIANTS = ("eval", "train")

# Colour palettes (RGB) per variant: the two sets share no colour.
_PALETTES = {
    "eval": {
        "mask": [(170, 205, 230), (235, 240, 245), (120, 170, 215)],
        "cloth": [(30, 30, 35), (150, 30, 40), (40, 70, 140), (220, 200, 160)],
        "n95": [(245, 245, 240), (225, 228, 230)],
        "scarf": [(110, 20, 30), (60, 90, 60), (200, 160, 60)],
        "lens": [(20, 20, 25), (60, 40, 20)],
    },
    "train": {
        "mask": [(200, 225, 200), (215, 215, 255), (150, 200, 190)],
        "cloth": [(90, 60, 120), (200, 120, 40), (20, 110, 110), (240, 170, 190)],
        "n95": [(250, 250, 215), (205, 215, 225)],
        "scarf": [(40, 40, 90), (170, 90, 40), (120, 120, 125)],
        "lens": [(35, 45, 35), (30, 30, 60)],
    },
}
_PATTERNS = {"eval": ("plain", "stripes", "dots"), "train": ("plain", "checks", "zigzag")}


class FaceFrame:
    """Maps face coordinates (x along the eyes, y towards the mouth, unit = eye distance) to pixels."""

    def __init__(self, landmarks: np.ndarray):
        pts = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
        left, right, nose, mouth_l, mouth_r = pts
        self.origin = (left + right) / 2
        axis = right - left
        self.scale = float(np.linalg.norm(axis))
        if self.scale < 1.0:
            raise FaceNetError("landmarks too close together to place an occluder (eyes less than 1 px apart)")
        self.x = axis / self.scale
        self.y = np.array([-self.x[1], self.x[0]])
        mouth = (mouth_l + mouth_r) / 2
        if np.dot(mouth - self.origin, self.y) < 0:  # image y points down: keep +y towards the mouth
            self.y = -self.y
        self.nose_y = float(np.dot(nose - self.origin, self.y)) / self.scale
        self.mouth_y = float(np.dot(mouth - self.origin, self.y)) / self.scale
        self.mouth_half = float(np.linalg.norm(mouth_r - mouth_l)) / 2 / self.scale

    def to_image(self, points) -> np.ndarray:
        p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        return self.origin + self.scale * (p[:, :1] * self.x + p[:, 1:] * self.y)

    @property
    def chin_y(self) -> float:
        return self.mouth_y + 0.75 * max(self.mouth_y - self.nose_y, 0.25)


def occlude(image: np.ndarray, landmarks: np.ndarray, kind: str, seed: int = 0, variant: str = "eval") -> np.ndarray:
    """A copy of the H,W,3 uint8 RGB ``image`` with occluder ``kind`` drawn on the face whose five
    landmarks (facenet order: eyes, nose tip, mouth corners) are given."""
    if kind not in KINDS:
        raise FaceNetError(f"unknown occluder {kind!r}; choose one of {', '.join(KINDS)}")
    if variant not in VARIANTS:
        raise FaceNetError(f"unknown occluder variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    rng = np.random.default_rng([seed, KINDS.index(kind), VARIANTS.index(variant)])
    frame = FaceFrame(landmarks)
    palette = _PALETTES[variant]
    shrink = 1.0 if variant == "eval" else 0.92  # the train set's shapes are proportioned differently
    if kind == "cap_shadow":
        return _cap_shadow(image, frame, rng, variant)
    if kind == "mask":
        outline = _mask_outline(frame, rng, width=1.05 * shrink, top=0.45, round_bottom=0.35)
        colour, pattern, pleats = _pick(palette["mask"], rng), "plain", True
    elif kind == "cloth_mask":
        outline = _mask_outline(frame, rng, width=1.0 * shrink, top=0.40, round_bottom=0.6)
        colour, pattern, pleats = _pick(palette["cloth"], rng), _pick(_PATTERNS[variant], rng), False
    elif kind == "n95":
        outline = _mask_outline(frame, rng, width=0.95 * shrink, top=0.35, round_bottom=0.9)
        colour, pattern, pleats = _pick(palette["n95"], rng), "plain", False
    elif kind == "scarf":
        outline = _scarf_outline(frame, rng, shrink)
        colour, pattern, pleats = _pick(palette["scarf"], rng), _pick(_PATTERNS[variant], rng), True
    elif kind == "sunglasses":
        return _sunglasses(image, frame, rng, _pick(palette["lens"], rng), shrink)
    else:
        return _hand(image, frame, rng, variant)
    alpha = _soft_mask(image.shape, [outline], frame.scale)
    layer = _cloth(image.shape, frame, np.array(colour, np.float64), pattern, pleats, rng)
    out = _composite(image, layer, alpha)
    if kind in ("mask", "n95"):  # ear loops, towards the ears
        for side in (-1, 1):
            for start, end in (((1.0, 0.35), (1.4, 0.15)), ((0.95, frame.mouth_y), (1.4, frame.mouth_y * 0.75))):
                loop = frame.to_image([(side * start[0] * shrink, start[1]), (side * end[0], end[1])])
                cv2.polylines(
                    out,
                    [np.round(loop * 16).astype(np.int32)],
                    False,
                    (235, 235, 235),
                    max(1, int(frame.scale * 0.025)),
                    cv2.LINE_AA,
                    shift=4,
                )
    return out


def _pick(options, rng):
    return options[int(rng.integers(len(options)))]


def _mask_outline(frame: FaceFrame, rng, width: float, top: float, round_bottom: float) -> np.ndarray:
    """Nose bridge to under the chin, cheek to cheek, with a rounded bottom edge."""
    top_y = frame.nose_y * top * rng.uniform(0.9, 1.1)
    bottom = frame.chin_y + 0.1 * rng.uniform(0.5, 1.5)
    w = width * rng.uniform(0.95, 1.05)
    upper = [
        (-w * 0.95, top_y + 0.15),
        (-w * 0.4, top_y),
        (0.0, top_y - 0.05),
        (w * 0.4, top_y),
        (w * 0.95, top_y + 0.15),
    ]
    side = [(w, (top_y + bottom) / 2)]
    arc = [
        (w * np.cos(t), bottom - round_bottom * (1 - np.sin(t)) * (bottom - top_y) * 0.3)
        for t in np.linspace(0.15, np.pi - 0.15, 9)
    ]
    return frame.to_image(upper + side + arc + [(-w, (top_y + bottom) / 2)])


def _scarf_outline(frame: FaceFrame, rng, shrink: float) -> np.ndarray:
    top_y = (frame.nose_y + frame.mouth_y) / 2 - 0.1 * rng.uniform(0, 1)
    w = 1.5 * shrink
    return frame.to_image(
        [
            (-w, top_y + 0.1),
            (0, top_y - 0.05),
            (w, top_y + 0.1),
            (w * 1.1, frame.chin_y + 1.2),
            (-w * 1.1, frame.chin_y + 1.2),
        ]
    )


def _soft_mask(shape, polygons, scale: float, blur: float = 0.03) -> np.ndarray:
    """Anti-aliased filled polygons as a 0..1 float mask with edges softened by ``blur`` x eye distance."""
    mask = np.zeros(shape[:2], np.float32)
    for poly in polygons:
        cv2.fillPoly(mask, [np.round(poly * 16).astype(np.int32)], 1.0, cv2.LINE_AA, shift=4)
    sigma = max(0.5, blur * scale)
    return cv2.GaussianBlur(mask, (0, 0), sigma)


def _cloth(shape, frame: FaceFrame, colour: np.ndarray, pattern: str, pleats: bool, rng) -> np.ndarray:
    """The occluder's colour layer: pattern, pleats, light from above and fine fabric noise."""
    h, w = shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    rel = np.stack([xx - frame.origin[0], yy - frame.origin[1]], axis=-1)
    fx = (rel @ frame.x) / frame.scale  # face coordinates of every pixel
    fy = (rel @ frame.y) / frame.scale
    layer = np.broadcast_to(colour, (h, w, 3)).copy()
    second = 255 - colour * 0.6
    if pattern == "stripes":
        layer[(np.floor(fx * 6) % 2) == 0] = second
    elif pattern == "dots":
        dots = ((fx * 5) % 1 - 0.5) ** 2 + ((fy * 5) % 1 - 0.5) ** 2 < 0.06
        layer[dots] = second
    elif pattern == "checks":
        layer[((np.floor(fx * 4) + np.floor(fy * 4)) % 2) == 0] = second * 0.8 + colour * 0.2
    elif pattern == "zigzag":
        layer[(np.floor(fy * 5 + np.abs((fx * 5) % 2 - 1)) % 2) == 0] = second
    light = 1.08 - 0.25 * np.clip(fy / max(frame.chin_y, 1e-6), 0, 1.5) - 0.08 * np.abs(fx)
    if pleats:
        light -= 0.10 * (np.cos(fy * 2 * np.pi * 3) > 0.85)
    texture = 1 + 0.03 * rng.standard_normal((h, w))
    return np.clip(layer * (light * texture)[..., None], 0, 255)


def _composite(image: np.ndarray, layer: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha[..., None]
    return np.clip(image * (1 - a) + layer * a, 0, 255).round().astype(np.uint8)


def _sunglasses(image, frame: FaceFrame, rng, colour, shrink: float) -> np.ndarray:
    rx, ry = 0.5 * shrink * rng.uniform(0.95, 1.05), 0.34 * rng.uniform(0.9, 1.1)
    angle = np.degrees(np.arctan2(frame.x[1], frame.x[0]))
    lenses = []
    for side in (-0.5, 0.5):
        centre = frame.to_image([(side, 0.02)])[0]
        pts = cv2.ellipse2Poly(
            tuple(int(v) for v in np.round(centre)),
            (max(1, int(rx * frame.scale)), max(1, int(ry * frame.scale))),
            int(angle),
            0,
            360,
            10,
        )
        lenses.append(pts.astype(np.float64))
    alpha = _soft_mask(image.shape, lenses, frame.scale, blur=0.015) * 0.96
    h, w = image.shape[:2]
    yy = np.mgrid[0:h, 0:w][0].astype(np.float64)
    shade = np.clip(1.3 - 0.6 * (yy - frame.origin[1] + ry * frame.scale) / (2 * ry * frame.scale + 1e-6), 0.6, 1.4)
    layer = np.clip(np.array(colour, np.float64) * shade[..., None], 0, 255)
    out = _composite(image, layer, alpha)
    bridge = frame.to_image([(-0.1, -0.05), (0.1, -0.05)])
    cv2.line(
        out,
        tuple(int(v) for v in bridge[0]),
        tuple(int(v) for v in bridge[1]),
        tuple(int(c) for c in colour),
        max(1, int(frame.scale * 0.05)),
        cv2.LINE_AA,
    )
    glint = frame.to_image([(-0.62, -0.08)])[0]  # a specular highlight on one lens
    cv2.circle(out, tuple(int(v) for v in glint), max(1, int(frame.scale * 0.05)), (235, 235, 235), -1, cv2.LINE_AA)
    return out


def _hand(image, frame: FaceFrame, rng, variant: str) -> np.ndarray:
    """A palm and fingers in the face's own skin tone (sampled at the cheeks), darkened, over the mouth
    ("eval") or over one eye and cheek ("train")."""
    cheeks = frame.to_image([(-0.55, frame.nose_y), (0.55, frame.nose_y)]).round().astype(int)
    h, w = image.shape[:2]
    samples = [image[np.clip(y, 0, h - 1), np.clip(x, 0, w - 1)] for x, y in cheeks]
    skin = np.mean(samples, axis=0).astype(np.float64) * 0.85
    side = 1 if rng.random() < 0.5 else -1
    if variant == "eval":
        cx, cy, spread = 0.1 * side, frame.mouth_y, 0.55
    else:
        cx, cy, spread = 0.5 * side, 0.3, 0.45
    palm = [(cx + spread * np.cos(t), cy + 0.8 * spread * np.sin(t)) for t in np.linspace(0, 2 * np.pi, 24)]
    fingers = [
        [
            (cx + spread * 0.9 * side, cy + dy - 0.09),
            (cx + spread * 2.2 * side, cy + dy - 0.07),
            (cx + spread * 2.2 * side, cy + dy + 0.07),
            (cx + spread * 0.9 * side, cy + dy + 0.09),
        ]
        for dy in (-0.33, -0.11, 0.11, 0.33)
    ]
    polys = [frame.to_image(palm)] + [frame.to_image(f) for f in fingers]
    alpha = _soft_mask(image.shape, polys, frame.scale, blur=0.03)
    layer = _cloth(image.shape, frame, skin, "plain", False, rng)
    return _composite(image, layer, alpha)


def _cap_shadow(image, frame: FaceFrame, rng, variant: str) -> np.ndarray:
    """A cap's brim across the forehead and its shadow down to the eyes (darker above, soft edge)."""
    h, w = image.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    rel = np.stack([xx - frame.origin[0], yy - frame.origin[1]], axis=-1)
    fy = (rel @ frame.y) / frame.scale
    edge = (0.15 if variant == "eval" else 0.0) + 0.05 * rng.uniform(-1, 1)
    darkness = np.clip((edge - fy) / 0.25, 0, 1) * (0.75 if variant == "eval" else 0.6)
    out = image * (1 - darkness[..., None])
    brim = frame.to_image([(-1.6, -0.75), (1.6, -0.75), (1.5, -0.45), (-1.5, -0.45)])
    alpha = _soft_mask(image.shape, [brim], frame.scale)
    colour = np.array(
        [(40, 40, 40), (120, 20, 20)][int(rng.integers(2))]
        if variant == "eval"
        else [(20, 60, 20), (200, 200, 200)][int(rng.integers(2))],
        np.float64,
    )
    return _composite(out, np.broadcast_to(colour, image.shape), alpha)


class OccludingEmbedder:
    """Wraps an embedder: each photo gets occluder ``kind`` on its central face before being embedded.

    The occluder is placed from the landmarks ``placer`` (a detector, MTCNN by default) finds on the
    clean photo; the wrapped embedder then has to find and embed the occluded face on its own, as it
    would a real masked photo. Photos where ``placer`` finds no face stay clean and are counted in
    ``unplaced``. Each photo's seed comes from its path (or its place in the call) and ``seed``.
    """

    def __init__(self, embedder, kind: str, placer=None, seed: int = 0, variant: str = "eval"):
        from facenet.align import get_detector

        if kind not in KINDS:
            raise FaceNetError(f"unknown occluder {kind!r}; choose one of {', '.join(KINDS)}")
        self.embedder, self.kind, self.seed, self.variant = embedder, kind, seed, variant
        self.placer = placer or get_detector("mtcnn")
        self.name = f"{embedder.name}+{kind}"
        self.embedding_size, self.threshold = embedder.embedding_size, embedder.threshold
        self.unplaced = 0

    @property
    def fallbacks(self):
        return getattr(self.embedder, "fallbacks", None)

    def occluded(self, image, seed: int) -> np.ndarray:
        from facenet.align import select_faces
        from facenet.data.images import load_image

        pixels = load_image(image)
        faces = select_faces(self.placer.detect(pixels), pixels.shape, "central")
        if not faces:
            self.unplaced += 1
            return pixels
        return occlude(pixels, faces[0].landmarks, self.kind, seed, self.variant)

    def seed_for(self, image, position: int) -> int:
        """A photo named by its path gets the same occluder whatever batch it comes in."""
        if isinstance(image, str) or hasattr(image, "__fspath__"):
            return zlib.crc32(f"{self.seed}:{image}".encode())
        return self.seed + position

    def embed(self, images, batch_size: int = 32) -> np.ndarray:
        return self.embedder.embed(
            [self.occluded(im, self.seed_for(im, i)) for i, im in enumerate(images)], batch_size=batch_size
        )
