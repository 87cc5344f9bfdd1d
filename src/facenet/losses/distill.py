"""Knowledge distillation: a student's embeddings pulled towards a teacher's.

Two terms, on unit embeddings: *agreement* — the mean squared L2 between a face's student and teacher
embeddings (only when both have the same size; it fixes the student's space to the teacher's) — and
*relations* — the mean squared difference of the squared L2 distances between every two faces of the
batch, student against teacher (any sizes: the decisions of verification live in these distances).
"""

from __future__ import annotations

import torch

from facenet.losses.miners import pairwise_sq_dists


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(loss, stats) for unit rows ``student`` (N, D) and ``teacher`` (N, D'), the teacher's without gradient;
    the stats are detached 0-d tensors (the host reads them only at steps that log)."""
    if len(student) != len(teacher):
        raise ValueError(f"{len(student)} student embeddings but {len(teacher)} teacher embeddings")
    teacher = teacher.detach().to(student.dtype)
    upper = torch.triu_indices(len(student), len(student), offset=1, device=student.device)
    gap = pairwise_sq_dists(student)[upper[0], upper[1]] - pairwise_sq_dists(teacher)[upper[0], upper[1]]
    relations = gap.pow(2).mean() if gap.numel() else student.sum() * 0
    loss, stats = relations, {"distill_relations": relations.detach()}
    if student.shape[1] == teacher.shape[1]:
        agreement = (student - teacher).pow(2).sum(1).mean()
        loss = loss + agreement
        stats["distill_agreement"] = agreement.detach()
    return loss, stats
