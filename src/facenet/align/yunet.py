"""YuNet (OpenCV Zoo, MIT) through ``cv2.FaceDetectorYN``: a fast CNN detector with 5 landmarks.

Its ONNX file (230 kB) ships inside the package (``facenet/models/weights/``, with its licence and
notice), since PyPI carries no copy of it; ``model=`` or $FACENET_YUNET_MODEL selects another.

OpenCV Zoo says YuNet finds faces of about 10 to 300 px. Photos are detected at a working size
where the smallest face asked for is ``min_face_size`` px (``facenet.align.finder``); a face much
larger than 300 px there (a selfie, a portrait cut at the shoulders) is found with a low score and
loose landmarks, so such photos are also searched on a copy reduced to ``LARGE_FACE_SIDE``, and of
two detections of one face the better-scoring one is kept.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import cv2
import numpy as np

from facenet.align.base import Detection, check_image, sort_by_score
from facenet.errors import FaceNetError

MODEL_NAME = "face_detection_yunet_2026may.onnx"
SHIPPED_MODEL = Path(__file__).resolve().parents[1] / "models" / "weights" / MODEL_NAME
# YuNet's coarsest stride. A smaller input leaves its last feature maps empty, and OpenCV then now and
# then returned faces in a 1x1 or 8x8 grey image (seen in a full test run, never alone).
MIN_SIDE = 32
LARGE_FACE_SIDE = 240  # shorter side (px) of the reduced copy searched for faces too large for YuNet
LARGE_FACE_ABOVE = 1.5 * LARGE_FACE_SIDE  # photos with a shorter side above this get that second look
SAME_FACE_IOU = 0.3  # detections of the two sizes overlapping more than this are one face


def find_model(model: str | os.PathLike | None = None) -> Path:
    """The YuNet ONNX file: ``model``, else $FACENET_YUNET_MODEL, else the one shipped in the package."""
    path = Path(model or os.environ.get("FACENET_YUNET_MODEL") or SHIPPED_MODEL)
    if path.is_file():
        return path
    hint = (
        "reinstall facenet (its package ships the model)"
        if path == SHIPPED_MODEL
        else "download face_detection_yunet_*.onnx from OpenCV Zoo (github.com/opencv/opencv_zoo, "
        "models/face_detection_yunet), verify its checksum, and pass its path (model=...) or set "
        "FACENET_YUNET_MODEL"
    )
    raise FaceNetError(f"YuNet model not found at {path}; {hint}")


class YuNetDetector:
    """OpenCV YuNet. ``score_threshold`` 0.6 keeps profile and blurred faces that 0.9 would drop.

    Threads may share one detector: each thread gets its own OpenCV networks (``detect`` sets a
    network's input size, so one network cannot serve two threads at once), one for the photo and one
    for its reduced copy: OpenCV sets a network up again whenever its input size changes, which cost
    25-30 ms per photo of 1000x750 when one network took both sizes in turn.
    """

    name = "yunet"
    thread_safe = True
    min_face_size = 16  # px: the smallest face the working size is chosen for (finder.FaceFinder)
    # Upright faces score above this, faces in a photo turned by 90 degrees below it (300 LFW photos:
    # upright 0.898 at the 1st percentile, turned 0.868 at the 99th); finder.FaceFinder checks below it.
    sure_score = 0.88

    def __init__(
        self,
        model: str | os.PathLike | None = None,
        score_threshold: float = 0.6,
        nms_threshold: float = 0.3,
        top_k: int = 5000,
    ):
        self._path = find_model(model)
        self._options = (score_threshold, nms_threshold, top_k)
        self._local = threading.local()
        self._network()  # a file OpenCV cannot load is refused now, not at the first photo

    def __getstate__(self):
        """Picklable (worker processes get copies of detectors that hold one, e.g. MTCNN's proposals on
        PyTorch): the OpenCV networks stay behind and each process loads its own."""
        return {k: v for k, v in self.__dict__.items() if k != "_local"}

    def __setstate__(self, state):
        self.__dict__.update(state, _local=threading.local())

    def _network(self, role: str = "photo"):
        """This thread's network for ``role`` ("photo", or "reduced" for the large-face look)."""
        nets = self._local.__dict__.setdefault("nets", {})
        net = nets.get(role)
        if net is None:
            try:
                net = cv2.FaceDetectorYN.create(str(self._path), "", (320, 320), *self._options)
            except cv2.error as exc:
                raise FaceNetError(
                    f"{self._path}: OpenCV cannot load this YuNet model ({exc.err}); re-download it from OpenCV Zoo"
                ) from None
            nets[role] = net
        return net

    def detect(self, image: np.ndarray) -> list[Detection]:
        image = check_image(image)
        found = self._detect(image)
        h, w = image.shape[:2]
        if min(h, w) > LARGE_FACE_ABOVE:
            scale = LARGE_FACE_SIDE / min(h, w)
            small = cv2.resize(
                image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA
            )
            sx, sy = w / small.shape[1], h / small.shape[0]
            large = [
                Detection((d.box[0] * sx, d.box[1] * sy, d.box[2] * sx, d.box[3] * sy), d.score, d.landmarks * (sx, sy))
                for d in self._detect(small, "reduced")
            ]
            kept: list[Detection] = []  # one detection per face, the better-scoring size's
            for d in sort_by_score(found + large):
                if all(_iou(d.box, k.box) <= SAME_FACE_IOU for k in kept):
                    kept.append(d)
            return kept
        return sort_by_score(found)

    def _detect(self, image: np.ndarray, role: str = "photo") -> list[Detection]:
        h, w = image.shape[:2]
        if h < MIN_SIDE or w < MIN_SIDE:  # pad bottom/right: the coordinates stay those of the image
            image = np.pad(image, ((0, max(0, MIN_SIDE - h)), (0, max(0, MIN_SIDE - w)), (0, 0)))
            h, w = image.shape[:2]
        net = self._network(role)
        net.setInputSize((w, h))
        _, faces = net.detect(np.ascontiguousarray(image[:, :, ::-1]))  # YuNet wants BGR
        if faces is None:
            return []
        # OpenCV now and then returns a garbage row (infinite or NaN coordinates, score 1.0) for a tiny
        # input, again seen only in a full test run: no real face has coordinates outside the numbers.
        faces = faces[np.isfinite(faces).all(axis=1) & (np.abs(faces[:, :14]) < 4 * max(h, w)).all(axis=1)]
        # Row: x, y, w, h, then right eye, left eye, nose, right mouth, left mouth (subject's view:
        # the subject's right eye is image-left, so this is already our image-left-first order), score.
        return [Detection((f[0], f[1], f[0] + f[2], f[1] + f[3]), f[14], f[4:14].reshape(5, 2)) for f in faces]


def _iou(a: tuple, b: tuple) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
