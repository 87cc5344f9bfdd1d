"""Inference backends: standardised N,3,H,W float32 in, unit embeddings (N, d) float32 out.

``FaceEmbedder`` does decoding, face extraction and standardisation once and hands the batch to
one of these, so every command that embeds (embed, verify, evaluate, gallery, service) gets the
same backend choice:

- ``TorchBackend``: the PyTorch module, optionally channels-last and/or ``torch.compile``-d.
- ``OnnxBackend``: ONNX Runtime on an exported graph; on this project's CPU it ran
  Inception-ResNet-v1 about 2x faster than eager PyTorch at batch 32.

Choosing one by name, exporting when needed, lives in ``facenet.export.make_backend``.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from facenet.errors import ModelFileError
from facenet.models import EmbeddingModel


class TorchBackend:
    """Eager (or compiled) PyTorch under ``inference_mode``."""

    name = "torch"

    def __init__(
        self,
        model: EmbeddingModel,
        device: str | torch.device = "cpu",
        channels_last: bool = False,
        compile: bool = False,
    ):
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
        # Idle threads sleep rather than spin: spinning after a batch took the cores from the detector working on
        # the next photo (a 12 MP group photo 0.223 -> 0.207 s end to end, LFW thumbnails 27.5 -> 29 photos/s).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        source = model if isinstance(model, bytes) else str(model)
        try:
            self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own untyped errors (InvalidProtobuf, Fail, ...)
            where = "in-memory model" if isinstance(model, bytes) else str(model)
            raise ModelFileError(
                f"{where}: not a usable ONNX model ({str(exc).splitlines()[0]}); "
                "re-export it with `facenet export MODEL --format onnx`"
            ) from None
        self.input_name = self.session.get_inputs()[0].name
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)

    def __call__(self, x: torch.Tensor | np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(torch.as_tensor(x).cpu().numpy(), dtype=np.float32)
        return self.session.run(None, {self.input_name: x})[0]
