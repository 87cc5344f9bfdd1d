"""The losses leave their results on the device: a training step's loss computation never reads a value back
to the host (on a GPU that read would make Python wait for the step to finish)."""

import pytest
import torch

from facenet.losses import FaceLoss, TripletLoss, softmax, triplet_loss
from facenet.losses.distill import distillation_loss
from facenet.models import l2_normalize

READS = ["item", "tolist", "nonzero", "__bool__", "__float__", "__int__", "__index__"]


@pytest.fixture
def no_host_reads(monkeypatch):
    """Every way a tensor's values reach Python raises while the fixture is active."""

    def read(*args, **kwargs):
        raise AssertionError("a tensor's value was read by the host")

    def forbid():
        for name in READS:
            monkeypatch.setattr(torch.Tensor, name, read)
        monkeypatch.setattr(torch, "nonzero", read)

    return forbid


def batch(seed=0, identities=4, per_identity=3, dim=8):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(identities).repeat_interleave(per_identity)
    return torch.randn(len(labels), dim, generator=g, requires_grad=True), labels


def test_losses_and_their_statistics_need_no_host_read(no_host_reads, monkeypatch):
    prelogits, labels = batch()
    triplets = TripletLoss("hard", 0.2).mine(l2_normalize(prelogits.detach()), labels, 0.2)
    crit = FaceLoss(8, num_classes=4, triplet_weight=1.0, softmax_weight=0.5, centre_weight=0.1)
    crit.triplet.mine = lambda *args, **kwargs: triplets  # the miners' variable-size output is read: see README
    teacher = l2_normalize(torch.randn(12, 8, generator=torch.Generator().manual_seed(1)))
    want = crit(prelogits, labels)[0].item() + distillation_loss(l2_normalize(prelogits), teacher)[0].item()
    crit.centre.centres.zero_()  # the first call moved the centres: start the second one from the same place

    monkeypatch.setattr(softmax, "_check_labels", lambda *args: None)  # reads CPU labels only: see the test below
    no_host_reads()
    loss, stats = crit(prelogits, labels)
    distill, distill_stats = distillation_loss(l2_normalize(prelogits), teacher)
    fixed, fraction = triplet_loss(l2_normalize(prelogits), *triplets, margin=0.2)
    total = loss + distill + fixed * fraction
    total.backward()
    monkeypatch.undo()  # reading allowed again

    values = {**stats, **distill_stats}
    assert all(isinstance(v, torch.Tensor) and not v.requires_grad for k, v in values.items() if k != "num_triplets")
    torch.testing.assert_close((loss + distill).detach(), torch.tensor(want))
    assert prelogits.grad is not None


def test_labels_on_a_device_are_not_read(no_host_reads):
    no_host_reads()
    softmax._check_labels(torch.zeros(3, dtype=torch.long, device="meta"), 4)  # "meta": a device without values
    with pytest.raises(AssertionError, match="read by the host"):  # while CPU labels are checked, by reading them
        softmax._check_labels(torch.zeros(3, dtype=torch.long), 4)
