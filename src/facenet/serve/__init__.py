"""HTTP service and web page over the embedder and the gallery: ``create_app`` builds it, ``facenet serve`` runs it."""

from facenet.serve.app import Limits, create_app

__all__ = ["Limits", "create_app"]
