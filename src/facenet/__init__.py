"""facenet: face recognition with FaceNet embeddings (Schroff, Kalenichenko, Philbin, 2015).

>>> import facenet
>>> model = facenet.load_model("model.safetensors", detector="mtcnn")
>>> result = facenet.verify("a.jpg", "b.jpg", model=model)
>>> result.same, result.distance

The API is imported on first use, so ``import facenet`` (and the CLI's ``--help``) stays fast.
"""

from facenet.errors import (
    BadImageError,
    DataError,
    FaceNetError,
    GalleryError,
    ModelFileError,
    NoFaceError,
    TrainingError,
    VideoError,
)

_API = ("load_model", "embed", "distance", "verify", "identify", "enroll", "Verification", "Identified")
_VIDEO = ("video",)

__all__ = [
    *_API,
    *_VIDEO,
    "FaceNetError",
    "BadImageError",
    "NoFaceError",
    "ModelFileError",
    "DataError",
    "GalleryError",
    "TrainingError",
    "VideoError",
]


def __getattr__(name: str):
    if name in _API:
        from facenet import api

        return getattr(api, name)
    if name in _VIDEO:
        from facenet import video_analysis

        return getattr(video_analysis, name)
    raise AttributeError(f"module 'facenet' has no attribute {name!r}")
