"""Model file: safetensors weights + JSON metadata; every bad file is a clear ModelFileError."""

import json

import pytest
import torch
from safetensors.torch import save_file

from facenet.errors import ModelFileError
from facenet.models import create_model
from facenet.models.modelfile import ModelInfo, load_model_file, model_info_for, read_model_info, save_model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("mobilefacenet", embedding_size=64, num_classes=5).train()
    model(torch.randn(4, 3, 160, 160))  # move BatchNorm running statistics off their defaults
    model.eval()
    path = tmp_path_factory.mktemp("m") / "model.safetensors"
    info = save_model(
        model,
        path,
        model_info_for(model, threshold=0.85, standardisation="prewhiten", provenance={"data": "synthetic"}),
    )
    return model, path, info


def test_roundtrip_gives_identical_outputs(saved):
    model, path, _ = saved
    loaded, _ = load_model_file(path)
    assert not loaded.training
    x = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_file_is_owner_only(saved):
    assert saved[1].stat().st_mode & 0o777 == 0o600


def test_metadata_roundtrip(saved):
    _, path, info = saved
    stored = read_model_info(path)
    assert stored == info
    assert (stored.arch, stored.embedding_size, stored.input_size, stored.num_classes) == ("mobilefacenet", 64, 160, 5)
    assert stored.threshold == 0.85 and stored.standardisation == "prewhiten"
    assert stored.provenance["data"] == "synthetic" and len(stored.provenance["weights_sha256"]) == 64
    assert stored.weights_id == stored.provenance["weights_sha256"][:16]
    assert ModelInfo.from_json(stored.to_json()) == stored


def test_model_id_changes_with_thresholds_weights_id_does_not(saved):
    """A file that answers differently never keeps its id; galleries key on the weights alone."""
    import dataclasses

    info = saved[2]
    for change in ({"threshold": info.threshold + 0.01}, {"far_thresholds": {"1e-03": 0.5}}):
        other = dataclasses.replace(info, **change)
        assert other.model_id != info.model_id and other.weights_id == info.weights_id


def test_weights_hash_changes_with_weights(saved, tmp_path):
    model, _, info = saved
    other = create_model("mobilefacenet", embedding_size=64, num_classes=5)
    saved_other = save_model(other, tmp_path / "o.safetensors")
    assert saved_other.model_id != info.model_id and saved_other.weights_id != info.weights_id


def test_missing_file(tmp_path):
    with pytest.raises(ModelFileError, match="not found"):
        load_model_file(tmp_path / "nope.safetensors")


@pytest.mark.parametrize("cut", [0, 7, 100, -10])
def test_truncated_file(saved, tmp_path, cut):
    data = saved[1].read_bytes()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(data[:cut] if cut >= 0 else data[:cut])
    with pytest.raises(ModelFileError, match="bad.safetensors"):
        load_model_file(bad)


def test_garbage_file(tmp_path):
    bad = tmp_path / "garbage.safetensors"
    bad.write_bytes(b"\xff" * 64)
    with pytest.raises(ModelFileError, match="not a facenet model file"):
        load_model_file(bad)


def test_foreign_safetensors_without_metadata(tmp_path):
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(3)}, str(foreign))
    with pytest.raises(ModelFileError, match="without facenet metadata"):
        load_model_file(foreign)


def test_corrupt_metadata(tmp_path):
    bad = tmp_path / "meta.safetensors"
    save_file({"w": torch.zeros(3)}, str(bad), metadata={"facenet": "{not json"})
    with pytest.raises(ModelFileError, match="corrupt facenet metadata"):
        read_model_info(bad)
    save_file(
        {"w": torch.zeros(3)},
        str(bad),
        metadata={"facenet": json.dumps({"arch": "mobilefacenet", "embedding_size": 8, "standardisation": "sepia"})},
    )
    with pytest.raises(ModelFileError, match="standardisation"):
        read_model_info(bad)


@pytest.mark.parametrize(
    "thresholds, problem",
    [
        ({"threshold": -0.5}, "not a squared L2 distance"),  # what an untrained model's calibration once stored
        ({"threshold": 0.31831}, None),
        ({"far_thresholds": {"1e-02": 0.9, "1e-03": 1.2}}, "do not grow"),  # stricter FAR, larger distance
        ({"far_thresholds": {"1e-02": 5.0}}, "0 to 4"),
    ],
)
def test_thresholds_outside_squared_l2_are_refused(tmp_path, thresholds, problem):
    path = tmp_path / "t.safetensors"
    save_file(
        {"w": torch.zeros(3)},
        str(path),
        metadata={"facenet": json.dumps({"arch": "mobilefacenet", "embedding_size": 8, **thresholds})},
    )
    if problem is None:
        assert read_model_info(path).threshold == thresholds["threshold"]
        return
    with pytest.raises(ModelFileError, match=problem):
        read_model_info(path)


def test_unknown_architecture_in_file(tmp_path):
    bad = tmp_path / "arch.safetensors"
    save_file({"w": torch.zeros(3)}, str(bad), metadata={"facenet": ModelInfo("resnet9000", 8).to_json()})
    with pytest.raises(ModelFileError, match="unknown architecture"):
        load_model_file(bad)


def test_weights_of_another_shape(saved, tmp_path):
    model, _, _ = saved
    bad = tmp_path / "shapes.safetensors"
    # The metadata claims 128-D, the weights are 64-D: strict loading must refuse.
    save_model(model, bad, model_info_for(model, embedding_size=128))
    with pytest.raises(ModelFileError, match="do not match architecture 'mobilefacenet'"):
        load_model_file(bad)
    # Weights of another architecture under this name.
    save_file({"conv.weight": torch.zeros(1)}, str(bad), metadata={"facenet": ModelInfo("mobilefacenet", 64).to_json()})
    with pytest.raises(ModelFileError, match="do not match"):
        load_model_file(bad)
