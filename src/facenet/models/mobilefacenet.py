"""MobileFaceNet (Chen et al. 2018): a ~1M-parameter face embedder for CPUs and phones.

MobileNetV2 inverted-residual bottlenecks with PReLU, and a *global depthwise
convolution* (GDC) instead of average pooling: faces are aligned, so the centre
of the last feature map matters more than its border, and GDC learns that weighting.
The input is 160 px (one crop size for every architecture), so the last map is
10x10 and the GDC kernel is 10x10. 160 px has twice the pixels of the paper's
112 px, which would double its cost (0.90 GFLOPs); the widths are the paper's,
but 3 of the 5 blocks at 40x40 and 4 of the 6 at 20x20 move to the 10x10 stage,
where they cost a quarter as much: 0.97M parameters, 0.57 GFLOPs (0.29 GMACs).
"""

from __future__ import annotations

import torch
from torch import nn

from facenet.errors import BadImageError
from facenet.models import register
from facenet.models.base import EmbeddingModel

# (expansion t, output channels c, repeats n, first stride s); paper's Table 1 has n = 5, 1, 6, 1, 2.
STAGES = ((2, 64, 2, 2), (4, 128, 1, 2), (2, 128, 2, 1), (4, 128, 1, 2), (2, 128, 6, 1))


class ConvBN(nn.Sequential):
    """Conv (no bias) -> BatchNorm -> PReLU (or nothing, for linear layers)."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int = 1,
        stride: int = 1,
        groups: int = 1,
        act: bool = True,
        padding: int | None = None,
    ):
        padding = kernel // 2 if padding is None else padding
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            *([nn.PReLU(cout)] if act else []),
        )


class Bottleneck(nn.Module):
    """Inverted residual: expand 1x1 -> depthwise 3x3 -> linear 1x1 projection (+ identity)."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int):
        super().__init__()
        hidden = cin * expansion
        self.residual = stride == 1 and cin == cout
        self.body = nn.Sequential(
            ConvBN(cin, hidden), ConvBN(hidden, hidden, 3, stride, groups=hidden), ConvBN(hidden, cout, act=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


@register("mobilefacenet")
class MobileFaceNet(EmbeddingModel):
    """Small, fast backbone; features are the 512-D GDC output (input must be 160x160)."""

    input_size = 160

    def __init__(self, embedding_size: int = 128, dropout: float = 0.0, num_classes: int | None = None):
        super().__init__(512, embedding_size=embedding_size, dropout=dropout, num_classes=num_classes)
        layers: list[nn.Module] = [ConvBN(3, 64, 3, 2), ConvBN(64, 64, 3, groups=64)]
        cin = 64
        for expansion, cout, repeats, stride in STAGES:
            for i in range(repeats):
                layers.append(Bottleneck(cin, cout, stride if i == 0 else 1, expansion))
                cin = cout
        layers.append(ConvBN(cin, 512))
        self.body = nn.Sequential(*layers)
        self.final_size = self.input_size // 16
        self.gdc = ConvBN(512, 512, self.final_size, groups=512, act=False, padding=0)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            raise BadImageError(
                f"mobilefacenet needs {self.input_size}x{self.input_size} face crops, "
                f"got {x.shape[-2]}x{x.shape[-1]}; resize or re-align the faces"
            )
        return self.gdc(self.body(x)).flatten(1)
