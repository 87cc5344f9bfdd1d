"""Face detection and alignment: detector backends -> boxes + 5 landmarks -> aligned crops.

    from facenet.align import get_detector, extract_faces
    faces = extract_faces("photo.jpg", get_detector("mtcnn"), size=160, recipe=Recipe(margin=0.3))
"""

from facenet.align.base import Detection, Detector, default_detector_name, get_detector, list_detectors
from facenet.align.crop import AlignedFace, Recipe, align_face, crop_face, cut_faces, extract_faces, select_faces

__all__ = ["AlignedFace", "Detection", "Recipe", "Detector", "align_face", "crop_face", "cut_faces", "default_detector_name",
           "extract_faces", "get_detector", "list_detectors", "select_faces"]
