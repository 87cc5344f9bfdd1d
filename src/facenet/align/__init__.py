"""Face detection and alignment: detector backends -> boxes + 5 landmarks -> aligned crops.

    from facenet.align import FaceFinder, get_detector, Recipe
    faces = FaceFinder(get_detector("mtcnn"), Recipe(margin=0.3), input_size=160).find("photo.jpg").faces

``FaceFinder`` (``facenet.align.finder``) is the one path from a photo to crops that every command uses.
"""

from facenet.align.base import Detection, Detector, default_detector_name, get_detector, list_detectors
from facenet.align.crop import AlignedFace, Recipe, align_face, crop_face, cut_face, select_faces
from facenet.align.finder import FaceFinder, FoundFaces, extract_faces

__all__ = [
    "AlignedFace",
    "Detection",
    "FaceFinder",
    "FoundFaces",
    "Recipe",
    "Detector",
    "align_face",
    "crop_face",
    "cut_face",
    "default_detector_name",
    "extract_faces",
    "get_detector",
    "list_detectors",
    "select_faces",
]
