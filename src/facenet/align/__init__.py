"""Face detection and alignment: detector backends -> boxes + 5 landmarks -> aligned crops."""

from facenet.align.base import Detection, Detector, default_detector_name, get_detector, list_detectors

__all__ = ["Detection", "Detector", "default_detector_name", "get_detector", "list_detectors"]
