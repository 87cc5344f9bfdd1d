"""The pretrained default model: dlib's CC0 face ResNet as a project model file.

dlib's network (``dlib_face_recognition_resnet_model_v1.dat``, 29 layers, 128-D, trained by
Davis King on about 3 million faces; released into the public domain, CC0) is read from the
``face_recognition_models`` wheel by ``facenet.models.dlib_format`` — no dlib at run time — into
``facenet.models.dlib_resnet``, and saved with its preprocessing recipe (MTCNN landmarks mapped
onto dlib's 150 px chip, dlib's input standardisation) and its threshold measured on LFW.
See docs/MODEL_CARD.md.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import warnings
from pathlib import Path

import numpy as np

from facenet.errors import FaceNetError, ModelFileError
from facenet.models.modelfile import ModelInfo, read_model_info, save_model

DLIB_RECIPE = {"detector": "mtcnn", "mode": "similarity", "template": "dlib", "margin": 0.0, "which": "largest"}
# Squared L2 between unit embeddings; the mean of the ten per-fold best thresholds of
# `facenet evaluate` on LFW View 2 with DLIB_RECIPE (RESULTS.md).
DLIB_THRESHOLD = 0.1837
# Per-pair FAR -> squared L2, over all 29.6M pairs of different people among the 7,701 LFW View 2
# images embedded with DLIB_RECIPE (`facenet evaluate --write-thresholds`, RESULTS.md).
DLIB_FAR_THRESHOLDS = {"1e-02": 0.1860, "1e-03": 0.1484, "1e-04": 0.1187, "1e-05": 0.0954}
INSTALL_HINT = 'pip install face_recognition_models "setuptools<81"'


def dlib_weights_path() -> Path:
    """dlib's face model file inside the installed ``face_recognition_models`` wheel."""
    try:
        with warnings.catch_warnings():  # the package imports the deprecated pkg_resources
            warnings.simplefilter("ignore")
            import face_recognition_models
    except ImportError:
        raise FaceNetError("the pretrained model is made from dlib's weights in the face_recognition_models "
                           f"package, which is not installed; install it with: {INSTALL_HINT}") from None
    return Path(face_recognition_models.face_recognition_model_location())


def convert_dlib(dst: str | os.PathLike, src: str | os.PathLike | None = None) -> ModelInfo:
    """Write dlib's face model (``src``, default: the wheel's) as a ``dlib_resnet`` model file at ``dst``."""
    from facenet.data.images import DLIB_MEAN_RGB
    from facenet.models import create_model
    from facenet.models.dlib_format import dlib_state_dict

    src = Path(src) if src else dlib_weights_path()
    state, mean_rgb = dlib_state_dict(src)
    if not np.allclose(mean_rgb, DLIB_MEAN_RGB, atol=1e-3):
        raise ModelFileError(f"{src}: input mean RGB {mean_rgb} differs from the 'dlib' standardisation "
                             f"{DLIB_MEAN_RGB}; this is not the published dlib face model")
    model = create_model("dlib_resnet")
    model.load_state_dict(state, strict=True)
    with open(src, "rb") as fh:
        source_sha = hashlib.file_digest(fh, "sha256").hexdigest()
    info = ModelInfo(arch="dlib_resnet", embedding_size=128, input_size=150, standardisation="dlib",
                     threshold=DLIB_THRESHOLD, far_thresholds=dict(DLIB_FAR_THRESHOLDS), recipe=dict(DLIB_RECIPE),
                     provenance={"source": src.name, "source_sha256": source_sha, "converted_by": "facenet convert",
                                 "trained_by": "Davis King (dlib), ~3M faces (FaceScrub, VGG, web photos)",
                                 "licence": "CC0 1.0 (public domain)", "threshold": "LFW View 2, 10-fold mean"})
    return save_model(model.eval(), dst, info)


def install_default_model(path: str | os.PathLike, replace: bool = False, src: str | os.PathLike | None = None) -> Path:
    """Make the converted dlib model (from ``src``, default: the wheel's file) the default at ``path``.

    An existing file is kept unless ``replace``; then a different model there is first moved to
    ``<name>.previous.safetensors`` so nothing the user had is lost.
    """
    path = Path(path)
    if path.is_file():
        if not replace:
            return path
        installed = _dlib_conversion(path)
        if src is None and installed == "current":
            return path
        if installed is None:  # the user's own model: kept, not overwritten
            shutil.move(path, path.with_name(path.stem + ".previous.safetensors"))
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    convert_dlib(path, src)
    return path


def _dlib_conversion(path: Path) -> str | None:
    """"current" for the file ``convert_dlib`` writes today, "older" for one an earlier facenet wrote
    (other thresholds or recipe: safe to replace), None for any other model."""
    try:
        info = read_model_info(path)
    except ModelFileError:
        return None
    if info.arch != "dlib_resnet" or info.provenance.get("converted_by") != "facenet convert":
        return None
    current = (info.threshold == DLIB_THRESHOLD and info.recipe == DLIB_RECIPE
               and info.far_thresholds == DLIB_FAR_THRESHOLDS)
    return "current" if current else "older"
