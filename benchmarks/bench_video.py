"""Video throughput: seconds of video analysed per second of wall time, tracked against every-frame recognition.

Three ways to find who is in a video, timed in one run on the same videos and gallery:

- ``tracked@FPS``: ``facenet.video`` (this project): frames sampled at ``--fps`` (default 5), faces detected
  through ``FaceFinder`` (on a reduced copy of big frames), tracked by norfair, each track embedded from its best
  few crops and identified once (again when its evidence doubles).
- ``tracked@all``: the same on every frame.
- ``every-frame``: what face_recognition's webcam example does: every frame decoded, every face detected,
  embedded and identified against the gallery, no tracking; detected as the tracked ways detect (the same
  finder, on the same reduced copy: its 1/4-size shortcut, for a fair comparison).

Videos are made on the fly from LFW photos (``tests/video_scenes.py``: two enrolled people and a stranger
entering, moving and leaving) at 720p and 1080p, ``--seconds`` long at ``--rate`` frames per second, written
to a temporary folder and deleted afterwards. The gallery holds the two people (three other photos each) and
``--others`` more LFW people. "people" is who each way found: the enrolled names, and "+unknown" when a
stranger was seen. Each figure is the best of ``--repeats`` passes (the every-frame baseline: one pass).
Prints a table, the ratios, the CPU and its load average (other work on the machine slows every way).

    PYTHONPATH=src .venv/bin/python benchmarks/bench_video.py --seconds 10
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # video_scenes.py, shared with the tests
LFW = HERE.parent.parent / "shared" / "data" / "lfw" / "images"
SIZES = {"720p": (1280, 720), "1080p": (1920, 1080)}

from machine import cpu_name  # noqa: E402


def scene(lfw: Path, seconds: float):
    from video_scenes import Actor

    photo = lambda name, n: lfw / name / f"{name}_{n:04d}.jpg"
    s = seconds / 6.0  # the tests' 6-second scene, stretched
    return [
        Actor("Colin_Powell", photo("Colin_Powell", 1), 0.5 * s, 3.0 * s, (0.05, 0.1), (0.4, 0.1), size=0.25),
        Actor("Tony_Blair", photo("Tony_Blair", 1), 2.0 * s, 5.5 * s, (0.6, 0.5), (0.3, 0.5), size=0.25),
        Actor("stranger", photo("Gerhard_Schroeder", 1), 0.3 * s, 5.8 * s, (0.7, 0.05), (0.6, 0.6), size=0.25),
    ]


def tracked(path: Path, gallery: Path, model, fps: float | None) -> set[str]:
    import facenet

    run = facenet.video(path, gallery=gallery, model=model, fps=fps)
    for _ in run:
        pass
    return {p if not p.startswith("Unknown") else "+unknown" for p in run.timeline().people()}


def every_frame(path: Path, gallery: Path, model, far: float | None = None) -> set[str]:
    """Detect, embed and identify every face of every frame, as face_recognition's webcam example does."""
    import cv2

    from facenet.align.finder import FaceFinder
    from facenet.errors import NoFaceError
    from facenet.evaluate.calibrate import DEFAULT_OPENSET_FAR, identification_promise
    from facenet.gallery import Gallery
    from facenet.video_analysis import VIDEO_MIN_FACE

    finder = FaceFinder(model.detector, model.recipe, model.info.input_size, None, VIDEO_MIN_FACE)  # same detection
    found: set[str] = set()
    with Gallery.open(gallery, model.name, model.embedding_size, create=False) as g:
        threshold = identification_promise(model, g.comparisons(), far or DEFAULT_OPENSET_FAR).threshold
        capture = cv2.VideoCapture(str(path))
        while True:
            ok, bgr = capture.read()
            if not ok:
                break
            try:
                faces = finder.find(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), "all").faces
            except NoFaceError:
                continue
            rows = model.embed_crops([f.image for f in faces])
            for matches in g.identify(rows, k=1, threshold=threshold):
                found.add(matches[0].name if matches else "+unknown")
        capture.release()
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lfw", type=Path, default=LFW, help="LFW images folder (default ../shared/data/lfw/images)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each video (default 10)")
    parser.add_argument("--rate", type=float, default=25.0, help="the videos' frame rate (default 25)")
    parser.add_argument("--fps", type=float, default=5.0, help="frames analysed per second when tracked (default 5)")
    parser.add_argument("--sizes", default="720p,1080p", help="which videos (default 720p,1080p)")
    parser.add_argument("--others", type=int, default=20, help="other LFW people enrolled besides the two (default 20)")
    parser.add_argument("--repeats", type=int, default=2, help="passes of the tracked ways, best kept (default 2)")
    parser.add_argument("--skip-every-frame", action="store_true", help="leave out the slow every-frame baseline")
    args = parser.parse_args()
    if not args.lfw.is_dir():
        print(f"LFW not found at {args.lfw}", file=sys.stderr)
        return 2

    from video_scenes import write_scene

    import facenet

    model = facenet.load_model()
    with tempfile.TemporaryDirectory(prefix="bench_video_") as tmp:
        tmp = Path(tmp)
        os.environ.setdefault("XDG_DATA_HOME", str(tmp / "data"))
        gallery = tmp / "gallery.db"
        for name in ("Colin_Powell", "Tony_Blair"):
            facenet.enroll(
                name, [args.lfw / name / f"{name}_{i:04d}.jpg" for i in (2, 3, 4)], gallery=gallery, model=model
            )
        others = sorted(p for p in args.lfw.iterdir() if len(list(p.glob("*.jpg"))) >= 3)
        others = [p for p in others if p.name not in ("Colin_Powell", "Tony_Blair", "Gerhard_Schroeder")][: args.others]
        for person in others:
            facenet.enroll(person.name, sorted(person.glob("*.jpg"))[:3], gallery=gallery, model=model)

        rows = []
        for label in args.sizes.split(","):
            path = tmp / f"{label}.mp4"
            write_scene(path, scene(args.lfw, args.seconds), args.seconds, fps=args.rate, size=SIZES[label])
            ways = [(f"tracked@{args.fps:g}", lambda p: tracked(p, gallery, model, args.fps))]
            ways.append(("tracked@all", lambda p: tracked(p, gallery, model, None)))
            if not args.skip_every_frame:
                ways.append(("every-frame", lambda p: every_frame(p, gallery, model)))
            for way, run in ways:
                walls = []
                for _ in range(1 if way == "every-frame" else max(1, args.repeats)):
                    start = time.perf_counter()
                    people = run(path)
                    walls.append(time.perf_counter() - start)
                wall = min(walls)
                rows.append((label, way, args.seconds / wall, wall, ", ".join(sorted(people))))
                print(f"  {label} {way}: {wall:.1f} s", file=sys.stderr)
            path.unlink()

    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"# CPU: {cpu_name()}, {os.cpu_count()} logical cores; Python {platform.python_version()}; load {load}")
    print(
        f"# videos: {args.seconds:g} s at {args.rate:g} fps, 2 enrolled people + 1 stranger; gallery {2 + len(others)}"
    )
    print("| video | way | video s / s | wall s | people found |")
    print("|---|---|---:|---:|---|")
    for label, way, speed, wall, people in rows:
        print(f"| {label} | {way} | {speed:.2f} | {wall:.1f} | {people} |")
    print()
    for label in args.sizes.split(","):
        speed = {way: s for lab, way, s, _, _ in rows if lab == label}
        base = speed.get("every-frame")
        if base:
            shown = ", ".join(f"{way} {s / base:.1f}x" for way, s in speed.items() if way != "every-frame")
            print(f"{label}: against every-frame: {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
