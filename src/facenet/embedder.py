"""Photos in, unit embeddings out: decoding, face extraction, standardisation and the model, batched.

``FaceEmbedder`` is the project's implementation of the *embedder* interface
(``embedding_size``, ``name``, ``threshold``, ``embed(images)``) that
verification, evaluation, the gallery and the service are written against.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from facenet.align.finder import MIN_FACE, FaceFinder, FoundFaces, describe
from facenet.data.images import ImageLike, open_photo, standardise, to_batch
from facenet.errors import FaceNetError, ModelFileError
from facenet.models import EmbeddingModel
from facenet.models.modelfile import ModelInfo, load_model_file
from facenet.paths import MODEL_ENV, default_model_path, models_dir


def trained_on(info: ModelInfo) -> str:
    """One line on where a model's weights come from, from its provenance (what a user must know to
    trust its answers: a model trained on 40 synthetic people is not a face recogniser)."""
    p = info.provenance
    if p.get("trained_by") == "facenet train":
        return (
            f"facenet train on {p.get('data', '?')} ({p.get('identities', '?')} identities, "
            f"{p.get('images', '?')} images, {p.get('steps', '?')} steps, {p.get('loss', '?')} loss)"
        )
    if p.get("trained_by"):  # data first: "trained on ~3M faces, by Davis King", not "trained on Davis King"
        by = f"{p['data']}, by {p['trained_by']}" if p.get("data") else p["trained_by"]
        return f"{by}; converted from {p['source']}" if p.get("source") else by
    if p.get("source"):
        return f"converted from {p['source']}"
    return "unknown (no provenance recorded)"


def ensure_default_model() -> Path:
    """The default model file, installed first if it is missing.

    The default is the shipped model ``facenet.models.pretrained.DEFAULT`` as a project model
    file, written from the weights inside the package, offline, in well under a second, the first
    time it is needed (``scripts/install.sh`` does it at install time), and brought up to date when an
    earlier facenet wrote it (``refresh_shipped``). ``$FACENET_MODEL`` names another file, which is
    never created or changed.
    """
    from facenet.models.pretrained import install_default_model, refresh_shipped

    path = default_model_path()
    if os.environ.get(MODEL_ENV):
        if not path.is_file():
            raise ModelFileError(
                f"${MODEL_ENV} names {path}, which does not exist; unset it to use the "
                "installed default model, or point it at a model file"
            )
        return path
    return refresh_shipped(path) if path.is_file() else install_default_model(path)


def model_file(spec: str | os.PathLike | None) -> Path:
    """The model file ``--model`` names: a path; the name of a shipped model (``reid``, ``dlib``: written
    into the models folder on first use, unless a file of that name exists here); None: the default."""
    if not spec:
        return ensure_default_model()
    from facenet.models.pretrained import PRETRAINED, install_pretrained

    path = Path(spec)
    if isinstance(spec, str) and spec in PRETRAINED and not path.exists():
        return install_pretrained(spec, models_dir() / PRETRAINED[spec].file_name, replace=True)
    return path


class FaceEmbedder:
    """A loaded model plus the preprocessing its weights expect.

    Whole photos go through ``detector`` and the model's own ``Recipe`` (stored in the model file:
    crop mode, relative margin, template, which face), so every caller makes the crops the model
    was trained or converted with. ``detector=None`` takes each image as a face crop.
    ``backend`` runs the network: ``"torch"``, ``"onnx"`` (ONNX Runtime), ``"auto"`` (ONNX Runtime
    on CPU, else PyTorch) or a ready backend object from ``facenet.backends`` (then ``model`` may be
    ``None``, as for an exported ``.onnx`` file). ``fallback_detector`` (e.g. the "center" detector)
    is used for photos where ``detector`` finds no face, and counted in ``fallbacks``; without one,
    such a photo raises ``NoFaceError``. ``min_face``: the smallest face to find, as a fraction of a
    photo's shorter side (``facenet.align.finder``; ``None`` detects at full resolution).
    """

    def __init__(
        self,
        model: EmbeddingModel | None,
        info: ModelInfo,
        device: str | torch.device = "cpu",
        detector=None,
        backend="torch",
        which: str | None = None,
        fallback_detector=None,
        min_face: float | None = MIN_FACE,
    ):
        from facenet.align.crop import Recipe
        from facenet.export import make_backend

        self.model = model.to(device).eval() if model is not None else None
        self.info = info
        self.recipe = Recipe.from_dict(info.recipe).replace(which=which)
        self.device = torch.device(device)
        self.detector = detector
        self.fallback_detector = fallback_detector
        self.fallbacks = 0
        self.min_face = min_face
        if isinstance(backend, str):
            if model is None:
                raise FaceNetError(f"backend {backend!r} needs the network; without one, pass a ready backend object")
            backend = make_backend(backend, model, info, device)
        self.backend = backend

    @property
    def embedding_size(self) -> int:
        return self.info.embedding_size

    @property
    def threshold(self) -> float:
        return self.info.threshold

    @property
    def name(self) -> str:
        """The model's id (``ModelInfo.id``), which galleries record: embeddings are comparable exactly when
        architecture, size and weights match."""
        return self.info.id

    def find_faces(
        self, image: ImageLike, all_faces: bool = False, source: str | None = None, which: str | None = None
    ) -> FoundFaces:
        """The model-sized crop(s) of the chosen face (or of every face) and every detection seen,
        through the one path (``facenet.align.finder``). ``which`` overrides the embedder's choice.

        Without a detector the image is taken as a face crop: its central square is the one face.
        No face raises ``NoFaceError``.
        """
        found = self.finder().find(image, "all" if all_faces else which, source or describe(image))
        self.fallbacks += found.fallback
        return found

    def finder(self) -> FaceFinder:
        """The face finder for this model's recipe with the embedder's current detectors."""
        return FaceFinder(self.detector, self.recipe, self.info.input_size, self.fallback_detector, self.min_face)

    def embed_crops(self, crops: Sequence[np.ndarray], batch_size: int = 32) -> np.ndarray:
        """Embed ready model-sized crops (H,W,3 uint8); rows are unit float32 vectors."""
        out = np.empty((len(crops), self.embedding_size), dtype=np.float32)
        for start in range(0, len(crops), batch_size):
            batch = to_batch(list(crops[start : start + batch_size]))
            out[start : start + len(batch)] = self.backend(standardise(batch, self.info.standardisation))
        return out

    def occlusion(self, faces: Sequence[np.ndarray] | np.ndarray) -> list[tuple[str, float]]:
        """What covers each face crop (or embedding of one): ``("none" | "lower" | "eyes", probability)``;
        ``facenet.occluder``. A model without a trained occluder detector raises ``NoOccluderDetector``."""
        from facenet.occluder import occlusion

        return occlusion(self, faces)

    def embed(self, images: Sequence[ImageLike], batch_size: int = 32) -> np.ndarray:
        """Embed photos (paths, bytes, PIL images or arrays): one unit row per image.

        A thread pool decodes ``batch_size`` photos at a time (Pillow releases the GIL) and, when the
        detectors are thread-safe (MTCNN on ONNX Runtime), finds their faces too; memory holds one
        batch of photos however many are given.
        """
        out = np.empty((len(images), self.embedding_size), dtype=np.float32)
        finder = self.finder()
        in_threads = finder.thread_safe

        def prepare(image):
            photo = open_photo(image, shorter_side=finder.working_side)
            return finder.find(photo, source=describe(image)) if in_threads else photo

        with ThreadPoolExecutor(max_workers=4) as pool:
            for start in range(0, len(images), batch_size):
                chunk = images[start : start + batch_size]
                found = [
                    f if in_threads else finder.find(f, source=describe(image))
                    for f, image in zip(pool.map(prepare, chunk), chunk)
                ]
                self.fallbacks += sum(f.fallback for f in found)
                out[start : start + len(chunk)] = self.embed_crops([f.faces[0].image for f in found], batch_size)
        return out


def load_embedder(
    model_path: str | os.PathLike | None = None,
    device: str = "cpu",
    detector=None,
    detect: bool = True,
    backend: str = "auto",
    which: str | None = None,
    min_face: float | None = MIN_FACE,
) -> FaceEmbedder:
    """Load a model file (default: the installed default model) as an embedder for whole photos.

    Faces are found by ``detector`` (a name such as ``"mtcnn"``, or a detector object), by default
    the one the model's recipe names, and cut as the recipe says; ``detect=False`` takes every
    image as a ready face crop. A ``.onnx`` file (from ``facenet export``) always runs on ONNX
    Runtime; with ``backend="auto"`` a safetensors model is exported once (cached) and run by it.
    ``min_face``: the smallest face to find, as a fraction of a photo's shorter side.
    """
    from facenet.export import make_backend

    path = model_file(model_path)
    if path.suffix.lower() == ".onnx":
        from facenet.export import load_onnx

        runner, info = load_onnx(path)
        model, device = None, "cpu"
    else:
        model, info = load_model_file(path, device=device)
        runner = make_backend(backend, model, info, device)
    if detect and (detector is None or isinstance(detector, str)):
        from facenet.align import get_detector
        from facenet.align.crop import Recipe

        detector = get_detector(detector or Recipe.from_dict(info.recipe).detector, device=str(device))
    return FaceEmbedder(
        model,
        info,
        device=device,
        detector=detector if detect else None,
        backend=runner,
        which=which,
        min_face=min_face,
    )
