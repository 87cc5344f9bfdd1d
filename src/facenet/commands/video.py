"""`facenet video SRC --out DIR`: who appears when in a video file, a webcam or a network stream."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from facenet.commands.core import add_model_options, embedder_from_args
from facenet.commands.gallery import GALLERY_HELP
from facenet.errors import VideoError
from facenet.video_analysis import VIDEO_MIN_FACE

EXIT_INTERRUPTED = 130
BOX_COLOURS = {True: (40, 200, 40), False: (40, 140, 255)}  # known, stranger (RGB)


class Annotator:
    """Writes the analysed frames, with each tracked face's box and name, to an MP4 (owner-only)."""

    def __init__(self, path: Path, fps: float):
        self.path, self.fps, self.writer = path, fps, None

    def __call__(self, frame, tracks) -> None:
        import cv2

        pixels = frame.pixels.copy()
        for t in tracks:
            x1, y1, x2, y2 = (int(round(v)) for v in t.box)
            colour = BOX_COLOURS[bool(t.person) and not t.person.startswith("Unknown")]
            cv2.rectangle(pixels, (x1, y1), (x2, y2), colour, 2)
            label = f"{t.person or '?'} #{t.id}"
            cv2.putText(pixels, label, (x1, max(y1 - 6, 12)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour, 1, cv2.LINE_AA)
        bgr = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
        if self.writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            h, w = bgr.shape[:2]
            self.writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (w, h))
            if not self.writer.isOpened():
                raise VideoError(f"cannot write the annotated video {self.path}")
            os.chmod(self.path, 0o600)
        self.writer.write(bgr)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()


class Progress:
    """Frames of a file read so far, with rate and ETA (``facenet.progress``)."""

    def __init__(self, frames, enabled: bool):
        from facenet.progress import progress_bar

        total = getattr(frames, "frame_count", None)
        self.frames = frames
        self.bar = progress_bar(total, "video", unit="frame", enabled=enabled) if total else None

    def __call__(self, frame, tracks) -> None:
        if self.bar is not None:
            self.bar.update(self.frames.position - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.update(self.frames.position - self.bar.n)
            self.bar.close()


def write_outputs(analysis, out: Path, snapshots: bool) -> Path:
    """The timeline (JSON, CSV) and, asked for, the best face per person as ``snapshots/<person>.png``."""
    json_path, _ = analysis.timeline().write(out)
    if snapshots:
        from PIL import Image

        from facenet.fileio import atomic_write

        for person, crop in analysis.snapshots().items():
            name = "".join(c if c.isalnum() or c in "-_. " else "_" for c in person).strip() or "person"
            image = Image.fromarray(crop)
            atomic_write(out / "snapshots" / f"{name}.png", lambda tmp, im=image: im.save(tmp, format="PNG"))
    return json_path


def run_video(args: argparse.Namespace) -> int:
    from facenet.video_analysis import VideoAnalysis, is_live

    if args.fps is not None and args.fps <= 0:
        raise VideoError("--fps must be positive; leave it out (or pass --every-frame) to analyse every frame")
    fps = None if args.every_frame else args.fps
    embedder = embedder_from_args(args)
    hooks: list = []

    def on_frame(frame, tracks) -> None:
        for hook in hooks:
            hook(frame, tracks)

    analysis = VideoAnalysis(
        args.source,
        embedder,
        args.gallery,
        fps,
        args.far,
        args.threshold,
        reconnect_s=args.reconnect,
        on_frame=on_frame,
        min_face=args.min_face or None,
        keep_faces=args.snapshots,
    )
    out = Path(args.out)
    progress = Progress(analysis.frames, enabled=not args.quiet and not is_live(args.source))
    hooks.append(progress)
    annotator = None
    if args.annotate:
        rate = fps or getattr(analysis.frames, "native_fps", 25.0)
        annotator = Annotator(out / "annotated.mp4", rate)
        hooks.append(annotator)
    if analysis.promise is not None and analysis.promise.note:
        print(f"facenet video: warning: {analysis.promise.note}", file=sys.stderr)
    status, failure = 0, None
    try:
        for event in analysis:
            if event.kind != "frame" and args.events:
                print(f"{event.time:9.2f}s  {event.kind:<10} track {event.track}: {event.person}", file=sys.stderr)
    except KeyboardInterrupt:
        analysis.finish()
        print("facenet video: interrupted; the timeline holds what was seen until then", file=sys.stderr)
        status = EXIT_INTERRUPTED
    except VideoError as exc:
        failure = exc
    finally:
        progress.close()
        if annotator is not None:
            annotator.close()
    json_path = write_outputs(analysis, out, args.snapshots)
    timeline = analysis.timeline()
    for s in timeline.segments:
        print(f"{s.person}\t{s.start:.2f}\t{s.end:.2f}\t{s.confidence:.2f}\ttracks {','.join(map(str, s.tracks))}")
    print(f"# {len(timeline.people())} people in {len(timeline.segments)} segment(s); timeline in {json_path}")
    if failure is not None:
        raise VideoError(f"{failure}; the timeline of what was read is in {json_path}")
    return status


def register(sub) -> None:
    p = sub.add_parser(
        "video",
        help="who appears when in a video file, webcam or stream (timeline JSON/CSV)",
        description="Analyse SRC (a video file, a webcam index such as 0, or an rtsp:// or http:// stream): "
        "frames sampled at --fps, faces found and tracked across frames, each track identified once "
        "against the gallery from its best few faces (again when its evidence grows), with the open-set "
        "threshold of `facenet identify`. Strangers are clustered over the whole video into 'Unknown N'. "
        "Writes DIR/timeline.json and DIR/timeline.csv (person, start, end, confidence, track ids), and "
        "with --annotate DIR/annotated.mp4, with --snapshots DIR/snapshots/<person>.png. Live sources are "
        "reopened when they fail and stale frames dropped; Ctrl-C stops with the timeline written. "
        "Exit 0; 2 on an error (a truncated or corrupt file: after writing the timeline of what was read); "
        "130 when interrupted.",
    )
    p.add_argument("source", metavar="SRC", help="video file, webcam index (0, 1...) or rtsp/http stream URL")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--gallery", help=GALLERY_HELP)
    p.add_argument(
        "--fps", type=float, default=5.0, help="frames analysed per second of video (default 5; see --every-frame)"
    )
    p.add_argument("--every-frame", action="store_true", help="analyse every frame (overrides --fps)")
    p.add_argument(
        "--far",
        type=float,
        default=None,
        help="wanted chance that a stranger is taken for someone enrolled, as identify's (default 1e-2)",
    )
    p.add_argument("--threshold", type=float, help="squared-L2 threshold (overrides --far)")
    p.add_argument("--annotate", action="store_true", help="also write DIR/annotated.mp4 (boxes and names)")
    p.add_argument("--snapshots", action="store_true", help="also write the best face per person in DIR/snapshots")
    p.add_argument("--events", action="store_true", help="print each event (appeared, identified, left) to stderr")
    p.add_argument(
        "--reconnect",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="live sources: how long to keep reopening a failed stream before giving up (default 30)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_model_options(p)
    for action in p._actions:  # a video's own default: faces from 5% of the frame's shorter side
        if action.dest == "min_face":
            action.default = VIDEO_MIN_FACE
            action.help = (
                "smallest face to find, as a fraction of a frame's shorter side: frames are detected on a copy "
                f"reduced to match (default {VIDEO_MIN_FACE}: 36 px at 720p, 54 px at 1080p); smaller values find "
                "smaller faces and cost more, 0 detects at full resolution"
            )
    p.set_defaults(func=run_video)
