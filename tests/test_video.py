"""`facenet video` and `facenet.video`: synthetic videos made from LFW photos inside the tests (tmp_path).

Two enrolled people (Colin Powell, Tony Blair: enrolled from three photos each, seen in the video in a fourth)
and a stranger (Gerhard Schroeder, never enrolled) enter, move and leave; the timeline must name them at the
right times (within one sampled frame), give the stranger one "Unknown" for his two appearances, keep names
through a crossing, and a broken file must end in a clear error with the timeline of what was read.
"""

from __future__ import annotations

import json
import queue
import time

import numpy as np
import pytest
from video_scenes import Actor, who_is_at, write_scene

pytest.importorskip(
    "norfair", reason="the tracker norfair is not installed: pip install --no-deps 'norfair==2.3.0' (install.sh does)"
)

FPS = 5.0  # analysed frames per second
STEP = 1.0 / FPS
SIZE = (640, 360)
ENROLLED = ("Colin_Powell", "Tony_Blair")
STRANGER = "Gerhard_Schroeder"


def photo(lfw, name: str, number: int):
    path = lfw / "images" / name / f"{name}_{number:04d}.jpg"
    if not path.is_file():
        pytest.skip(f"LFW photo {path} not found")
    return path


@pytest.fixture(scope="module")
def model():
    import facenet

    return facenet.load_model()


@pytest.fixture(scope="module")
def gallery(lfw_dir, model, tmp_path_factory):
    import facenet

    path = tmp_path_factory.mktemp("video_gallery") / "gallery.db"
    for name in ENROLLED:
        facenet.enroll(name, [photo(lfw_dir, name, i) for i in (2, 3, 4)], gallery=path, model=model)
    return path


def comings_and_goings(lfw) -> list[Actor]:
    """Colin Powell 0.5-3.0 s, Tony Blair 2.0-5.5 s, the stranger 0.3-2.0 s and again 3.5-5.8 s, all moving."""
    stranger = photo(lfw, STRANGER, 1)
    return [
        Actor("Colin_Powell", photo(lfw, "Colin_Powell", 1), 0.5, 3.0, (0.05, 0.1), (0.4, 0.1)),
        Actor("Tony_Blair", photo(lfw, "Tony_Blair", 1), 2.0, 5.5, (0.6, 0.5), (0.3, 0.5)),
        Actor("stranger", stranger, 0.3, 2.0, (0.7, 0.05), (0.75, 0.05)),
        Actor("stranger again", stranger, 3.5, 5.8, (0.05, 0.55), (0.1, 0.55)),
    ]


def within_a_sample(segment, start: float, end: float) -> bool:
    """The segment starts at the first sampled frame at or after ``start`` and ends at the last before ``end``."""
    return start <= segment.start < start + STEP + 1e-6 and end - STEP - 1e-6 <= segment.end < end


def test_timeline_names_enrolled_people_at_the_right_times_and_the_stranger_once(lfw_dir, gallery, model, tmp_path):
    import facenet

    actors = comings_and_goings(lfw_dir)
    write_scene(tmp_path / "scene.mp4", actors, duration=6.0, size=SIZE)
    run = facenet.video(tmp_path / "scene.mp4", gallery=gallery, model=model, fps=FPS)
    events = list(run)
    timeline = run.timeline()

    assert timeline.complete and timeline.people() == ["Unknown 1", "Colin_Powell", "Tony_Blair"]
    for actor in actors[:2]:
        (segment,) = timeline.of(actor.name)
        assert within_a_sample(segment, actor.start, actor.end), (actor.name, segment)
        assert segment.confidence == 1.0 and segment.distance is not None
    first, second = timeline.of("Unknown 1")  # two appearances, two tracks, one stranger
    assert within_a_sample(first, 0.3, 2.0) and within_a_sample(second, 3.5, 5.8)
    assert first.tracks != second.tracks
    appeared = {e.person for e in events if e.kind == "appeared"}
    assert appeared == {"Colin_Powell", "Tony_Blair", "Unknown 1"}
    assert sum(e.kind == "left" for e in events) == sum(e.kind == "appeared" for e in events) == 4


def test_crossing_does_not_swap_names(lfw_dir, gallery, model, tmp_path):
    """Colin Powell walks right, Tony Blair left, across each other (Blair in front, hiding Powell for a moment):
    every tracked face, in every analysed frame, carries the name of the person actually there."""
    import facenet

    actors = [
        Actor("Colin_Powell", photo(lfw_dir, "Colin_Powell", 1), 0.0, 5.0, (0.0, 0.25), (0.75, 0.3)),
        Actor("Tony_Blair", photo(lfw_dir, "Tony_Blair", 1), 0.0, 5.0, (0.75, 0.35), (0.0, 0.3)),
    ]
    write_scene(tmp_path / "crossing.mp4", actors, duration=5.0, size=SIZE)
    run = facenet.video(tmp_path / "crossing.mp4", gallery=gallery, model=model, fps=FPS, frame_events=True)
    named, switches = 0, []
    for event in run:
        if event.kind != "frame":
            continue
        for track, person, box in event.faces:
            truth = who_is_at(actors, event.time, box, SIZE)
            if person is not None and truth is not None:
                named += 1
                if person != truth:
                    switches.append((event.time, track, person, truth))
    assert switches == []
    assert named >= 30  # both faces named in most of the 25 analysed frames
    timeline = run.timeline()
    assert sorted(timeline.people()) == sorted(ENROLLED)
    for name in ENROLLED:
        (segment,) = timeline.of(name)
        assert segment.start == 0.0 and segment.end >= 5.0 - 2 * STEP


def test_command_writes_the_timeline_annotated_video_and_snapshots(lfw_dir, gallery, tmp_path, capsys):
    import cv2

    from facenet.cli import main

    write_scene(tmp_path / "scene.mp4", comings_and_goings(lfw_dir), duration=6.0, size=SIZE)
    out = tmp_path / "out"
    args = ["video", str(tmp_path / "scene.mp4"), "--gallery", str(gallery), "--out", str(out)]
    assert main([*args, "--annotate", "--snapshots", "--quiet"]) == 0
    data = json.loads((out / "timeline.json").read_text())
    assert data["complete"] and [p["person"] for p in data["people"]] == ["Unknown 1", "Colin_Powell", "Tony_Blair"]
    assert [p["known"] for p in data["people"]] == [False, True, True]
    rows = (out / "timeline.csv").read_text().splitlines()
    assert rows[0] == "person,start,end,confidence,distance,tracks,compared_as" and len(rows) == 1 + 4
    assert rows[2].startswith("Colin_Powell,0.6,2.8,1.0,")
    assert sorted(p.name for p in (out / "snapshots").iterdir()) == [
        "Colin_Powell.png",
        "Tony_Blair.png",
        "Unknown 1.png",
    ]
    capture = cv2.VideoCapture(str(out / "annotated.mp4"))
    assert capture.get(cv2.CAP_PROP_FRAME_COUNT) == 30 and capture.get(cv2.CAP_PROP_FRAME_WIDTH) == SIZE[0]
    capture.release()
    for path in (
        out / "timeline.json",
        out / "timeline.csv",
        out / "annotated.mp4",
        out / "snapshots" / "Tony_Blair.png",
    ):
        assert path.stat().st_mode & 0o077 == 0  # faces and who was where: owner-only
    assert "Colin_Powell\t0.60\t2.80" in capsys.readouterr().out


def test_a_truncated_video_ends_in_a_clear_error_with_the_timeline_of_what_was_read(lfw_dir, gallery, tmp_path, capsys):
    from facenet.cli import main

    actors = comings_and_goings(lfw_dir)
    whole = tmp_path / "scene.avi"
    write_scene(whole, actors, duration=6.0, size=SIZE, fourcc="MJPG")
    data = whole.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) * 6 // 10])  # about 3.5 s of 6
    out = tmp_path / "out"
    assert main(["video", str(cut), "--gallery", str(gallery), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "truncated or corrupt" in err and "timeline.json" in err and "Traceback" not in err
    timeline = json.loads((out / "timeline.json").read_text())
    assert timeline["complete"] is False and "truncated" in timeline["error"]
    assert [p["person"] for p in timeline["people"]][:2] == ["Unknown 1", "Colin_Powell"]

    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40)
    assert main(["video", str(garbage), "--gallery", str(gallery), "--out", str(out / "g"), "--quiet"]) == 2
    assert "is not a video OpenCV can read" in capsys.readouterr().err
    assert main(["video", str(tmp_path / "missing.mp4"), "--gallery", str(gallery), "--out", str(out)]) == 2
    assert "no such video file" in capsys.readouterr().err


def test_ctrl_c_in_the_command_writes_the_timeline_of_what_was_seen(lfw_dir, gallery, tmp_path, capsys, monkeypatch):
    from facenet.cli import main
    from facenet.commands import video as command

    write_scene(tmp_path / "scene.mp4", comings_and_goings(lfw_dir), duration=6.0, size=SIZE)

    def interrupt_at_two_seconds(self, frame, tracks):
        if frame.time >= 2.0:
            raise KeyboardInterrupt

    monkeypatch.setattr(command.Progress, "__call__", interrupt_at_two_seconds)
    out = tmp_path / "out"
    assert main(["video", str(tmp_path / "scene.mp4"), "--gallery", str(gallery), "--out", str(out)]) == 130
    assert "interrupted" in capsys.readouterr().err
    data = json.loads((out / "timeline.json").read_text())
    assert data["complete"] is False
    assert [p["person"] for p in data["people"]] == ["Unknown 1", "Colin_Powell"]
    (powell,) = data["people"][1]["segments"]
    assert powell["start"] == 0.6 and powell["end"] == 2.0  # the frame analysed when Ctrl-C came


def test_stopping_early_keeps_a_complete_timeline(lfw_dir, gallery, model, tmp_path):
    """What Ctrl-C does: the tracks alive when it came end there, and the timeline says it is incomplete."""
    import facenet

    write_scene(tmp_path / "scene.mp4", comings_and_goings(lfw_dir), duration=6.0, size=SIZE)
    run = facenet.video(tmp_path / "scene.mp4", gallery=gallery, model=model, fps=FPS)
    for event in run:
        if event.kind == "appeared" and event.person == "Colin_Powell":
            break
    run.finish()
    timeline = run.timeline()
    assert timeline.complete is False
    assert "Colin_Powell" in timeline.people() and "Tony_Blair" not in timeline.people()
    assert timeline.of("Colin_Powell")[0].start == pytest.approx(0.6)


class FakeCamera:
    """A capture giving numbered frames as fast as asked, failing after ``fail_after`` reads."""

    opened: list = []

    def __init__(self, source, fail_after: int):
        self.left, self.count = fail_after, 0
        FakeCamera.opened.append(self)

    def isOpened(self):
        return True

    def read(self):
        if self.left <= 0:
            return False, None
        self.left -= 1
        self.count += 1
        time.sleep(0.002)
        return True, np.full((8, 8, 3), self.count % 256, np.uint8)

    def release(self):
        pass


def test_a_live_source_drops_stale_frames_and_reconnects():
    from facenet.errors import VideoError
    from facenet.video_analysis import LiveFrames

    FakeCamera.opened = []
    opens = queue.Queue()
    for n in (300, 300):
        opens.put(n)

    def opener(source):
        return FakeCamera(source, opens.get_nowait()) if not opens.empty() else None

    frames = LiveFrames(0, fps=None, reconnect_s=0.5, opener=opener)
    seen = []
    with pytest.raises(VideoError, match="gave no frame for"):
        for frame in frames:
            seen.append(frame.index)
            time.sleep(0.02)  # a slow analysis: the reader must not queue up behind it
    assert len(FakeCamera.opened) == 2 and frames.reconnects == 1
    assert frames.dropped > 100 and len(seen) < 200  # stale frames dropped, not queued
    assert all(b > a for a, b in zip(seen, seen[1:]))  # always newer frames, in order


def test_a_masked_face_is_identified_with_the_masked_threshold(lfw_dir, gallery, model, tmp_path):
    """Issue 24: a track whose best crops are masked (a mask the project never drew) is compared as masked, with
    the masked table's threshold for the gallery; a clean track keeps the plain one."""
    pytest.importorskip("dlib", reason="the held-out mask renderer needs dlib: pip install dlib-bin")
    from PIL import Image

    import facenet
    from facenet.data.images import load_image
    from facenet.evaluate.heldout_masks import mask_photo

    masked_photo = tmp_path / "powell_masked.png"
    pixels = load_image(photo(lfw_dir, "Colin_Powell", 1))
    Image.fromarray(mask_photo(pixels, "surgical", seed=1, which="central")).save(masked_photo)
    actors = [
        Actor("Colin_Powell", masked_photo, 0.2, 2.5, (0.05, 0.1), (0.3, 0.1)),
        Actor("Tony_Blair", photo(lfw_dir, "Tony_Blair", 1), 0.2, 2.5, (0.6, 0.5), (0.5, 0.5)),
    ]
    write_scene(tmp_path / "masked.mp4", actors, duration=3.0, size=SIZE)
    run = facenet.video(tmp_path / "masked.mp4", gallery=gallery, model=model, fps=FPS)
    list(run)
    timeline = run.timeline()
    assert run.masked_promise is not None and run.masked_promise.threshold > run.threshold
    (powell,) = timeline.of("Colin_Powell")
    (blair,) = timeline.of("Tony_Blair")
    assert powell.masked and not blair.masked
    assert powell.as_dict()["compared_as"] == "masked" and blair.as_dict()["compared_as"] == "plain"
