"""Inception-ResNet-v1, the backbone of Sandberg's FaceNet models (Szegedy et al. 2016).

Layer names and shapes follow the published PyTorch port (facenet-pytorch), so its
VGGFace2 / CASIA-WebFace state dicts load strictly (see ``facenet.models.convert``).
Convolutions inside branches have no bias and are followed by BatchNorm(eps=1e-3),
as in the TensorFlow original; the residual up-projections (``conv2d``) keep a bias.
"""

from __future__ import annotations

import torch
from torch import nn

from facenet.models import register
from facenet.models.base import EmbeddingModel


class BasicConv2d(nn.Module):
    """Conv (no bias) -> BatchNorm -> ReLU."""

    def __init__(self, in_planes: int, out_planes: int, kernel_size, stride: int = 1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(in_planes, out_planes, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_planes, eps=0.001, momentum=0.1)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


def _chain(*convs: tuple) -> nn.Module:
    """A branch from (in, out, kernel, stride, padding) tuples; a single conv is not wrapped,
    which is what the published state-dict keys expect (``branch0.conv`` vs ``branch1.0.conv``)."""
    layers = [BasicConv2d(*spec) for spec in convs]
    return layers[0] if len(layers) == 1 else nn.Sequential(*layers)


class Concat(nn.Module):
    """Parallel branches (``branch0``, ``branch1``, ...) concatenated along channels."""

    def __init__(self, *branches: nn.Module):
        super().__init__()
        self.num_branches = len(branches)
        for i, branch in enumerate(branches):
            self.add_module(f"branch{i}", branch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([getattr(self, f"branch{i}")(x) for i in range(self.num_branches)], 1)


class ResidualInception(Concat):
    """x + scale * conv1x1(concat(branches(x))), then ReLU unless it is the last block."""

    def __init__(self, channels: int, branch_channels: int, scale: float, *branches: nn.Module, relu: bool = True):
        super().__init__(*branches)
        self.scale = scale
        self.conv2d = nn.Conv2d(branch_channels, channels, kernel_size=1)
        self.relu = nn.ReLU() if relu else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(x + self.scale * self.conv2d(super().forward(x)))


def block35(scale: float = 0.17) -> ResidualInception:
    """35x35 grid block (17x17 at 160 px input), 256 channels."""
    return ResidualInception(
        256,
        96,
        scale,
        _chain((256, 32, 1)),
        _chain((256, 32, 1), (32, 32, 3, 1, 1)),
        _chain((256, 32, 1), (32, 32, 3, 1, 1), (32, 32, 3, 1, 1)),
    )


def block17(scale: float = 0.10) -> ResidualInception:
    """17x17 grid block (8x8 at 160 px), 896 channels, factorised 7x7."""
    return ResidualInception(
        896,
        256,
        scale,
        _chain((896, 128, 1)),
        _chain((896, 128, 1), (128, 128, (1, 7), 1, (0, 3)), (128, 128, (7, 1), 1, (3, 0))),
    )


def block8(scale: float = 0.20, relu: bool = True) -> ResidualInception:
    """8x8 grid block (3x3 at 160 px), 1792 channels, factorised 3x3."""
    return ResidualInception(
        1792,
        384,
        scale,
        _chain((1792, 192, 1)),
        _chain((1792, 192, 1), (192, 192, (1, 3), 1, (0, 1)), (192, 192, (3, 1), 1, (1, 0))),
        relu=relu,
    )


def mixed_6a() -> Concat:
    """Reduction 256 -> 896 channels, stride 2."""
    return Concat(
        _chain((256, 384, 3, 2)),
        _chain((256, 192, 1), (192, 192, 3, 1, 1), (192, 256, 3, 2)),
        nn.MaxPool2d(3, stride=2),
    )


def mixed_7a() -> Concat:
    """Reduction 896 -> 1792 channels, stride 2."""
    return Concat(
        _chain((896, 256, 1), (256, 384, 3, 2)),
        _chain((896, 256, 1), (256, 256, 3, 2)),
        _chain((896, 256, 1), (256, 256, 3, 1, 1), (256, 256, 3, 2)),
        nn.MaxPool2d(3, stride=2),
    )


@register("inception_resnet_v1")
class InceptionResnetV1(EmbeddingModel):
    """The FaceNet backbone: ~23.5M parameters with a 512-D head, 1792-D pooled features."""

    input_size = 160

    def __init__(self, embedding_size: int = 128, dropout: float = 0.0, num_classes: int | None = None):
        super().__init__(1792, embedding_size=embedding_size, dropout=dropout, num_classes=num_classes)
        self.conv2d_1a = BasicConv2d(3, 32, 3, stride=2)
        self.conv2d_2a = BasicConv2d(32, 32, 3)
        self.conv2d_2b = BasicConv2d(32, 64, 3, padding=1)
        self.maxpool_3a = nn.MaxPool2d(3, stride=2)
        self.conv2d_3b = BasicConv2d(64, 80, 1)
        self.conv2d_4a = BasicConv2d(80, 192, 3)
        self.conv2d_4b = BasicConv2d(192, 256, 3, stride=2)
        self.repeat_1 = nn.Sequential(*(block35(0.17) for _ in range(5)))
        self.mixed_6a = mixed_6a()
        self.repeat_2 = nn.Sequential(*(block17(0.10) for _ in range(10)))
        self.mixed_7a = mixed_7a()
        self.repeat_3 = nn.Sequential(*(block8(0.20) for _ in range(5)))
        self.block8 = block8(1.0, relu=False)
        self.avgpool_1a = nn.AdaptiveAvgPool2d(1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        for layer in (
            self.conv2d_1a,
            self.conv2d_2a,
            self.conv2d_2b,
            self.maxpool_3a,
            self.conv2d_3b,
            self.conv2d_4a,
            self.conv2d_4b,
            self.repeat_1,
            self.mixed_6a,
            self.repeat_2,
            self.mixed_7a,
            self.repeat_3,
            self.block8,
            self.avgpool_1a,
        ):
            x = layer(x)
        return x.flatten(1)
