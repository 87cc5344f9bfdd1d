"""Teachers for knowledge distillation (``facenet train --teacher``).

*Online*: a teacher that is a project network (a model file, e.g. ``dlib`` = the converted dlib
network) runs frozen in every step, on the same device, on the very views the student sees — or
on those views before their occluders were drawn, so the student learns to give an occluded face
the embedding of the unoccluded one. *Cached*: any teacher (a model file, an exported ONNX file,
or ``dlib-cpp``, dlib's own C++ pipeline) embeds each training photo once; the embeddings are kept
in an owner-only SQLite file under the cache folder, keyed by the teacher and the photo's bytes,
so an interrupted fill resumes and later runs reuse it.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from facenet.data.images import load_image, standardise
from facenet.errors import TrainingError
from facenet.models import l2_normalize
from facenet.paths import cache_home

DLIB_TEACHERS = ("dlib", "dlib-cpp")
CHUNK = 256  # photos embedded and committed to the cache at a time


def teacher_path(spec: str) -> Path | None:
    """The model file a teacher name stands for (``default``: the installed default model; ``dlib``: the
    converted dlib network, made on first use), or None for ``dlib-cpp``."""
    if spec == "dlib-cpp":
        return None
    if spec == "default":
        from facenet.embedder import ensure_default_model

        return ensure_default_model()
    if spec == "dlib":
        from facenet.embedder import model_file

        return model_file("dlib")
    path = Path(spec)
    if not path.is_file():
        raise TrainingError(f"teacher {spec!r} is neither default, dlib, dlib-cpp nor a model file that exists")
    return path


def resolve_mode(spec: str, mode: str, device: torch.device) -> str:
    """online or cached: ``auto`` is online for a project network on a GPU (each step's views are
    embedded at little cost there), cached otherwise; ONNX files and dlib-cpp can only be cached."""
    path = teacher_path(spec)
    online_possible = path is not None and path.suffix.lower() != ".onnx"
    if mode == "online" and not online_possible:
        raise TrainingError(
            f"teacher {spec!r} cannot run inside the training step (only a project model file "
            "can); use --teacher-mode cached"
        )
    if mode == "auto":
        return "online" if online_possible and device.type == "cuda" else "cached"
    return mode


class OnlineTeacher:
    """A frozen project network embedding a batch of views (N,3,S,S, 0..255) in the training step."""

    def __init__(self, path: Path, device: torch.device):
        from facenet.models.modelfile import load_model_file

        self.model, self.info = load_model_file(path, device=device)
        self.model.eval().requires_grad_(False)
        self.model.to(memory_format=torch.channels_last)
        self.name = self.info.model_id

    @torch.no_grad()
    def __call__(self, views: torch.Tensor) -> torch.Tensor:
        x = views.float()
        size = self.info.input_size
        if x.shape[-1] != size:
            x = torch.nn.functional.interpolate(
                x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
            )
        x = standardise(x, self.info.standardisation).contiguous(memory_format=torch.channels_last)
        return l2_normalize(self.model.prelogits(x).float())


def teacher_name(spec: str) -> str:
    """The cache key of a teacher: a model file's id, an ONNX file's content hash, or dlib's version."""
    path = teacher_path(spec)
    if path is None:
        from facenet.baselines.dlib_model import load_dlib

        return f"dlib-cpp-{load_dlib()[0].__version__}"
    if path.suffix.lower() == ".onnx":
        return "onnx-" + hashlib.sha256(path.read_bytes()).hexdigest()[:32]
    from facenet.models.modelfile import read_model_info

    return read_model_info(path).model_id


def _embedder(spec: str):
    """Something with ``embed(images) -> unit rows`` that takes the training photos as they are: ready
    face crops for project networks (cut by the data's recipe), whole photos for dlib's own pipeline."""
    path = teacher_path(spec)
    if path is None:
        from facenet.baselines.dlib_model import DlibEmbedder

        return DlibEmbedder()
    from facenet.embedder import load_embedder

    return load_embedder(path, detect=False)


def cached_targets(spec: str, paths: list, progress: bool = True) -> np.ndarray:
    """The teacher's unit embedding of every photo in ``paths`` (float32, one row each), from the cache,
    embedding (and adding) the ones it lacks."""
    keys = _content_keys(paths)
    cache = TeacherCache(cache_home() / "teachers" / f"{teacher_name(spec)}.sqlite")
    try:
        found = cache.get(keys)
        missing = [i for i, k in enumerate(keys) if k not in found]
        if missing:
            embedder = _embedder(spec)
            bar = _bar(progress, len(missing), f"teacher {spec}: embedding training photos once")
            with ThreadPoolExecutor(os.cpu_count() or 1) as pool:  # Pillow decodes without the GIL
                for start in range(0, len(missing), CHUNK):
                    part = missing[start : start + CHUNK]
                    images = list(pool.map(lambda i: load_image(paths[i]), part))
                    rows = embedder.embed(images)
                    cache.put({keys[i]: row for i, row in zip(part, rows)})  # committed: a killed fill resumes
                    found.update({keys[i]: row for i, row in zip(part, rows)})
                    if bar is not None:
                        bar.update(len(part))
            if bar is not None:
                bar.close()
        return np.stack([found[k] for k in keys]).astype(np.float32)
    finally:
        cache.close()


def _content_keys(paths: list) -> list[str]:
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda p: hashlib.sha256(Path(p).read_bytes()).hexdigest(), paths))


class TeacherCache:
    """{sha256 of a photo's bytes: the teacher's embedding}, one owner-only SQLite file per teacher."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.db = sqlite3.connect(path)
        os.chmod(path, 0o600)  # embeddings of faces are personal data
        self.db.execute("CREATE TABLE IF NOT EXISTS embedding (photo TEXT PRIMARY KEY, vector BLOB NOT NULL)")

    def get(self, keys: list[str]) -> dict[str, np.ndarray]:
        wanted, out = sorted(set(keys)), {}
        for start in range(0, len(wanted), 900):  # SQLite's limit on bound parameters
            part = wanted[start : start + 900]
            rows = self.db.execute(
                f"SELECT photo, vector FROM embedding WHERE photo IN ({','.join('?' * len(part))})", part
            )
            out.update({k: np.frombuffer(v, np.float32) for k, v in rows})
        return out

    def put(self, rows: dict[str, np.ndarray]) -> None:
        with self.db:
            self.db.executemany(
                "INSERT OR REPLACE INTO embedding VALUES (?, ?)",
                [(k, np.asarray(v, np.float32).tobytes()) for k, v in rows.items()],
            )

    def close(self) -> None:
        self.db.close()


def _bar(enabled: bool, total: int, what: str):
    if not enabled:
        return None
    from facenet.progress import progress_bar

    print(f"{what}: {total} photos (cached for later runs)", file=sys.stderr)
    return progress_bar(total, "teacher", unit="photo")
