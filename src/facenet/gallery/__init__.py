"""Persistent gallery (SQLite) with vector search (FAISS): enrol, identify (open set), remove."""

from facenet.gallery.index import FaceIndex
from facenet.gallery.store import Gallery, Match, Person, Record

__all__ = ["FaceIndex", "Gallery", "Match", "Person", "Record"]
