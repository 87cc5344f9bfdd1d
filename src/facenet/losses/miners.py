"""Triplet miners: pick (anchor, positive, negative) index triplets from a labelled batch.

A miner only *selects*; the loss (``facenet.losses.triplet``) consumes the indices. Selection
is not differentiated, so every miner runs under ``torch.no_grad`` on a squared-L2 distance
matrix computed once, and is fully vectorised (no Python loop over pairs or anchors).

Every miner has the signature ``mine(embeddings, labels, margin, dists=None) -> (a, p, n)``
(LongTensors on the embeddings' device); ``dists`` lets a caller that already holds the
distance matrix pass it in. ``get_miner(name)`` looks one up in ``MINERS``.

Vocabulary, with d = squared L2 and margin m (the paper's alpha):
  * semi-hard negative: d(a,p) < d(a,n) < d(a,p) + m  (violates the margin, but is farther than p)
  * hard negative:      d(a,n) <= d(a,p)
  * active triplet:     d(a,p) - d(a,n) + m > 0      (non-zero loss)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch

from facenet.errors import FaceNetError

Triplets = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def pairwise_sq_dists(embeddings: torch.Tensor) -> torch.Tensor:
    """Squared L2 distances between all rows, (N, N), clamped at 0; differentiable.

    Uses ||x||^2 + ||y||^2 - 2 x.y (one matmul) rather than differences of rows: for unit
    float32 embeddings the cancellation error is ~1e-6 in absolute terms (distances span
    [0, 4]), a thousand times below any margin in use, while the exact per-pair form would cost
    N^2 * d memory. The diagonal is therefore ~1e-7 instead of exactly 0; miners never pair a
    row with itself. Pass float64 embeddings where exact ties matter (the tests do).

    Always at least float32, also inside a mixed-precision (autocast) region: a bfloat16 matmul
    keeps 8 bits of mantissa, distances near 2 would move by ~0.01 (a twentieth of the margin)
    and the semi-hard band, so the chosen triplets, would change with the training precision.
    """
    with torch.autocast(embeddings.device.type, enabled=False):
        e = full_precision(embeddings)
        sq = (e * e).sum(dim=1)
        return (sq[:, None] + sq[None, :] - 2.0 * e @ e.T).clamp_min(0.0)


def full_precision(x: torch.Tensor) -> torch.Tensor:
    """``x`` as float32 when it is a half-precision tensor (float16, bfloat16), else unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive mask without the diagonal, negative mask), both (N, N) bool."""
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same


def _prepare(embeddings: torch.Tensor, labels: torch.Tensor, dists: torch.Tensor | None):
    labels = torch.as_tensor(labels, device=embeddings.device)
    if embeddings.ndim != 2 or labels.shape != embeddings.shape[:1]:
        raise FaceNetError(
            f"miner needs embeddings (N, d) and labels (N,); got {tuple(embeddings.shape)} and "
            f"{tuple(labels.shape)}: pass one label per embedding row"
        )
    d = pairwise_sq_dists(embeddings.detach()) if dists is None else dists.detach()
    return d, labels


def _sorted_negatives(d: torch.Tensor, neg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each anchor's negative distances in ascending order (non-negatives pushed to +inf) and
    the column each sorted entry came from. Sorting once per anchor turns every per-pair
    question ("nearest negative beyond d(a,p)", "negatives closer than d(a,p) + m") into a
    binary search: O(N^2 log N) in all, instead of a (pairs x N) or N^3 mask."""
    return d.masked_fill(~neg, float("inf")).sort(dim=1, stable=True)


def _search_pairs(vals: torch.Tensor, d: torch.Tensor, pos: torch.Tensor, shift: float, right: bool):
    """Every positive pair (a, p), row-major, and where d(a,p) + shift falls in a's sorted
    negatives (``searchsorted`` semantics). Queries go in as an (N, max positives) table so
    the search costs one lookup per pair, not one per matrix cell."""
    a, p = pos.nonzero(as_tuple=True)
    counts = pos.sum(dim=1)
    rank = torch.arange(len(a), device=d.device) - (counts.cumsum(0) - counts)[a]
    table = torch.full((len(d), int(counts.max()) if len(a) else 0), float("inf"), dtype=d.dtype, device=d.device)
    table[a, rank] = d[a, p] + shift
    return a, p, torch.searchsorted(vals, table, right=right)[a, rank]


@torch.no_grad()
def semihard(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    margin: float = 0.2,
    dists: torch.Tensor | None = None,
    fallback: str = "closest_hard",
) -> Triplets:
    """The paper's mining: every anchor-positive pair, each with one semi-hard negative.

    For each ordered pair (a, p), a != p, same label, the negative is the *hardest semi-hard*
    one: the smallest d(a,n) with d(a,p) < d(a,n) < d(a,p) + m (as TensorFlow's
    ``triplet_semihard_loss`` used by FaceNet re-implementations).

    When a pair has no semi-hard negative, ``fallback`` decides:
      * ``"closest_hard"`` (default): the largest d(a,n) <= d(a,p), i.e. the hard negative
        nearest to the semi-hard band. Such a pair is violated, so dropping it would waste a
        signal, while the *hardest* negative is what the paper warns collapses training early.
        (TF's semihard loss makes the same choice when every negative is hard.)
      * ``"drop"``: skip the pair (the paper's strict definition).
    A pair whose negatives are all easy (d(a,n) >= d(a,p) + m) is always dropped: its loss is 0.
    """
    if fallback not in ("closest_hard", "drop"):
        raise FaceNetError(f"unknown semihard fallback {fallback!r}: use 'closest_hard' or 'drop'")
    d, labels = _prepare(embeddings, labels, dists)
    pos, neg = _masks(labels)
    vals, cols = _sorted_negatives(d, neg)
    # k = first sorted position with d(a,n) > d(a,p): the hardest semi-hard candidate
    a, p, k = _search_pairs(vals, d, pos, 0.0, right=True)
    n_cols = vals.shape[1]
    cand = vals[a, k.clamp_max(n_cols - 1)]
    is_semi = (k < n_cols) & (cand < d[a, p] + margin)  # +inf (no such negative) never passes
    chosen, keep = k, is_semi
    if fallback == "closest_hard":
        # sorted entries before k are real negatives with d(a,n) <= d(a,p); k - 1 is the largest
        chosen = torch.where(is_semi, k, k - 1)
        keep = is_semi | (k > 0)
    a, p, chosen = a[keep], p[keep], chosen[keep]
    return a, p, cols[a, chosen]


@torch.no_grad()
def hard(
    embeddings: torch.Tensor, labels: torch.Tensor, margin: float = 0.2, dists: torch.Tensor | None = None
) -> Triplets:
    """Batch-hard (Hermans et al. 2017): per anchor, its farthest positive and nearest negative.

    Anchors without a positive or without a negative in the batch are skipped; ``margin`` is
    unused (kept for the common signature).
    """
    d, labels = _prepare(embeddings, labels, dists)
    if len(d) == 0:
        none = torch.empty(0, dtype=torch.long, device=d.device)
        return none, none, none
    pos, neg = _masks(labels)
    p = d.masked_fill(~pos, -1.0).argmax(dim=1)
    n = d.masked_fill(~neg, float("inf")).argmin(dim=1)
    a = (pos.any(dim=1) & neg.any(dim=1)).nonzero(as_tuple=True)[0]
    return a, p[a], n[a]


def _active_counts(d: torch.Tensor, labels: torch.Tensor, margin: float):
    """Sorted negatives, every positive pair, and its number of negatives with d(a,n) < d(a,p) + m
    (a prefix of the sorted row; the same as d(a,p) - d(a,n) + m > 0 up to rounding)."""
    pos, neg = _masks(labels)
    vals, cols = _sorted_negatives(d, neg)
    a, p, count = _search_pairs(vals, d, pos, margin, right=False)
    return cols, a, p, count, neg


@torch.no_grad()
def batch_all(
    embeddings: torch.Tensor, labels: torch.Tensor, margin: float = 0.2, dists: torch.Tensor | None = None
) -> Triplets:
    """Batch-all: every valid triplet with non-zero loss, d(a,p) - d(a,n) + m > 0.

    Grouped by pair (a, p) in row-major order, negatives nearest first. Work and memory are
    O(N^2 log N + output); the output itself can be large early in training (up to
    N * (K-1) * (N-K) triplets, 123 M for the paper's 45 x 40 batch).
    """
    d, labels = _prepare(embeddings, labels, dists)
    cols, a, p, count, _ = _active_counts(d, labels, margin)
    starts = count.cumsum(0) - count
    total = int(count.sum())
    a, p = a.repeat_interleave(count), p.repeat_interleave(count)
    offset = torch.arange(total, device=d.device) - starts.repeat_interleave(count)
    return a, p, cols[a, offset]


@torch.no_grad()
def sandberg(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    margin: float = 0.2,
    dists: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Triplets:
    """davidsandberg/facenet's ``select_triplets``: per anchor-positive pair, a *random* negative
    among those with d(a,n) - d(a,p) < m (so hard negatives are allowed too).

    Pairs with no such negative are dropped. Differences from the original: every ordered
    pair (a, p) is used (Sandberg takes a < p only) and the choice is drawn, vectorised, from
    ``generator`` (seed it for reproducible selection; it may live on the CPU or the device).
    """
    d, labels = _prepare(embeddings, labels, dists)
    cols, a, p, count, _ = _active_counts(d, labels, margin)
    keep = count > 0
    a, p, count = a[keep], p[keep], count[keep]
    # drawn where the generator lives (a CPU generator works with CUDA embeddings too)
    u = torch.rand(
        len(a), generator=generator, dtype=torch.float64, device=generator.device if generator is not None else d.device
    ).to(d.device)
    pick = (u * count).long().clamp_max(count - 1)
    return a, p, cols[a, pick]


MINERS: dict[str, Callable[..., Triplets]] = {
    "semihard": semihard,
    "hard": hard,
    "all": batch_all,
    "sandberg": sandberg,
}


def get_miner(name: str) -> Callable[..., Triplets]:
    """The miner function registered under ``name`` (see ``MINERS``)."""
    try:
        return MINERS[name]
    except KeyError:
        raise FaceNetError(f"unknown miner {name!r}: choose one of {', '.join(MINERS)}") from None


def miner_accepts(miner: Callable[..., Triplets], option: str) -> bool:
    """Whether ``miner`` takes keyword ``option`` (e.g. ``generator``), so callers pass it only then."""
    return option in inspect.signature(miner).parameters


@torch.no_grad()
def active_fraction(
    embeddings: torch.Tensor, labels: torch.Tensor, margin: float = 0.2, dists: torch.Tensor | None = None
) -> float:
    """Fraction of *all* valid triplets in the batch with non-zero loss (Hermans et al.'s
    training monitor: it falls as the embedding learns; 0.0 when the batch has no triplet).
    Counts without materialising the triplets."""
    d, labels = _prepare(embeddings, labels, dists)
    _, a, _, count, neg = _active_counts(d, labels, margin)
    total = int(neg.sum(dim=1)[a].sum())
    return int(count.sum()) / total if total else 0.0
