"""benchmarks/learning_curve.py: which models a run contributes to its curve, and at how many images seen."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import learning_curve  # noqa: E402


def make_run(folder: Path, steps: list[int], final: bool, **config) -> Path:
    (folder / "snapshots").mkdir(parents=True)
    for step in steps:
        (folder / "snapshots" / f"step-{step:06d}.safetensors").touch()
    if final:
        (folder / "model.safetensors").touch()
    (folder / "config.json").write_text(
        json.dumps({"identities_per_batch": 16, "faces_per_identity": 4, "steps": 900, **config})
    )
    return folder


def test_snapshots_then_final_model_at_steps_times_batch(tmp_path):
    run = make_run(tmp_path / "run", [300, 600], final=True, init=None)
    assert learning_curve.run_models(run) == [
        (300 * 64, run / "snapshots/step-000300.safetensors"),
        (600 * 64, run / "snapshots/step-000600.safetensors"),
        (900 * 64, run / "model.safetensors"),
    ]


def test_unlabelled_photos_count_only_when_the_run_had_them(tmp_path):
    with_them = make_run(tmp_path / "a", [], final=True, unlabelled=["utk"], unlabelled_per_batch=36)
    without = make_run(tmp_path / "b", [], final=True, unlabelled=None, unlabelled_per_batch=36)
    assert learning_curve.run_models(with_them)[0][0] == 900 * 100
    assert learning_curve.run_models(without)[0][0] == 900 * 64


def test_fine_tuning_run_starts_at_the_model_it_started_from(tmp_path):
    start = tmp_path / "default.safetensors"
    run = make_run(tmp_path / "ft", [300], final=False, init=str(start))
    assert learning_curve.run_models(run) == [(0, start), (300 * 64, run / "snapshots/step-000300.safetensors")]


def test_a_run_with_nothing_to_measure_says_so(tmp_path):
    with pytest.raises(SystemExit, match="no snapshots and no model yet"):
        learning_curve.run_models(make_run(tmp_path / "empty", [], final=False))
