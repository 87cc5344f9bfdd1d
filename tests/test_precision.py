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


def _interrupt_at_call(monkeypatch, n):
    """Make the run stop (as if killed) inside step ``n``, after its checkpoint of step n - 1."""
    import facenet.train.loop as loop

    real, calls = loop._is_collapsed, {"n": 0}

    def stop(prelogits):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return real(prelogits)

    monkeypatch.setattr(loop, "_is_collapsed", stop)
    return lambda: monkeypatch.setattr(loop, "_is_collapsed", real)


def _final_weights(run_dir):
    from safetensors.torch import load_file

    return load_file(run_dir / "model.safetensors")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_run_resumes_bit_for_bit(tmp_path, monkeypatch, precision):
    from test_train import losses, tiny_config

    import facenet.train.loop as loop
    from facenet.train.checkpoint import load_checkpoint

    # a scaler that doubles its scale every step, so a resume that lost its state would end elsewhere
    monkeypatch.setattr(
        loop,
        "grad_scaler",
        lambda p, device: torch.amp.GradScaler(device.type, init_scale=2.0**10, growth_interval=1, enabled=p == "fp16"),
    )
    settings = dict(precision=precision, steps=7, eval_every=7)
    train_run = loop.train
    train_run(tiny_config(tmp_path / "reference", **settings), progress=False)
    restore = _interrupt_at_call(monkeypatch, 5)
    with pytest.raises(KeyboardInterrupt):
        train_run(tiny_config(tmp_path / "interrupted", **settings), progress=False)
    restore()
    assert load_checkpoint(tmp_path / "interrupted")["step"] == 4
    train_run(tiny_config(tmp_path / "interrupted", **settings), resume=True, progress=False)

    assert losses(tmp_path / "interrupted") == losses(tmp_path / "reference")
    want, got = _final_weights(tmp_path / "reference"), _final_weights(tmp_path / "interrupted")
    assert all(torch.equal(want[k], got[k]) for k in want)
    scaler = load_checkpoint(tmp_path / "interrupted")["scaler"]
    assert scaler == load_checkpoint(tmp_path / "reference")["scaler"]
    if precision == "fp16":
        assert scaler["scale"] > 2.0**10  # it grew: the state that had to survive the interruption


def test_bf16_runs_the_network_in_bfloat16_from_the_same_start(tmp_path):
    from test_train import losses, tiny_config

    from facenet.train.loop import train

    first = {
        p: losses(train(tiny_config(tmp_path / p, precision=p, steps=1), progress=False).run_dir)[0]
        for p in ("fp32", "bf16")
    }
    assert first["bf16"] != first["fp32"]  # autocast really changed the network's arithmetic ...
    assert first["bf16"] == pytest.approx(first["fp32"], rel=0.05)  # ... by bfloat16's rounding, no more


def test_auto_precision_is_fp32_on_cpu_and_an_unknown_one_is_refused(tmp_path):
    from test_train import tiny_config

    from facenet.errors import TrainingError
    from facenet.train.loop import train
    from facenet.train.precision import resolve_precision

    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"
    with pytest.raises(TrainingError, match="precision must be one of"):
        train(tiny_config(tmp_path / "run", precision="fp8"), progress=False)
