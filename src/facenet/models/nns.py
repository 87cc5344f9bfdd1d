"""``nns``: a compact residual network that trains fast on a laptop CPU.

In the spirit of the paper's small NNS models: plain 3x3 convolutions in
four stride-2 residual stages, global average pooling. Plain convolutions
(no depthwise ones) are what CPUs run fastest in *training* — depthwise
backward passes are memory-bound — so this is the architecture of the CPU
demo; any input size that is a multiple of 16 works (64 px by default).
"""

from __future__ import annotations

import torch
from torch import nn

from facenet.models import register
from facenet.models.base import EmbeddingModel


def _conv_bn(cin: int, cout: int, kernel: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout, eps=1e-3)]


class ResidualBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(*_conv_bn(cin, cout, 3, stride), nn.ReLU(inplace=True), *_conv_bn(cout, cout, 3, 1))
        self.shortcut = nn.Sequential(*_conv_bn(cin, cout, 1, stride))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


@register("nns")
class NNS(EmbeddingModel):
    """stem (stride 2) -> 3 residual stages (stride 2 each) -> global average pool -> embedding head."""

    input_size = 64

    def __init__(
        self,
        embedding_size: int = 128,
        dropout: float = 0.0,
        num_classes: int | None = None,
        width: int = 32,
        input_size: int | None = None,
    ):
        widths = [width, 2 * width, 4 * width, 8 * width]
        super().__init__(widths[-1], embedding_size, dropout, num_classes)
        if input_size is not None:
            self.input_size = input_size
        self.stem = nn.Sequential(*_conv_bn(3, widths[0], 3, 2), nn.ReLU(inplace=True))
        self.stages = nn.Sequential(*[ResidualBlock(a, b, 2) for a, b in zip(widths, widths[1:])])
        self.pool = nn.AdaptiveAvgPool2d(1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.stages(self.stem(x))).flatten(1)
