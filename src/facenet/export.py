"""ONNX export: a self-describing ``.onnx`` file that ONNX Runtime (or any ONNX runtime) can serve.

Input ``images``: standardised N,3,H,W float32 (N dynamic); output ``embeddings``: (N, d) unit rows.
The facenet ``ModelInfo`` JSON is stored in the graph's ``metadata_props`` under ``facenet``, so
``load_embedder("model.onnx")`` knows the architecture, input size, standardisation and threshold.
Every export is checked against PyTorch before it is written.

``make_backend(name, ...)`` picks the runner commands use: ``"auto"`` runs ONNX Runtime on a CPU,
with the export cached under the user's cache folder (``$XDG_CACHE_HOME/facenet/onnx``), keyed
by the weights' hash, input size and opset and checked against them when read back.
"""

from __future__ import annotations

import copy
import io
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from facenet.backends import OnnxBackend, TorchBackend
from facenet.distances import squared_l2
from facenet.errors import FaceNetError, ModelFileError
from facenet.fileio import atomic_write_bytes
from facenet.models import EmbeddingModel
from facenet.models.modelfile import ModelInfo

META_KEY = "facenet"
DEFAULT_OPSET = 17
TOLERANCE = 1e-4  # max abs difference of unit-embedding components, ONNX Runtime vs PyTorch
BACKENDS = ("auto", "torch", "onnx")
CACHE_KEEP = 8  # exports kept in the cache folder; older ones (other weights) are removed
# The graph form exports are written in (``export_form``); part of the cache key, so a cached export of an older
# form is exported again rather than run.
EXPORT_FORM = 2
log = logging.getLogger(__name__)


def make_backend(name: str, model: EmbeddingModel, info: ModelInfo, device: str | torch.device = "cpu"):
    """The runner called ``name`` for ``model``; ``auto`` picks ONNX Runtime on CPU when it can export."""
    if name not in BACKENDS:
        raise FaceNetError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    device = torch.device(device)
    if name == "torch" or (name == "auto" and device.type != "cpu"):
        return TorchBackend(model, device)
    try:
        return OnnxBackend(cached_export(model, info))
    except (FaceNetError, ImportError, OSError, RuntimeError) as exc:
        if name == "onnx":
            raise FaceNetError(f"cannot run {info.arch} with ONNX Runtime ({exc}); use --backend torch") from None
        log.warning("ONNX Runtime backend unavailable (%s); using PyTorch", exc)
        return TorchBackend(model, device)


def onnx_cache_path(info: ModelInfo, opset: int = DEFAULT_OPSET) -> Path:
    """Where the export of these weights at this input size and opset is cached."""
    from facenet.paths import cache_home

    sha = info.provenance.get("weights_sha256", "")
    name = f"{info.arch}-{sha[:32]}-{info.input_size}px-opset{opset}-form{EXPORT_FORM}.onnx"
    return cache_home() / "onnx" / name


def cached_export(model: EmbeddingModel, info: ModelInfo, opset: int = DEFAULT_OPSET) -> str | bytes:
    """The checked export of ``model``: the cached file when it holds these weights, else a new export
    (cached when possible; in memory, with a warning, when the cache folder cannot be written)."""
    if not info.weights_id:
        return onnx_bytes(model.cpu(), info, opset)
    path = onnx_cache_path(info, opset)
    if path.is_file() and _holds(path, info):
        os.utime(path)  # most recently used: kept by the pruning below
        return str(path)
    data = onnx_bytes(model.cpu(), info, opset)
    check_onnx(model, data, info)
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write_bytes(path, data)
    except OSError as exc:
        log.warning("cannot cache the ONNX export in %s (%s); exporting again at every start", path.parent, exc)
        return data
    _prune(path.parent)
    return str(path)


def _holds(path: Path, info: ModelInfo) -> bool:
    """Does the cached graph carry these weights and this input size (its metadata says)?"""
    try:
        cached = load_onnx(path)[1]
    except ModelFileError:
        return False
    return (
        cached.provenance.get("weights_sha256") == info.provenance.get("weights_sha256")
        and cached.input_size == info.input_size
    )


def _prune(folder: Path) -> None:
    exports = sorted(folder.glob("*.onnx"), key=lambda p: p.stat().st_mtime, reverse=True)
    for stale in exports[CACHE_KEEP:]:
        stale.unlink(missing_ok=True)


def onnx_bytes(model: EmbeddingModel, info: ModelInfo, opset: int = DEFAULT_OPSET) -> bytes:
    """The serialised ONNX graph of ``model`` (CPU, eval mode) with ``info`` in its metadata."""
    import onnx

    model = export_form(model.cpu().eval())
    example = torch.zeros(2, 3, info.input_size, info.input_size)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's deprecation chatter is not the user's business
        # The TorchScript-based exporter: mature for plain CNNs and exports in seconds.
        torch.onnx.export(
            model,
            (example,),
            buffer,
            dynamo=False,
            opset_version=opset,
            input_names=["images"],
            output_names=["embeddings"],
            dynamic_axes={"images": {0: "batch"}, "embeddings": {0: "batch"}},
        )
    graph = onnx.load_from_string(buffer.getvalue())
    onnx.helper.set_model_props(graph, {META_KEY: info.to_json()})
    graph.doc_string = f"facenet {info.arch}: standardised N,3,{info.input_size},{info.input_size} -> unit embeddings"
    return graph.SerializeToString()


class _SpeltOutPReLU(nn.Module):
    """PReLU with a slope per channel spelt out as its definition, max(0, x) + a * min(0, x): bit-identical."""

    def __init__(self, prelu: nn.PReLU):
        super().__init__()
        self.weight = prelu.weight

    def forward(self, x):
        a = self.weight.view(1, -1, *[1] * (x.dim() - 2))
        return torch.relu(x) + a * torch.clamp(x, max=0)


def export_form(net: nn.Module) -> nn.Module:
    """A copy of ``net`` whose PReLUs ONNX Runtime runs fast, with the same outputs bit for bit (for export only:
    PyTorch's own PReLU kernel is fast). ONNX Runtime's PRelu kernel cannot join the convolution before it, and
    its blocked-layout convolutions reorder their tensors around every one: on `reid` (48 PReLUs) that was half
    the network's time, on MTCNN's R-Net and O-Net 40%. A PReLU with one slope is a LeakyRelu, which the
    convolution runs as its own activation (`reid` 1.7x faster, RESULTS.md); one with a slope per channel is
    spelt out (R-Net and O-Net 1.4-1.7x faster)."""
    net = copy.deepcopy(net)
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.PReLU):
                one = child.weight.numel() == 1
                setattr(parent, name, nn.LeakyReLU(child.weight.item()) if one else _SpeltOutPReLU(child))
    return net


def check_onnx(
    model: EmbeddingModel, data: bytes | str | os.PathLike, info: ModelInfo, tolerance: float = TOLERANCE
) -> float:
    """Max abs difference between ONNX Runtime and PyTorch on random and face-like batches of 1 and 3.

    Raises ``FaceNetError`` above ``tolerance``: an export that changes embeddings must not be used.
    """
    ort_run, torch_run = OnnxBackend(data), TorchBackend(model.cpu())
    worst = 0.0
    for x in _check_inputs(info):
        worst = max(worst, float(np.abs(ort_run(x) - torch_run(x)).max()))
    if not worst <= tolerance:
        raise FaceNetError(
            f"ONNX export of {info.arch} differs from PyTorch by {worst:.2e} "
            f"(limit {tolerance:.0e}); try another --opset or report the bug"
        )
    return worst


def export_onnx(
    model: EmbeddingModel,
    info: ModelInfo,
    path: str | os.PathLike,
    opset: int = DEFAULT_OPSET,
    tolerance: float = TOLERANCE,
) -> float:
    """Export, check against PyTorch, write atomically (mode 0600); returns the max abs difference."""
    data = onnx_bytes(model, info, opset)
    worst = check_onnx(model, data, info, tolerance)
    atomic_write_bytes(path, data)
    return worst


def quantize_int8(data: bytes, info: ModelInfo, calibration: list[np.ndarray]) -> bytes:
    """Static int8 quantisation of an exported graph (QDQ, per-channel weights, 8-bit activations).

    ``calibration``: model-sized H,W,3 uint8 face crops whose activation ranges set the scales —
    use crops like the ones the model will see (e.g. from ``facenet align``).
    """
    import logging
    import tempfile

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from facenet.data.images import standardise, to_batch

    batches = [
        standardise(to_batch(calibration[i : i + 8]), info.standardisation).numpy()
        for i in range(0, len(calibration), 8)
    ]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.remaining = iter(batches)

        def get_next(self):
            batch = next(self.remaining, None)
            return None if batch is None else {"images": batch}

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(data)
        quiet = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)  # the quantiser's advice goes to the root logger
        try:
            quantize_static(
                str(src),
                str(dst),
                Reader(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
            )
        finally:
            logging.getLogger().setLevel(quiet)
        return dst.read_bytes()


def int8_distance_error(model: EmbeddingModel, data: bytes, info: ModelInfo, crops: list[np.ndarray]) -> float:
    """Largest change int8 makes to a squared-L2 distance between two of ``crops`` (range of d^2: [0, 4])."""
    from facenet.data.images import standardise, to_batch

    x = standardise(to_batch(crops), info.standardisation)
    e32, e8 = TorchBackend(model.cpu())(x), OnnxBackend(data)(x)
    d32, d8 = squared_l2(e32, e32, pairwise=True), squared_l2(e8, e8, pairwise=True)
    return float(np.abs(d8 - d32).max())


def read_onnx_info(metadata: dict, source: str | os.PathLike) -> ModelInfo:
    """The ``ModelInfo`` stored in an exported graph's metadata."""
    if META_KEY not in metadata:
        raise ModelFileError(
            f"{source}: ONNX file without facenet metadata; export models with `facenet export MODEL --format onnx`"
        )
    try:
        return ModelInfo.from_json(metadata[META_KEY])
    except (ValueError, TypeError) as exc:
        raise ModelFileError(f"{source}: corrupt facenet metadata in ONNX file ({exc})") from None


def load_onnx(path: str | os.PathLike):
    """An ``OnnxBackend`` for an exported file and the ``ModelInfo`` it carries."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path}")
    backend = OnnxBackend(path)
    return backend, read_onnx_info(backend.metadata, path)


def _check_inputs(info: ModelInfo) -> list[torch.Tensor]:
    """A batch of 1 of white noise and one of 3 smooth images (image-like statistics), standardised."""
    from facenet.data.images import standardise

    size = info.input_size
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(1, 3, size, size, generator=generator)
    coarse = torch.rand(3, 3, 8, 8, generator=generator) * 255
    smooth = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    return [noise, standardise(smooth.clamp(0, 255).round(), info.standardisation)]
