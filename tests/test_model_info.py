"""Which model answers (issue 12, item 14): `facenet models` lists the model files with their training data,
thresholds and ids; verify, identify and the service name the model."""

import io
import shutil

import numpy as np
import pytest
from PIL import Image

from facenet.cli import main


def test_models_lists_model_files_with_provenance_threshold_and_id(model_file, tmp_path, monkeypatch, capsys):
    from facenet.models.modelfile import read_model_info
    from facenet.paths import models_dir

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    models_dir().mkdir(parents=True)
    shutil.copy(model_file, models_dir() / "mine.safetensors")
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    info = read_model_info(model_file)
    assert "* installed default" in out and "not installed yet" in out  # listing never installs anything
    assert str(models_dir() / "mine.safetensors") in out
    assert f"threshold {info.threshold:.4f}, id {info.id}" in out and "trained on:" in out
    assert info.id.startswith("nns-128d-")  # the one id verify, identify and galleries use (embedder.name)
    monkeypatch.setenv("FACENET_MODEL", str(model_file))
    assert main(["models"]) == 0
    assert f"* $FACENET_MODEL  {model_file}" in capsys.readouterr().out


def test_trained_on_reads_the_provenance():
    from facenet.embedder import trained_on
    from facenet.models.modelfile import ModelInfo

    trained = ModelInfo(
        "nns",
        128,
        provenance={
            "trained_by": "facenet train",
            "data": "synthetic",
            "identities": 40,
            "images": 800,
            "steps": 850,
            "loss": "triplet",
        },
    )
    assert trained_on(trained) == "facenet train on synthetic (40 identities, 800 images, 850 steps, triplet loss)"
    assert (
        trained_on(ModelInfo("x", 128, provenance={"source": "20180402-114759-vggface2.pt"}))
        == "converted from 20180402-114759-vggface2.pt"
    )
    assert "unknown" in trained_on(ModelInfo("x", 128))


def test_verify_and_identify_name_the_model(model_file, tmp_path, capsys):
    from facenet.data.synthetic import SyntheticFaces
    from facenet.embedder import load_embedder

    name = load_embedder(model_file, detect=False, backend="torch").name
    faces = SyntheticFaces(2, seed=1, size=64)
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    Image.fromarray(faces.render(0, 0)).save(a)
    Image.fromarray(faces.render(1, 0)).save(b)
    common = ["--model", str(model_file), "--no-detect", "--backend", "torch"]
    assert main(["verify", str(a), str(b), *common]) in (0, 1)
    assert f"model     {name}" in capsys.readouterr().out
    g = str(tmp_path / "g.db")
    assert main(["gallery", "enroll", "a", str(a), "--gallery", g, *common]) == 0
    capsys.readouterr()
    assert main(["identify", str(a), "--gallery", g, *common]) in (0, 1)
    assert f"# model {name}" in capsys.readouterr().err


def test_the_service_says_which_model_answers(model_file, tmp_path):
    pytest.importorskip("httpx")

    from test_serve import started

    from facenet.embedder import load_embedder
    from facenet.serve import create_app
    from facenet.serve.security import Keys

    embedder = load_embedder(model_file, detect=False, backend="torch")
    with started(create_app(embedder, tmp_path / "g.db", keys=Keys(public=True))) as client:
        info = client.get("/api/model").json()
        assert info["name"] == embedder.name and info["threshold"] == embedder.threshold
        assert info["model_id"] == embedder.info.id == embedder.name and info["trained_on"]
        buf = io.BytesIO()
        Image.fromarray(np.full((64, 64, 3), 120, np.uint8)).save(buf, "PNG")
        r = client.post("/api/identify", files={"photo": ("p.png", buf.getvalue(), "image/png")})
        assert r.status_code == 200 and r.json()["model"] == embedder.name
        page = client.get("/static/app.js").text
        assert "/api/model" in page and "r.model" in page


@pytest.mark.parametrize(
    "name, expected",
    [
        ("dlib", "~3M faces (FaceScrub, VGG, web photos), by Davis King (dlib); converted from w.dat"),
        ("reid", "unpublished data, by Intel (Open Model Zoo face-reidentification-retail-0095); converted from w.dat"),
    ],
)
def test_a_shipped_model_reads_as_trained_on_data_by_someone(name, expected):
    """The page said "trained on Davis King (dlib)": the data comes first, then who trained the model."""
    from facenet.embedder import trained_on
    from facenet.models.modelfile import ModelInfo
    from facenet.models.pretrained import PRETRAINED

    shipped = PRETRAINED[name]
    assert (
        trained_on(ModelInfo(shipped.arch, shipped.embedding_size, provenance={"source": "w.dat", **shipped.about}))
        == expected
    )


def test_a_shipped_model_installed_with_the_old_provenance_is_refreshed(tmp_path):
    """A file installed by an earlier facenet ("trained_by" only) gets today's provenance when it is asked for."""
    import dataclasses

    from facenet.embedder import trained_on
    from facenet.models.modelfile import load_model_file, read_model_info, save_model
    from facenet.models.pretrained import install_pretrained

    path = install_pretrained("reid", tmp_path / "reid.safetensors")
    model, info = load_model_file(path)
    old = {k: v for k, v in info.provenance.items() if k != "data"}
    save_model(model, path, dataclasses.replace(info, provenance=old))
    install_pretrained("reid", path, replace=True)
    assert trained_on(read_model_info(path)).startswith("unpublished data, by Intel")
