"""From detections to face crops: box crop (Sandberg's recipe) or 5-point similarity alignment.

Reference settings: 160 px with margin 32 for evaluation (the published LFW crops); 182 px with
margin 44 for training, followed by a random 160 px crop.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from facenet.align.base import Detection, Detector
from facenet.data.images import ImageLike, load_image
from facenet.errors import FaceNetError, NoFaceError

# Five-point template (left eye, right eye, nose, left/right mouth corner) on the unit square:
# the widely used ArcFace 112x112 template divided by 112, raised by 0.07 so that its eye line
# sits at 0.39 of the square, where MTCNN's boxes put it (median over 100 LFW photos); a
# similarity-aligned face is thus framed like a box crop of the same size and margin.
TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                     [41.5493, 92.3655], [70.7299, 92.2041]]) / 112.0 - [0.0, 0.07]

MODES = ("crop", "similarity")
WHICH = ("largest", "central", "all")


@dataclass(frozen=True)
class AlignedFace:
    """A size x size x 3 uint8 RGB face crop and the detection it came from (original image coordinates)."""

    image: np.ndarray
    detection: Detection


def crop_face(image: np.ndarray, detection: Detection, size: int = 160, margin: int = 32) -> np.ndarray:
    """Sandberg's ``align_dataset_mtcnn`` crop: box grown by margin/2 original pixels per side,
    clipped to the image, truncated to integers, resized to size x size (bilinear; aspect not kept)."""
    h, w = image.shape[:2]
    x1, y1, x2, y2 = detection.box
    left, top = int(max(x1 - margin / 2, 0)), int(max(y1 - margin / 2, 0))
    right, bottom = int(min(x2 + margin / 2, w)), int(min(y2 + margin / 2, h))
    if right <= left or bottom <= top:
        raise FaceNetError(f"face box {detection.box} lies outside the {w}x{h} image; nothing to crop")
    patch = Image.fromarray(np.ascontiguousarray(image[top:bottom, left:right]))
    return np.asarray(patch.resize((size, size), Image.BILINEAR))


def template_points(size: int = 160, margin: int = 32) -> np.ndarray:
    """TEMPLATE in output pixels: the unit square maps to the central (size - margin) square."""
    return TEMPLATE * (size - margin) + margin / 2


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


def align_face(image: np.ndarray, detection: Detection, size: int = 160, margin: int = 32) -> np.ndarray:
    """Warp the face so its 5 landmarks fall on ``template_points(size, margin)``; outside is black."""
    matrix = similarity_transform(detection.landmarks, template_points(size, margin))
    return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderValue=0)


def select_faces(detections: list[Detection], image_shape: tuple[int, ...], which: str = "largest") -> list[Detection]:
    """Pick the face(s) to keep: "largest" box; "central" = Sandberg's rule, box area minus twice the
    squared distance of its centre from the image centre; "all" = every face, best score first."""
    if which not in WHICH:
        raise FaceNetError(f"unknown face selection {which!r}; choose one of {', '.join(WHICH)}")
    if which == "all" or not detections:
        return sorted(detections, key=lambda d: d.score, reverse=True)
    if which == "largest":
        return [max(detections, key=lambda d: d.area)]
    cy, cx = image_shape[0] / 2, image_shape[1] / 2
    return [max(detections, key=lambda d: d.area - 2.0 * ((d.center[0] - cx) ** 2 + (d.center[1] - cy) ** 2))]


def extract_faces(image: ImageLike, detector: Detector, size: int = 160, margin: int = 32, mode: str = "crop",
                  which: str = "largest", source: str | None = None) -> list[AlignedFace]:
    """Detect, select and crop/align faces in one call; ``image`` is anything ``load_image`` reads.

    Raises ``NoFaceError`` naming ``source`` (or the file path) when the detector finds nothing.
    """
    if source is None:
        source = str(image) if isinstance(image, (str, os.PathLike)) else "the image"
    pixels = load_image(image)
    faces = cut_faces(pixels, detector.detect(pixels), size, margin, mode, which)
    if not faces:
        raise NoFaceError(f"{source}: no face found by the {getattr(detector, 'name', 'face')} detector; "
                          "use a photo with a visible, roughly frontal face, or the 'center' detector "
                          "for images that are already cropped around the face")
    return faces


def cut_faces(pixels: np.ndarray, detections: list[Detection], size: int = 160, margin: int = 32,
              mode: str = "crop", which: str = "largest") -> list[AlignedFace]:
    """Select among ``detections`` and crop or align each chosen face (empty list when there are none)."""
    if mode not in MODES:
        raise FaceNetError(f"unknown alignment mode {mode!r}; choose one of {', '.join(MODES)}")
    cut = crop_face if mode == "crop" else align_face
    return [AlignedFace(cut(pixels, d, size, margin), d) for d in select_faces(detections, pixels.shape, which)]
