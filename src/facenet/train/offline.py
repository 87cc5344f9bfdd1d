"""The paper's offline triplet generation (option 1 of section 3.1).

Every ``offline_every`` steps, a pool of several P x K batches is embedded with
the current weights (no augmentation, eval mode) and mined once over the whole
pool with the configured miner; the next ``offline_every`` steps each train on
their share of those triplets. The mined triplets are part of the checkpoint,
so a resumed run continues with exactly the triplets it would have used.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from facenet.losses import get_miner
from facenet.train.data import StepBatches
from facenet.train.validate import embed_source


class OfflineTriplets:
    def __init__(self, batches: StepBatches, config, device: torch.device, state: dict | None = None):
        self.batches, self.config, self.device = batches, config, device
        self.mined_at: int | None = None
        self.triplets = torch.empty(0, 3, dtype=torch.long)  # dataset indices (anchor, positive, negative)
        if state:
            self.mined_at, self.triplets = int(state["mined_at"]), state["triplets"]

    def state_dict(self) -> dict:
        return {"mined_at": self.mined_at, "triplets": self.triplets}

    def batch(self, step: int, model) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
        """Images (uint8 N,3,H,W), their labels, and this step's triplets as positions into them."""
        every = self.config.offline_every
        if self.mined_at is None or step - self.mined_at >= every:
            self._mine(step - step % every, model)
        share = math.ceil(len(self.triplets) / every) if len(self.triplets) else 0
        part = self.triplets[(step - self.mined_at) * share : (step - self.mined_at + 1) * share]
        used, positions = torch.unique(part.reshape(-1), return_inverse=True)
        positions = positions.reshape(-1, 3)
        source, augment, seed = self.batches.source, self.batches.augment, self.batches.seed
        crops = [augment(source.image(int(i)), np.random.default_rng([seed, step, pos])) for pos, i in enumerate(used)]
        size = self.config.image_size
        images = (
            torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()
            if crops
            else torch.empty(0, 3, size, size, dtype=torch.uint8)
        )
        labels = torch.as_tensor(source.labels[used.numpy()], dtype=torch.int64)
        return images, labels, (positions[:, 0], positions[:, 1], positions[:, 2])

    def _mine(self, step: int, model) -> None:
        pool = np.unique(
            np.concatenate([self.batches.indices(step + i) for i in range(self.config.offline_pool_batches)])
        )
        embeddings = torch.from_numpy(embed_source(model, self.batches.source, pool, self.config, self.device))
        labels = torch.as_tensor(self.batches.source.labels[pool])
        a, p, n = get_miner(self.config.miner)(embeddings, labels, self.config.margin)
        order = torch.randperm(len(a), generator=torch.Generator().manual_seed(self.config.seed * 7919 + step))
        pool_t = torch.as_tensor(pool, dtype=torch.long)
        self.triplets = torch.stack([pool_t[a], pool_t[p], pool_t[n]], dim=1)[order]
        self.mined_at = step
