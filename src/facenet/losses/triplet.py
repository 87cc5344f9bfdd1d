"""The FaceNet triplet loss on squared L2 distances: max(d(a,p) - d(a,n) + margin, 0)."""

from __future__ import annotations

import torch
from torch import nn

from facenet.errors import FaceNetError
from facenet.losses.miners import full_precision, get_miner, miner_accepts, pairwise_sq_dists


def triplet_loss(
    embeddings: torch.Tensor,
    a: torch.Tensor,
    p: torch.Tensor,
    n: torch.Tensor,
    margin: float = 0.2,
    dists: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean hinge loss over the *active* triplets (positive loss), and the active fraction (a 0-d tensor: the
    host need not wait for the device to know it).

    Averaging over active triplets only (pytorch-metric-learning's AvgNonZeroReducer) keeps the
    gradient from shrinking as more triplets become easy. With no active triplet the loss is
    a zero that still belongs to the graph (``backward`` works) and the fraction is 0.

    Distances are taken from ``dists`` (a differentiable ``pairwise_sq_dists`` matrix, cheapest
    when there are many triplets) or, without it, computed exactly from the rows.
    """
    if dists is None:
        d_ap = (embeddings[a] - embeddings[p]).pow(2).sum(dim=1)
        d_an = (embeddings[a] - embeddings[n]).pow(2).sum(dim=1)
    else:
        d_ap, d_an = dists[a, p], dists[a, n]
    losses = torch.relu(d_ap - d_an + margin)
    active = losses > 0
    num_active = active.sum()
    return losses.sum() / num_active.clamp_min(1), num_active / max(len(losses), 1)


class TripletLoss(nn.Module):
    """Miner + triplet loss in one call: ``loss, stats = TripletLoss()(embeddings, labels)``.

    ``stats`` (for logging; 0-d tensors but num_triplets, so reading them is left to the steps
    that log): num_triplets, active_fraction (of the mined triplets), d_ap and d_an (mean
    distances over the mined triplets; NaN when none).
    The distance matrix is computed once and shared by mining and (for many triplets) the loss.
    """

    def __init__(self, miner: str = "semihard", margin: float = 0.2, generator: torch.Generator | None = None):
        super().__init__()
        if margin <= 0:
            raise FaceNetError(f"triplet margin must be positive, got {margin}")
        self.miner_name = miner
        self.mine = get_miner(miner)
        self.margin = margin
        self.options = {"generator": generator} if miner_accepts(self.mine, "generator") else {}

    def forward(
        self, embeddings: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        with torch.autocast(embeddings.device.type, enabled=False):  # float32 under mixed precision
            return self._mine_and_score(full_precision(embeddings), labels)

    def _mine_and_score(
        self, embeddings: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        dists = pairwise_sq_dists(embeddings)
        a, p, n = self.mine(embeddings, labels, self.margin, dists=dists, **self.options)
        # few triplets: exact row differences, backward O(T d); many: gather from the matrix,
        # backward O(N^2 d); the switch is where the row gather would outgrow the matrix
        rows = len(a) * embeddings.shape[1] <= dists.numel()
        loss, active = triplet_loss(embeddings, a, p, n, self.margin, dists=None if rows else dists)
        with torch.no_grad():
            stats = {
                "num_triplets": float(len(a)),
                "active_fraction": active,
                "d_ap": dists[a, p].mean(),  # the mean of none is NaN
                "d_an": dists[a, n].mean(),
            }
        return loss, stats

    def extra_repr(self) -> str:
        return f"miner={self.miner_name!r}, margin={self.margin}"
