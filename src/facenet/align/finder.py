"""The one path from a photo to model-sized face crops: decode -> detect -> fall back -> choose -> cut.

Every command, the Python API, ``evaluate``, ``align`` and the service find faces through
``FaceFinder.find``. Why it looks the way it does:

- **Detect on a reduced copy.** Detection cost grows with pixels, face sizes in people's photos
  grow with them: a 12 MP photo's faces are several hundred pixels wide. The photo is decoded at a
  working size where the smallest face to be found (``min_face``, a fraction of the shorter side)
  is as big as the detector's own smallest face (MTCNN: 20 px); JPEGs are decoded straight at that
  scale. Photos already smaller than the working size (LFW's 250 px) are detected as they are.
- **Cut from enough pixels.** Each chosen face is cut from the coarsest decoded copy that holds
  its crop at the model's input size (decoding a finer copy only when needed); a face holding more
  than twice that is area-averaged down first, so a face of 2,000 px and one of 200 px give the
  same crop, without aliasing.
- **A face that fills the photo** (ID photos, profile pictures) is often missed: detectors need
  some of a head's surroundings. Where nothing is found, the photo is searched again inside a frame
  of its own edge pixels before the fallback (if any) is used.
- **Choose by what is visible.** "largest" counts only the part of a box inside the photo, so a
  half-visible face at the border does not beat the subject.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from facenet.align.base import Detection, Detector
from facenet.align.crop import AlignedFace, Recipe, cut_face, footprint, no_face, select_faces, visible_area
from facenet.data.images import ImageLike, Photo, fit_to_input, open_photo
from facenet.errors import FaceNetError

MIN_FACE = 0.02  # the smallest face found by default: 2% of the photo's shorter side (60 px at 12 MP)
OVERSAMPLE = 2.0  # faces holding more source pixels per crop pixel than this are area-averaged first
SMALL_FACE = 0.25  # faces narrower than this fraction of the model's input are marked unreliable
MAX_ROLL_DEG = 45.0  # eyes tilted more than this: the photo is probably rotated
SURE_SCORE = 0.99  # detections scoring below this (MTCNN's scale; a detector's ``sure_score`` overrides) are
# checked for a photo turned sideways
FRAME = 0.25  # where nothing is found: the photo framed by this fraction of its longer side per edge...
FRAMED_SIDE = 240  # ...at this shorter side (px), is searched again for a face that fills it


@dataclass(frozen=True)
class FoundFaces:
    """The faces cut from one photo (the chosen one, or all) and every detection the detector returned.

    Boxes and landmarks are in the full-resolution photo's pixels; ``size`` is its (width, height);
    ``fallback`` says the detections came from the fallback detector (nothing was found)."""

    faces: list  # list[AlignedFace]
    detections: list  # list[Detection]
    size: tuple[int, int] = (0, 0)
    fallback: bool = False


class FaceFinder:
    """Finds and cuts faces as a model's recipe says; ``detector=None`` takes images as face crops.

    ``min_face``: the smallest face to find, as a fraction of the photo's shorter side (``None``:
    detect at full resolution, whatever it costs). ``fallback`` (e.g. the "center" detector) is
    used where ``detector`` finds nothing; without one such a photo raises ``NoFaceError``.
    """

    def __init__(
        self,
        detector: Detector | None,
        recipe: Recipe,
        input_size: int,
        fallback: Detector | None = None,
        min_face: float | None = MIN_FACE,
    ):
        if min_face is not None and not 0.0 < min_face <= 1.0:
            raise FaceNetError(f"min_face is a fraction of the photo's shorter side (e.g. 0.02), not {min_face}")
        self.detector, self.recipe, self.input_size = detector, recipe, input_size
        self.fallback, self.min_face = fallback, min_face

    @property
    def thread_safe(self) -> bool:
        """May threads share this finder? Yes when its detectors keep no state between calls
        (``thread_safe`` on the detector, e.g. MTCNN on ONNX Runtime); no detector needs none."""
        return all(getattr(d, "thread_safe", d is None) for d in (self.detector, self.fallback))

    @property
    def working_side(self) -> int | None:
        """The shorter side photos are detected at (``None``: as they are)."""
        if self.detector is None or self.min_face is None:
            return None
        return math.ceil(getattr(self.detector, "min_face_size", 20) / self.min_face)

    def find(self, image: ImageLike, which: str | None = None, source: str | None = None) -> FoundFaces:
        """The crop(s) of the chosen face(s): ``which`` is "largest", "central", "all" or ``None`` (the
        recipe's). Raises ``BadImageError`` for unreadable images, ``NoFaceError`` when nothing is found."""
        source = source or describe(image)
        if self.detector is None:
            return self._whole(image)
        photo, detections, fallback = self.locate(image)
        width, height = photo.size
        chosen = select_faces(detections, (height, width), which or self.recipe.which)
        if not chosen:
            raise no_face(source, self.fallback or self.detector)
        faces = []
        for d in chosen:
            notes = face_notes(d, photo.size, self.input_size)
            notes += () if abs(_roll(d)) > MAX_ROLL_DEG else self._turned(photo, d)  # said once
            faces.append(replace(self._cut(photo, d), notes=notes))
        return FoundFaces(faces, detections, photo.size, fallback)

    def _turned(self, photo: Photo, detection: Detection) -> tuple[str, ...]:
        """A note when the face looks turned by 90 degrees: detectors also find sideways faces, with
        upright-looking landmarks and a lower score, so a doubtful face (score under the detector's
        ``sure_score``, else SURE_SCORE) is
        detected again in its surroundings turned both ways; a clearly better score there says the
        photo lies on its side (no EXIF orientation). Upright faces score above it and cost nothing."""
        sure = getattr(self.detector, "sure_score", SURE_SCORE)
        if not detection.score < sure or self.detector is None or getattr(self.detector, "name", "") == "center":
            return ()
        x1, y1, x2, y2 = (v * photo.scale for v in detection.box)
        grow = 0.5 * max(x2 - x1, y2 - y1)
        h, w = photo.pixels.shape[:2]
        region = photo.pixels[
            max(int(y1 - grow), 0) : min(int(y2 + grow), h), max(int(x1 - grow), 0) : min(int(x2 + grow), w)
        ]
        look = getattr(self.detector, "glance", self.detector.detect)  # scores suffice: MTCNN's cheaper first look
        for turns, degrees in ((1, 90), (3, -90)):
            found = look(np.ascontiguousarray(np.rot90(region, turns)))
            if any(d.score >= sure and d.score > detection.score for d in found):
                return (
                    f"the face looks turned by {degrees} degrees (is the photo rotated?): its answer is unreliable",
                )
        return ()

    def _filling(self, pixels: np.ndarray) -> list[Detection]:
        """A second look where nothing was found, for a face that fills the photo (ID photos, profile
        pictures cut at the forehead or chin): detectors need some of a head's surroundings, so the
        photo is set in a frame of its own edge pixels, at a small size (such a face is large), and
        only faces at least half as wide as the photo's shorter side count."""
        if getattr(self.detector, "name", "") == "center":
            return []
        h, w = pixels.shape[:2]
        pad = round(FRAME * max(h, w))
        framed = cv2.copyMakeBorder(pixels, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        scale = min(1.0, FRAMED_SIDE / min(framed.shape[:2]))
        if scale < 1.0:
            framed = cv2.resize(framed, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        found = [_moved(_moved(d, 1 / scale), offset=(pad, pad)) for d in self.detector.detect(framed)]
        return [d for d in found if d.box[2] - d.box[0] >= 0.5 * min(h, w)]

    def locate(self, image: ImageLike) -> tuple[Photo, list[Detection], bool]:
        """Decode at the working size and detect: the photo, every detection (full-resolution
        coordinates, detector order) and whether they came from the fallback detector."""
        photo = open_photo(image, shorter_side=self.working_side)
        detections = self.detector.detect(photo.pixels) or self._filling(photo.pixels)
        fallback = not detections and self.fallback is not None
        if fallback:
            detections = self.fallback.detect(photo.pixels)
        return photo, [_moved(d, 1 / photo.scale) for d in detections], fallback

    def _whole(self, image: ImageLike) -> FoundFaces:
        """No detector: the image is a face crop; its central square is the one face."""
        pixels = open_photo(image).pixels
        h, w = pixels.shape[:2]
        side = min(h, w)
        box = ((w - side) // 2, (h - side) // 2, (w + side) // 2, (h + side) // 2)
        face = AlignedFace(fit_to_input(pixels, self.input_size), Detection(box, float("nan"), np.zeros(10)))
        return FoundFaces([face], [face.detection], (w, h))

    def _cut(self, photo, detection: Detection) -> AlignedFace:
        """Cut one face from the coarsest decoded copy that holds its crop at the model's input size;
        where that copy holds more than OVERSAMPLE x the input, the face's surroundings are area-averaged
        down to OVERSAMPLE x first (the warp's bilinear sampling would alias otherwise)."""
        x0, y0, x1, y1 = footprint(detection, self.input_size, self.recipe)
        side = max(x1 - x0, y1 - y0, 1.0)
        pixels, scale = photo.at_least(self.input_size / side)
        wanted = OVERSAMPLE * self.input_size / side
        h, w = pixels.shape[:2]
        left, top = max(int((x0 + 0.5) * scale) - 2, 0), max(int((y0 + 0.5) * scale) - 2, 0)
        right, bottom = min(math.ceil((x1 + 0.5) * scale) + 2, w), min(math.ceil((y1 + 0.5) * scale) + 2, h)
        if scale <= wanted or right <= left or bottom <= top:  # cut straight from this copy
            return AlignedFace(cut_face(pixels, _moved(detection, scale), self.input_size, self.recipe), detection)
        region = pixels[top:bottom, left:right]
        factor = wanted / scale
        small = cv2.resize(
            region,
            (max(1, round(region.shape[1] * factor)), max(1, round(region.shape[0] * factor))),
            interpolation=cv2.INTER_AREA,
        )
        fx, fy = small.shape[1] / region.shape[1], small.shape[0] / region.shape[0]
        local = _moved(_moved(detection, scale), (fx, fy), offset=(left, top))
        return AlignedFace(cut_face(small, local, self.input_size, self.recipe), detection)


def face_notes(detection: Detection, size: tuple[int, int], input_size: int) -> tuple[str, ...]:
    """Why an answer about this face may be wrong (empty when nothing is suspect): a face far below
    the model's input size, eyes tilted as in a photo turned sideways, a face mostly outside the photo."""
    notes = []
    smallest = SMALL_FACE * input_size
    if min(detection.width, detection.height) < smallest:
        notes.append(
            f"the face is only {detection.width:.0f}x{detection.height:.0f} px (under {smallest:.0f} px, "
            "a quarter of the model's input): its answer is unreliable"
        )
    roll = _roll(detection)
    if abs(roll) > MAX_ROLL_DEG:
        notes.append(f"the face is turned by {roll:.0f} degrees (is the photo rotated?): its answer is unreliable")
    if detection.area > 0 and visible_area(detection, size) < 0.5 * detection.area:
        notes.append("most of the face lies outside the photo: its answer is unreliable")
    return tuple(notes)


def _roll(detection: Detection) -> float:
    """How far the line between the eyes is tilted, in degrees (0 without landmarks)."""
    if not np.any(detection.landmarks):
        return 0.0
    (lx, ly), (rx, ry) = detection.landmarks[0], detection.landmarks[1]
    return math.degrees(math.atan2(ry - ly, rx - lx))


def extract_faces(
    image: ImageLike,
    detector: Detector,
    size: int = 160,
    recipe: Recipe = Recipe(),
    which: str | None = None,
    source: str | None = None,
) -> list[AlignedFace]:
    """Detect, choose and cut faces in one call (``FaceFinder`` with the default working size)."""
    return FaceFinder(detector, recipe, size).find(image, which, source).faces


def _moved(detection: Detection, factor: float | tuple[float, float] = 1.0, offset=(0.0, 0.0)) -> Detection:
    """The detection in another copy of the photo: ``factor`` times as large, cut at pixel ``offset`` of this
    copy (applied first). Box corners are pixel edges and landmarks pixel centres (``base.Detection``), so a
    box keeps the same pixels at any size."""
    fx, fy = (factor, factor) if np.isscalar(factor) else factor
    (x1, y1, x2, y2), (ox, oy) = detection.box, offset
    box = ((x1 - ox) * fx, (y1 - oy) * fy, (x2 - ox) * fx, (y2 - oy) * fy)
    marks = detection.landmarks
    if np.any(marks):
        marks = (marks + 0.5 - (ox, oy)) * (fx, fy) - 0.5
    return Detection(box, detection.score, marks)


def describe(image: ImageLike) -> str:
    """How messages name an image: its path, else its kind (never its pixels)."""
    return str(image) if isinstance(image, (str, Path)) else f"<{type(image).__name__}>"
