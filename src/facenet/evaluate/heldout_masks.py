"""A second mask renderer, held out from training: masks placed from dlib's 68 landmarks, for evaluation only.

Why: ``facenet.occlusion`` draws the masks that training augments with (its "train" looks) and that
``facenet evaluate --occlude`` measures (its "eval" looks). Both come from one renderer, placed from
MTCNN's five landmarks, so a figure measured with them may partly reflect that renderer's habits. This
module is built differently on purpose: dlib's HOG detector and 68-point shape predictor place the
mask, its outline follows the jaw contour (points 2-16, 1-based) up to the nose bridge (points 29-30),
and its looks (surgical pleats, an N95's cone and seam, printed cloth, a folded KN95) are its own.

Training must never use it: nothing under ``facenet.train`` may import this module
(``tests/test_heldout_masks.py`` checks), or masked-face figures measured with it stop meaning "masks
the model never saw drawn". ``benchmarks/heldout_masked_lfw.py`` measures LFW with it.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

from facenet.align.base import Detection, check_image
from facenet.align.crop import select_faces
from facenet.baselines.dlib_model import load_dlib
from facenet.errors import FaceNetError, NoFaceError

KINDS = ("surgical", "n95", "cloth", "kn95")

_COLOURS = {  # RGB
    "surgical": [(160, 200, 225), (235, 238, 240), (175, 220, 200), (235, 200, 210)],
    "n95": [(240, 238, 230), (250, 250, 250), (205, 205, 200)],
    "kn95": [(245, 245, 245), (30, 30, 35), (150, 150, 155), (150, 185, 225), (240, 190, 205)],
    "cloth": [
        (25, 25, 30),
        (30, 40, 90),
        (60, 70, 40),
        (200, 30, 40),
        (240, 200, 30),
        (30, 160, 200),
        (230, 90, 160),
        (110, 60, 30),
        (245, 245, 245),
    ],
}
_PRINTS = ("stripes", "dots", "checks", "camouflage")
_UPSAMPLE = 1  # one image doubling: dlib's HOG finds faces down to about 40 px


@lru_cache(maxsize=1)
def _dlib_models():
    dlib, models = load_dlib()
    return dlib.get_frontal_face_detector(), dlib.shape_predictor(models.pose_predictor_model_location())


def find_landmarks(image: np.ndarray, which: str = "largest") -> np.ndarray:
    """dlib's 68 landmarks (68, 2; x, y) of the face dlib's HOG detector finds in ``image`` that ``which``
    ("largest" or "central", ``facenet.align.crop.select_faces``' rules) picks."""
    image = np.ascontiguousarray(check_image(image))
    detector, predictor = _dlib_models()
    faces = list(detector(image, _UPSAMPLE))
    if not faces:
        raise NoFaceError("dlib's HOG detector found no face to draw a held-out mask on")
    boxes = [Detection((r.left(), r.top(), r.right(), r.bottom()), 0.0, np.zeros((5, 2))) for r in faces]
    picked = select_faces(boxes, image.shape, which)[0]
    chosen = next(r for r, box in zip(faces, boxes) if box is picked)  # by identity: boxes hold arrays
    return np.array([(p.x, p.y) for p in predictor(image, chosen).parts()], dtype=np.float64)


def mask_photo(image: np.ndarray, kind: str, seed: int = 0, which: str = "largest") -> np.ndarray:
    """A copy of the H,W,3 uint8 RGB ``image`` with a ``kind`` mask on its ``which`` face (found by dlib).

    Raises ``NoFaceError`` where dlib finds no face."""
    _check_kind(kind)
    return draw_mask(image, find_landmarks(image, which), kind, seed)


def draw_mask(image: np.ndarray, landmarks68: np.ndarray, kind: str, seed: int = 0) -> np.ndarray:
    """A copy of ``image`` with a ``kind`` mask placed from dlib's 68 ``landmarks68``; colours, print and
    size jitter come from ``seed`` (same seed, same pixels). Only a box around the mask is touched."""
    _check_kind(kind)
    check_image(image)
    lm = np.asarray(landmarks68, dtype=np.float64).reshape(68, 2)
    rng = np.random.default_rng([seed, KINDS.index(kind)])
    width = float(np.linalg.norm(lm[16] - lm[0]))
    if width < 4:
        raise FaceNetError("landmarks too close together to place a mask (jaw less than 4 px wide)")
    u = (lm[16] - lm[0]) / width
    v = np.array([-u[1], u[0]])  # across the face, towards the chin
    if np.dot(lm[8] - lm[27], v) < 0:
        v = -v

    top, outline = _outline(lm, kind, u, v, width, rng)
    loops = _ear_loops(lm, outline, top) if kind in ("surgical", "kn95") else []
    sigma = max(0.6, 0.012 * width)
    geometry = np.concatenate([outline, *loops])
    pad = 4 * sigma + 2
    h, w = image.shape[:2]
    x0, y0 = np.maximum(np.floor(geometry.min(0) - pad).astype(int), 0)
    x1, y1 = np.minimum(np.ceil(geometry.max(0) + pad).astype(int) + 1, (w, h))
    out = image.copy()
    if x1 <= x0 or y1 <= y0:  # the mask lies wholly outside the photo
        return out

    alpha = np.zeros((y1 - y0, x1 - x0), np.float32)
    cv2.fillPoly(alpha, [_fixed(outline - (x0, y0))], 1.0, cv2.LINE_AA, shift=4)
    alpha = cv2.GaussianBlur(alpha, (0, 0), sigma)[..., None]
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    rel = np.stack([xx - top[0], yy - top[1]], axis=-1)
    height = max(float(np.dot(outline[7] - top, v)), 1.0)  # outline[7]: the mask's chin point
    fu = (rel @ u) / (width / 2)  # -1..1 cheek to cheek
    fv = (rel @ v) / height  # 0 at the nose bridge, 1 under the chin
    layer = _layer(kind, fu, fv, rel @ u / width, rel @ v / width, rng)
    roi = out[y0:y1, x0:x1]
    out[y0:y1, x0:x1] = np.clip(roi * (1 - alpha) + layer * alpha, 0, 255).round().astype(np.uint8)
    for loop in loops:
        thickness = max(1, round(0.015 * width))
        cv2.polylines(out, [_fixed(loop)], False, (230, 230, 228), thickness, cv2.LINE_AA, shift=4)
    return out


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise FaceNetError(f"unknown held-out mask {kind!r}; choose one of {', '.join(KINDS)}")


def _fixed(points: np.ndarray) -> np.ndarray:
    """Points as OpenCV's 4-bit fixed point (sub-pixel, anti-aliased drawing)."""
    return np.round(points * 16).astype(np.int32)


def _outline(lm: np.ndarray, kind: str, u, v, width: float, rng) -> tuple[np.ndarray, np.ndarray]:
    """(top centre, polygon): the jaw (points 2-16, 1-based) pushed out and down, closed by an upper edge
    through a point on the nose bridge (between points 29 and 30)."""
    nose = lm[30]
    spread = rng.uniform(1.03, 1.10)
    jaw = nose + spread * (lm[1:16] - nose)
    drop = rng.uniform(0.04, 0.10) * width * (1.6 if kind == "kn95" else 1.0)  # a KN95 comes to a point
    falloff = 3.0 if kind != "kn95" else 1.5
    jaw += np.exp(-(((np.arange(1, 16) - 8) / falloff) ** 2))[:, None] * drop * v
    top = lm[28] + rng.uniform(0.4, 1.0) * (lm[29] - lm[28])
    # the upper edge, right cheek back to left, in the face's frame (a along u, b along v) around ``top``
    a_left, b_left = np.dot(jaw[0] - top, u), np.dot(jaw[0] - top, v)
    a_right, b_right = np.dot(jaw[-1] - top, u), np.dot(jaw[-1] - top, v)
    a = np.linspace(a_right, a_left, 11)[1:-1]
    if kind == "kn95":  # a peak at the nose: straight edges
        b = np.where(a < 0, b_left * a / a_left, b_right * a / a_right)
    else:  # a curve through the three points
        slope, bend = np.linalg.solve([[a_left, a_left**2], [a_right, a_right**2]], [b_left, b_right])
        b = slope * a + bend * a**2
    upper = top + a[:, None] * u + b[:, None] * v
    outline = np.concatenate([jaw, upper])
    if kind == "n95":  # rounder: halfway to an ellipse from the nose bridge to the chin
        centre = (top + jaw[7]) / 2
        half_w, half_h = spread * width / 2 * 0.92, np.dot(jaw[7] - top, v) / 2
        rel = outline - centre
        angle = np.arctan2((rel @ v) / half_h, (rel @ u) / half_w)
        ellipse = centre + (half_w * np.cos(angle))[:, None] * u + (half_h * np.sin(angle))[:, None] * v
        outline = 0.4 * outline + 0.6 * ellipse
    return top, outline


def _ear_loops(lm: np.ndarray, outline: np.ndarray, top: np.ndarray) -> list[np.ndarray]:
    """Elastic loops from the mask's upper corners and lower cheeks towards the ears (jaw points 1 and 17)."""
    loops = []
    for ear, upper, lower in ((lm[0], outline[0], outline[3]), (lm[16], outline[14], outline[11])):
        behind = ear + 0.15 * (ear - top)
        loops += [np.stack([upper, behind]), np.stack([lower, (lower + behind) / 2, behind])]
    return loops


def _layer(kind: str, fu, fv, pu, pv, rng) -> np.ndarray:
    """The mask's colour over the box: its look, lit from above (lighter at the top, darker at the cheeks),
    with fine fabric noise. ``fu``/``fv``: the mask's own -1..1 / 0..1 coordinates; ``pu``/``pv``: the
    face's, in jaw widths (prints keep their size on any face)."""
    colour = np.array(_COLOURS[kind][int(rng.integers(len(_COLOURS[kind])))], np.float64)
    colour = np.clip(colour + rng.uniform(-8, 8, 3), 0, 255)
    layer = np.broadcast_to(colour, (*fu.shape, 3)).copy()
    light = 1.08 - 0.22 * np.clip(fv, 0, 1.2) - 0.12 * np.minimum(fu**2, 1.5)
    if kind == "surgical":  # three horizontal pleats: a shadowed fold under a lit ridge
        for centre in np.array([0.3, 0.5, 0.7]) + rng.uniform(-0.03, 0.03, 3):
            light -= 0.2 * np.exp(-(((fv - centre) / 0.02) ** 2))
            light += 0.08 * np.exp(-(((fv - centre + 0.035) / 0.02) ** 2))
    elif kind == "n95":  # a cone: lit at its tip, a shaded seam down the middle
        light += 0.12 - 0.3 * (fu**2 + (2 * fv - 1) ** 2) / 2
        light -= 0.18 * np.exp(-((fu / 0.03) ** 2))
        light += 0.05 * np.exp(-(((fu - 0.07) / 0.03) ** 2))
    elif kind == "kn95":  # folded down the middle: one half in shadow, a crease line
        lit = 1 if rng.random() < 0.5 else -1
        light *= np.where(fu * lit > 0, 1.04, 0.86)
        light -= 0.25 * np.exp(-((fu / 0.012) ** 2))
    else:
        layer = _print(layer, colour, pu, pv, rng)
    light *= 1 + 0.025 * rng.standard_normal(fu.shape)
    return np.clip(layer * light[..., None], 0, 255)


def _print(layer: np.ndarray, colour: np.ndarray, pu, pv, rng) -> np.ndarray:
    """A cloth print in a second (and third) palette colour: stripes, dots, checks or camouflage blotches."""
    palette = [np.array(c, np.float64) for c in _COLOURS["cloth"] if np.abs(np.array(c) - colour).sum() > 120]
    second, third = (palette[i] for i in rng.choice(len(palette), 2, replace=False))
    pattern = _PRINTS[int(rng.integers(len(_PRINTS)))]
    period = rng.uniform(0.06, 0.12)  # in jaw widths
    if pattern == "stripes":
        angle = rng.uniform(0, np.pi)
        on = (np.floor((pu * np.cos(angle) + pv * np.sin(angle)) / period) % 2) == 0
    elif pattern == "dots":
        on = ((pu / period) % 1 - 0.5) ** 2 + ((pv / period) % 1 - 0.5) ** 2 < rng.uniform(0.04, 0.1)
    elif pattern == "checks":
        on = (np.floor(pu / period) + np.floor(pv / period)) % 2 == 0
    else:  # smooth random blotches cut into three colours
        coarse = rng.random((6, 6)).astype(np.float32)
        noise = cv2.resize(coarse, (pu.shape[1], pu.shape[0]), interpolation=cv2.INTER_CUBIC)
        layer[noise > 0.6] = third
        on = (noise > 0.35) & (noise <= 0.6)
    layer[on] = second
    return layer
