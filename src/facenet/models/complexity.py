"""Model size and cost measured from the code, not copied from papers.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` for one image:
convolutions and matrix products, a multiply-add counted as 2 FLOPs. BatchNorm,
activations and pooling are not counted (they are a few percent). MACs = FLOPs / 2,
the unit most papers quote as "FLOPs" or "mult-adds".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from facenet.models import create_model, list_models


def count_parameters(model: nn.Module) -> int:
    """All parameters (trainable or frozen); BatchNorm running statistics are buffers, not counted."""
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, input_size: int | None = None) -> int:
    """FLOPs of one forward pass on one ``input_size`` x ``input_size`` RGB image."""
    size = input_size or model.input_size
    was_training = model.training
    model.eval()  # BatchNorm1d refuses a batch of one in training mode
    try:
        param = next(model.parameters())
        x = torch.zeros(1, 3, size, size, dtype=param.dtype, device=param.device)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops()


@dataclass(frozen=True)
class Complexity:
    name: str
    params: int
    flops: int
    input_size: int
    embedding_size: int

    @property
    def macs(self) -> int:
        return self.flops // 2

    @property
    def gflops(self) -> float:
        return self.flops / 1e9


def describe_models(embedding_size: int = 128) -> list[Complexity]:
    """One row per registered architecture, with its default input size and the given head size.

    Models are built on the ``meta`` device: shapes only, so counting needs no memory or compute.
    """
    rows = []
    for name in list_models():
        with torch.device("meta"):
            model = create_model(name, embedding_size=embedding_size)
        rows.append(Complexity(name, count_parameters(model), count_flops(model), model.input_size, embedding_size))
    return rows
