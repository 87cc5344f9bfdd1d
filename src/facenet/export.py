"""ONNX export: a self-describing ``.onnx`` file that ONNX Runtime (or any ONNX runtime) can serve.

Input ``images``: standardised N,3,H,W float32 (N dynamic); output ``embeddings``: (N, d) unit rows.
The facenet ``ModelInfo`` JSON is stored in the graph's ``metadata_props`` under ``facenet``, so
``load_embedder("model.onnx")`` knows the architecture, input size, standardisation and threshold.
Every export is checked against PyTorch before it is written.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from facenet.errors import FaceNetError, ModelFileError
from facenet.fileio import atomic_write_bytes
from facenet.models import EmbeddingModel
from facenet.models.modelfile import ModelInfo

META_KEY = "facenet"
DEFAULT_OPSET = 17
TOLERANCE = 1e-4  # max abs difference of unit-embedding components, ONNX Runtime vs PyTorch


def onnx_bytes(model: EmbeddingModel, info: ModelInfo, opset: int = DEFAULT_OPSET) -> bytes:
    """The serialised ONNX graph of ``model`` (CPU, eval mode) with ``info`` in its metadata."""
    import onnx

    model = model.cpu().eval()
    example = torch.zeros(2, 3, info.input_size, info.input_size)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's deprecation chatter is not the user's business
        # The TorchScript-based exporter: mature for plain CNNs and exports in seconds.
        torch.onnx.export(model, (example,), buffer, dynamo=False, opset_version=opset,
                          input_names=["images"], output_names=["embeddings"],
                          dynamic_axes={"images": {0: "batch"}, "embeddings": {0: "batch"}})
    graph = onnx.load_from_string(buffer.getvalue())
    onnx.helper.set_model_props(graph, {META_KEY: info.to_json()})
    graph.doc_string = f"facenet {info.arch}: standardised N,3,{info.input_size},{info.input_size} -> unit embeddings"
    return graph.SerializeToString()


def check_onnx(model: EmbeddingModel, data: bytes | str | os.PathLike, info: ModelInfo,
               tolerance: float = TOLERANCE) -> float:
    """Max abs difference between ONNX Runtime and PyTorch on random and face-like batches of 1 and 3.

    Raises ``FaceNetError`` above ``tolerance``: an export that changes embeddings must not be used.
    """
    from facenet.backends import OnnxBackend, TorchBackend

    ort_run, torch_run = OnnxBackend(data), TorchBackend(model.cpu())
    worst = 0.0
    for x in _check_inputs(info):
        worst = max(worst, float(np.abs(ort_run(x) - torch_run(x)).max()))
    if not worst <= tolerance:
        raise FaceNetError(f"ONNX export of {info.arch} differs from PyTorch by {worst:.2e} "
                           f"(limit {tolerance:.0e}); try another --opset or report the bug")
    return worst


def export_onnx(model: EmbeddingModel, info: ModelInfo, path: str | os.PathLike,
                opset: int = DEFAULT_OPSET, tolerance: float = TOLERANCE) -> float:
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

    batches = [standardise(to_batch(calibration[i:i + 8]), info.standardisation).numpy()
               for i in range(0, len(calibration), 8)]

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
            quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        finally:
            logging.getLogger().setLevel(quiet)
        return dst.read_bytes()


def int8_distance_error(model: EmbeddingModel, data: bytes, info: ModelInfo, crops: list[np.ndarray]) -> float:
    """Largest change int8 makes to a squared-L2 distance between two of ``crops`` (range of d^2: [0, 4])."""
    from facenet.backends import OnnxBackend, TorchBackend
    from facenet.data.images import standardise, to_batch

    x = standardise(to_batch(crops), info.standardisation)
    e32, e8 = TorchBackend(model.cpu())(x), OnnxBackend(data)(x)
    d32 = ((e32[:, None] - e32[None]) ** 2).sum(-1)
    d8 = ((e8[:, None] - e8[None]) ** 2).sum(-1)
    return float(np.abs(d8 - d32).max())


def read_onnx_info(metadata: dict, source: str | os.PathLike) -> ModelInfo:
    """The ``ModelInfo`` stored in an exported graph's metadata."""
    if META_KEY not in metadata:
        raise ModelFileError(f"{source}: ONNX file without facenet metadata; "
                             "export models with `facenet export MODEL --format onnx`")
    try:
        return ModelInfo.from_json(metadata[META_KEY])
    except (ValueError, TypeError) as exc:
        raise ModelFileError(f"{source}: corrupt facenet metadata in ONNX file ({exc})") from None


def load_onnx(path: str | os.PathLike):
    """An ``OnnxBackend`` for an exported file and the ``ModelInfo`` it carries."""
    from facenet.backends import OnnxBackend

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path}")
    backend = OnnxBackend(path)
    return backend, read_onnx_info(backend.metadata, path)


def _check_inputs(info: ModelInfo) -> list[torch.Tensor]:
    """A random batch of 1 and three rendered synthetic faces, standardised as the model expects."""
    from facenet.data.images import standardise, to_batch
    from facenet.data.synthetic import SyntheticFaces

    size = info.input_size
    noise = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    faces = SyntheticFaces(3, seed=0, size=size)
    crops = to_batch([faces.render(i, 0) for i in range(3)])
    return [noise, standardise(crops, info.standardisation)]
