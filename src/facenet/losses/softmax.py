"""Classification losses on the prelogits: softmax cross-entropy and centre loss.

Sandberg's published weights were trained this way: logits on the BatchNorm output
(``model.prelogits(x)``), not on the L2-normalised embedding. ``FaceLoss`` combines them with
the triplet loss when a run wants both.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from facenet.errors import FaceNetError
from facenet.losses.miners import full_precision
from facenet.losses.triplet import TripletLoss
from facenet.models.base import l2_normalize


def _check_labels(labels: torch.Tensor, num_classes: int) -> None:
    """Refuse labels outside 0..num_classes-1 when they are on the CPU; reading them on a GPU would make the
    host wait for the device every step, and there the kernels' own index checks stop the run instead."""
    if labels.device.type == "cpu" and len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise FaceNetError(
            f"labels must be identity numbers 0..{num_classes - 1}; got "
            f"{int(labels.min())}..{int(labels.max())}: set num_classes to the "
            "number of training identities"
        )


class SoftmaxHead(nn.Module):
    """A linear classifier over the training identities; ``forward`` returns the CE loss."""

    def __init__(self, embedding_size: int, num_classes: int):
        super().__init__()
        if num_classes < 2:
            raise FaceNetError(f"softmax training needs at least 2 identities, got {num_classes}")
        self.logits = nn.Linear(embedding_size, num_classes)

    def forward(self, prelogits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        _check_labels(labels, self.logits.out_features)
        return F.cross_entropy(self.logits(prelogits), labels)


class CentreLoss(nn.Module):
    """Centre loss (Wen et al. 2016): mean squared distance of each prelogit to its class centre.

    Centres are a buffer updated by a moving average, as in Sandberg's ``center_loss``, not
    learnt by the optimiser: in training mode each call moves the centre of every label in the
    batch by ``update_rate * sum(centre - x)`` over its samples (Sandberg's
    ``center_loss_alfa = 0.95`` is ``update_rate = 0.05``). Being a buffer, the centres are
    saved in checkpoints and resume exactly. Under DDP, keep ``broadcast_buffers`` on (or
    all-gather the batch) so that every rank holds the same centres.
    """

    def __init__(self, embedding_size: int, num_classes: int, update_rate: float = 0.05):
        super().__init__()
        if not 0.0 < update_rate <= 1.0:
            raise FaceNetError(f"centre update_rate must be in (0, 1], got {update_rate}")
        self.update_rate = update_rate
        self.register_buffer("centres", torch.zeros(num_classes, embedding_size))

    def forward(self, prelogits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        _check_labels(labels, len(self.centres))
        batch_centres = self.centres[labels]
        loss = (prelogits - batch_centres).pow(2).mean()
        if self.training:
            with torch.no_grad():
                delta = self.update_rate * (batch_centres - prelogits.detach())
                self.centres.index_add_(0, labels, -delta.to(self.centres.dtype))
        return loss


class FaceLoss(nn.Module):
    """Weighted sum of triplet, softmax and centre losses on one batch of prelogits.

    ``forward(prelogits, labels) -> (loss, stats)``; the triplet part runs on the L2-normalised
    prelogits (the embedding), the other two on the prelogits themselves. A part with weight 0
    is not built. ``stats`` holds each part's value and the triplet statistics (detached tensors: the host
    reads them only at steps that log).
    """

    def __init__(
        self,
        embedding_size: int,
        num_classes: int | None = None,
        triplet_weight: float = 1.0,
        softmax_weight: float = 0.0,
        centre_weight: float = 0.0,
        miner: str = "semihard",
        margin: float = 0.2,
        centre_update_rate: float = 0.05,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        if (
            min(triplet_weight, softmax_weight, centre_weight) < 0
            or triplet_weight + softmax_weight + centre_weight == 0
        ):
            raise FaceNetError("loss weights must be non-negative with at least one positive")
        if (softmax_weight or centre_weight) and not num_classes:
            raise FaceNetError("softmax and centre losses need num_classes (the training identities)")
        self.weights = {"triplet": triplet_weight, "softmax": softmax_weight, "centre": centre_weight}
        self.triplet = TripletLoss(miner, margin, generator) if triplet_weight else None
        self.softmax = SoftmaxHead(embedding_size, num_classes) if softmax_weight else None
        self.centre = CentreLoss(embedding_size, num_classes, centre_update_rate) if centre_weight else None

    def forward(
        self, prelogits: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        # The losses, and the mining inside the triplet part, run in float32 whatever precision
        # the network ran in, so mixed-precision training selects the same triplets as float32.
        with torch.autocast(prelogits.device.type, enabled=False):
            return self._combine(full_precision(prelogits), labels)

    def _combine(
        self, prelogits: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        parts: dict[str, torch.Tensor] = {}
        stats: dict[str, torch.Tensor | float] = {}
        if self.triplet is not None:
            parts["triplet"], tstats = self.triplet(l2_normalize(prelogits), labels)
            stats.update(tstats)
        if self.softmax is not None:
            parts["softmax"] = self.softmax(prelogits, labels)
        if self.centre is not None:
            parts["centre"] = self.centre(prelogits, labels)
        loss = sum(self.weights[k] * v for k, v in parts.items())
        stats.update({f"{k}_loss": v.detach() for k, v in parts.items()})
        return loss, stats
