"""``reid_mobilenet``: the network of Intel's face-reidentification-retail-0095, in PyTorch.

Intel publishes the network only as OpenVINO IR (``facenet.models.openvino_ir`` reads it); this is
its layout, as the IR's graph gives it: MobileNetV2 inverted-residual bottlenecks (1x1 expansion ->
3x3 depthwise -> linear 1x1 projection) each followed by squeeze-and-excitation, PReLU with one
slope per layer, batch norm already folded into the convolutions (so every convolution has a bias),
and a global depthwise 8x8 convolution instead of average pooling, as in MobileFaceNet. 128x128
input, 512-D features, a 256-D embedding (the published 1x1 convolution is ``last_linear``;
``last_bn`` is the identity). 1.1M parameters.

The published network takes BGR pixels and normalises them per channel itself; the converter
turns that first step into ``input_scale``/``input_shift`` for RGB input in [0, 1] (the ``unit``
standardisation), so crops reach it like any other model's.
"""

from __future__ import annotations

import torch
from torch import nn

from facenet.errors import BadImageError
from facenet.models import register
from facenet.models.base import EmbeddingModel

# One bottleneck per row: (input channels, expanded channels, output channels, stride).
BLOCKS = (
    (64, 128, 64, 2),
    *[(64, 128, 64, 1)] * 4,
    (64, 256, 128, 2),
    *[(128, 256, 128, 1)] * 6,
    (128, 512, 128, 2),
    *[(128, 256, 128, 1)] * 2,
)
SE_REDUCTION = 8


def _conv(
    cin: int, cout: int, kernel: int = 1, stride: int = 1, depthwise: bool = False, padding: int | None = None
) -> nn.Conv2d:
    return nn.Conv2d(
        cin, cout, kernel, stride, kernel // 2 if padding is None else padding, groups=cin if depthwise else 1
    )


class SqueezeExcite(nn.Module):
    """Channel weights from the pooled map: 1x1 reduce -> PReLU -> 1x1 expand -> sigmoid."""

    def __init__(self, channels: int):
        super().__init__()
        self.reduce = _conv(channels, channels // SE_REDUCTION)
        self.act = nn.PReLU(1)
        self.expand = _conv(channels // SE_REDUCTION, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.expand(self.act(self.reduce(x.mean(dim=(2, 3), keepdim=True))))
        return x * torch.sigmoid(weights)


class Bottleneck(nn.Module):
    """Expand 1x1 -> PReLU -> depthwise 3x3 -> PReLU -> project 1x1 -> squeeze-excite (+ input)."""

    def __init__(self, cin: int, hidden: int, cout: int, stride: int):
        super().__init__()
        self.residual = stride == 1 and cin == cout
        self.expand = _conv(cin, hidden)
        self.act1 = nn.PReLU(1)
        self.depthwise = _conv(hidden, hidden, 3, stride, depthwise=True)
        self.act2 = nn.PReLU(1)
        self.project = _conv(hidden, cout)
        self.excite = SqueezeExcite(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.excite(self.project(self.act2(self.depthwise(self.act1(self.expand(x))))))
        return x + y if self.residual else y


@register("reid_mobilenet")
class ReidMobileNet(EmbeddingModel):
    """face-reidentification-retail-0095's layout; features are the 512-D global depthwise output."""

    input_size = 128

    def __init__(self, embedding_size: int = 256, dropout: float = 0.0, num_classes: int | None = None):
        super().__init__(512, embedding_size=embedding_size, dropout=dropout, num_classes=num_classes)
        # Per-channel affine map of the input, set by the converter (identity for a fresh network).
        self.register_buffer("input_scale", torch.ones(3))
        self.register_buffer("input_shift", torch.zeros(3))
        self.stem = nn.Sequential(_conv(3, 64, 3, 2), nn.PReLU(1), _conv(64, 64, 3, depthwise=True), nn.PReLU(1))
        self.blocks = nn.Sequential(*[Bottleneck(*block) for block in BLOCKS])
        self.widen = nn.Sequential(_conv(BLOCKS[-1][2], 512), nn.PReLU(1))
        self.final_size = self.input_size // 16
        self.gdc = _conv(512, 512, self.final_size, depthwise=True, padding=0)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            raise BadImageError(
                f"reid_mobilenet needs {self.input_size}x{self.input_size} face crops, "
                f"got {x.shape[-2]}x{x.shape[-1]}; resize or re-align the faces"
            )
        x = x * self.input_scale.view(1, 3, 1, 1) + self.input_shift.view(1, 3, 1, 1)
        return self.gdc(self.widen(self.blocks(self.stem(x)))).flatten(1)
