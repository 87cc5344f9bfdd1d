"""ONNX export: same embeddings as PyTorch, dynamic batch, metadata round trip, clear errors."""

import os
import stat

import numpy as np
import pytest
import torch

from facenet.cli import main as cli_main
from facenet.embedder import FaceEmbedder, load_embedder
from facenet.errors import FaceNetError, ModelFileError
from facenet.export import check_onnx, export_onnx, onnx_bytes
from facenet.models import create_model
from facenet.models.modelfile import model_info_for, save_model


def trained_looking(arch: str, seed: int, **kwargs):
    """A model with non-trivial BatchNorm statistics, so folding mistakes in the export would show."""
    torch.manual_seed(seed)
    model = create_model(arch, **kwargs).eval()
    for module in model.modules():
        if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    return model


def crops(n: int, size: int, seed: int = 1) -> list[np.ndarray]:
    from facenet.data.synthetic import SyntheticFaces

    faces = SyntheticFaces(n, seed=seed, size=size)
    return [faces.render(i, 0) for i in range(n)]


@pytest.fixture(scope="module")
def nns_file(tmp_path_factory):
    model = trained_looking("nns", 0)
    path = tmp_path_factory.mktemp("m") / "nns.safetensors"
    info = save_model(model, path, model_info_for(model, input_size=32, threshold=0.93))
    return path, model, info


def test_cli_export_roundtrip_metadata_dynamic_batch(nns_file, capsys):
    path, model, info = nns_file
    out = path.with_name("exported.onnx")
    assert cli_main(["export", str(path), "--format", "onnx", "--out", str(out)]) == 0
    assert "max abs difference vs PyTorch" in capsys.readouterr().out
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600

    onnx_embedder = load_embedder(out)
    assert onnx_embedder.model is None and onnx_embedder.backend.name == "onnx"
    assert onnx_embedder.info == info  # arch, sizes, standardisation, threshold, provenance / model_id
    assert onnx_embedder.name == FaceEmbedder(model, info).name

    torch_embedder = FaceEmbedder(model, info)
    faces = crops(6, 32)
    for n in (1, 5):  # one export, two batch sizes
        ours = onnx_embedder.embed_crops(faces[:n], batch_size=n)
        ref = torch_embedder.embed_crops(faces[:n], batch_size=n)
        assert ours.shape == (n, info.embedding_size)
        assert np.abs(ours - ref).max() < 1e-4
        assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_inception_resnet_v1_export_matches_torch(tmp_path):
    model = trained_looking("inception_resnet_v1", 2)
    info = model_info_for(model, input_size=96)  # adaptive pooling: a smaller crop keeps the test fast
    out = tmp_path / "irv1.onnx"
    worst = export_onnx(model, info, out)
    assert worst < 1e-4
    from facenet.backends import OnnxBackend

    x = torch.randn(2, 3, 96, 96) * 0.5
    with torch.inference_mode():
        ref = model(x).numpy()
    assert np.abs(OnnxBackend(out)(x) - ref).max() < 1e-4


def test_check_rejects_an_export_of_other_weights(nns_file):
    path, model, info = nns_file
    other = trained_looking("nns", 99)
    with pytest.raises(FaceNetError, match="differs from PyTorch"):
        check_onnx(model, onnx_bytes(other, info), info)


def test_corrupt_or_foreign_onnx_is_a_model_file_error(nns_file, tmp_path, capsys):
    path, model, info = nns_file
    data = onnx_bytes(model, info)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(data[: len(data) // 3])
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a protobuf at all" * 10)
    for bad in (truncated, garbage, tmp_path / "missing.onnx"):
        with pytest.raises(ModelFileError):
            load_embedder(bad)

    import onnx

    foreign = onnx.load_from_string(data)
    del foreign.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    bare.write_bytes(foreign.SerializeToString())
    with pytest.raises(ModelFileError, match="without facenet metadata"):
        load_embedder(bare)
    from PIL import Image

    photo = tmp_path / "face.png"
    Image.fromarray(crops(1, 32)[0]).save(photo)
    assert cli_main(["embed", str(photo), "--model", str(bare), "--no-detect", "--out", str(tmp_path / "e.npy")]) == 2
    assert "without facenet metadata" in capsys.readouterr().err


def test_int8_export_is_smaller_close_to_fp32_and_self_describing(nns_file, tmp_path, capsys):
    from PIL import Image

    path, model, info = nns_file
    folder = tmp_path / "crops"
    folder.mkdir()
    for i, face in enumerate(crops(40, 32, seed=2)):
        Image.fromarray(face).save(folder / f"{i}.png")
    out = tmp_path / "nns.int8.onnx"
    assert (
        cli_main(
            [
                "export",
                str(path),
                "--int8",
                "--calibration",
                str(folder),
                "--calibration-images",
                "20",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "largest change of a squared-L2 distance" in printed
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    int8 = load_embedder(out)
    assert int8.info == info and int8.threshold == pytest.approx(0.93)
    fp32_size = len(onnx_bytes(model, info))
    assert out.stat().st_size < fp32_size / 2  # int8 weights
    faces = crops(8, 32, seed=9)
    e8 = int8.embed_crops(faces)
    e32 = FaceEmbedder(model, info).embed_crops(faces)
    assert np.allclose(np.linalg.norm(e8, axis=1), 1.0, atol=1e-3)
    d8 = ((e8[:, None] - e8[None]) ** 2).sum(-1)
    d32 = ((e32[:, None] - e32[None]) ** 2).sum(-1)
    assert np.abs(d8 - d32).max() < 0.2  # quantisation noise, not a different model
    assert np.corrcoef(d8.ravel(), d32.ravel())[0, 1] > 0.95


def test_int8_calibration_needs_enough_crops(nns_file, tmp_path, capsys):
    path, _, _ = nns_file
    empty = tmp_path / "few"
    empty.mkdir()
    from PIL import Image

    Image.fromarray(crops(1, 32)[0]).save(empty / "a.png")
    assert cli_main(["export", str(path), "--int8", "--calibration", str(empty)]) == 2
    assert "at least 16" in capsys.readouterr().err


@pytest.mark.parametrize("arch", ["reid_mobilenet", "mobilefacenet"])
def test_prelus_export_in_the_form_onnx_runtime_runs_fast_with_the_same_outputs(arch):
    """One-slope PReLUs (reid_mobilenet) become LeakyRelu and per-channel ones (mobilefacenet) are spelt out:
    no PRelu node is left in the graph, and ONNX Runtime's embeddings equal PyTorch's."""
    import onnx
    import onnxruntime as ort

    model = trained_looking(arch, 3)
    for prelu in (m for m in model.modules() if isinstance(m, torch.nn.PReLU)):
        prelu.weight.data.uniform_(-2.0, 2.0)  # slopes of either sign, as the shipped reid weights have
    info = model_info_for(model, input_size=model.input_size, threshold=1.0)
    data = onnx_bytes(model, info)
    ops = {node.op_type for node in onnx.load_from_string(data).graph.node}
    assert "PRelu" not in ops
    assert ("LeakyRelu" in ops) == (arch == "reid_mobilenet")
    x = torch.randn(3, 3, info.input_size, info.input_size, generator=torch.Generator().manual_seed(0))
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, model(x).numpy(), atol=1e-5)
