"""Bring published facenet-pytorch state dicts (Sandberg's VGGFace2 / CASIA-WebFace
Inception-ResNet-v1 weights, ported) into the project's model file format.

The ``.pt`` files are bare state dicts; they are read with ``weights_only=True`` so
a malicious file cannot run code, and loaded strictly so a wrong file fails loudly.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path

import torch

from facenet.errors import ModelFileError
from facenet.models import EmbeddingModel, create_model
from facenet.models.modelfile import STANDARDISATIONS, ModelInfo, model_info_for, save_model

ARCH = "inception_resnet_v1"


def load_published_weights(path: str | os.PathLike, embedding_size: int | None = None) -> EmbeddingModel:
    """An Inception-ResNet-v1 holding the file's weights, in eval mode.

    Embedding size and number of classes are read from the file. With a different
    ``embedding_size`` the head is re-initialised and only the backbone is kept
    (for fine-tuning to e.g. the paper's 128-D).
    """
    model = _load_published(Path(path))
    _resize_head(model, embedding_size)
    return model


def convert_published_weights(
    src: str | os.PathLike, dst: str | os.PathLike, embedding_size: int | None = None, standardisation: str = "fixed"
) -> ModelInfo:
    """Write ``src`` (a facenet-pytorch ``.pt``) as a facenet model file at ``dst``.

    The published weights expect ``fixed`` standardisation, (x - 127.5) / 128.
    """
    if standardisation not in STANDARDISATIONS:
        raise ModelFileError(f"unknown standardisation {standardisation!r}; use one of {', '.join(STANDARDISATIONS)}")
    src = Path(src)
    model = _load_published(src)
    reset = _resize_head(model, embedding_size)
    with open(src, "rb") as fh:
        source_sha = hashlib.file_digest(fh, "sha256").hexdigest()
    provenance = {"source": src.name, "source_sha256": source_sha, "head": "reinitialised" if reset else "published"}
    return save_model(model, dst, model_info_for(model, standardisation=standardisation, provenance=provenance))


def _load_published(path: Path) -> EmbeddingModel:
    state = _read_state_dict(path)
    if "last_linear.weight" not in state:
        raise ModelFileError(
            f"{path}: no 'last_linear.weight'; not an Inception-ResNet-v1 (facenet-pytorch) state dict"
        )
    logits = state.get("logits.weight")
    model = create_model(
        ARCH,
        embedding_size=state["last_linear.weight"].shape[0],
        num_classes=logits.shape[0] if logits is not None else None,
    )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:300]
        raise ModelFileError(f"{path}: weights do not match {ARCH}: {detail}") from None
    return model.eval()


def _resize_head(model: EmbeddingModel, embedding_size: int | None) -> bool:
    """Re-initialise the head if another size is asked for; True if it was."""
    if embedding_size is None or embedding_size == model.embedding_size:
        return False
    if embedding_size < 1:
        raise ModelFileError(f"embedding size must be positive, got {embedding_size}")
    model.reset_head(embedding_size)
    model.eval()
    return True


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ModelFileError(f"weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, UnicodeDecodeError) as exc:
        raise ModelFileError(
            f"{path}: not a readable PyTorch state dict ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200] if str(exc) else 'empty'}); "
            "expected a facenet-pytorch .pt file"
        ) from None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ModelFileError(f"{path}: holds a {type(state).__name__}, not a state dict of tensors")
    return state
