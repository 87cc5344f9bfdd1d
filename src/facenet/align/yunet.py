"""YuNet (OpenCV Zoo, MIT): a fast CNN detector with 5 landmarks, on ONNX Runtime.

Its ONNX file (230 kB) ships inside the package (``facenet/models/weights/``, with its licence and
notice), since PyPI carries no copy of it; ``model=`` or $FACENET_YUNET_MODEL selects another.

The network runs on ONNX Runtime, its outputs decoded as OpenCV's ``cv2.FaceDetectorYN`` decodes them (priors
on strides 8, 16 and 32, score sqrt(class x objectness), NMS on whole-pixel boxes): the same faces, boxes and
landmarks to 1e-3 px (``tests/test_yunet.py`` compares them), at half OpenCV's CPU time per photo (a 250 px LFW
photo 8 -> 4 ms, a 1000x750 working copy 112 -> 53-62 ms on one core; RESULTS.md, issue 28).
OpenCV Zoo says YuNet finds faces of about 10 to 300 px. Photos are detected at a working size
where the smallest face asked for is ``min_face_size`` px (``facenet.align.finder``); a face much
larger than 300 px there (a selfie, a portrait cut at the shoulders) is found with a low score and
loose landmarks, so such photos are also searched on a copy reduced to ``LARGE_FACE_SIDE``, and of
two detections of one face the better-scoring one is kept.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from facenet.align.base import CpuNet, Detection, box_iou, check_image, sort_by_score
from facenet.errors import FaceNetError

MODEL_NAME = "face_detection_yunet_2026may.onnx"
SHIPPED_MODEL = Path(__file__).resolve().parents[1] / "models" / "weights" / MODEL_NAME
STRIDES = (8, 16, 32)  # YuNet's feature maps: one prior per cell of each; inputs are padded to a multiple of 32
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
    """YuNet. ``score_threshold`` 0.6 keeps profile and blurred faces that 0.9 would drop. Threads may share
    one detector (ONNX Runtime sessions run concurrently)."""

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
        self.score_threshold, self.nms_threshold, self.top_k = score_threshold, nms_threshold, top_k
        self._session = self._load()  # a file ONNX Runtime cannot load is refused now, not at the first photo

    def __getstate__(self):
        """Picklable (worker processes get copies of detectors that hold one, e.g. MTCNN's proposals on
        PyTorch): the session stays behind and each process loads its own."""
        return {k: v for k, v in self.__dict__.items() if k != "_session"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._session = self._load()

    def _load(self):
        try:
            session = CpuNet(str(self._path))
        except Exception as exc:  # ORT raises its own untyped errors (InvalidProtobuf, Fail, ...)
            raise FaceNetError(
                f"{self._path}: not a usable YuNet model ({str(exc).splitlines()[0]}); re-download it from OpenCV Zoo"
            ) from None
        if {o.name for o in session.get_outputs()} != {
            f"{k}_{s}" for k in ("cls", "obj", "bbox", "kps") for s in STRIDES
        }:
            raise FaceNetError(
                f"{self._path}: not a YuNet model of OpenCV Zoo's 2023 layout (cls/obj/bbox/kps outputs)"
            )
        return session

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
                for d in self._detect(small)
            ]
            kept: list[Detection] = []  # one detection per face, the better-scoring size's
            for d in sort_by_score(found + large):
                if all(box_iou(d.box, k.box)[0] <= SAME_FACE_IOU for k in kept):
                    kept.append(d)
            return kept
        return sort_by_score(found)

    def _detect(self, image: np.ndarray) -> list[Detection]:
        """Faces in one image: the network on its BGR pixels padded (bottom, right) to a multiple of 32, every
        prior decoded, then those scoring at least ``score_threshold`` kept by NMS."""
        h, w = image.shape[:2]
        padded = cv2.copyMakeBorder(image, 0, -h % STRIDES[-1], 0, -w % STRIDES[-1], cv2.BORDER_CONSTANT, value=0)
        padded = cv2.dnn.blobFromImage(padded, swapRB=True)  # N,C,H,W float32: YuNet wants BGR, 0-255
        out = dict(zip((o.name for o in self._session.get_outputs()), self._session.run(None, {"input": padded})))
        rows = np.concatenate([_decode(out, stride, padded.shape[3] // stride) for stride in STRIDES])
        rows = rows[(rows[:, 14] >= self.score_threshold) & np.isfinite(rows).all(axis=1)]  # exp() may overflow
        # NMS as OpenCV's detector runs it: on the boxes truncated to whole pixels.
        keep = cv2.dnn.NMSBoxes(
            rows[:, :4].astype(np.int32).tolist(),
            rows[:, 14].tolist(),
            self.score_threshold,
            self.nms_threshold,
            top_k=self.top_k,
        )
        faces = rows[np.asarray(keep, int).reshape(-1)]
        # Row: x, y, w, h, then right eye, left eye, nose, right mouth, left mouth (subject's view:
        # the subject's right eye is image-left, so this is already our image-left-first order), score.
        return [Detection((f[0], f[1], f[0] + f[2], f[1] + f[3]), f[14], f[4:14].reshape(5, 2)) for f in faces]


def _decode(out: dict, stride: int, columns: int) -> np.ndarray:
    """Every prior of one stride as a row (x, y, w, h, 5 landmarks x/y, score), image pixels: each cell's box
    centre and landmarks are offsets from the cell in units of the stride, its size the exp of one."""
    score = np.sqrt(np.clip(out[f"cls_{stride}"][0, :, 0], 0, 1) * np.clip(out[f"obj_{stride}"][0, :, 0], 0, 1))
    box, marks = out[f"bbox_{stride}"][0], out[f"kps_{stride}"][0]
    cell = np.stack(np.divmod(np.arange(len(score)), columns)[::-1], axis=1).astype(np.float32)  # (column, row)
    size = np.exp(box[:, 2:4]) * stride
    corner = (cell + box[:, :2]) * stride - size / 2
    points = (marks.reshape(-1, 5, 2) + cell[:, None, :]) * stride
    return np.concatenate([corner, size, points.reshape(-1, 10), score[:, None]], axis=1)
