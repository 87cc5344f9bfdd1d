"""The pretrained models that come with facenet, and which one is the default.

- ``reid`` (the default): Intel's face-reidentification-retail-0095 (Open Model Zoo, Apache-2.0;
  1.1M parameters, 128 px, 256-D), read from its OpenVINO IR by ``facenet.models.openvino_ir``
  into ``facenet.models.reid_mobilenet``. Its converted weights ship inside the package
  (``models/weights/``, with the licence and notice), since the IR cannot be installed from PyPI.
- ``dlib``: dlib's CC0 face ResNet (29 layers, 150 px, 128-D), read from the
  ``face_recognition_models`` wheel by ``facenet.models.dlib_format`` — no dlib at run time — into
  ``facenet.models.dlib_resnet``.

Each is saved with its preprocessing recipe and the thresholds measured for it on LFW (RESULTS.md,
"Choosing the default"); docs/MODEL_CARD.md says where each came from and where each falls short.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from facenet.errors import FaceNetError, ModelFileError
from facenet.models.modelfile import ModelInfo, read_model_info, save_model

log = logging.getLogger(__name__)
INSTALL_HINT = 'pip install face_recognition_models "setuptools<81"'
WEIGHTS_DIR = Path(__file__).parent / "weights"
REID_WEIGHTS = WEIGHTS_DIR / "face-reidentification-retail-0095.safetensors"


@dataclass(frozen=True)
class Pretrained:
    """A shipped model: how it is built and the metadata measured for it."""

    name: str
    arch: str
    embedding_size: int
    input_size: int
    standardisation: str
    recipe: dict
    threshold: float  # squared L2: the mean of the ten per-fold best thresholds on LFW View 2
    far_thresholds: dict  # per-pair FAR -> squared L2 (ModelInfo.far_thresholds)
    far_calibration: dict  # how that table was made (ModelInfo.far_calibration; empty for the LFW-only table)
    masked: dict  # how masked faces are told and compared (ModelInfo.masked; empty: like any other)
    about: dict  # provenance: what it was trained on ("data"), who trained it, its licence
    file_name: str  # its name in the models folder when it is not the default


DLIB = Pretrained(
    name="dlib",
    arch="dlib_resnet",
    embedding_size=128,
    input_size=150,
    standardisation="dlib",
    # the published cascade: its landmarks are what the dlib template and these thresholds were measured with
    # (with YuNet's proposals this network drops to 99.00% on LFW; RESULTS.md, issue 28)
    recipe={"detector": "mtcnn-pnet", "mode": "similarity", "template": "dlib", "margin": 0.0, "which": "largest"},
    threshold=0.1837,
    far_thresholds={"1e-02": 0.1860, "1e-03": 0.1484, "1e-04": 0.1187, "1e-05": 0.0954},  # every pair of LFW View 2
    far_calibration={},
    masked={},
    about={
        "data": "~3M faces (FaceScrub, VGG, web photos)",
        "trained_by": "Davis King (dlib)",
        "licence": "CC0 1.0 (public domain)",
        "threshold": "LFW View 2, 10-fold mean",
    },
    file_name="dlib_resnet.safetensors",
)
REID = Pretrained(
    name="reid",
    arch="reid_mobilenet",
    embedding_size=256,
    input_size=128,
    standardisation="unit",
    recipe={"detector": "mtcnn", "mode": "similarity", "template": "openvino", "margin": 0.0, "which": "largest"},
    threshold=1.4199,
    # benchmarks/calibrate_default.py: LFW half A and the LFW-free sources, measured on LFW half B
    # (RESULTS.md, "Open-set identification at scale")
    far_thresholds={
        "1e-02": 1.4961,
        "1e-03": 1.3025,
        "1e-04": 1.1547,
        "1e-05": 1.0296,
        "1e-06": 0.9061,
        "1e-07": 0.7646,
        "1e-08": 0.6278,
    },
    far_calibration={
        "on": "LFW half A and LFW-free sources, pairs within each "
        "(lfw-a 6398, pubfig83 12172, glint 10238, celeba 5812 faces)",
        "faces": 34436,
        "people": 3201,
        "dropped_as_mislabelled": 184,
        "flagged_as_mislabelled": 184,
        "impostor_pairs": 158045294,
        "genuine_pairs": 4199771,
        "entries": {
            "1e-02": {"kind": "measured", "pairs_below": 1580452, "tar": 0.9929},
            "1e-03": {"kind": "measured", "pairs_below": 158045, "tar": 0.9749},
            "1e-04": {"kind": "measured", "pairs_below": 15804, "tar": 0.9435},
            "1e-05": {"kind": "measured", "pairs_below": 1580, "tar": 0.8963},
            "1e-06": {"kind": "measured", "pairs_below": 158, "tar": 0.8122},
            "1e-07": {"kind": "extrapolated", "pairs_below": 11, "interval": [0.7435, 0.7852], "tar": 0.6766},
            "1e-08": {"kind": "extrapolated", "pairs_below": 4, "interval": [0.5868, 0.6686], "tar": 0.4934},
        },
        "tail": {
            "model": "genpareto",
            "u": 1.1546847820281982,
            "far_u": 9.999665032734224e-05,
            "xi": 0.011091060514479348,
            "sigma": 0.054338372334293686,
            "fitted_pairs": 15804,
        },
    },
    # benchmarks/calibrate_masked.py: LFW-free sources only, measured on LFW half B with masks the project never
    # drew (RESULTS.md, "Masked faces compared as masked")
    masked={
        "covered_below": 0.5217,
        "covered_calibration": {"on": "3000 clean crops of the LFW-free sources", "false_alarm": 0.02},
        "threshold": 1.4597,
        "far_thresholds": {
            "1e-02": 1.5295,
            "1e-03": 1.3522,
            "1e-04": 1.2119,
            "1e-05": 1.0959,
            "1e-06": 0.9921,
            "1e-07": 0.9,
            "1e-08": 0.8195,
        },
        "far_calibration": {
            "on": "LFW-free sources, a training mask look on one face of each pair, pairs within each "
            "(pubfig83 12179, glint 10238, celeba 5815 faces)",
            "faces": 28060,
            "people": 301,
            "dropped_as_mislabelled": 172,
            "flagged_as_mislabelled": 172,
            "impostor_pairs": 275582492,
            "genuine_pairs": 8280814,
            "entries": {
                "1e-02": {"kind": "measured", "pairs_below": 2755824, "tar": 0.772},
                "1e-03": {"kind": "measured", "pairs_below": 275582, "tar": 0.5564},
                "1e-04": {"kind": "measured", "pairs_below": 27558, "tar": 0.3578},
                "1e-05": {"kind": "measured", "pairs_below": 2755, "tar": 0.2105},
                "1e-06": {"kind": "measured", "pairs_below": 275, "tar": 0.1117},
                "1e-07": {"kind": "extrapolated", "pairs_below": 30, "interval": [0.8938, 0.9067], "tar": 0.053},
                "1e-08": {"kind": "extrapolated", "pairs_below": 6, "interval": [0.8078, 0.831], "tar": 0.0228},
            },
            "tail": {
                "model": "genpareto",
                "u": 1.2118514776229858,
                "far_u": 9.999909573355626e-05,
                "xi": -0.05440884500197958,
                "sigma": 0.05416088706043757,
                "fitted_pairs": 27558,
            },
        },
    },
    about={
        "data": "unpublished data",
        "trained_by": "Intel (Open Model Zoo face-reidentification-retail-0095)",
        "licence": "Apache-2.0 (Intel Corporation); see facenet/models/weights/NOTICE",
        "threshold": "LFW View 2, 10-fold mean",
    },
    file_name="reid_retail_0095.safetensors",
)
PRETRAINED = {p.name: p for p in (REID, DLIB)}
DEFAULT = REID


def dlib_weights_path() -> Path:
    """dlib's face model file inside the installed ``face_recognition_models`` wheel."""
    try:
        with warnings.catch_warnings():  # the package imports the deprecated pkg_resources
            warnings.simplefilter("ignore")
            import face_recognition_models
    except ImportError:
        raise FaceNetError(
            "dlib's model is made from dlib's weights in the face_recognition_models "
            f"package, which is not installed; install it with: {INSTALL_HINT}"
        ) from None
    return Path(face_recognition_models.face_recognition_model_location())


def convert_pretrained(name: str, dst: str | os.PathLike, src: str | os.PathLike | None = None) -> ModelInfo:
    """Write the shipped model ``name`` as a model file at ``dst``.

    ``src``: dlib's ``.dat`` file (default: the ``face_recognition_models`` wheel's) for ``dlib``;
    the OpenVINO IR's ``.xml`` (default: the weights shipped in the package) for ``reid``.
    """
    from facenet.models import create_model

    pretrained = _pretrained(name)
    state, source = (_dlib_state if pretrained is DLIB else _reid_state)(Path(src) if src else None)
    model = create_model(pretrained.arch, embedding_size=pretrained.embedding_size)
    model.load_state_dict(state, strict=True)
    info = ModelInfo(
        arch=pretrained.arch,
        embedding_size=pretrained.embedding_size,
        input_size=pretrained.input_size,
        standardisation=pretrained.standardisation,
        threshold=pretrained.threshold,
        far_thresholds=dict(pretrained.far_thresholds),
        far_calibration=dict(pretrained.far_calibration),
        masked=dict(pretrained.masked),
        recipe=dict(pretrained.recipe),
        provenance={**source, "converted_by": "facenet convert", "pretrained": pretrained.name, **pretrained.about},
    )
    return save_model(model.eval(), dst, info)


def install_pretrained(
    name: str, path: str | os.PathLike, replace: bool = False, src: str | os.PathLike | None = None
) -> Path:
    """Make the shipped model ``name`` (from ``src``, default: its shipped source) the file at ``path``.

    An existing file is kept unless ``replace``; then a different model there is first moved
    aside so nothing the user had is lost (galleries name the model that filled them): another
    shipped model to its own name in the same folder, a model of the user's to
    ``<name>.previous.safetensors``.
    """
    path = Path(path)
    pretrained = _pretrained(name)
    if path.is_file():
        if not replace:
            return path
        installed = _installed_pretrained(path)
        if src is None and installed == (pretrained.name, "current"):
            return path
        if installed is None:
            shutil.move(path, path.with_name(path.stem + ".previous.safetensors"))
        elif installed[0] != pretrained.name and path.name != PRETRAINED[installed[0]].file_name:
            shutil.move(path, path.with_name(PRETRAINED[installed[0]].file_name))
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    convert_pretrained(pretrained.name, path, src)
    return path


def refresh_shipped(path: str | os.PathLike) -> Path:
    """``path`` rewritten with today's metadata when it is a shipped model an earlier facenet wrote (same
    weights, so galleries stay usable; thresholds and calibration as measured now); any other file untouched."""
    installed = _installed_pretrained(Path(path))
    if installed is None or installed[1] != "older":
        return Path(path)  # not shipped, up to date, or recalibrated by its owner
    try:
        convert_pretrained(installed[0], path)
        log.info("%s: updated to this facenet's thresholds for %s", path, installed[0])
    except FaceNetError as exc:  # e.g. dlib's weights no longer installed: the file keeps working as it is
        log.warning("%s keeps an earlier facenet's thresholds (%s)", path, exc)
    return Path(path)


def install_default_model(path: str | os.PathLike, replace: bool = False, src: str | os.PathLike | None = None) -> Path:
    """The default shipped model (``DEFAULT``) at ``path``; see ``install_pretrained``."""
    return install_pretrained(DEFAULT.name, path, replace, src)


def _pretrained(name: str) -> Pretrained:
    if name not in PRETRAINED:
        raise ModelFileError(f"no shipped model named {name!r}; choose one of {', '.join(PRETRAINED)}")
    return PRETRAINED[name]


def _installed_pretrained(path: Path) -> tuple[str, str] | None:
    """(shipped model's name, "current" | "older" | "recalibrated") for a file ``convert_pretrained`` wrote:
    today's metadata, an earlier facenet's (safe to replace), or thresholds its owner measured since
    (``evaluate --write-thresholds``: replaced only when asked); None for any other model."""
    try:
        info = read_model_info(path)
    except ModelFileError:
        return None
    if info.provenance.get("converted_by") != "facenet convert":
        return None
    pretrained = next((p for p in PRETRAINED.values() if p.arch == info.arch), None)
    if pretrained is None:
        return None
    current = (
        info.threshold == pretrained.threshold
        and info.recipe == pretrained.recipe
        and info.far_thresholds == pretrained.far_thresholds
        and info.far_calibration == pretrained.far_calibration
        and info.masked == pretrained.masked
        and all(info.provenance.get(k) == v for k, v in pretrained.about.items())
    )
    if current:
        return pretrained.name, "current"
    return pretrained.name, "recalibrated" if "thresholds" in info.provenance else "older"


def _dlib_state(src: Path | None) -> tuple[dict[str, torch.Tensor], dict]:
    from facenet.data.images import DLIB_MEAN_RGB
    from facenet.models.dlib_format import dlib_state_dict

    src = src or dlib_weights_path()
    state, mean_rgb = dlib_state_dict(src)
    if not np.allclose(mean_rgb, DLIB_MEAN_RGB, atol=1e-3):
        raise ModelFileError(
            f"{src}: input mean RGB {mean_rgb} differs from the 'dlib' standardisation "
            f"{DLIB_MEAN_RGB}; this is not the published dlib face model"
        )
    return state, {"source": src.name, "source_sha256": _sha256(src)}


def _reid_state(src: Path | None) -> tuple[dict[str, torch.Tensor], dict]:
    """From the IR at ``src``, or the weights shipped in the package (converted from the IR once,
    by ``save_reid_weights``; their metadata names the IR they came from)."""
    from facenet.models.openvino_ir import reid_state_dict

    if src is not None:
        return reid_state_dict(src), {
            "source": src.name,
            "source_sha256": _sha256(src),
            "source_bin_sha256": _sha256(src.with_suffix(".bin")),
        }
    from safetensors import safe_open

    if not REID_WEIGHTS.is_file():
        raise ModelFileError(
            f"the shipped weights {REID_WEIGHTS} are missing; reinstall facenet, or convert "
            "the OpenVINO IR: facenet convert face-reidentification-retail-0095.xml DST"
        )
    with safe_open(str(REID_WEIGHTS), framework="pt") as fh:
        source = dict(fh.metadata() or {})
        state = {key: fh.get_tensor(key).float() for key in fh.keys()}
    return state, source


def save_reid_weights(xml_path: str | os.PathLike, dst: str | os.PathLike = REID_WEIGHTS) -> Path:
    """Convert the IR once into the weights shipped in the package: float16 where that is exact
    (the IR's own precision), so the file is as small as the IR and loads bit for bit."""
    from safetensors.torch import save_file

    xml_path = Path(xml_path)
    state, source = _reid_state(xml_path)
    packed = {k: v.half() if torch.equal(v.half().float(), v) else v for k, v in state.items()}
    save_file({k: v.contiguous() for k, v in packed.items()}, str(dst), metadata=source)
    return Path(dst)


def _sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()
