"""Read dlib's ``dlib_face_recognition_resnet_model_v1.dat`` in pure Python (no dlib needed).

dlib serialises a network from the input layer outwards: each layer's type tag (a string such
as ``con_4``) followed by its fields. The encodings used here are dlib's own:

- integers: one byte giving the number of magnitude bytes (bit 7 set = negative), then the
  magnitude, little-endian;
- floats: an integer mantissa and an integer exponent, value = mantissa * 2**exponent;
- strings: an integer length, then the bytes;
- tensors: version 2, num_samples, k, nr, nc (integers), then the values as little-endian
  float32.

Only the fields the converter needs are decoded; the bytes between layers (training state,
empty gradient tensors) are skipped by seeking the next known type tag. The sequence of tags
and every parameter shape are checked against ``facenet.models.dlib_resnet``, so another
network, a truncated file or a different file gives ``ModelFileError`` instead of wrong weights.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from facenet.errors import ModelFileError

WEIGHTS_FILE = "dlib_face_recognition_resnet_model_v1.dat"
_TAGS = (
    "input_rgb_image_sized",
    "con_4",
    "affine_",
    "relu_",
    "max_pool_2",
    "avg_pool_2",
    "add_prev_",
    "fc_2",
    "loss_metric_2",
)
_TAG_PATTERN = re.compile(b"|".join(bytes([1, len(t)]) + t.encode() for t in _TAGS))


@dataclass
class DlibLayer:
    """One layer as stored: its type tag, its parameter values, and the integer settings read after them."""

    tag: str
    params: np.ndarray | None = None
    settings: tuple = ()
    extra: dict = field(default_factory=dict)


class _Reader:
    def __init__(self, data: bytes, path: Path):
        self.data, self.pos, self.path = data, 0, path

    def fail(self, what: str) -> ModelFileError:
        return ModelFileError(f"{self.path}: not a dlib face recognition model ({what} at byte {self.pos})")

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise self.fail("file ends early")
        self.pos += 1
        return self.data[self.pos - 1]

    def integer(self) -> int:
        head = self.byte()
        size = head & 0x0F
        if size > 8:
            raise self.fail("bad integer")
        value = int.from_bytes(bytes(self.byte() for _ in range(size)), "little")
        return -value if head & 0x80 else value

    def real(self) -> float:
        mantissa = self.integer()
        return float(np.ldexp(float(mantissa), self.integer()))

    def tensor(self) -> np.ndarray:
        if self.integer() != 2:
            raise self.fail("unknown tensor version")
        shape = tuple(self.integer() for _ in range(4))
        count = int(np.prod(shape))
        end = self.pos + 4 * count
        if count < 0 or end > len(self.data):
            raise self.fail("tensor runs past the end of the file")
        values = np.frombuffer(self.data, dtype="<f4", count=count, offset=self.pos).astype(np.float32)
        self.pos = end
        return values

    def next_tag(self) -> str | None:
        match = _TAG_PATTERN.search(self.data, self.pos)
        if match is None:
            return None
        self.pos = match.end()
        return match.group()[2:].decode()


def read_dlib_layers(path: str | Path) -> list[DlibLayer]:
    """Every layer of the file, input side first, with the fields the converter uses."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"dlib model file not found: {path}")
    reader = _Reader(path.read_bytes(), path)
    layers = []
    while (tag := reader.next_tag()) is not None:
        layer = DlibLayer(tag)
        if tag == "input_rgb_image_sized":
            layer.extra["mean_rgb"] = tuple(reader.real() for _ in range(3))
            layer.settings = (reader.integer(), reader.integer())
        elif tag == "con_4":
            layer.params = reader.tensor()
            layer.settings = tuple(reader.integer() for _ in range(7))  # filters, nr, nc, stride y/x, pad y/x
        elif tag == "affine_":
            layer.params = reader.tensor()
        elif tag == "fc_2":
            layer.settings = (reader.integer(), reader.integer())  # outputs, inputs
            layer.params = reader.tensor()
        elif tag in ("max_pool_2", "avg_pool_2"):
            layer.settings = tuple(reader.integer() for _ in range(6))  # nr, nc, stride y/x, pad y/x
        layers.append(layer)
    if not layers or layers[0].tag != "loss_metric_2":
        raise ModelFileError(f"{path}: not a dlib metric-learning network (no loss_metric layer)")
    return layers[1:]


def dlib_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], tuple[float, float, float]]:
    """The ``dlib_resnet`` state dict held by dlib's weights file, and the input layer's mean RGB."""
    from facenet.models import create_model

    layers = read_dlib_layers(path)
    model = create_model("dlib_resnet")
    convs = [layer for layer in layers if layer.tag == "con_4"]
    affines = [layer for layer in layers if layer.tag == "affine_"]
    fcs = [layer for layer in layers if layer.tag == "fc_2"]
    inputs = [layer for layer in layers if layer.tag == "input_rgb_image_sized"]
    targets = [(model.conv1, model.bn1)] + [
        (getattr(b, f"conv{i}"), getattr(b, f"bn{i}")) for b in model.blocks for i in (1, 2)
    ]
    if len(convs) != len(targets) or len(affines) != len(targets) or len(fcs) != 1 or len(inputs) != 1:
        raise ModelFileError(
            f"{path}: layer counts ({len(convs)} conv, {len(affines)} affine, {len(fcs)} fc) "
            f"do not match dlib's face ResNet ({len(targets)} conv, {len(targets)} affine, 1 fc)"
        )
    if inputs[0].settings != (model.input_size, model.input_size):
        raise ModelFileError(f"{path}: input size {inputs[0].settings}, expected 150x150")
    state: dict[str, torch.Tensor] = {}
    names = {module: name for name, module in model.named_modules()}
    for (conv, bn), con, affine in zip(targets, convs, affines):
        _check_conv(path, conv, con)
        weight_count = conv.weight.numel()
        state[names[conv] + ".weight"] = torch.from_numpy(con.params[:weight_count].reshape(conv.weight.shape))
        state[names[conv] + ".bias"] = torch.from_numpy(con.params[weight_count:])
        _frozen_bn(state, names[bn], affine.params, conv.out_channels, path)
    outputs, inputs_count = fcs[0].settings
    if (outputs, inputs_count) != (model.embedding_size, model.feature_size) or fcs[
        0
    ].params.size != outputs * inputs_count:
        raise ModelFileError(
            f"{path}: final layer {inputs_count}->{outputs}, expected "
            f"{model.feature_size}->{model.embedding_size} without bias"
        )
    # dlib's fc weights are (inputs, outputs), row-major: output = x @ W.
    state["last_linear.weight"] = torch.from_numpy(fcs[0].params.reshape(inputs_count, outputs).T.copy())
    ones = np.ones(outputs, np.float32)
    _frozen_bn(state, "last_bn", np.concatenate([ones, 0 * ones]), outputs, path, eps=model.last_bn.eps)
    return state, inputs[0].extra["mean_rgb"]


def _check_conv(path: Path, conv: torch.nn.Conv2d, con: DlibLayer) -> None:
    filters, nr, nc, stride_y, stride_x, pad_y, pad_x = con.settings
    expected = (conv.out_channels, *conv.kernel_size, *conv.stride, *conv.padding)
    if (
        filters,
        nr,
        nc,
        stride_y,
        stride_x,
        pad_y,
        pad_x,
    ) != expected or con.params.size != conv.weight.numel() + conv.out_channels:
        raise ModelFileError(
            f"{path}: convolution {con.settings} with {con.params.size} values does not match "
            f"dlib's face ResNet (expected {expected})"
        )


def _frozen_bn(state: dict, prefix: str, gamma_beta: np.ndarray, channels: int, path: Path, eps: float = 1e-5) -> None:
    """An affine layer (gamma, beta) as BatchNorm: running mean 0, running var 1 - eps, so BN(x) = gamma x + beta."""
    if gamma_beta.size != 2 * channels:
        raise ModelFileError(f"{path}: affine layer with {gamma_beta.size} values for {channels} channels")
    state[f"{prefix}.weight"] = torch.from_numpy(gamma_beta[:channels].copy())
    state[f"{prefix}.bias"] = torch.from_numpy(gamma_beta[channels:].copy())
    state[f"{prefix}.running_mean"] = torch.zeros(channels)
    state[f"{prefix}.running_var"] = torch.full((channels,), 1.0 - eps)
    state[f"{prefix}.num_batches_tracked"] = torch.tensor(0)
