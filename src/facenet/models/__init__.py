"""Backbone registry: ``create_model(name, embedding_size=...)`` builds any architecture by name."""

from __future__ import annotations

from collections.abc import Callable

from facenet.errors import ModelFileError
from facenet.models.base import EmbeddingModel, l2_normalize

_REGISTRY: dict[str, Callable[..., EmbeddingModel]] = {}


def register(name: str):
    """Class decorator adding a backbone to the registry under ``name``."""

    def add(cls):
        cls.arch = name
        _REGISTRY[name] = cls
        return cls

    return add


def list_models() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def create_model(name: str, embedding_size: int = 128, **kwargs) -> EmbeddingModel:
    """A freshly initialised model; ``kwargs`` go to the architecture (e.g. ``num_classes``, ``dropout``)."""
    _load_builtin()
    if name not in _REGISTRY:
        raise ModelFileError(f"unknown architecture {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](embedding_size=embedding_size, **kwargs)


def _load_builtin() -> None:
    # Imported lazily so that `import facenet` stays cheap; each module registers itself.
    from facenet.models import dlib_resnet, inception_resnet_v1, mobilefacenet, nns, reid_mobilenet  # noqa: F401


__all__ = ["EmbeddingModel", "create_model", "list_models", "register", "l2_normalize"]
