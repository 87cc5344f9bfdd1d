"""Mixed precision: the network may run in bfloat16/float16, the mining and the losses may not."""

import pytest
import torch

from facenet.losses import FaceLoss, TripletLoss, get_miner, pairwise_sq_dists

MARGIN = 0.2


def training_like_batch(identities=32, per_identity=8, dim=128, seed=0):
    """float32 unit embeddings as a half-trained network gives them: identities overlap, so every
    kind of triplet (easy, semi-hard, hard) occurs and many pairs sit near the semi-hard band's edges."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(identities).repeat_interleave(per_identity)
    centres = torch.nn.functional.normalize(torch.randn(identities, dim, generator=g), dim=1)
    e = centres[labels] + 0.13 * torch.randn(len(labels), dim, generator=g)
    return torch.nn.functional.normalize(e, dim=1), labels


def bf16_autocast():
    return torch.autocast("cpu", dtype=torch.bfloat16)


@pytest.mark.parametrize("miner", ["semihard", "hard", "all"])
def test_chosen_triplets_are_the_same_under_bf16_autocast_as_in_fp32(miner):
    e, labels = training_like_batch()
    want = get_miner(miner)(e, labels, MARGIN)
    with bf16_autocast():
        got = get_miner(miner)(e, labels, MARGIN)
    assert len(want[0]) > 100
    for w, g in zip(want, got):
        assert torch.equal(w, g)


def test_a_bf16_distance_matrix_would_change_the_semihard_choice():
    """Guards the test above: it compares something that precision really does change."""
    e, labels = training_like_batch()
    rounded = (e.bfloat16() @ e.bfloat16().T).float()
    sq = (e * e).sum(1)
    bf16_dists = (sq[:, None] + sq[None, :] - 2 * rounded).clamp_min(0)
    assert (bf16_dists - pairwise_sq_dists(e)).abs().max() > 1e-3
    want = get_miner("semihard")(e, labels, MARGIN)
    got = get_miner("semihard")(e, labels, MARGIN, dists=bf16_dists)
    assert not all(torch.equal(w, g) for w, g in zip(want, got))


def test_distances_stay_float32_for_half_precision_inputs():
    e, _ = training_like_batch(4, 4)
    with bf16_autocast():
        assert pairwise_sq_dists(e).dtype == torch.float32
        assert pairwise_sq_dists(e.bfloat16()).dtype == torch.float32


@pytest.mark.parametrize("parts", [dict(), dict(softmax_weight=0.5, centre_weight=0.1)])
def test_losses_under_autocast_equal_the_float32_losses(parts):
    e, labels = training_like_batch(8, 4, dim=16)
    prelogits = 3 * e
    values = []
    for context in (torch.autocast("cpu", enabled=False), bf16_autocast()):
        torch.manual_seed(0)
        loss_fn = FaceLoss(16, num_classes=8, miner="semihard", margin=MARGIN, **parts)
        with context:
            loss, stats = loss_fn(prelogits, labels)
        values.append((loss, stats))
    (want, want_stats), (got, got_stats) = values
    assert got.dtype == torch.float32 and torch.equal(got, want)
    assert got_stats == want_stats


def test_triplet_loss_module_upcasts_half_precision_embeddings():
    e, labels = training_like_batch(8, 4, dim=16)
    loss, _ = TripletLoss("semihard", MARGIN)(e.bfloat16(), labels)
    want, _ = TripletLoss("semihard", MARGIN)(e.bfloat16().float(), labels)
    assert loss.dtype == torch.float32 and torch.equal(loss, want)
