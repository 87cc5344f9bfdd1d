"""What --resume may and may not do: a moved run trains where it is now, other options are refused
loudly, a finished run stays finished, and a model lost after the last checkpoint gets its real
thresholds back (issue: resuming once wrote the default threshold under the same model id)."""

import shutil

import pytest

from facenet.cli import main
from facenet.errors import TrainingError
from facenet.models.modelfile import read_model_info

RUN = [
    "--arch",
    "nns",
    "--image-size",
    "32",
    "--identities-per-batch",
    "4",
    "--faces-per-identity",
    "3",
    "--steps",
    "6",
    "--eval-every",
    "3",
    "--checkpoint-every",
    "1",
    "--workers",
    "0",
    "--device",
    "cpu",
    "--synthetic-identities",
    "16",
    "--synthetic-images",
    "6",
    "--holdout",
    "0.25",
    "--seed",
    "3",
]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "run"
    assert main(["train", "--out", str(run), *RUN]) == 0
    return run


def test_a_finished_run_stays_finished(finished, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    before = (run / "model.safetensors").read_bytes()
    assert main(["train", "--out", str(run), "--resume"]) == 0
    assert (run / "model.safetensors").read_bytes() == before
    assert "left as it is" in capsys.readouterr().err


def test_a_model_lost_after_the_last_checkpoint_is_remade_with_its_thresholds(finished, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    original = read_model_info(run / "model.safetensors")
    (run / "model.safetensors").unlink()  # killed between the last checkpoint and the final model
    assert main(["train", "--out", str(run), "--resume"]) == 0
    remade = read_model_info(run / "model.safetensors")
    assert original.threshold != 1.1 and remade.threshold == pytest.approx(original.threshold)
    assert remade.far_thresholds == pytest.approx(original.far_thresholds) and remade.far_thresholds
    assert remade.model_id == original.model_id


def test_a_moved_run_continues_in_its_new_folder(finished, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(finished, moved)
    assert main(["train", "--out", str(moved), "--resume", "--steps", "8"]) == 0
    assert '"out": "' + str(moved) in (moved / "config.json").read_text()
    assert read_model_info(moved / "model.safetensors").provenance["steps"] == 8
    assert read_model_info(finished / "model.safetensors").provenance["steps"] == 6  # the old folder untouched


def test_other_options_are_refused_on_resume_not_dropped(finished, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    assert main(["train", "--out", str(run), "--resume", "--lr", "0.5", "--miner", "hard"]) == 2
    err = capsys.readouterr().err
    assert "lr=0.5" in err and "miner='hard'" in err and "another --out" in err
    with pytest.raises(TrainingError, match="not a training run"):
        from facenet.train.config import TrainConfig

        TrainConfig.load(tmp_path / "nothing")
    assert main(["train", "--out", str(tmp_path / "nothing"), "--resume"]) == 2


def test_weight_decay_spares_batchnorm_and_biases(tmp_path):
    import torch

    from facenet.models import create_model
    from facenet.train.config import TrainConfig
    from facenet.train.loop import _optimizer

    model = create_model("nns", input_size=32)
    for name, decay in (("adamw", 5e-4), ("sgd", 1e-3), ("adagrad", 2e-4)):
        opt = _optimizer(TrainConfig(optimizer=name, weight_decay=decay), model.parameters(), torch.device("cpu"))
        by_decay = {g["weight_decay"]: g["params"] for g in opt.param_groups}
        assert set(by_decay) == {decay, 0.0}
        assert all(p.ndim > 1 for p in by_decay[decay]) and all(p.ndim == 1 for p in by_decay[0.0])
        norm_params = {id(p) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) for p in m.parameters()}
        assert norm_params <= {id(p) for p in by_decay[0.0]}
    assert isinstance(_optimizer(TrainConfig(), model.parameters(), torch.device("cpu")), torch.optim.AdamW)
    assert TrainConfig.from_json('{"optimizer": "adam"}').optimizer == "adamw"  # runs started before the rename


def test_training_progress_in_a_log_is_a_few_plain_lines(tmp_path, capsys):
    """Not a terminal (CI, a log file): at most about a dozen lines, no carriage-return bar redraws."""
    assert main(["train", "--out", str(tmp_path / "run"), *RUN, "--steps", "30", "--eval-every", "30"]) == 0
    err = capsys.readouterr().err
    training = [line for line in err.splitlines() if line.startswith("training")]
    assert 1 <= len(training) <= 12 and "\r" not in err
