"""YuNet (OpenCV Zoo) through ``cv2.FaceDetectorYN``: fast CNN detector with 5 landmarks.

The ONNX model is not on PyPI. It is looked up in the ``model`` option, then
$FACENET_YUNET_MODEL, then ``../shared/data/weights/yunet/`` beside the repository; get it from
OpenCV Zoo (github.com/opencv/opencv_zoo, models/face_detection_yunet) and check its checksum
against the one published there before use.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from facenet.align.base import Detection, check_image, sort_by_score
from facenet.errors import FaceNetError

MODEL_NAME = "face_detection_yunet_2026may.onnx"
SHARED_MODEL = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "weights" / "yunet" / MODEL_NAME


def find_model(model: str | os.PathLike | None = None) -> Path:
    candidates = [Path(model)] if model else (
        [Path(os.environ["FACENET_YUNET_MODEL"])] if os.environ.get("FACENET_YUNET_MODEL") else [SHARED_MODEL])
    for path in candidates:
        if path.is_file():
            return path
    raise FaceNetError(f"YuNet model not found at {candidates[0]}; download face_detection_yunet_*.onnx from "
                       "OpenCV Zoo (github.com/opencv/opencv_zoo, models/face_detection_yunet), verify its "
                       "checksum, and pass its path (model=...) or set FACENET_YUNET_MODEL")


# YuNet's coarsest stride. A smaller input leaves its last feature maps empty, and OpenCV then now and
# then returned faces in a 1x1 or 8x8 grey image (seen in a full test run, never alone).
MIN_SIDE = 32


class YuNetDetector:
    """OpenCV YuNet. ``score_threshold`` 0.6 keeps profile and blurred faces that 0.9 would drop."""

    name = "yunet"

    def __init__(self, model: str | os.PathLike | None = None, score_threshold: float = 0.6,
                 nms_threshold: float = 0.3, top_k: int = 5000):
        path = find_model(model)
        try:
            self._net = cv2.FaceDetectorYN.create(str(path), "", (320, 320), score_threshold, nms_threshold, top_k)
        except cv2.error as exc:
            raise FaceNetError(f"{path}: OpenCV cannot load this YuNet model ({exc.err}); "
                               "re-download it from OpenCV Zoo") from None

    def detect(self, image: np.ndarray) -> list[Detection]:
        image = check_image(image)
        h, w = image.shape[:2]
        if h < MIN_SIDE or w < MIN_SIDE:  # pad bottom/right: the coordinates stay those of the image
            image = np.pad(image, ((0, max(0, MIN_SIDE - h)), (0, max(0, MIN_SIDE - w)), (0, 0)))
            h, w = image.shape[:2]
        self._net.setInputSize((w, h))
        _, faces = self._net.detect(np.ascontiguousarray(image[:, :, ::-1]))  # YuNet wants BGR
        if faces is None:
            return []
        # OpenCV now and then returns a garbage row (infinite or NaN coordinates, score 1.0) for a tiny
        # input, again seen only in a full test run: no real face has coordinates outside the numbers.
        faces = faces[np.isfinite(faces).all(axis=1) & (np.abs(faces[:, :14]) < 4 * max(h, w)).all(axis=1)]
        # Row: x, y, w, h, then right eye, left eye, nose, right mouth, left mouth (subject's view:
        # the subject's right eye is image-left, so this is already our image-left-first order), score.
        return sort_by_score([Detection((f[0], f[1], f[0] + f[2], f[1] + f[3]), f[14], f[4:14].reshape(5, 2))
                              for f in faces])
