"""Detector interface shared by every backend, and the registry that builds them by name.

Landmark convention (all backends): five (x, y) points in *image* coordinates (pixels of the
image passed to ``detect``), in this order:

    0 left eye, 1 right eye, 2 nose tip, 3 left mouth corner, 4 right mouth corner

where "left" means image-left (the subject's right eye in an ordinary, unmirrored photo).
This is MTCNN's native order; backends that number points from the subject's view remap.
"""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from facenet.errors import FaceNetError


@dataclass(frozen=True)
class Detection:
    """One face: box corners (x1, y1, x2, y2), detector score, and (5, 2) landmarks (see module doc).

    Box corners are pixel *edges* (pixel column i covers [i, i+1), so a box holds x2 - x1 pixels across);
    landmarks are pixel *centres*, as OpenCV and dlib number them (pixel i's centre at i). Both then map
    between copies of a photo at different sizes exactly (``finder._moved``): the same face gets the same
    box on a reduced copy as at full size."""

    box: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray = field(repr=False)

    def __post_init__(self):
        object.__setattr__(self, "box", tuple(float(v) for v in self.box))
        object.__setattr__(self, "score", float(self.score))
        object.__setattr__(self, "landmarks", np.asarray(self.landmarks, dtype=np.float64).reshape(5, 2))

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)

    @property
    def center(self) -> tuple[float, float]:
        return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2


@runtime_checkable
class Detector(Protocol):
    """Anything with ``name`` and ``detect(image) -> list[Detection]`` (best score first)."""

    name: str

    def detect(self, image: np.ndarray) -> list[Detection]:
        """Find faces in an H,W,3 uint8 RGB image."""
        ...


# name -> "module:factory"; modules import lazily so a missing optional backend costs nothing.
_BACKENDS: dict[str, str] = {
    "mtcnn": "facenet.align.mtcnn:MTCNNDetector",
    "mtcnn-pnet": "facenet.align.mtcnn:mtcnn_pnet",
    "yunet": "facenet.align.yunet:YuNetDetector",
    "dlib": "facenet.align.dlib_hog:DlibDetector",
    "center": "facenet.align.center:CenterDetector",
}


def list_detectors() -> list[str]:
    return list(_BACKENDS)


def get_detector(name: str, device: str | None = None, **options) -> Detector:
    """Build the detector backend ``name`` ("mtcnn", "mtcnn-pnet", "yunet", "dlib", "center") with its options.

    ``device`` (e.g. "cuda") goes to backends that can run there (MTCNN is torch) and is ignored by
    those that cannot (OpenCV's YuNet, dlib's HOG, the centre crop run on the CPU), so that one
    ``--device`` moves the whole pipeline, detector included.
    """
    try:
        target = _BACKENDS[name]
    except KeyError:
        raise FaceNetError(f"unknown face detector {name!r}; choose one of {', '.join(_BACKENDS)}") from None
    module, attr = target.split(":")
    factory: Callable[..., Detector] = getattr(importlib.import_module(module), attr)
    if device is not None and "device" in inspect.signature(factory).parameters:
        options["device"] = device
    return factory(**options)


def default_detector_name() -> str:
    """The detector used when none is named: the first of mtcnn, yunet, dlib that can be built here.

    MTCNN is preferred (the detector the published FaceNet crops were made with; its weights come
    offline from the ``facenet-pytorch`` wheel). When nothing is available "mtcnn" is returned, so
    that building it raises the error that says what to install. The centre crop is never chosen
    silently: on ordinary photos it would crop background.
    """
    for name in ("mtcnn", "yunet", "dlib"):
        try:
            get_detector(name)
        except FaceNetError:
            continue
        return name
    return "mtcnn"


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of each box (x1, y1, x2, y2, ...) of ``a`` with the same row of ``b``: (N,);
    0 where both are empty."""
    a, b = np.atleast_2d(np.asarray(a, np.float64)), np.atleast_2d(np.asarray(b, np.float64))
    w = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    h = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    union = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - w * h
    return np.divide(w * h, union, out=np.zeros_like(union), where=union > 0)


def sort_by_score(detections: list[Detection]) -> list[Detection]:
    return sorted(detections, key=lambda d: d.score, reverse=True)


# Inputs of at least this many numbers run on every core: YuNet on any photo, O-Net on 3 or more faces, P-Net's
# pyramid. Below it (R-Net, O-Net on one face) a second thread costs 40-70% more CPU for 0-10% less time.
WIDE_INPUT = 20_000


class CpuNet:
    """A detector's network (MTCNN's nets, YuNet) on ONNX Runtime on the CPU, run as ``InferenceSession.run``.

    Small inputs run on one thread: the project runs detectors in parallel over photos (worker threads and
    processes), and on a 48x48 patch a thread pool hands off more than it saves. Large ones (``WIDE_INPUT``) run
    on every core, their threads sleeping rather than spinning when idle, so two photos detected at once cost
    what they cost on one thread each: on 2 cores, YuNet on a 1000x750 working copy took 62 -> 32 ms alone and 34
    -> 34 ms per photo with two at once (spinning threads: 42). No memory arena: a pyramid level's buffers are
    freed after each call instead of staying reserved (with arenas a process held 90-110 MB more after its second
    48 MP photo; P-Net runs ~7% slower)."""

    def __init__(self, model: str | bytes):
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        self.narrow = _cpu_session(model, 1)
        self.wide = _cpu_session(model, cores) if cores > 1 else self.narrow

    def get_outputs(self):
        return self.narrow.get_outputs()

    def run(self, output_names, feeds: dict) -> list:
        size = sum(np.asarray(x).size for x in feeds.values())
        return (self.wide if size >= WIDE_INPUT else self.narrow).run(output_names, feeds)


def _cpu_session(model: str | bytes, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.enable_cpu_mem_arena = False
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def check_image(image: np.ndarray) -> np.ndarray:
    """Detectors accept H,W,3 uint8 RGB only; say so instead of failing deep inside a backend."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        desc = f"{image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise FaceNetError(
            f"face detectors need an H,W,3 uint8 RGB array, got a {desc}; "
            "decode files with facenet.data.images.load_image first"
        )
    return image
