"""Time triplet mining + loss (forward and backward) against pytorch-metric-learning, same run.

    .venv/bin/python benchmarks/bench_mining.py [--repeats 5] [--threads 1]

Embeddings are clustered unit vectors (identity centre + noise), float32, 128-D. The paper's
batch, 45 identities x 40 faces = 1,800, is used where both sides fit in memory; PML's
semi-hard and batch-all enumerate all N^3 triplets first (5.8 GB of mask alone at N = 1,800),
so those two rows use 15 x 40 = 600. What "equal" means per row:
  * hard: same loss (PML BatchHardMiner + TripletMarginLoss, squared L2, AvgNonZeroReducer).
  * all:  same loss (PML TripletMarginLoss without a miner averages over non-zero triplets).
  * semihard: PML keeps every semi-hard triplet, ours one per pair, so losses differ by design;
    "equal" checks that ours (fallback="drop") covers exactly PML's (a, p) pairs and picks,
    per pair, the nearest of PML's negatives.
  * sandberg: no PML equivalent.
The CPU is shared with other jobs: treat figures as indicative, the ratio as the result.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners
from pytorch_metric_learning.distances import LpDistance

from facenet.losses import TripletLoss, miners, pairwise_sq_dists

MARGIN = 0.2


def clustered(identities: int, per_id: int, dim: int = 128, noise: float = 0.12, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(identities).repeat_interleave(per_id)
    centres = torch.nn.functional.normalize(torch.randn(identities, dim, generator=g), dim=1)
    e = centres[labels] + noise * torch.randn(len(labels), dim, generator=g)
    return torch.nn.functional.normalize(e, dim=1), labels


def timed(fn, repeats: int) -> tuple[float, float]:
    """Median milliseconds of fn() (after one warm-up) and its last return value."""
    value = fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        value = fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times), value


def ours(name, e, labels, **options):
    crit = TripletLoss(name, MARGIN, **options)

    def run():
        x = e.clone().requires_grad_(True)
        loss, _ = crit(x, labels)
        loss.backward()
        return loss.item()

    return run


def pml(miner, e, labels):
    loss_fn = pml_losses.TripletMarginLoss(margin=MARGIN, distance=LpDistance(power=2, normalize_embeddings=False))

    def run():
        x = e.clone().requires_grad_(True)
        loss = loss_fn(x, labels, miner(x, labels) if miner else None)
        loss.backward()
        return loss.item()

    return run


def semihard_selection_equal(e, labels) -> bool:
    """Ours (fallback="drop") picks, for exactly PML's (a, p) pairs, PML's nearest negative."""
    d = pairwise_sq_dists(e.double())
    pa, pp, pn = pml_miners.TripletMarginMiner(
        MARGIN, "semihard", distance=LpDistance(power=2, normalize_embeddings=False)
    )(e.double(), labels)
    oa, op, on = miners.semihard(e.double(), labels, MARGIN, fallback="drop")
    n = len(labels)
    nearest = torch.full((n * n,), float("inf"), dtype=torch.float64)
    nearest.scatter_reduce_(0, pa * n + pp, d[pa, pn], reduce="amin")
    pml_pairs = torch.unique(pa * n + pp)
    return torch.equal(torch.sort(oa * n + op).values, pml_pairs) and torch.equal(d[oa, on], nearest[oa * n + op])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a loaded shared CPU more threads only add contention)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sq = LpDistance(power=2, normalize_embeddings=False)

    big, small = clustered(45, 40), clustered(15, 40)
    rows = [
        ("hard", big, ours("hard", *big), pml(pml_miners.BatchHardMiner(distance=sq), *big), "loss"),
        ("hard", small, ours("hard", *small), pml(pml_miners.BatchHardMiner(distance=sq), *small), "loss"),
        ("all", small, ours("all", *small), pml(None, *small), "loss"),
        (
            "semihard",
            small,
            ours("semihard", *small),
            pml(pml_miners.TripletMarginMiner(MARGIN, "semihard", distance=sq), *small),
            "selection",
        ),
        ("semihard", big, ours("semihard", *big), None, None),
        ("sandberg", big, ours("sandberg", *big, generator=torch.Generator().manual_seed(0)), None, None),
        ("all", big, ours("all", *big), None, None),
    ]
    print(
        f"CPU: {platform.processor() or platform.machine()} | {_cpu_model()} | torch threads "
        f"{torch.get_num_threads()} | torch {torch.__version__} | median of {args.repeats}, "
        "mining + loss forward + backward, 128-D float32, margin 0.2"
    )
    print(f"{'miner':<9} {'batch':>6} {'active':>7} {'ours ms':>9} {'PML ms':>9} {'PML/ours':>8}  equal?")
    for name, (e, labels), our_fn, pml_fn, compare in rows:
        t_ours, l_ours = timed(our_fn, args.repeats)
        active = miners.active_fraction(e, labels, MARGIN)
        if pml_fn is None:
            print(f"{name:<9} {len(e):>6} {active:>7.3f} {t_ours:>9.1f} {'-':>9} {'-':>8}  (no PML equivalent)")
            continue
        t_pml, l_pml = timed(pml_fn, args.repeats)
        if compare == "loss":
            equal = f"loss {abs(l_ours - l_pml) <= 1e-5 * max(1.0, abs(l_pml))} ({l_ours:.6f} vs {l_pml:.6f})"
        else:
            equal = f"selection {semihard_selection_equal(e, labels)} (loss differs by design)"
        print(f"{name:<9} {len(e):>6} {active:>7.3f} {t_ours:>9.1f} {t_pml:>9.1f} {t_pml / t_ours:>8.1f}  {equal}")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown CPU"


if __name__ == "__main__":
    main()
