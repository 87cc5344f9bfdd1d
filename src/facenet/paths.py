"""Where facenet keeps things by default: one place for every default location (no heavy imports).

- models: ``$XDG_DATA_HOME/facenet/models`` (``~/.local/share/facenet/models``); the default model
  is ``default.safetensors`` there unless ``$FACENET_MODEL`` names another file;
- gallery: ``$FACENET_GALLERY`` (a file or a PostgreSQL URL), else ``$XDG_DATA_HOME/facenet/gallery.db``;
- caches (ONNX exports): ``$XDG_CACHE_HOME/facenet`` (``~/.cache/facenet``).
"""

from __future__ import annotations

import os
from pathlib import Path

MODEL_ENV = "FACENET_MODEL"
GALLERY_ENV = "FACENET_GALLERY"


def data_home() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "facenet"


def cache_home() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "facenet"


def models_dir() -> Path:
    """Where installed models live."""
    return data_home() / "models"


def default_model_path() -> Path:
    """The model commands use when ``--model`` is omitted: ``$FACENET_MODEL``, else the installed default."""
    if os.environ.get(MODEL_ENV):
        return Path(os.environ[MODEL_ENV])
    return models_dir() / "default.safetensors"


def default_gallery_path() -> Path:
    return data_home() / "gallery.db"


def gallery_location(given: str | os.PathLike | None = None) -> str:
    """``--gallery`` as given, else ``$FACENET_GALLERY``, else the default file (a path or a PostgreSQL URL)."""
    return os.fspath(given) if given else os.environ.get(GALLERY_ENV) or str(default_gallery_path())
