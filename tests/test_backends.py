"""Inference backends: ONNX Runtime, channels-last and compiled PyTorch all give eager PyTorch's embeddings."""

import logging

import numpy as np
import pytest
import torch
from test_export import crops, trained_looking

from facenet.backends import OnnxBackend, TorchBackend
from facenet.data.images import fit_to_input, standardise, to_batch
from facenet.embedder import load_embedder
from facenet.errors import FaceNetError
from facenet.export import make_backend, onnx_cache_path
from facenet.models.modelfile import model_info_for, save_model


@pytest.fixture()
def nns_file(tmp_path):
    model = trained_looking("nns", 3)
    path = tmp_path / "nns.safetensors"
    info = save_model(model, path, model_info_for(model, input_size=32))
    return path, model, info


def eager(model, x):
    with torch.inference_mode():
        return model(x).numpy()


def test_auto_uses_onnx_runtime_on_cpu_and_caches_the_export(nns_file, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path, model, info = nns_file
    path.parent.chmod(0o500)  # a read-only model folder: the cache lives elsewhere
    try:
        first = load_embedder(path, backend="auto", detect=False)
    finally:
        path.parent.chmod(0o700)
    assert isinstance(first.backend, OnnxBackend)
    cache = onnx_cache_path(info)
    assert cache.is_file() and cache.parent == tmp_path / "cache" / "facenet" / "onnx"
    assert info.weights_id in cache.name and "32px" in cache.name and not list(path.parent.glob("*.onnx"))
    stamp = cache.read_bytes()
    second = load_embedder(path, backend="auto", detect=False)
    assert cache.read_bytes() == stamp  # reused, not exported again
    faces = crops(4, 32)
    assert np.abs(first.embed_crops(faces) - load_embedder(path, backend="torch").embed_crops(faces)).max() < 1e-4
    assert np.array_equal(first.embed_crops(faces), second.embed_crops(faces))


def test_a_cached_export_of_other_weights_is_replaced(nns_file, tmp_path, monkeypatch):
    """The cache is checked against the weights: a file under the right name holding another graph is not used."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path, model, info = nns_file
    other = trained_looking("nns", 9)
    other_path = tmp_path / "other.safetensors"
    other_info = save_model(other, other_path, model_info_for(other, input_size=32))
    wrong = load_embedder(other_path, backend="auto", detect=False)
    onnx_cache_path(info).write_bytes(onnx_cache_path(other_info).read_bytes())  # a stale / mixed-up cache file
    right = load_embedder(path, backend="auto", detect=False)
    faces = crops(3, 32)
    reference = load_embedder(path, backend="torch", detect=False).embed_crops(faces)
    assert np.abs(right.embed_crops(faces) - reference).max() < 1e-4
    assert np.abs(wrong.embed_crops(faces) - reference).max() > 1e-2


def test_onnx_runtime_matches_torch_on_real_crops(lfw_dir, nns_file):
    path, model, info = nns_file
    photos = sorted((lfw_dir / "images").rglob("*.jpg"))[:6]
    x = standardise(to_batch([fit_to_input(p, 32) for p in photos]))
    assert np.abs(make_backend("onnx", model, info)(x) - eager(model, x)).max() < 1e-4


def test_auto_falls_back_to_torch_when_export_fails(nns_file, monkeypatch, caplog, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))
    path, model, info = nns_file

    def broken(*args, **kwargs):
        raise RuntimeError("exporter exploded")

    monkeypatch.setattr("facenet.export.onnx_bytes", broken)
    with caplog.at_level(logging.WARNING, logger="facenet.export"):
        backend = make_backend("auto", model, info)
    assert isinstance(backend, TorchBackend) and "exporter exploded" in caplog.text
    with pytest.raises(FaceNetError, match="--backend torch"):
        make_backend("onnx", model, info)
    with pytest.raises(FaceNetError, match="unknown backend"):
        make_backend("tensorrt", model, info)


def test_channels_last_matches_eager():
    model = trained_looking("nns", 4)
    x = torch.randn(3, 3, 32, 32)
    ref = eager(model, x)
    assert np.abs(TorchBackend(model, channels_last=True)(x) - ref).max() < 1e-5


def test_torch_compile_matches_eager():
    """Inductor with freezing=True was measured to corrupt Inception-ResNet-v1 outputs; ours must not."""
    model = trained_looking("nns", 5)
    x = torch.randn(2, 3, 32, 32)
    ref = eager(model, x)
    try:
        out = TorchBackend(model, compile=True)(x)
    except Exception as exc:  # no C++ compiler, unsupported platform, ...
        pytest.skip(f"torch.compile unavailable here: {str(exc).splitlines()[0][:200]}")
    assert np.abs(out - ref).max() < 1e-4


def test_cli_backends_agree(nns_file, tmp_path):
    from PIL import Image

    from facenet.cli import main as cli_main

    path, model, info = nns_file
    photo = tmp_path / "face.png"
    Image.fromarray(crops(1, 48)[0]).save(photo)
    rows = {}
    for backend in ("torch", "onnx"):
        out = tmp_path / f"{backend}.npy"
        assert (
            cli_main(
                ["embed", str(photo), "--model", str(path), "--no-detect", "--backend", backend, "--out", str(out)]
            )
            == 0
        )
        rows[backend] = np.load(out)
    assert np.abs(rows["torch"] - rows["onnx"]).max() < 1e-4
