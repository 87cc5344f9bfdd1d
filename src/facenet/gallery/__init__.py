"""The gallery of known people: a store (SQLite file or PostgreSQL) under a FAISS index: enrol, identify, remove.

Names are imported on first use, so light modules of the package (``facenet.gallery.policy``, which the
CLI's ``--help`` reads) load without FAISS.
"""

from importlib import import_module

_WHERE = {
    "Gallery": "gallery",
    "FaceIndex": "index",
    "Match": "store",
    "Person": "store",
    "Record": "store",
    "is_url": "store",
}

__all__ = ["FaceIndex", "Gallery", "Match", "Person", "Record", "is_url"]


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(import_module(f"facenet.gallery.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'facenet.gallery' has no attribute {name!r}")
