"""The gallery of known people: a store (SQLite file or PostgreSQL) under a FAISS index: enrol, identify, remove."""

from facenet.gallery.gallery import Gallery
from facenet.gallery.index import FaceIndex
from facenet.gallery.store import Match, Person, Record, is_url

__all__ = ["FaceIndex", "Gallery", "Match", "Person", "Record", "is_url"]
