"""One model file = weights + everything needed to use them.

Format: a safetensors file whose header metadata holds a JSON ``ModelInfo``
under the key ``facenet``. safetensors never unpickles, so a model file from a
stranger cannot run code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from facenet.data.images import STANDARDISATIONS  # noqa: E402  (one list of methods)
from facenet.distances import DEFAULT_THRESHOLD
from facenet.errors import ModelFileError
from facenet.fileio import atomic_write
from facenet.models import EmbeddingModel, create_model


@dataclass
class ModelInfo:
    """Metadata stored with the weights; thresholds depend on the model, so they live here."""

    arch: str
    embedding_size: int
    input_size: int = 160
    standardisation: str = "fixed"
    threshold: float = DEFAULT_THRESHOLD
    num_classes: int | None = None
    provenance: dict = field(default_factory=dict)
    recipe: dict = field(default_factory=dict)  # how input crops are made: facenet.align.Recipe fields
    far_thresholds: dict = field(default_factory=dict)  # "1e-03" -> squared L2 at that per-pair FAR (open-set use)
    far_calibration: dict = field(default_factory=dict)  # how that table was made (evaluate.calibrate.Calibration)
    # masked faces (issue 24; empty: compared like any other): "covered_below" (facenet.occluder.mask_sensitivity
    # under which a face's lower half is taken as covered), and for a covered face against an uncovered one its
    # own "threshold" and "far_thresholds" / "far_calibration" (benchmarks/calibrate_masked.py)
    masked: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelInfo:
        data = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        info = cls(**{k: v for k, v in data.items() if k in known})
        if info.standardisation not in STANDARDISATIONS:
            raise ModelFileError(f"unknown standardisation {info.standardisation!r} in model file")
        check_thresholds(info.threshold, info.far_thresholds)
        if info.masked:
            check_thresholds(info.masked["threshold"], info.masked["far_thresholds"])
        return info

    @property
    def weights_id(self) -> str:
        """A short identity of the weights alone: what decides whether two embeddings are comparable
        (galleries refuse embeddings of other weights; recalibrating thresholds keeps a gallery usable)."""
        return str(self.provenance.get("weights_sha256", ""))[:16]

    @property
    def id(self) -> str:
        """The model's one id, printed by every command, the API and the service and recorded by galleries:
        architecture, embedding size and weights (recalibrated thresholds keep it: embeddings stay comparable)."""
        return f"{self.arch}-{self.embedding_size}d-{self.weights_id or 'untracked'}"

    @property
    def model_id(self) -> str:
        """A short identity of everything that decides answers: the weights and the thresholds. It
        changes whenever either does, so two files that answer differently never share an id."""
        if not self.weights_id:
            return ""
        decided_by = [self.provenance["weights_sha256"], self.threshold, self.far_thresholds]
        decided = json.dumps(decided_by + ([self.masked] if self.masked else []), sort_keys=True)
        return hashlib.sha256(decided.encode()).hexdigest()[:16]


def check_thresholds(threshold: float, far_thresholds: dict) -> None:
    """Thresholds are squared L2 between unit embeddings, so within [0, 4], and a stricter false-accept
    rate can only ask for a smaller distance; anything else (another unit, an untrained model's
    calibration) would silently misjudge every comparison, so it is refused."""
    values = [("verification threshold", threshold)] + [(f"threshold at FAR {k}", v) for k, v in far_thresholds.items()]
    for what, value in values:
        if not (isinstance(value, (int, float)) and -1e-6 <= value <= 4.0 + 1e-6):  # float rounding at the ends
            raise ModelFileError(
                f"{what} {value!r} is not a squared L2 distance between unit embeddings "
                "(0 to 4); recalibrate with `facenet evaluate --write-thresholds`"
            )
    try:
        ordered = sorted((float(k), v) for k, v in far_thresholds.items())
    except ValueError:
        raise ModelFileError(f"FAR table keys must be rates such as '1e-03', got {sorted(far_thresholds)}") from None
    if any(low[1] > high[1] for low, high in zip(ordered, ordered[1:])):
        raise ModelFileError(
            "the FAR table's thresholds do not grow with the false-accept rate "
            f"({dict(ordered)}); recalibrate with `facenet evaluate --write-thresholds`"
        )


def model_info_for(model: EmbeddingModel, **overrides) -> ModelInfo:
    info = ModelInfo(
        arch=model.arch,
        embedding_size=model.embedding_size,
        input_size=model.input_size,
        num_classes=model.logits.out_features if model.logits is not None else None,
    )
    return dataclasses.replace(info, **overrides)


def save_model(model: EmbeddingModel, path: str | os.PathLike, info: ModelInfo | None = None) -> ModelInfo:
    """Write ``model`` and its metadata atomically (owner-readable only); returns the stored info."""
    info = info or model_info_for(model)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    digest = hashlib.sha256()
    for key in sorted(tensors):
        digest.update(key.encode())
        digest.update(tensors[key].numpy().tobytes())
    info = dataclasses.replace(info, provenance={**info.provenance, "weights_sha256": digest.hexdigest()})
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"facenet": info.to_json()}))
    return info


def read_model_info(path: str | os.PathLike) -> ModelInfo:
    """The metadata alone, without building the model."""
    from safetensors import safe_open

    path = _existing(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFileError(f"{path}: not a facenet model file ({exc})") from None
    if "facenet" not in meta:
        raise ModelFileError(
            f"{path}: safetensors file without facenet metadata; convert bare state dicts with `facenet convert`"
        )
    try:
        return ModelInfo.from_json(meta["facenet"])
    except (ValueError, TypeError) as exc:
        raise ModelFileError(f"{path}: corrupt facenet metadata ({exc})") from None


def load_model_file(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[EmbeddingModel, ModelInfo]:
    """Build the architecture named in the file and load its weights strictly; model in eval mode."""
    path = _existing(path)
    info = read_model_info(path)
    try:
        state = load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFileError(f"{path}: cannot read weights ({exc})") from None
    model = create_model(info.arch, embedding_size=info.embedding_size, num_classes=info.num_classes)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelFileError(
            f"{path}: weights do not match architecture {info.arch!r}: {str(exc).splitlines()[0]}"
        ) from None
    return model.to(device).eval(), info


def _existing(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path}")
    return path
