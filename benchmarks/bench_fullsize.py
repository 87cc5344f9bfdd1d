"""Photos as people take them: photo file -> embeddings of its faces, at 3, 12, 24 and 48 MP.

Three pipelines, measured in one run, each in processes of its own (so peak memory is the photo's):
- ``dlib``: dlib's own pipeline as ``face_recognition`` users run it on big photos (Pillow full
  decode, HOG without upsampling, 5-point shape predictor, dlib's C++ ResNet for every face found);
  on LFW thumbnails with one upsampling, as ``face_recognition`` does by default.
- ``before``: this project before the full-size work (``--before-src``: the ``src`` folder of a
  checkout of that commit, e.g. ``git worktree add /tmp/before 87e555b``), every face embedded.
- ``after``: this checkout, every face embedded (``find_faces(which="all")`` + ``embed_crops``),
  faces down to the default ``--min-face`` (2% of the shorter side: 60 px at 12 MP).
- ``after80``: the same, asked for faces down to 80 px, the smallest dlib's HOG finds without
  upsampling: the same work as dlib's pipeline (``min_face`` = 80 px / the photo's shorter side).
- ``after:NAME`` (``--also-model NAME``): ``after`` with another model, e.g. ``dlib`` (the converted
  dlib network) beside the default.
- ``masked`` (``--masked``): ``after`` and whether each face is masked (``lower_face_covered``), what
  ``identify`` and ``verify`` do before choosing a face's threshold.

Photos are made on the fly from LFW (``fullsize_photos.py``: a portrait of one person and a group of
three, JPEG q90) into a temporary folder and never kept. Each figure is the best of ``--repeats``
passes with the model loaded; peak memory is the process's maximum resident set (model included),
one process per pipeline and photo. ``--lfw-rate`` adds photos/s on LFW thumbnails (the default
pipeline against dlib's); ``--serve`` a live ``facenet serve`` on a 40 MP upload: latency, the
server's CPU seconds, and ``/healthz`` while 20 such uploads are in flight.

    .venv/bin/python benchmarks/bench_fullsize.py --before-src /tmp/before/src --lfw-rate 200 --serve
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
LFW = HERE.parent.parent / "shared" / "data" / "lfw" / "images"
SIZES = (3, 12, 24, 48)
GROUP = (
    "Colin_Powell/Colin_Powell_0001.jpg",
    "Serena_Williams/Serena_Williams_0001.jpg",
    "Tony_Blair/Tony_Blair_0001.jpg",
)
PORTRAIT = "Aaron_Eckhart/Aaron_Eckhart_0001.jpg"


# -- the pipelines, run inside a worker process --


def _dlib_pipeline(upsample: int):
    from facenet.baselines.dlib_model import load_dlib
    from facenet.data.images import load_image

    dlib, models = load_dlib()
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(models.pose_predictor_five_point_model_location())
    encoder = dlib.face_recognition_model_v1(models.face_recognition_model_location())

    def run(path):
        import numpy as np

        rgb = np.ascontiguousarray(load_image(path))
        return [encoder.compute_face_descriptor(rgb, predictor(rgb, box)) for box in detector(rgb, upsample)]

    return run


def _facenet_pipeline(smallest_px: int | None = None, model_name: str | None = None, masks: bool = False):
    import facenet
    from facenet.occluder import lower_face_covered

    model = facenet.load_model(model_name)

    def run(path):
        if smallest_px:  # faces down to this many pixels, whatever the photo's size
            from PIL import Image

            with Image.open(path) as header:
                model.min_face = min(1.0, smallest_px / min(header.size))
        crops = [f.image for f in model.find_faces(path, all_faces=True).faces]
        rows = model.embed_crops(crops)
        if masks:
            lower_face_covered(model, crops, rows)
        return rows

    return run, model


def worker(args) -> None:
    """Time one pipeline on the given photos; print one JSON line."""
    import torch

    torch.set_num_threads(args.threads)
    if args.pipeline == "dlib":
        run = _dlib_pipeline(upsample=1 if args.thumbnails else 0)
    else:
        run, model = _facenet_pipeline(
            80 if args.pipeline == "after80" else None,
            args.pipeline.split(":", 1)[1] if ":" in args.pipeline else None,
            masks=args.pipeline == "masked",
        )
    run(str(LFW / PORTRAIT) if LFW.is_dir() else args.photos[0])  # warm-up: lazy loads, ONNX exports
    if args.thumbnails:
        paths = args.photos
        if args.pipeline != "dlib":  # the batch API: decode threads, one network call per batch
            run = lambda batch: model.embed(batch)  # noqa: E731
            batches = [paths[i : i + 32] for i in range(0, len(paths), 32)]
        else:
            batches = [[p] for p in paths]
            single = run
            run = lambda batch: single(batch[0])  # noqa: E731
        best = min(_seconds(lambda: [run(b) for b in batches]) for _ in range(args.repeats))
        print(json.dumps({"photos_per_s": len(paths) / best}))
        return
    results = {}
    for path in args.photos:
        try:
            faces = len(run(path))
        except Exception as exc:  # e.g. the code before the change refuses photos over 40 MP
            results[Path(path).name] = {"error": str(exc).split(";")[0].split(": ", 1)[-1]}
            continue
        results[Path(path).name] = {
            "s": min(_seconds(lambda path=path: run(path)) for _ in range(args.repeats)),
            "faces": faces,
        }
    results["peak_mb"] = peak_mb()
    print(json.dumps(results))


def peak_mb() -> float:
    """This process's peak resident memory. Not getrusage's ru_maxrss: Linux carries that over exec
    from the parent (here the driver, which made 48 MP photos), where VmHWM is this program's own."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# -- the driver --


def _spawn(pipeline: str, photos: list[str], args, before_src: Path | None, thumbnails: bool = False) -> dict:
    env = dict(os.environ)
    if pipeline == "before":
        env["PYTHONPATH"] = str(before_src)
        if args.before_model:  # the default model of that time, where today's is unknown to its code
            env["FACENET_MODEL"] = str(args.before_model)
    command = [
        sys.executable,
        __file__,
        "--worker",
        pipeline,
        "--threads",
        str(args.threads),
        "--repeats",
        str(args.repeats),
        *(["--thumbnails"] if thumbnails else []),
        "--photos",
        *photos,
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{pipeline} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def make_photos(folder: Path, sizes) -> list[Path]:
    sys.path.insert(0, str(HERE))
    import fullsize_photos

    made = []
    for mp in sizes:
        for kind in ("portrait", "group"):
            image = (
                fullsize_photos.portrait(LFW / PORTRAIT, mp)
                if kind == "portrait"
                else fullsize_photos.group([LFW / p for p in GROUP], mp)[0]
            )
            made.append(folder / f"{kind}_{mp}mp.jpg")
            made[-1].write_bytes(fullsize_photos.jpeg(image))
    return made


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--photos", nargs="*", help=argparse.SUPPRESS)
    ap.add_argument("--thumbnails", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--sizes", type=float, nargs="+", default=SIZES, help="megapixels (default 3 12 24 48)")
    ap.add_argument("--repeats", type=int, default=3, help="timed passes per photo; the best counts (default 3)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads per process")
    ap.add_argument("--before-src", type=Path, help="src folder of the checkout before the change (omit: no 'before')")
    ap.add_argument(
        "--before-model",
        type=Path,
        help="model file the code before loads (default: the installed default; e.g. the dlib model file when "
        "that code predates today's default)",
    )
    ap.add_argument("--skip-dlib", action="store_true", help="leave out dlib's pipeline")
    ap.add_argument(
        "--lfw-rate", type=int, default=0, metavar="N", help="photos/s on N LFW thumbnails, default vs dlib"
    )
    ap.add_argument("--serve", action="store_true", help="the service on 40 MP uploads")
    ap.add_argument("--masked", action="store_true", help="also 'after' with each face's masked check")
    ap.add_argument(
        "--also-model",
        action="append",
        default=[],
        metavar="NAME",
        help="measure this model (a shipped name or a file) too, as pipeline after:NAME",
    )
    args = ap.parse_args(argv)
    if args.worker:
        args.pipeline = args.worker
        worker(args)
        return 0
    if not LFW.is_dir():
        print(f"no LFW images at {LFW}", file=sys.stderr)
        return 2
    sys.path.insert(0, str(HERE))
    from bench_embedding import machine_line

    pipelines = [
        p
        for p in ("dlib", "before", "after", "after80")
        if not (p == "dlib" and args.skip_dlib) and not (p == "before" and not args.before_src)
    ]
    pipelines += [f"after:{name}" for name in args.also_model] + ["masked"] * args.masked
    print(machine_line(args.threads))
    with tempfile.TemporaryDirectory() as tmp:
        photos = make_photos(Path(tmp), args.sizes)
        table = {p: {} for p in pipelines}
        for pipeline in pipelines:
            for photo in photos:  # a process per photo: its peak memory is that photo's
                table[pipeline][photo.name] = _spawn(pipeline, [str(photo)], args, args.before_src)
        _print_photos(table, photos, pipelines)
        if args.lfw_rate:
            sys.path.insert(0, str(HERE))
            from bench_end_to_end import lfw_sample

            thumbs = [str(p) for p in lfw_sample(LFW, args.lfw_rate)]
            rates = {
                p: _spawn(p, thumbs, args, args.before_src, thumbnails=True)["photos_per_s"]
                for p in pipelines
                if p != "after80"
            }  # thumbnails are smaller than any working size
            print(f"\nLFW thumbnails ({len(thumbs)} photos, 250x250), photo -> embedding, photos/s:")
            for p in rates:
                ratio = f"  ({rates[p] / rates['dlib']:.2f}x dlib)" if "dlib" in rates else ""
                ratio += f"  ({rates[p] / rates['after']:.2f}x after)" if p.startswith("after:") else ""
                print(f"  {p:<7} {rates[p]:7.1f}{ratio}")
        if args.serve:
            serve_figures(Path(tmp))
    return 0


def _print_photos(table, photos, pipelines) -> None:
    print("\nphoto -> embeddings of every face (seconds, best of the passes; peak MB of the process)")
    header = f"{'photo':<18}{'faces':>6}" + "".join(f"{p + ' s':>10}{p + ' MB':>10}" for p in pipelines)
    ratios = [("after", "dlib"), ("after80", "dlib"), ("after", "before"), ("before", "dlib")]
    ratios += [("after", p) for p in pipelines if p.startswith("after:") or p == "masked"] + [("masked", "dlib")]
    ratios = [(a, b) for a, b in ratios if a in pipelines and b in pipelines]
    print(header + "".join(f"{b + '/' + a:>14}" for a, b in ratios))
    for photo in photos:
        cells = [table[p][photo.name] for p in pipelines]
        results = [c[photo.name] for c in cells]
        faces = "/".join(str(r.get("faces", "-")) for r in results)
        line = f"{photo.name:<18}{faces:>6}" + "".join(
            f"{r['s']:10.3f}{c['peak_mb']:10.0f}" if "s" in r else f"{'refused':>10}{c['peak_mb']:10.0f}"
            for r, c in zip(results, cells)
        )
        for a, b in ratios:
            ra, rb = table[a][photo.name][photo.name], table[b][photo.name][photo.name]
            line += f"{rb['s'] / ra['s']:13.1f}x" if "s" in ra and "s" in rb else f"{'-':>14}"
        print(line)
    for p in pipelines:
        for photo in photos:
            if "error" in table[p][photo.name][photo.name]:
                print(f"  {p} on {photo.name}: {table[p][photo.name][photo.name]['error']}")


def serve_figures(folder: Path) -> None:
    """A live server on loopback: one 40 MP upload's latency and CPU, then /healthz under 20 of them."""
    import asyncio
    from collections import Counter

    import httpx
    import numpy as np
    from PIL import Image

    sys.path.insert(0, str(HERE))
    import fullsize_photos
    from bench_serve import start_server, stop

    photo = fullsize_photos.group([LFW / p for p in GROUP], 40)[0]
    noise = np.random.default_rng(0).integers(-4, 5, (photo.size[1], photo.size[0], 1), dtype=np.int16)
    photo = Image.fromarray(np.clip(np.asarray(photo, np.int16) + noise, 0, 255).astype(np.uint8))  # camera grain
    quality = 95
    data = fullsize_photos.jpeg(photo, quality=quality)
    while len(data) > 9.9 * 2**20:  # as big as the service's 10 MiB request limit allows
        quality -= 3
        data = fullsize_photos.jpeg(photo, quality=quality)
    from facenet.embedder import ensure_default_model

    proc, url = start_server(ensure_default_model(), folder / "gallery.db", max_pending=32, options=())
    try:
        cpu = lambda: (
            sum(int(v) for v in Path(f"/proc/{proc.pid}/stat").read_text().split(")")[1].split()[11:13])
            / os.sysconf("SC_CLK_TCK")
        )  # noqa: E731
        files = {"photos": ("big.jpg", data, "image/jpeg")}
        with httpx.Client(timeout=120) as client:
            client.post(f"{url}/api/embed", files=files)  # warm-up
            before, start = cpu(), time.perf_counter()
            reply = client.post(f"{url}/api/embed", files=files)
            latency, used = time.perf_counter() - start, cpu() - before
        print(
            f"\nservice, one {photo.size[0]}x{photo.size[1]} ({photo.size[0] * photo.size[1] / 1e6:.0f} MP) JPEG of "
            f"{len(data) / 2**20:.1f} MiB (q{quality}) to /api/embed: {reply.status_code}, {latency:.2f} s, "
            f"{used:.2f} s of server CPU"
        )

        async def flood():
            async with httpx.AsyncClient(timeout=300) as client:

                async def upload():
                    try:
                        return (await client.post(f"{url}/api/embed", files=files)).status_code
                    except httpx.TransportError as exc:
                        return type(exc).__name__

                uploads = [asyncio.create_task(upload()) for _ in range(20)]
                await asyncio.sleep(0.5)
                waits = []
                while not all(u.done() for u in uploads):
                    start = time.perf_counter()
                    await client.get(f"{url}/healthz")
                    waits.append(time.perf_counter() - start)
                    await asyncio.sleep(0.2)
                codes = [u.result() for u in uploads]
                return waits, codes

        waits, codes = asyncio.run(flood())
        print(
            f"20 such uploads at once: answers {dict(Counter(codes))}; /healthz while they ran: "
            f"{len(waits)} probes, slowest {max(waits, default=0):.3f} s, median {np.median(waits or [0]):.3f} s"
        )
    finally:
        stop(proc)


if __name__ == "__main__":
    sys.exit(main())
