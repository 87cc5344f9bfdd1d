"""Miners against brute-force pure-Python references and pytorch-metric-learning."""

import pytest
import torch

from facenet.errors import FaceNetError
from facenet.losses import miners
from facenet.losses.miners import active_fraction, get_miner, pairwise_sq_dists

MARGIN = 0.2


def make_batch(seed, n=24, dim=8, classes=5, spread=0.8):
    """Unit float64 embeddings clustered by label (so easy, semi-hard and hard triplets all occur)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    centres = torch.randn(classes, dim, generator=g, dtype=torch.float64)
    e = centres[labels] + spread * torch.randn(n, dim, generator=g, dtype=torch.float64)
    return e / e.norm(dim=1, keepdim=True), labels


def brute(e, labels):
    """Distances and the list of valid (a, p, n) by triple loop, in plain Python floats."""
    n = len(labels)
    rows = e.tolist()
    d = [[sum((x - y) ** 2 for x, y in zip(rows[i], rows[j])) for j in range(n)] for i in range(n)]
    lab = labels.tolist()
    pairs = [(a, p) for a in range(n) for p in range(n) if a != p and lab[a] == lab[p]]
    negs = {a: [x for x in range(n) if lab[x] != lab[a]] for a in range(n)}
    return d, pairs, negs


def as_set(t):
    return set(zip(*(x.tolist() for x in t)))


SEEDS = [0, 1, 2, 3]


def test_pairwise_sq_dists_matches_cdist():
    e, _ = make_batch(0)
    ref = torch.cdist(e, e) ** 2
    assert torch.allclose(pairwise_sq_dists(e), ref, atol=1e-12)
    e32 = e.float()
    assert (pairwise_sq_dists(e32) >= 0).all()
    assert torch.allclose(pairwise_sq_dists(e32), ref.float(), atol=2e-6)


@pytest.mark.parametrize("seed", SEEDS)
def test_semihard_matches_brute_force(seed):
    e, labels = make_batch(seed)
    d, pairs, negs = brute(e, labels)
    want_drop, want_fallback = set(), set()
    kinds = set()
    for a, p in pairs:
        semi = [x for x in negs[a] if d[a][p] < d[a][x] < d[a][p] + MARGIN]
        hard_ = [x for x in negs[a] if d[a][x] <= d[a][p]]
        if semi:
            n = min(semi, key=lambda x: d[a][x])
            want_drop.add((a, p, n))
            want_fallback.add((a, p, n))
            kinds.add("semi")
        elif hard_:
            want_fallback.add((a, p, max(hard_, key=lambda x: d[a][x])))
            kinds.add("hard")
        else:
            kinds.add("easy")
    assert kinds == {"semi", "hard", "easy"}, "test batch should exercise every case"
    assert as_set(miners.semihard(e, labels, MARGIN, fallback="drop")) == want_drop
    got = miners.semihard(e, labels, MARGIN)
    assert as_set(got) == want_fallback
    assert len(got[0]) == len(want_fallback)  # no duplicates


@pytest.mark.parametrize("seed", SEEDS)
def test_hard_matches_brute_force(seed):
    e, labels = make_batch(seed)
    d, pairs, negs = brute(e, labels)
    want = set()
    for a in range(len(labels)):
        ps = [p for (x, p) in pairs if x == a]
        if ps and negs[a]:
            want.add((a, max(ps, key=lambda p: d[a][p]), min(negs[a], key=lambda n: d[a][n])))
    assert as_set(miners.hard(e, labels, MARGIN)) == want


@pytest.mark.parametrize("seed", SEEDS)
def test_batch_all_matches_brute_force(seed):
    e, labels = make_batch(seed)
    d, pairs, negs = brute(e, labels)
    want = [(a, p, n) for a, p in pairs for n in negs[a] if d[a][p] - d[a][n] + MARGIN > 0]
    total = sum(len(negs[a]) for a, _ in pairs)
    got = miners.batch_all(e, labels, MARGIN)
    assert sorted(zip(*(x.tolist() for x in got))) == sorted(want)
    assert active_fraction(e, labels, MARGIN) == pytest.approx(len(want) / total)
    assert 0 < len(want) < total


@pytest.mark.parametrize("seed", SEEDS)
def test_sandberg_condition_pairs_and_randomness(seed):
    e, labels = make_batch(seed)
    d, pairs, negs = brute(e, labels)
    cands = {(a, p): [n for n in negs[a] if d[a][n] - d[a][p] < MARGIN] for a, p in pairs}
    want_pairs = {pair for pair, c in cands.items() if c}
    assert want_pairs != set(pairs), "some pair should have no candidate"
    seen = {pair: set() for pair in want_pairs}
    for draw in range(60):
        a, p, n = miners.sandberg(e, labels, MARGIN, generator=torch.Generator().manual_seed(draw))
        assert set(zip(a.tolist(), p.tolist())) == want_pairs and len(a) == len(want_pairs)
        for t in zip(a.tolist(), p.tolist(), n.tolist()):
            assert t[2] in cands[t[:2]]
            seen[t[:2]].add(t[2])
    # uniform over candidates: in 60 draws every candidate of a pair with <= 4 shows up (P(miss) < 1e-6)
    few = [pair for pair in want_pairs if 2 <= len(cands[pair]) <= 4]
    assert few and all(seen[pair] == set(cands[pair]) for pair in few)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    assert as_set(miners.sandberg(e, labels, generator=g1)) == as_set(miners.sandberg(e, labels, generator=g2))


def test_edge_cases_and_registry():
    e, _ = make_batch(0, n=6)
    for name in miners.MINERS:
        for labels in (torch.zeros(6, dtype=torch.long), torch.arange(6)):  # no negatives / positives
            assert all(len(t) == 0 for t in get_miner(name)(e, labels, MARGIN))
        for n in (0, 1):
            assert all(len(t) == 0 for t in get_miner(name)(e[:n], torch.zeros(n, dtype=torch.long)))
    assert active_fraction(e, torch.zeros(6, dtype=torch.long)) == 0.0
    with pytest.raises(FaceNetError, match="unknown miner"):
        get_miner("hardest")
    with pytest.raises(FaceNetError, match="labels"):
        miners.hard(e, torch.zeros(5, dtype=torch.long))
    with pytest.raises(FaceNetError, match="fallback"):
        miners.semihard(e, torch.zeros(6, dtype=torch.long), fallback="random")


def test_dists_argument_is_used():
    e, labels = make_batch(1)
    d = pairwise_sq_dists(e)
    for name, mine in miners.MINERS.items():
        kw = {"generator": torch.Generator().manual_seed(0)} if name == "sandberg" else {}
        direct = mine(e, labels, MARGIN, **kw)
        kw = {"generator": torch.Generator().manual_seed(0)} if name == "sandberg" else {}
        assert as_set(mine(e, labels, MARGIN, dists=d, **kw)) == as_set(direct)


# --- pytorch-metric-learning as an independent reference -------------------------------------

pml_miners = pytest.importorskip("pytorch_metric_learning.miners")
pml_distances = pytest.importorskip("pytorch_metric_learning.distances")


def sq_l2():
    return pml_distances.LpDistance(p=2, power=2, normalize_embeddings=False)


@pytest.mark.parametrize("seed", SEEDS)
def test_hard_equals_pml_batch_hard(seed):
    e, labels = make_batch(seed)
    ref = pml_miners.BatchHardMiner(distance=sq_l2())(e, labels)
    assert as_set(miners.hard(e, labels)) == as_set(ref)


@pytest.mark.parametrize("seed", SEEDS)
def test_batch_all_equals_pml_triplet_margin_all(seed):
    e, labels = make_batch(seed)
    ref = pml_miners.TripletMarginMiner(margin=MARGIN, type_of_triplets="all", distance=sq_l2())(e, labels)
    assert as_set(miners.batch_all(e, labels, MARGIN)) == as_set(ref)


@pytest.mark.parametrize("seed", SEEDS)
def test_semihard_is_pml_semihard_nearest_per_pair(seed):
    """PML returns *all* semi-hard triplets (d_ap < d_an <= d_ap + m); ours (fallback="drop")
    must cover exactly the same (a, p) pairs and pick, per pair, PML's nearest negative."""
    e, labels = make_batch(seed)
    a, p, n = pml_miners.TripletMarginMiner(margin=MARGIN, type_of_triplets="semihard", distance=sq_l2())(e, labels)
    d = pairwise_sq_dists(e)
    nearest = {}
    for t in zip(a.tolist(), p.tolist(), n.tolist()):
        nearest[t[:2]] = min(nearest.get(t[:2], 9.0), d[t[0], t[2]].item())
    oa, op, on = miners.semihard(e, labels, MARGIN, fallback="drop")
    assert set(zip(oa.tolist(), op.tolist())) == set(nearest)
    for t in zip(oa.tolist(), op.tolist(), on.tolist()):
        assert d[t[0], t[2]].item() == nearest[t[:2]]
