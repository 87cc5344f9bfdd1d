"""``dlib_resnet``: dlib's 29-layer face ResNet (``dlib_face_recognition_resnet_model_v1``) in PyTorch.

The layout follows the network definition dlib publishes with its face recognition example
(``anet_type``): a 7x7/2 convolution with 32 filters and a 3x3/2 max pool, then residual
stages of 32, 64, 128, 256 and 256 filters (3, 4, 3, 3 and 1 blocks; every stage after the
first starts with a stride-2 block), global average pooling and a 128-unit linear layer
without bias. Facts of dlib's layers that the port must reproduce:

- convolutions pad ``k // 2`` at stride 1 and **not at all** at stride 2;
- a down-sampling block's shortcut is a 2x2/2 average pool of its input (no projection); the
  two branches are added over the overlapping region with zeros elsewhere (dlib's ``add_prev``
  sizes its output to the larger of each dimension): extra channels, and at the 8 -> 3|4 px step
  an extra row and column;
- dlib's trained model stores ``affine`` layers (frozen batch norm: ``gamma * x + beta``);
  here they are BatchNorm layers holding gamma and beta with neutral running statistics,
  so the converted network is exact in eval mode and can be fine-tuned like any other.

Input: 150x150 chips, standardised as dlib's input layer does, ``(x - mean RGB) / 256``
(the ``"dlib"`` standardisation). ``facenet.models.dlib_format`` reads dlib's weights file.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from facenet.models import register
from facenet.models.base import EmbeddingModel

BN_EPS = 1e-5  # dlib's batch-norm epsilon

# (filters, blocks, first block down-samples) per stage, input side first.
STAGES = ((32, 3, False), (64, 4, True), (128, 3, True), (256, 3, True), (256, 1, True))


def _conv(cin: int, cout: int, kernel: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2 if stride == 1 else 0)


class ResidualBlock(nn.Module):
    """conv 3x3 (stride 1|2) -> BN -> ReLU -> conv 3x3 -> BN, plus the shortcut, then ReLU."""

    def __init__(self, cin: int, cout: int, down: bool):
        super().__init__()
        self.down = down
        self.conv1 = _conv(cin, cout, 3, 2 if down else 1)
        self.bn1 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.conv2 = _conv(cout, cout, 3, 1)
        self.bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        body = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = F.avg_pool2d(x, 2, 2) if self.down else x
        return F.relu(_add_padded(body, shortcut))


def _add_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's ``add_prev``: the sum over the common region; the larger tensor's values elsewhere."""
    channels, height, width = (max(a.shape[i], b.shape[i]) for i in (1, 2, 3))

    def grow(t: torch.Tensor) -> torch.Tensor:
        pad = (0, width - t.shape[3], 0, height - t.shape[2], 0, channels - t.shape[1])
        return F.pad(t, pad) if any(pad) else t

    return grow(a) + grow(b)


@register("dlib_resnet")
class DlibResNet(EmbeddingModel):
    """dlib's face ResNet: stem -> 5 residual stages -> global average pool -> 256-D features."""

    input_size = 150

    def __init__(self, embedding_size: int = 128, dropout: float = 0.0, num_classes: int | None = None):
        super().__init__(STAGES[-1][0], embedding_size, dropout, num_classes)
        self.conv1 = _conv(3, 32, 7, 2)
        self.bn1 = nn.BatchNorm2d(32, eps=BN_EPS)
        blocks, cin = [], 32
        for filters, count, down in STAGES:
            for i in range(count):
                blocks.append(ResidualBlock(cin, filters, down and i == 0))
                cin = filters
        self.blocks = nn.Sequential(*blocks)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2)
        return self.blocks(x).mean(dim=(2, 3))
