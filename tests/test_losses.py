"""Triplet loss, softmax and centre loss: brute force, pytorch-metric-learning, gradients."""

import pytest
import torch
import torch.nn.functional as F
from test_miners import MARGIN, brute, make_batch

from facenet.errors import FaceNetError
from facenet.losses import CentreLoss, FaceLoss, SoftmaxHead, TripletLoss, miners, pairwise_sq_dists, triplet_loss
from facenet.models.base import l2_normalize


def brute_loss(e, triplets):
    d, _, _ = brute(e, torch.zeros(len(e), dtype=torch.long))
    losses = [max(d[a][p] - d[a][n] + MARGIN, 0.0) for a, p, n in triplets]
    active = [x for x in losses if x > 0]
    return (sum(active) / len(active) if active else 0.0), len(active) / max(len(losses), 1)


@pytest.mark.parametrize("name", ["semihard", "hard", "all", "sandberg"])
def test_triplet_loss_matches_brute_force(name):
    e, labels = make_batch(3)
    kw = {"generator": torch.Generator().manual_seed(0)} if name == "sandberg" else {}
    a, p, n = miners.get_miner(name)(e, labels, MARGIN, **kw)
    want, want_frac = brute_loss(e, list(zip(a.tolist(), p.tolist(), n.tolist())))
    assert 0 < want_frac <= 1
    for dists in (None, pairwise_sq_dists(e)):
        loss, frac = triplet_loss(e, a, p, n, MARGIN, dists=dists)
        assert loss.item() == pytest.approx(want, rel=1e-9)
        assert frac == pytest.approx(want_frac)


def test_no_active_triplet_gives_zero_loss_that_backpropagates():
    e = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]], requires_grad=True)
    idx = torch.tensor([0]), torch.tensor([1]), torch.tensor([2])
    loss, frac = triplet_loss(e, *idx, margin=0.2)
    loss.backward()
    assert loss.item() == 0.0 and frac == 0.0 and torch.all(e.grad == 0)
    empty = torch.empty(0, dtype=torch.long)
    assert triplet_loss(e, empty, empty, empty)[1] == 0.0


def test_gradient_matches_finite_differences():
    e, labels = make_batch(0, n=10, dim=4)
    a, p, n = miners.batch_all(e, labels, MARGIN)
    assert len(a) > 0
    x = e.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: triplet_loss(t, a, p, n, MARGIN)[0], (x,))
    assert torch.autograd.gradcheck(lambda t: triplet_loss(t, a, p, n, MARGIN, dists=pairwise_sq_dists(t))[0], (x,))


def hinge_sum(e, a, p, n):
    loss, frac = triplet_loss(e, a, p, n, MARGIN)
    return loss.item() * frac * len(a)  # the mean is over active triplets only; compare totals


@pytest.mark.parametrize("name", ["semihard", "hard", "all", "sandberg"])
def test_sgd_steps_on_free_embeddings_reduce_the_loss(name):
    e, labels = make_batch(1, spread=1.0)
    w = torch.nn.Parameter(e.clone())
    opt = torch.optim.SGD([w], lr=0.05)
    crit = TripletLoss(name, MARGIN, generator=torch.Generator().manual_seed(0))
    a, p, n = crit.mine(e, labels, MARGIN, **crit.options)
    triplet_loss(l2_normalize(w), a, p, n, MARGIN)[0].backward()
    opt.step()  # one step: the same triplets lose less
    assert 0 < hinge_sum(l2_normalize(w.detach()), a, p, n) < hinge_sum(e, a, p, n)
    for _ in range(20):
        loss, _ = crit(l2_normalize(w), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    # and training lowers the share of violated triplets over the whole batch
    assert miners.active_fraction(l2_normalize(w.detach()), labels, MARGIN) < miners.active_fraction(e, labels, MARGIN)


def test_triplet_loss_module_stats():
    e, labels = make_batch(2)
    loss, stats = TripletLoss("hard", MARGIN)(e, labels)
    a, p, n = miners.hard(e, labels)
    d = pairwise_sq_dists(e)
    assert stats["num_triplets"] == len(a)
    assert stats["d_ap"] == pytest.approx(d[a, p].mean().item())
    assert stats["d_an"] == pytest.approx(d[a, n].mean().item())
    assert loss.item() == pytest.approx(triplet_loss(e, a, p, n, MARGIN)[0].item())
    with pytest.raises(FaceNetError):
        TripletLoss("semihard", margin=0.0)


# --- pytorch-metric-learning reference -----------------------------------------------------------

pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
pml_miners = pytest.importorskip("pytorch_metric_learning.miners")
from pytorch_metric_learning.distances import LpDistance  # noqa: E402


def pml_triplet():
    """TripletMarginLoss on squared L2 with PML's default AvgNonZeroReducer (mean over active)."""
    return pml_losses.TripletMarginLoss(margin=MARGIN, distance=LpDistance(power=2, normalize_embeddings=False))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batch_all_loss_equals_pml_without_miner(seed):
    e, labels = make_batch(seed)
    ours, _ = TripletLoss("all", MARGIN)(e, labels)
    assert ours.item() == pytest.approx(pml_triplet()(e, labels).item(), rel=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hard_loss_and_gradient_equal_pml_batch_hard(seed):
    e, labels = make_batch(seed)
    x1, x2 = e.clone().requires_grad_(True), e.clone().requires_grad_(True)
    ours, _ = TripletLoss("hard", MARGIN)(x1, labels)
    ref = pml_triplet()(
        x2, labels, pml_miners.BatchHardMiner(distance=LpDistance(power=2, normalize_embeddings=False))(x2, labels)
    )
    assert ours.item() == pytest.approx(ref.item(), rel=1e-9)
    ours.backward()
    ref.backward()
    assert torch.allclose(x1.grad, x2.grad, atol=1e-10)


# --- softmax and centre loss ---------------------------------------------------------------------


def test_softmax_head_is_cross_entropy_and_checks_labels():
    torch.manual_seed(0)
    head = SoftmaxHead(8, 5)
    x, y = torch.randn(6, 8), torch.tensor([0, 1, 2, 3, 4, 0])
    ref = F.cross_entropy(x @ head.logits.weight.T + head.logits.bias, y)
    assert head(x, y).item() == pytest.approx(ref.item())
    with pytest.raises(FaceNetError, match="num_classes"):
        head(x, torch.tensor([0, 1, 2, 3, 4, 5]))


def test_centre_loss_value_and_sandberg_update():
    loss_fn = CentreLoss(2, 3, update_rate=0.5)
    loss_fn.centres.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]]))
    x = torch.tensor([[1.0, 0.0], [3.0, 0.0], [1.0, 2.0]])
    y = torch.tensor([0, 0, 1])
    # mean over all elements of (x - c_y)^2: (1+0 + 9+0 + 0+1) / 6
    assert loss_fn(x, y).item() == pytest.approx(11 / 6)
    # c_j -= rate * sum_i (c_j - x_i): class 0 moves by 0.5*((0-1)+(0-3), 0) -> (2, 0)
    assert torch.allclose(loss_fn.centres, torch.tensor([[2.0, 0.0], [1.0, 1.5], [5.0, 5.0]]))
    loss_fn.eval()
    loss_fn(x, y)
    assert torch.allclose(loss_fn.centres[0], torch.tensor([2.0, 0.0]))  # frozen in eval
    assert "centres" in loss_fn.state_dict()


def test_face_loss_combines_weighted_parts():
    torch.manual_seed(0)
    e, labels = make_batch(0)
    pre = (3 * e).float().requires_grad_(True)
    both = FaceLoss(8, 5, triplet_weight=1.0, softmax_weight=0.5, centre_weight=0.1, miner="hard")
    loss, stats = both(pre, labels)
    want = (stats["triplet_loss"] + 0.5 * stats["softmax_loss"] + 0.1 * stats["centre_loss"]).item()
    assert loss.item() == pytest.approx(want, rel=1e-6)
    trip, _ = TripletLoss("hard", MARGIN)(l2_normalize(pre), labels)
    assert stats["triplet_loss"].item() == pytest.approx(trip.item(), rel=1e-6)
    loss.backward()
    assert pre.grad is not None and both.softmax.logits.weight.grad is not None
    assert FaceLoss(8, triplet_weight=1.0).softmax is None
    with pytest.raises(FaceNetError):
        FaceLoss(8, None, softmax_weight=1.0)
    with pytest.raises(FaceNetError):
        FaceLoss(8, 5, triplet_weight=0.0)
