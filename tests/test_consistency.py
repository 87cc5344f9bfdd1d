"""Small consistencies (issue 12, item 17): one decision rule, the detector on the chosen device, true help."""

import numpy as np

from facenet.api import compare
from facenet.gallery import Gallery


def test_gallery_and_verify_decide_alike_at_the_threshold(tmp_path):
    e = np.zeros((1, 8), np.float32)
    e[0, 0] = 1.0
    assert not compare(e[0], e[0], threshold=0.0).same  # verify: same only when distance < threshold
    with Gallery.open(tmp_path / "g.db", "m", 8) as g:
        g.enroll("a", e, ["a.jpg"])
        assert g.identify(e, k=1, threshold=0.0) == [[]]  # so the gallery does not accept it either
        assert g.identify(e, k=1, threshold=1e-6)[0][0].name == "a"


def test_the_detector_follows_the_device(model_file, monkeypatch):
    import facenet.align
    from facenet.align import get_detector
    from facenet.embedder import load_embedder

    asked = []
    monkeypatch.setattr(facenet.align, "get_detector", lambda name, **kw: asked.append(kw) or get_detector(name, **kw))
    load_embedder(model_file, device="cpu", backend="torch")
    assert asked == [{"device": "cpu"}]
    assert str(get_detector("mtcnn", device="meta").pnet.conv1.weight.device) == "meta"  # torch: moves
    assert get_detector("center", device="meta").name == "center"  # OpenCV/dlib/centre: CPU only, no error


def test_serve_help_names_only_pages_that_exist():
    from facenet.cli import build_parser

    sub = build_parser()._subparsers._group_actions[0].choices["serve"]
    text = " ".join(sub.format_help().split())
    assert "web page at / (verify two photos, identify, manage the gallery)" in text
    assert "web page: verify, identify, cluster" not in text
