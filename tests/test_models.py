"""Backbones, registry, published-weight conversion and complexity figures."""

from pathlib import Path

import pytest
import torch
from peers import peer_inception_resnet_v1

from facenet.cli import main as cli_main
from facenet.errors import BadImageError, ModelFileError
from facenet.models import create_model, list_models
from facenet.models.complexity import count_flops, count_parameters, describe_models
from facenet.models.convert import convert_published_weights, load_published_weights
from facenet.models.modelfile import load_model_file

ARCHS = list_models()


def crop_size(model) -> int:
    """Inception-ResNet-v1 pools adaptively, so tests use a smaller crop than its 160 px to stay fast."""
    return 96 if model.arch == "inception_resnet_v1" else model.input_size


@pytest.fixture(scope="module")
def reference_module():
    """facenet-pytorch's inception_resnet_v1.py, loaded from its file (see tests/peers.py)."""
    module = peer_inception_resnet_v1()
    if module is None:
        pytest.skip("facenet-pytorch not installed")
    return module


@pytest.fixture(scope="module")
def reference(reference_module):
    torch.manual_seed(0)
    model = reference_module.InceptionResnetV1(classify=False, num_classes=10).eval()
    # Non-trivial BatchNorm statistics, so a mix-up of running_mean/var would show.
    for module in model.modules():
        if isinstance(module, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return model


@pytest.fixture(scope="module")
def published_pt(reference, tmp_path_factory):
    """A .pt laid out like the published VGGFace2 / CASIA files (state dict with a logits layer)."""
    reference.logits = torch.nn.Linear(512, 10)
    path = tmp_path_factory.mktemp("pt") / "20180402-114759-vggface2.pt"
    torch.save(reference.state_dict(), path)
    return path


def test_inception_resnet_v1_matches_facenet_pytorch(reference):
    ours = create_model("inception_resnet_v1", embedding_size=512, num_classes=10).eval()
    ref_state = {k: v for k, v in reference.state_dict().items() if not k.startswith("logits")}
    our_state = {k: v for k, v in ours.state_dict().items() if not k.startswith("logits")}
    assert {k: v.shape for k, v in our_state.items()} == {k: v.shape for k, v in ref_state.items()}
    ours.logits = None
    ours.load_state_dict(ref_state, strict=True)
    x = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        expected = reference(x)
        assert torch.allclose(ours(x), expected, atol=1e-5)
        # Block8 without ReLU at the end: features can be negative only if noReLU is honoured.
        assert (ours.features(x) < 0).any()
    assert ours.input_size == 160


@pytest.fixture(scope="module")
def complexity_rows():
    return {row.name: row for row in describe_models(512)}


def test_parameter_count_matches_reference_and_paper(reference, complexity_rows):
    ref_params = sum(p.numel() for name, p in reference.named_parameters() if not name.startswith("logits"))
    assert complexity_rows["inception_resnet_v1"].params == ref_params
    assert 23.3e6 < ref_params < 23.6e6  # Sandberg's ~23.5M


def test_flops_close_to_published_and_closed_form(complexity_rows):
    macs = complexity_rows["inception_resnet_v1"].macs
    assert abs(macs - 1.42e9) / 1.42e9 < 0.02  # Sandberg's ~1.42 GMACs at 160x160
    # Exact closed forms: a linear layer costs 2*in*out FLOPs; a 3x3 conv 2*k*k*cin*cout*H*W.
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 32))
    assert count_flops(model, 8) == 2 * 192 * 32
    conv = torch.nn.Conv2d(3, 16, 3, padding=1, bias=False)
    assert count_flops(conv, 10) == 2 * 9 * 3 * 16 * 10 * 10
    assert count_parameters(conv) == 9 * 3 * 16


def test_describe_models_lists_every_architecture(complexity_rows):
    assert set(complexity_rows) == set(list_models()) >= {"inception_resnet_v1", "mobilefacenet"}
    small, big = complexity_rows["mobilefacenet"], complexity_rows["inception_resnet_v1"]
    assert small.params < 1.5e6 and small.flops < 0.6e9 < big.flops
    assert small.macs * 2 == small.flops and small.input_size == 160 and small.embedding_size == 512
    # Built on the meta device, the counts must equal those of a real model.
    real = create_model("mobilefacenet", embedding_size=512)
    assert count_parameters(real) == small.params and count_flops(real) == small.flops


def test_models_command_prints_table(capsys):
    assert cli_main(["models"]) == 0
    out = capsys.readouterr().out
    assert "inception_resnet_v1" in out and "mobilefacenet" in out and "MACs (G)" in out
    assert "1.41" in out  # IRv1 GMACs


@pytest.mark.parametrize("name", ARCHS)
@pytest.mark.parametrize("dim", [128, 512])
def test_embeddings_are_unit_rows(name, dim):
    torch.manual_seed(0)
    model = create_model(name, embedding_size=dim)
    size = crop_size(model)
    for train in (True, False):
        model.train(train)
        for x in (torch.randn(2, 3, size, size), torch.zeros(2, 3, size, size)):
            with torch.no_grad():
                out = model(x)
            assert out.shape == (2, dim)
            assert torch.allclose(out.norm(dim=1), torch.ones(2), atol=1e-5)


@pytest.mark.parametrize("name", ARCHS)
def test_gradients_reach_the_first_layer(name):
    torch.manual_seed(0)
    model = create_model(name, embedding_size=16).train()
    out = model(torch.randn(2, 3, crop_size(model), crop_size(model)))
    (out[:, 0] * torch.tensor([1.0, 2.0])).sum().backward()
    first = next(p for p in model.parameters() if p.dim() == 4)
    assert first.grad is not None and first.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.parameters())


def test_mobilefacenet_rejects_wrong_crop_size():
    model = create_model("mobilefacenet").eval()
    with pytest.raises(BadImageError, match="160x160"):
        model(torch.zeros(1, 3, 112, 112))


def test_unknown_architecture():
    with pytest.raises(ModelFileError, match="unknown architecture 'resnet9000'.*inception_resnet_v1"):
        create_model("resnet9000")


def test_load_published_weights_keeps_everything(reference, published_pt):
    model = load_published_weights(published_pt)
    assert model.embedding_size == 512 and model.logits.out_features == 10 and not model.training
    for key, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_new_embedding_size_keeps_backbone_only(reference, published_pt):
    model = load_published_weights(published_pt, embedding_size=128)
    state = model.state_dict()
    assert model.embedding_size == 128 and model.logits is None
    assert state["last_linear.weight"].shape == (128, 1792) and state["last_bn.weight"].shape == (128,)
    backbone = {k: v for k, v in reference.state_dict().items() if not k.startswith(("last_", "logits"))}
    assert backbone and all(torch.equal(state[k], v) for k, v in backbone.items())
    assert model(torch.randn(1, 3, 96, 96)).shape == (1, 128)


def test_convert_writes_model_file(reference, published_pt, tmp_path):
    dst = tmp_path / "vggface2.safetensors"
    info = convert_published_weights(published_pt, dst)
    assert info.provenance["source"] == published_pt.name
    assert len(info.provenance["source_sha256"]) == 64 and info.provenance["head"] == "published"
    assert dst.stat().st_mode & 0o777 == 0o600
    model, stored = load_model_file(dst)
    assert stored == info and stored.num_classes == 10 and stored.standardisation == "fixed"
    reference.eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        assert torch.allclose(model(x), reference(x), atol=1e-5)


def test_convert_command(published_pt, tmp_path, capsys):
    dst = tmp_path / "m.safetensors"
    assert cli_main(["convert", str(published_pt), str(dst), "--embedding-size", "128"]) == 0
    assert "head reinitialised" in capsys.readouterr().out
    model, info = load_model_file(dst)
    assert info.embedding_size == 128 and model.embedding_size == 128
    assert cli_main(["convert", str(tmp_path / "missing.pt"), str(dst)]) == 2
    assert "not found" in capsys.readouterr().err


@pytest.mark.parametrize("content", [b"", b"not a pickle or zip at all", b"\x80\x04K\x01."])
def test_convert_rejects_unreadable_files(tmp_path, content):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(content)
    with pytest.raises(ModelFileError, match="bad.pt"):
        load_published_weights(bad)


def test_convert_refuses_to_unpickle_objects(tmp_path):
    bad = tmp_path / "evil.pt"
    torch.save({"last_linear.weight": torch.zeros(2, 2), "obj": Path("x")}, bad)
    with pytest.raises(ModelFileError, match="evil.pt"):
        load_published_weights(bad)


def test_convert_rejects_wrong_keys_and_shapes(published_pt, tmp_path):
    state = torch.load(published_pt, weights_only=True)
    wrong = tmp_path / "wrong.pt"
    torch.save({"conv.weight": torch.zeros(3)}, wrong)
    with pytest.raises(ModelFileError, match="not an Inception-ResNet-v1"):
        load_published_weights(wrong)
    state["conv2d_1a.conv.weight"] = torch.zeros(32, 3, 5, 5)
    torch.save(state, wrong)
    with pytest.raises(ModelFileError, match="do not match inception_resnet_v1.*conv2d_1a"):
        load_published_weights(wrong)
    del state["repeat_1.0.conv2d.bias"]
    torch.save(state, wrong)
    with pytest.raises(ModelFileError, match="do not match"):
        load_published_weights(wrong)
