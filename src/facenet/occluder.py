"""Is a face occluded, and where? Two answers:

- ``lower_face_covered`` (what facenet compares by, issue 24): is the face masked? A face whose lower half is
  covered already barely moves when a mask is drawn on it again, a clean face moves far, so the mean distance
  between a crop's embedding and those of the crop with ``facenet.occlusion``'s training masks drawn on it
  (``mask_sensitivity``) tells them apart with nothing trained; the cut is calibrated per model on LFW-free
  faces (``ModelInfo.masked``, ``benchmarks/calibrate_masked.py``). A masked face is then verified and
  identified with the model's masked thresholds (``pair_threshold``, ``evaluate.calibrate.face_promises``),
  and every answer says "compared as masked".
- ``occlusion``: ``none``, ``lower`` (mask, N95, cloth mask, scarf, hand over the mouth) or ``eyes``
  (sunglasses), from the face's embedding, by a tiny softmax head over it (a few KB, read from beside the
  models' weights) trained by ``scripts/train_occluder.py`` on ``facenet.occlusion``'s *training* looks drawn
  on LFW-free faces and measured by ``benchmarks/occluder_detection.py`` on the *evaluation* looks over LFW
  and on real masked photos (RWMFD part 1). A cap's shadow is ``none``: it darkens, it does not cover. No
  head ships (it calls 27% of clean LFW faces "lower"); a head only means something for the embeddings it
  was trained on: each weights file records the id of its model (``FaceEmbedder.name``), and any other
  model gets ``NoOccluderDetector``, never a guess.

>>> import facenet
>>> model = facenet.load_model()
>>> crop = model.find_faces("photo.jpg").faces[0].image
>>> lower_face_covered(model, [crop])   # array([ True])
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from facenet.errors import FaceNetError

CLASSES = ("none", "lower", "eyes")
# facenet.occlusion's kinds by the class they make (cap_shadow: "none", a shadow covers nothing)
CLASS_OF_KIND = {
    "mask": "lower",
    "cloth_mask": "lower",
    "n95": "lower",
    "scarf": "lower",
    "hand": "lower",
    "sunglasses": "eyes",
    "cap_shadow": "none",
}
# the training looks drawn on a clean face to compare it with a masked one (``masked_looks``)
AS_MASKED_KINDS = ("mask", "cloth_mask", "n95")
WEIGHTS_DIR = Path(__file__).parent / "models" / "weights"
PATTERN = "occluder-*.safetensors"


class NoOccluderDetector(FaceNetError):
    """No occluder detector was trained for this model's embeddings."""


class OccluderDetector:
    """A softmax head over unit embeddings: ``probabilities(E)`` is (n, 3) in ``CLASSES`` order.

    ``layers`` is a list of (weight, bias) pairs, weight of shape (out, in); every layer but the last
    is followed by a ReLU. ``model_id`` is the embedding model it belongs to."""

    def __init__(self, layers: list[tuple[np.ndarray, np.ndarray]], model_id: str, about: dict | None = None):
        self.layers = [(np.asarray(w, np.float32), np.asarray(b, np.float32)) for w, b in layers]
        self.model_id = model_id
        self.about = dict(about or {})

    @property
    def embedding_size(self) -> int:
        return int(self.layers[0][0].shape[1])

    def probabilities(self, embeddings: np.ndarray) -> np.ndarray:
        x = np.asarray(embeddings, np.float32).reshape(-1, self.embedding_size)
        for i, (w, b) in enumerate(self.layers):
            x = x @ w.T + b
            if i < len(self.layers) - 1:
                x = np.maximum(x, 0)
        x = x - x.max(axis=1, keepdims=True)
        p = np.exp(x)
        return p / p.sum(axis=1, keepdims=True)

    def classify(self, embeddings: np.ndarray) -> list[tuple[str, float]]:
        """The likeliest class of each embedding and its probability."""
        p = self.probabilities(embeddings)
        best = p.argmax(axis=1)
        return [(CLASSES[k], float(p[i, k])) for i, k in enumerate(best)]

    def save(self, path: str | Path, half: bool = False) -> None:
        """Write the head as safetensors, in float16 with ``half`` (half the size; answers unchanged)."""
        from safetensors.numpy import save_file

        dtype = np.float16 if half else np.float32
        tensors = {}
        for i, (w, b) in enumerate(self.layers):
            tensors[f"layer{i}.weight"] = np.ascontiguousarray(w, dtype=dtype)  # safetensors writes raw buffers
            tensors[f"layer{i}.bias"] = np.ascontiguousarray(b, dtype=dtype)
        meta = {"model_id": self.model_id, "classes": ",".join(CLASSES), **{k: str(v) for k, v in self.about.items()}}
        save_file(tensors, str(path), metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> OccluderDetector:
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as f:
            meta = dict(f.metadata() or {})
            if meta.get("classes") != ",".join(CLASSES):
                raise FaceNetError(f"{path}: not an occluder detector of classes {CLASSES}")
            n = sum(1 for k in f.keys() if k.endswith(".weight"))
            layers = [(f.get_tensor(f"layer{i}.weight"), f.get_tensor(f"layer{i}.bias")) for i in range(n)]
        model_id = meta.pop("model_id", "")
        meta.pop("classes", None)
        return cls(layers, model_id, meta)


def shipped() -> dict[str, Path]:
    """The occluder detectors that come with facenet, by the id of the model they belong to."""
    from safetensors import safe_open

    found = {}
    for path in sorted(WEIGHTS_DIR.glob(PATTERN)):
        with safe_open(str(path), framework="numpy") as f:
            found[(f.metadata() or {}).get("model_id", "")] = path
    return found


@lru_cache(maxsize=4)
def detector_for(model_id: str) -> OccluderDetector:
    """The shipped occluder detector for the model with this id; ``NoOccluderDetector`` when there is none."""
    files = shipped()
    if model_id not in files:
        known = ", ".join(sorted(files)) or "none"
        raise NoOccluderDetector(
            f"no occluder detector for model {model_id}: one is trained for the embeddings of a model only "
            f"(shipped for: {known}); train one with scripts/train_occluder.py"
        )
    return OccluderDetector.load(files[model_id])


def occlusion(embedder, faces: Sequence[np.ndarray] | np.ndarray) -> list[tuple[str, float]]:
    """What covers each face: ``("none" | "lower" | "eyes", probability)`` per face.

    ``faces``: model-sized crops (H,W,3 uint8, e.g. ``find_faces(photo).faces[i].image``) or the
    embeddings the model made of them (an (n, d) float array)."""
    head = detector_for(embedder.name)
    if isinstance(faces, np.ndarray) and faces.ndim == 2 and faces.shape[1] == embedder.embedding_size:
        rows = faces
    elif isinstance(faces, np.ndarray) and faces.ndim == 3:
        rows = embedder.embed_crops([faces])
    else:
        rows = embedder.embed_crops(list(faces)) if len(faces) else np.zeros((0, embedder.embedding_size))
    return head.classify(rows)


def occluded_crops(finder, pixels: np.ndarray, kinds: Sequence[str | None], seed: int, variant: str) -> list:
    """Training or evaluation looks of one photo: for each of ``kinds``, that occluder (None: clean)
    drawn on the chosen face of ``pixels`` (placed from the landmarks ``finder`` finds on the clean
    photo), then the face cut by ``finder`` from the occluded photo, as it would be from a real one.
    None for a look where finding fails (all None where the clean photo shows no face)."""
    from facenet.occlusion import occlude

    try:
        found = finder.find(pixels)
    except FaceNetError:
        return [None] * len(kinds)
    crops = []
    for kind in kinds:
        if kind is None:
            crops.append(found.faces[0].image)
            continue
        drawn = occlude(pixels, found.faces[0].detection.landmarks, kind, seed, variant)
        try:
            crops.append(finder.find(drawn).faces[0].image)
        except FaceNetError:
            crops.append(None)
    return crops


def to_mask(labels: Sequence[str]) -> int | None:
    """Which of two faces (by their occluder classes) would be compared as masked: the uncovered one when
    the other's lower half is covered; None when neither or both are (alike already), so a pair the
    detector calls clean is never compared as masked."""
    lower = [label == "lower" for label in labels]
    return lower.index(False) if lower.count(True) == 1 else None


def masked_looks(embedder, face, photo_size: tuple[int, int], kinds: Sequence[str] = AS_MASKED_KINDS) -> list:
    """A clean face "as masked" (issue 24, item 2): its crop with each of ``kinds`` drawn on it, in
    ``facenet.occlusion``'s *training* looks (never the evaluation ones), placed from its landmarks.
    ``face``: an ``AlignedFace`` found in a photo of ``photo_size`` (width, height).

    Why: a masked probe compared with a clean photo compares a covered lower face with an uncovered one;
    covering the clean side too would compare like with like. Measured (RESULTS.md, "Mask-aware
    matching"): for the default model it does not help, so nothing in facenet compares this way yet."""
    from facenet.align.crop import landmarks_in_crop
    from facenet.occlusion import occlude

    points = landmarks_in_crop(face.detection, embedder.info.input_size, embedder.recipe, photo_size)
    return [occlude(face.image, points, kind, seed=0, variant="train") for kind in kinds]


def mask_sensitivity(embedder, crops: Sequence[np.ndarray], embeddings: np.ndarray | None = None) -> np.ndarray:
    """How far a mask moves each face: the mean squared L2 between a model-sized crop's embedding and those of
    the same crop with each of ``AS_MASKED_KINDS`` drawn on it (*training* looks, placed where the model's recipe
    puts the landmarks). ``embeddings``: the crops' own, where they are already made.

    Why: a face whose lower half is covered already barely moves when it is covered again, a clean face moves
    far (LFW, the default: median 0.72 clean, 0.13-0.25 under four masks the project never drew). Nothing is
    trained, so it holds for any model, and it reads the face in front of it, not what a head learnt from its
    training photos (the head above calls 27% of clean LFW faces "lower"; RESULTS.md, "Occluder detector")."""
    from facenet.align.crop import template_points
    from facenet.distances import squared_l2
    from facenet.occlusion import occlude

    crops = list(crops)
    if not crops:
        return np.zeros(0)
    recipe = embedder.recipe
    points = template_points(embedder.info.input_size, recipe.margin, recipe.template)
    own = embedder.embed_crops(crops) if embeddings is None else np.asarray(embeddings)
    looks = [occlude(crop, points, kind, seed=0, variant="train") for crop in crops for kind in AS_MASKED_KINDS]
    drawn = embedder.embed_crops(looks).reshape(len(crops), len(AS_MASKED_KINDS), -1)
    return squared_l2(drawn, own[:, None, :]).mean(1)


def lower_face_covered(embedder, crops: Sequence[np.ndarray], embeddings: np.ndarray | None = None) -> np.ndarray:
    """Per crop, is its lower face covered (a mask of any kind)? ``mask_sensitivity`` under the model's
    ``masked["covered_below"]``; all False for a model without a masked calibration (it compares every face
    alike), at no cost."""
    below = masked_entry(embedder).get("covered_below")
    if below is None:
        return np.zeros(len(crops), bool)
    return mask_sensitivity(embedder, crops, embeddings) < below


def pair_threshold(embedder, covered: Sequence[bool] | np.ndarray) -> tuple[float, bool]:
    """(threshold, compared as masked) for verifying two faces whose lower halves are ``covered`` or not: the
    model's masked threshold (``ModelInfo.masked["threshold"]``, at the false-accept rate of its plain one)
    where exactly one is, its plain threshold otherwise (both masked: alike already; the masked table was
    calibrated on masked against clean)."""
    masked = masked_entry(embedder).get("threshold")
    if masked is not None and sum(map(bool, covered)) == 1:
        return float(masked), True
    return float(embedder.threshold), False


def masked_entry(model) -> dict:
    """``ModelInfo.masked`` of an embedder or of a ``ModelInfo`` itself: empty for a model (or a stand-in)
    without one, which compares every face alike."""
    return getattr(getattr(model, "info", model), "masked", None) or {}
