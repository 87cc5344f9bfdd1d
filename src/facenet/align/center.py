"""The "center" detector: no detection, one fixed centred face, for images already cropped around a face.

Defaults fit LFW's 250x250 photos: a centred square half the shorter side (MTCNN's median LFW box
is 92x124 px centred at (125, 126)), landmarks from the alignment template placed in it.
"""

from __future__ import annotations

import numpy as np

from facenet.align.base import Detection, check_image


class CenterDetector:
    """Always one detection: a centred square of ``fraction`` x the shorter side, score 1."""

    name = "center"
    thread_safe = True

    def __init__(self, fraction: float = 0.5):
        self.fraction = fraction

    def detect(self, image: np.ndarray) -> list[Detection]:
        from facenet.align.crop import TEMPLATE

        h, w = check_image(image).shape[:2]
        side = self.fraction * min(h, w)
        x1, y1 = (w - side) / 2, (h - side) / 2
        return [Detection((x1, y1, x1 + side, y1 + side), 1.0, TEMPLATE * side + [x1, y1])]
