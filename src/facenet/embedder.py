"""Photos in, unit embeddings out: decoding, face extraction, standardisation and the model, batched.

``FaceEmbedder`` is the project's implementation of the *embedder* interface
(``embedding_size``, ``name``, ``threshold``, ``embed(images)``) that
verification, evaluation, the gallery and the service are written against.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from facenet.data.images import ImageLike, fit_to_input, load_image, load_images, standardise, to_batch
from facenet.errors import ModelFileError
from facenet.models import EmbeddingModel
from facenet.models.modelfile import ModelInfo, load_model_file

MODEL_ENV = "FACENET_MODEL"


def default_model_path() -> Path:
    """Where ``facenet demo`` leaves its model and where commands look when ``--model`` is omitted."""
    if os.environ.get(MODEL_ENV):
        return Path(os.environ[MODEL_ENV])
    data_home = Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share"))
    return data_home / "facenet" / "models" / "default.safetensors"


class FaceEmbedder:
    """A loaded model plus the preprocessing its weights expect.

    ``backend`` runs the network: ``"torch"``, ``"onnx"`` (ONNX Runtime), ``"auto"`` (ONNX Runtime
    on CPU, else PyTorch) or a ready backend object from ``facenet.backends`` (then ``model`` may be
    ``None``, as for an exported ``.onnx`` file).
    """

    def __init__(self, model: EmbeddingModel | None, info: ModelInfo, device: str | torch.device = "cpu",
                 detector=None, margin: int = 32, backend="torch"):
        from facenet.backends import make_backend

        self.model = model.to(device).eval() if model is not None else None
        self.info = info
        self.device = torch.device(device)
        self.detector = detector
        self.margin = margin
        self.backend = make_backend(backend, model, info, device) if isinstance(backend, str) else backend

    @property
    def embedding_size(self) -> int:
        return self.info.embedding_size

    @property
    def threshold(self) -> float:
        return self.info.threshold

    @property
    def name(self) -> str:
        return f"{self.info.arch}-{self.info.embedding_size}d-{self.info.model_id or 'untracked'}"

    def face_crop(self, image: ImageLike) -> np.ndarray:
        """The model-sized face crop of one image (the largest face when a detector is set)."""
        return self.find_faces(image)[0][0]

    def find_faces(self, image: ImageLike, which: str = "largest", source: str | None = None
                   ) -> tuple[list[np.ndarray], int]:
        """Model-sized crops of the chosen face(s) — ``"largest"`` or ``"all"`` — and how many faces were seen.

        Without a detector the image is taken as a face crop (one face). No face raises ``NoFaceError``.
        """
        source = source or _describe(image)
        pixels = load_image(image)
        if self.detector is None:
            return [fit_to_input(pixels, self.info.input_size)], 1
        from facenet.align import extract_faces

        faces = extract_faces(pixels, self.detector, size=self.info.input_size, margin=self.margin,
                              which="all", source=source)
        chosen = faces if which == "all" else [max(faces, key=lambda face: face.detection.area)]
        return [face.image for face in chosen], len(faces)

    def embed_crops(self, crops: Sequence[np.ndarray], batch_size: int = 32) -> np.ndarray:
        """Embed ready model-sized crops (H,W,3 uint8); rows are unit float32 vectors."""
        out = np.empty((len(crops), self.embedding_size), dtype=np.float32)
        for start in range(0, len(crops), batch_size):
            batch = to_batch(list(crops[start:start + batch_size]))
            out[start:start + len(batch)] = self.backend(standardise(batch, self.info.standardisation))
        return out

    def embed(self, images: Sequence[ImageLike], batch_size: int = 32) -> np.ndarray:
        """Embed photos (paths, bytes, PIL images or arrays): one unit row per image.

        Images are decoded by a thread pool (Pillow releases the GIL), then cropped in order.
        """
        pixels = load_images(images)
        crops = [self.find_faces(p, source=_describe(image))[0][0] for p, image in zip(pixels, images)]
        return self.embed_crops(crops, batch_size=batch_size)


def load_embedder(model_path: str | os.PathLike | None = None, device: str = "cpu",
                  detector=None, margin: int = 32, backend: str = "torch") -> FaceEmbedder:
    """Load a model file (default: the one ``facenet demo`` trained) as an embedder.

    A ``.onnx`` file (from ``facenet export``) always runs on ONNX Runtime. With ``backend="auto"``
    a safetensors model is exported once to ONNX beside the model file and run by ONNX Runtime.
    """
    from facenet.backends import make_backend

    path = Path(model_path) if model_path else default_model_path()
    if model_path is None and not path.is_file():
        raise ModelFileError(f"no model given and no default model at {path}; run `facenet demo` to train one, "
                             "pass --model FILE, or convert published weights with `facenet convert`")
    if path.suffix.lower() == ".onnx":
        from facenet.export import load_onnx

        runner, info = load_onnx(path)
        return FaceEmbedder(None, info, device="cpu", detector=detector, margin=margin, backend=runner)
    model, info = load_model_file(path, device=device)
    runner = make_backend(backend, model, info, device, model_path=path)
    return FaceEmbedder(model, info, device=device, detector=detector, margin=margin, backend=runner)


def squared_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared L2 distance between matching rows (or a row and many), the project's one distance."""
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    return np.sum((a - b) ** 2, axis=-1)


def _describe(image: ImageLike) -> str:
    return str(image) if isinstance(image, (str, Path)) else f"<{type(image).__name__}>"
