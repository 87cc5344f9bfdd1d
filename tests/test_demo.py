"""`facenet demo` end to end (a few steps): report, plots, its own model (the default stays), usable gallery, twice."""

import numpy as np

from facenet.cli import main
from facenet.demo import run_demo
from facenet.gallery import Gallery


def test_short_demo_writes_report_keeps_the_default_and_runs_twice(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.delenv("FACENET_MODEL", raising=False)
    report = run_demo(tmp_path / "demo", steps=8, progress=False)
    assert capsys.readouterr().err.startswith("facenet demo: training a small nns model")  # at once, in a log too
    assert report.model_path == tmp_path / "demo" / "run" / "model.safetensors"

    text = report.report_path.read_text()
    assert f"{report.accuracy:.1%}" in text and "VAL @ FAR=1e-3" in text
    assert (tmp_path / "demo" / "roc.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "demo" / "distances.png").stat().st_size > 0
    assert 0.0 <= report.identification_accuracy <= 1.0 and 0.5 <= report.auc <= 1.0
    assert not (tmp_path / "data" / "facenet" / "models" / "default.safetensors").exists()
    assert report.model_path.stat().st_mode & 0o777 == 0o600
    again = run_demo(tmp_path / "demo", steps=8, progress=False)  # the README's first line, run twice
    assert again.model_path.read_bytes() == report.model_path.read_bytes() and again.accuracy == report.accuracy
    assert "finished demo run" in capsys.readouterr().out
    # the report of the re-run keeps the real figures: the untrained accuracy and the training time
    assert report.initial_accuracy is not None and again.initial_accuracy == report.initial_accuracy
    assert report.training_seconds is not None and again.training_seconds == report.training_seconds
    rows = [line for line in text.splitlines() if "untrained -> trained" in line or "training time" in line]
    again_text = again.report_path.read_text()
    assert len(rows) == 2 and all(row in again_text for row in rows) and "n/a" not in again_text

    from PIL import Image

    from facenet.data.synthetic import SyntheticFaces

    photo = tmp_path / "face.png"
    Image.fromarray(SyntheticFaces(1, seed=5, size=64).render(0, 0)).save(photo)
    out = tmp_path / "e.npy"
    model = str(report.model_path)
    assert main(["embed", str(photo), "--out", str(out), "--model", model, "--no-detect", "--backend", "torch"]) == 0
    assert np.isclose(np.linalg.norm(np.load(out)), 1, atol=1e-5)
    # the demo's gallery carries the same model id as the CLI's embedder, so the CLI can open it
    gallery = tmp_path / "demo" / "gallery.db"
    assert main(
        ["identify", str(photo), "--gallery", str(gallery), "--model", model, "--no-detect", "--backend", "torch"]
    ) in (0, 1)
    with Gallery.open(gallery) as g:
        assert len(g.people()) == 10
