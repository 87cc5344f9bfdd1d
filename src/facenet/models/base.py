"""The embedding head shared by every backbone: the paper's L2-normalised embedding.

Backbones subclass ``EmbeddingModel`` and implement ``features``; the head's
attribute names (``last_linear``, ``last_bn``, ``logits``) follow the published
PyTorch port of the FaceNet models so their state dicts load unchanged.
"""

from __future__ import annotations

import torch
from torch import nn


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """Project rows onto the unit sphere; an all-zero row maps to a fixed unit vector.

    ``F.normalize`` would return a zero vector for a zero row, breaking the
    ||f(x)|| = 1 invariant that every distance threshold relies on.
    """
    norm = x.norm(p=2, dim=1, keepdim=True)
    fallback = torch.full_like(x, x.shape[1] ** -0.5)
    return torch.where(norm > 1e-12, x / norm.clamp_min(1e-12), fallback)


class EmbeddingModel(nn.Module):
    """Backbone features -> bottleneck linear (no bias) -> BatchNorm -> L2 normalisation."""

    arch: str = ""
    input_size: int = 160

    def __init__(
        self, feature_size: int, embedding_size: int = 128, dropout: float = 0.0, num_classes: int | None = None
    ):
        super().__init__()
        self.feature_size = feature_size
        self.embedding_size = embedding_size
        self.dropout = nn.Dropout(dropout)
        self.last_linear = nn.Linear(feature_size, embedding_size, bias=False)
        self.last_bn = nn.BatchNorm1d(embedding_size, eps=0.001, momentum=0.1, affine=True)
        self.logits = nn.Linear(embedding_size, num_classes) if num_classes else None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features, shape (N, feature_size), from standardised N,3,H,W input."""
        raise NotImplementedError

    def prelogits(self, x: torch.Tensor) -> torch.Tensor:
        """The un-normalised bottleneck (after BatchNorm); softmax heads are trained on it."""
        return self.last_bn(self.last_linear(self.dropout(self.features(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return l2_normalize(self.prelogits(x))

    def reset_head(self, embedding_size: int) -> None:
        """Replace the head with a freshly initialised one of another size (keeps the backbone)."""
        device = self.last_linear.weight.device
        self.embedding_size = embedding_size
        self.last_linear = nn.Linear(self.feature_size, embedding_size, bias=False).to(device)
        self.last_bn = nn.BatchNorm1d(embedding_size, eps=0.001, momentum=0.1, affine=True).to(device)
        self.logits = None
