"""Read an OpenVINO IR (``.xml`` graph + ``.bin`` constants) without OpenVINO.

Only what converting face-reidentification-retail-0095 into ``reid_mobilenet`` needs: the XML lists
the layers and the edges between them; each ``Const`` layer names its type, shape, offset and size
in the ``.bin``. Walking the graph in dependency order gives the network's constants in the order
the computation uses them, which is the order ``reid_mobilenet`` declares its parameters in; every
shape is checked on the way, so a different network fails with a message, not wrong weights.
"""

from __future__ import annotations

import graphlib
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from facenet.errors import ModelFileError

EMBEDDING_SIZE = 256  # face-reidentification-retail-0095 gives 256-D embeddings
ELEMENT_TYPES = {"f16": np.float16, "f32": np.float32}
# Layers whose computation the converted network reproduces; anything else (a quantised IR's
# FakeQuantize, a reshape) means another network.
SUPPORTED = {
    "Parameter",
    "Const",
    "Convert",
    "Multiply",
    "Add",
    "Convolution",
    "GroupConvolution",
    "PReLU",
    "AvgPool",
    "Sigmoid",
    "Result",
}


@dataclass
class Layer:
    id: str
    type: str
    name: str
    constants: list[np.ndarray] = field(default_factory=list)  # inputs that are constants, in port order
    inputs: list[str] = field(default_factory=list)  # ids of the computed inputs


def read_ir(xml_path: str | os.PathLike) -> list[Layer]:
    """The computing layers of the IR at ``xml_path`` (its ``.bin`` beside it), in dependency order."""
    xml_path = Path(xml_path)
    bin_path = xml_path.with_suffix(".bin")
    for path in (xml_path, bin_path):
        if not path.is_file():
            raise ModelFileError(f"OpenVINO IR file not found: {path} (an IR is an .xml and a .bin side by side)")
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as exc:
        raise ModelFileError(f"{xml_path}: not an OpenVINO IR ({exc})") from None
    if root.tag != "net" or root.find("layers") is None or root.find("edges") is None:
        raise ModelFileError(f"{xml_path}: not an OpenVINO IR (no <net> with layers and edges)")
    blob = bin_path.read_bytes()
    elements = {el.get("id"): el for el in root.find("layers")}
    unsupported = sorted({el.get("type") for el in elements.values()} - SUPPORTED)
    if unsupported:
        raise ModelFileError(
            f"{xml_path}: layers of type {', '.join(unsupported)} are not supported; "
            "use the FP16 or FP32 IR of face-reidentification-retail-0095, not the INT8 one"
        )
    sources: dict[str, list[tuple[int, str]]] = {}
    for edge in root.find("edges"):
        sources.setdefault(edge.get("to-layer"), []).append((int(edge.get("to-port")), edge.get("from-layer")))

    def constant(layer_id: str) -> np.ndarray | None:
        """The value of a Const (seen through Convert layers), None for a computed value."""
        element = elements[layer_id]
        if element.get("type") == "Convert":
            return constant(min(sources[layer_id])[1])
        if element.get("type") != "Const":
            return None
        data = element.find("data")
        dtype = ELEMENT_TYPES.get(data.get("element_type"))
        offset, size = int(data.get("offset")), int(data.get("size"))
        shape = tuple(int(d) for d in data.get("shape").replace(" ", "").split(",") if d)
        if dtype is None or offset + size > len(blob) or size != int(np.prod(shape)) * np.dtype(dtype).itemsize:
            raise ModelFileError(
                f"{bin_path}: constant {element.get('name')!r} does not fit the file "
                "(truncated .bin, or the .bin of another IR)"
            )
        return np.frombuffer(blob, dtype, int(np.prod(shape)), offset).astype(np.float32).reshape(shape)

    computing = [i for i, el in elements.items() if el.get("type") not in ("Const", "Convert")]
    order = graphlib.TopologicalSorter({i: [src for _, src in sources.get(i, [])] for i in computing})
    layers = []
    for layer_id in order.static_order():
        if layer_id not in computing:
            continue
        layer = Layer(layer_id, elements[layer_id].get("type"), elements[layer_id].get("name", ""))
        for _, src in sorted(sources.get(layer_id, [])):
            value = constant(src)
            if value is None:
                layer.inputs.append(src)
            else:
                layer.constants.append(value)
        layers.append(layer)
    return layers


def reid_state_dict(xml_path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """face-reidentification-retail-0095's IR as a ``reid_mobilenet`` state dict for RGB input in [0, 1].

    The IR's constants, in the order its graph uses them (input scale, input shift, then each
    convolution's weight and bias and each PReLU's slope), fill the model's parameters in the order
    it declares them, ending with the 1x1 embedding convolution as ``last_linear``.
    """
    from facenet.models import create_model

    layers = read_ir(xml_path)
    constants = [c for layer in layers for c in layer.constants]
    model = create_model("reid_mobilenet", embedding_size=EMBEDDING_SIZE)
    state = model.state_dict()
    keys = [k for k in state if not k.startswith(("last_bn.", "last_linear."))] + ["last_linear.weight"]
    residuals = sum(1 for layer in layers if layer.type == "Add" and len(layer.inputs) == 2)
    expected_residuals = sum(1 for block in model.blocks if block.residual)
    if len(constants) != len(keys) or residuals != expected_residuals:
        raise ModelFileError(
            f"{xml_path}: {len(constants)} constants and {residuals} residual additions, where "
            f"face-reidentification-retail-0095 has {len(keys)} and {expected_residuals}; "
            "this IR holds another network"
        )
    for key, value in zip(keys, constants):
        if value.size != state[key].numel():
            raise ModelFileError(
                f"{xml_path}: a constant of shape {value.shape} where {key} has "
                f"{tuple(state[key].shape)}; this IR holds another network"
            )
        state[key] = torch.from_numpy(value.copy()).reshape(state[key].shape)
    # BGR pixels in [0, 255] -> RGB in [0, 1]: reverse the channels and take the 255 into the scale.
    state["input_scale"] = state["input_scale"].flip(0) * 255.0
    state["input_shift"] = state["input_shift"].flip(0)
    state["stem.0.weight"] = state["stem.0.weight"].flip(1)
    # ``last_bn`` passes the embedding through unchanged: eval-mode x / sqrt(var + eps) with var = 1 - eps.
    state["last_bn.running_var"] = torch.full_like(state["last_bn.running_var"], 1.0 - model.last_bn.eps)
    return state
