"""Inference backends: standardised N,3,H,W float32 in, unit embeddings (N, d) float32 out.

``FaceEmbedder`` does decoding, face extraction and standardisation once and hands the batch to
one of these, so every command that embeds (embed, verify, evaluate, gallery, service) gets the
same backend choice:

- ``TorchBackend``: the PyTorch module, optionally channels-last and/or ``torch.compile``-d.
- ``OnnxBackend``: ONNX Runtime on an exported graph (see ``facenet.export``); on this project's
  CPU it ran Inception-ResNet-v1 about 2x faster than eager PyTorch at batch 32.
- ``"auto"`` (``make_backend``): ONNX Runtime on a CPU device, exported once and cached next to
  the model file; PyTorch on other devices or when export fails (with a warning).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from facenet.errors import FaceNetError, ModelFileError
from facenet.models import EmbeddingModel
from facenet.models.modelfile import ModelInfo

BACKENDS = ("auto", "torch", "onnx")
log = logging.getLogger(__name__)


class TorchBackend:
    """Eager (or compiled) PyTorch under ``inference_mode``."""

    name = "torch"

    def __init__(self, model: EmbeddingModel, device: str | torch.device = "cpu",
                 channels_last: bool = False, compile: bool = False):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        # Inductor's freezing=True gave wrong Inception-ResNet-v1 outputs here (relative error
        # 0.3-0.8), so freezing stays at its default (off); tests compare compiled with eager.
        self.forward = torch.compile(self.model, dynamic=False) if compile else self.model
        if compile:
            self.name = "torch-compile"

    def __call__(self, x: torch.Tensor | np.ndarray) -> np.ndarray:
        x = torch.as_tensor(x).to(self.device, memory_format=self.memory_format)
        with torch.inference_mode():
            return self.forward(x).float().cpu().numpy()


class OnnxBackend:
    """ONNX Runtime session on an exported model (a path or the serialised bytes)."""

    name = "onnx"

    def __init__(self, model: str | os.PathLike | bytes, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # torch's default thread count is the number of physical cores; hyper-threads slow GEMMs.
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        source = model if isinstance(model, bytes) else str(model)
        try:
            self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own untyped errors (InvalidProtobuf, Fail, ...)
            where = "in-memory model" if isinstance(model, bytes) else str(model)
            raise ModelFileError(f"{where}: not a usable ONNX model ({str(exc).splitlines()[0]}); "
                                 "re-export it with `facenet export MODEL --format onnx`") from None
        self.input_name = self.session.get_inputs()[0].name
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)

    def __call__(self, x: torch.Tensor | np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(torch.as_tensor(x).cpu().numpy(), dtype=np.float32)
        return self.session.run(None, {self.input_name: x})[0]


def onnx_cache_path(model_path: Path, info: ModelInfo) -> Path:
    """Where ``auto`` keeps the exported graph: beside the model, named by the weights' identity."""
    return model_path.with_name(f"{model_path.stem}.{info.model_id or 'untracked'}.onnx")


def make_backend(name: str, model: EmbeddingModel, info: ModelInfo, device: str | torch.device = "cpu",
                 model_path: str | os.PathLike | None = None):
    """The backend called ``name`` for ``model``; ``auto`` picks ONNX Runtime on CPU when it can."""
    if name not in BACKENDS:
        raise FaceNetError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    device = torch.device(device)
    if name == "torch" or (name == "auto" and device.type != "cpu"):
        return TorchBackend(model, device)
    try:
        return OnnxBackend(_exported(model, info, model_path))
    except (FaceNetError, ImportError, OSError, RuntimeError) as exc:
        if name == "onnx":
            raise FaceNetError(f"cannot run {info.arch} with ONNX Runtime ({exc}); use --backend torch") from None
        log.warning("ONNX Runtime backend unavailable (%s); using PyTorch", exc)
        return TorchBackend(model, device)


def _exported(model: EmbeddingModel, info: ModelInfo, model_path: str | os.PathLike | None) -> str | bytes:
    """The cached export beside the model file if there is one (written once), else bytes in memory."""
    from facenet.export import export_onnx, onnx_bytes

    if model_path is None or not info.model_id:
        return onnx_bytes(model.cpu(), info)
    cache = onnx_cache_path(Path(model_path), info)
    if not cache.is_file():
        try:
            export_onnx(model.cpu(), info, cache)
        except OSError as exc:  # read-only model folder: export in memory instead
            log.info("cannot cache the ONNX export at %s (%s)", cache, exc)
            return onnx_bytes(model.cpu(), info)
    return str(cache)
