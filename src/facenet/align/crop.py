"""From detections to face crops: one ``Recipe`` per model says how its input crops are made.

Two ways to cut a face (``Recipe.mode``):
- ``"crop"``: Sandberg's box crop — the detector's box grown by a margin, resized (aspect not kept).
- ``"similarity"``: the five landmarks mapped onto a template by rotation + scale + shift.

Margins are **relative**, so a 100-px face and a 1,000-px face give the same crop: in ``crop``
mode the box grows by ``margin`` times its width/height in all (half on each side; 0.3 is about
Sandberg's 32 px on LFW-sized faces); in ``similarity`` mode ``margin`` is the fraction of the
output left around the template square.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from facenet.align.base import Detection, Detector
from facenet.errors import FaceNetError, NoFaceError

# Five-point templates (left eye, right eye, nose tip, left/right mouth corner) on the unit square.
TEMPLATES = {
    # The widely used ArcFace 112x112 template divided by 112, raised by 0.07 so that its eye line
    # sits at 0.39 of the square, where MTCNN's boxes put it (median over 100 LFW photos); a
    # similarity-aligned face is thus framed like a box crop of the same size and margin.
    "facenet": np.array(
        [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]
    )
    / 112.0
    - [0.0, 0.07],
    # dlib's 150 px face chip (padding 0.25): where MTCNN's five landmarks fall inside the chips
    # dlib's own 5-point shape predictor makes, mean over 370 LFW photos (scripts/measure_dlib_template.py).
    "dlib": np.array([[47.89, 45.95], [102.11, 45.94], [74.80, 78.07], [51.24, 105.69], [98.90, 105.67]]) / 150.0,
    # Intel's face-reidentification-retail-0095 (Open Model Zoo model documentation): a tight crop.
    "openvino": np.array(
        [
            [0.31556875, 0.46157411],
            [0.68262292, 0.46157411],
            [0.50026250, 0.64050536],
            [0.34947188, 0.82469196],
            [0.65343646, 0.82469196],
        ]
    ),
}
TEMPLATE = TEMPLATES["facenet"]

MODES = ("crop", "similarity")
WHICH = ("largest", "central", "all")


@dataclass(frozen=True)
class Recipe:
    """How a model's input crop is made from a photo; stored in the model file and beside aligned data.

    ``detector`` is the default detector (a user may name another); ``which`` picks the face of a
    photo with several ("largest", or "central" as for LFW-style data where the labelled person
    is in the middle); input size and standardisation are the model file's own fields.
    """

    detector: str = "mtcnn"
    mode: str = "crop"
    margin: float = 0.3
    template: str = "facenet"
    which: str = "largest"

    def __post_init__(self):
        if self.mode not in MODES:
            raise FaceNetError(f"unknown alignment mode {self.mode!r}; choose one of {', '.join(MODES)}")
        if self.template not in TEMPLATES:
            raise FaceNetError(f"unknown alignment template {self.template!r}; choose one of {', '.join(TEMPLATES)}")
        if self.which not in ("largest", "central"):
            raise FaceNetError(f"a recipe picks the 'largest' or the 'central' face, not {self.which!r}")
        limit = 3.0 if self.mode == "crop" else 0.9
        if not 0.0 <= float(self.margin) <= limit:
            raise FaceNetError(
                f"margin {self.margin} is out of range for {self.mode!r} (0 to {limit}): it is a "
                "fraction of the face size (e.g. 0.3), not a number of pixels"
            )

    def replace(self, **changes) -> Recipe:
        """A copy with some fields changed (``None`` values are ignored)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> Recipe:
        """The recipe stored in a model file or beside a dataset; the default one for files that predate recipes."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in (data or {}).items() if k in known})


@dataclass(frozen=True)
class AlignedFace:
    """A size x size x 3 uint8 RGB face crop, the detection it came from (original image coordinates),
    and why an answer about it may be unreliable (``facenet.align.finder.face_notes``; empty: nothing)."""

    image: np.ndarray
    detection: Detection
    notes: tuple[str, ...] = ()


def crop_face(image: np.ndarray, detection: Detection, size: int = 160, margin: float = 0.3) -> np.ndarray:
    """Sandberg's ``align_dataset_mtcnn`` crop with a relative margin: the box grown by
    ``margin / 2`` of its width (height) on each side, clipped to the image, truncated to
    integers, resized to size x size (bilinear; aspect not kept)."""
    h, w = image.shape[:2]
    left, top, right, bottom = _crop_box(detection, margin, (w, h))
    if right <= left or bottom <= top:
        raise FaceNetError(f"face box {detection.box} lies outside the {w}x{h} image; nothing to crop")
    patch = Image.fromarray(np.ascontiguousarray(image[top:bottom, left:right]))
    return np.asarray(patch.resize((size, size), Image.BILINEAR))


def _crop_box(detection: Detection, margin: float, photo_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The pixels ``crop_face`` cuts (left, top, right, bottom): the box grown by ``margin``, clipped, truncated."""
    w, h = photo_size
    x1, y1, x2, y2 = detection.box
    grow_x, grow_y = margin * (x2 - x1) / 2, margin * (y2 - y1) / 2
    left, top = int(max(x1 - grow_x, 0)), int(max(y1 - grow_y, 0))
    return left, top, int(min(x2 + grow_x, w)), int(min(y2 + grow_y, h))


def template_points(size: int = 160, margin: float = 0.2, template: str = "facenet") -> np.ndarray:
    """A template in output pixels: its unit square maps to the central ``(1 - margin) * size`` square."""
    return TEMPLATES[template] * (size * (1 - margin)) + size * margin / 2


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares rotation + uniform scale + translation taking ``src`` points onto ``dst``
    (Umeyama 1991, closed form; no reflection). Returns the 2x3 matrix for ``cv2.warpAffine``."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    u, sig, vt = np.linalg.svd(d.T @ s / len(src))
    sign = np.diag([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])
    rot = u @ sign @ vt
    scale = np.trace(np.diag(sig) @ sign) / s.var(0).sum()
    return np.hstack([scale * rot, (mu_d - scale * rot @ mu_s)[:, None]])


def align_face(
    image: np.ndarray, detection: Detection, size: int = 160, margin: float = 0.2, template: str = "facenet"
) -> np.ndarray:
    """Warp the face so its 5 landmarks fall on ``template_points(size, margin, template)``; outside is black."""
    matrix = similarity_transform(detection.landmarks, template_points(size, margin, template))
    return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderValue=0)


def select_faces(detections: list[Detection], image_shape: tuple[int, ...], which: str = "largest") -> list[Detection]:
    """Pick the face(s) to keep, counting only the part of each box inside the image (a face half out
    of the photo does not beat the subject): "largest" visible area; "central" = Sandberg's rule,
    visible area minus twice the squared distance (pixels) of the box centre from the image centre, so
    a face off-centre by d px must be larger by 2 d^2 px^2 to win; "all" = every face, best score first."""
    if which not in WHICH:
        raise FaceNetError(f"unknown face selection {which!r}; choose one of {', '.join(WHICH)}")
    if which == "all" or not detections:
        return sorted(detections, key=lambda d: d.score, reverse=True)
    height, width = image_shape[:2]
    visible = lambda d: visible_area(d, (width, height))  # noqa: E731

    if which == "largest":
        return [max(detections, key=visible)]
    cy, cx = height / 2, width / 2
    return [max(detections, key=lambda d: visible(d) - 2.0 * ((d.center[0] - cx) ** 2 + (d.center[1] - cy) ** 2))]


def visible_area(detection: Detection, size: tuple[int, int]) -> float:
    """The area of the part of the box inside a (width, height) photo."""
    x1, y1, x2, y2 = detection.box
    return max(0.0, min(x2, size[0]) - max(x1, 0.0)) * max(0.0, min(y2, size[1]) - max(y1, 0.0))


def no_face(source: str, detector: Detector) -> NoFaceError:
    """The error for a photo where ``detector`` found nothing, naming the photo and what to do."""
    return NoFaceError(
        f"{source}: no face found by the {getattr(detector, 'name', 'face')} detector; "
        "use a photo with a visible, roughly frontal face, or the 'center' detector "
        "for images that are already cropped around the face"
    )


def cut_face(pixels: np.ndarray, detection: Detection, size: int = 160, recipe: Recipe = Recipe()) -> np.ndarray:
    """Cut one face as the recipe says (box crop or landmark alignment) into a size x size crop."""
    if recipe.mode == "crop":
        return crop_face(pixels, detection, size, recipe.margin)
    return align_face(pixels, detection, size, recipe.margin, recipe.template)


def landmarks_in_crop(detection: Detection, size: int, recipe: Recipe, photo_size: tuple[int, int]) -> np.ndarray:
    """Where the detection's five landmarks fall in the crop ``cut_face`` makes of it ((5, 2), crop pixels),
    so what is drawn from landmarks (``facenet.occlusion``) can be drawn on the crop itself. ``photo_size``:
    the photo's (width, height), where a box crop is clipped."""
    points = detection.landmarks
    if recipe.mode == "similarity":
        matrix = similarity_transform(points, template_points(size, recipe.margin, recipe.template))
        return points @ matrix[:, :2].T + matrix[:, 2]
    left, top, right, bottom = _crop_box(detection, recipe.margin, photo_size)
    return (points - [left, top]) * [size / (right - left), size / (bottom - top)]


def footprint(detection: Detection, size: int, recipe: Recipe) -> tuple[float, float, float, float]:
    """The part of the image (x0, y0, x1, y1, image pixels) that ``cut_face`` maps onto its crop."""
    x1, y1, x2, y2 = detection.box
    if recipe.mode == "crop":
        grow_x, grow_y = recipe.margin * (x2 - x1) / 2, recipe.margin * (y2 - y1) / 2
        return x1 - grow_x, y1 - grow_y, x2 + grow_x, y2 + grow_y
    matrix = similarity_transform(detection.landmarks, template_points(size, recipe.margin, recipe.template))
    inverse = cv2.invertAffineTransform(matrix)
    corners = np.array([[0, 0, 1], [size, 0, 1], [0, size, 1], [size, size, 1]], np.float64) @ inverse.T
    (x0, y0), (x1, y1) = corners.min(0), corners.max(0)
    return float(x0), float(y0), float(x1), float(y1)
