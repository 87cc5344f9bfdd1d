"""The converted dlib face ResNet (the installed default) against dlib's own C++ model, same run.

Chips: 150 px face chips -> 128-D descriptors, dlib's ``compute_face_descriptor`` on a list of
chips (its batched call) vs the project's network on eager PyTorch, ONNX Runtime fp32 and the
int8 ONNX export (calibrated on other chips), with each one's largest difference from dlib's unit
descriptors. Photos: photo file -> embedding end to end, dlib's pipeline (HOG detector, 5-point
shape predictor, chip, ResNet: what ``face_recognition`` runs) vs the project's (MTCNN or YuNet,
recipe chip, ONNX Runtime). Chips are cut by dlib's own pipeline from LFW photos, so both sides
embed identical pixels. Rates are the best of repeated passes; ratio = rate / dlib's.

    .venv/bin/python benchmarks/bench_dlib_resnet.py --chips 64 --photos 100
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def best_rate(run, items, repeats: int = 3) -> float:
    run(items[:2])  # warm-up: lazy loads, thread pools
    best = min(_seconds(run, items) for _ in range(repeats))
    return len(items) / best


def _seconds(run, items) -> float:
    start = time.perf_counter()
    run(items)
    return time.perf_counter() - start


def main(argv=None) -> int:
    from facenet.backends import OnnxBackend, TorchBackend
    from facenet.baselines.dlib_model import DlibEmbedder, load_dlib
    from facenet.data.images import standardise, to_batch
    from facenet.embedder import FaceEmbedder, ensure_default_model, load_embedder
    from facenet.export import onnx_bytes, quantize_int8
    from facenet.models.modelfile import load_model_file

    sys.path.insert(0, str(HERE))
    from bench_embedding import machine_line
    from bench_end_to_end import lfw_sample, parse_lfw_args

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chips", type=int, default=64, help="chips per timed pass (default 64)")
    ap.add_argument("--photos", type=int, default=100, help="photos per timed pass (default 100)")
    args = parse_lfw_args(ap, argv)
    if args is None:
        return 2

    photos = lfw_sample(args.images, args.photos + 64)
    dlib_side = DlibEmbedder()
    chips = [dlib_side.chip(photo) for photo in photos[: args.chips + 64]]  # dlib's own HOG + 5-point chips
    timed_chips, calibration = chips[: args.chips], chips[args.chips :]
    print(machine_line(args.threads))
    print(f"{len(timed_chips)} dlib chips (150 px) and {args.photos} LFW photos per pass\n")

    dlib, models = load_dlib()
    reference = dlib.face_recognition_model_v1(models.face_recognition_model_location())
    expected = np.array(reference.compute_face_descriptor(timed_chips))
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    model, info = load_model_file(ensure_default_model())
    graph = onnx_bytes(model, info)
    backends = {
        "PyTorch eager": TorchBackend(model),
        "ONNX Runtime fp32": OnnxBackend(graph),
        "ONNX Runtime int8": OnnxBackend(quantize_int8(graph, info, calibration)),
    }

    print(f"{'chips -> descriptors':34s} {'batch':>5s} {'chips/s':>8s} {'x dlib':>7s} {'max |diff|':>10s}")
    for batch in (1, 32):

        def run_dlib(items, batch=batch):
            for i in range(0, len(items), batch):
                reference.compute_face_descriptor(items[i : i + batch])

        peer = best_rate(run_dlib, timed_chips)
        print(f"{'dlib C++ (peer)':34s} {batch:5d} {peer:8.1f} {1:7.2f} {0:10.2e}")
        for name, backend in backends.items():

            def run_ours(items, batch=batch, backend=backend):
                return np.concatenate(
                    [backend(standardise(to_batch(items[i : i + batch]), "dlib")) for i in range(0, len(items), batch)]
                )

            rate = best_rate(run_ours, timed_chips)
            diff = np.abs(run_ours(timed_chips) - expected).max()
            print(f"{'ours: ' + name:34s} {batch:5d} {rate:8.1f} {rate / peer:7.2f} {diff:10.2e}")

    timed_photos = photos[: args.photos]
    peer = best_rate(lambda items: DlibEmbedder().embed(items), timed_photos, repeats=2)
    print(f"\n{'photo -> embedding':44s} {'photos/s':>9s} {'x dlib':>7s}")
    print(f"{'dlib HOG + 5-point + ResNet (peer)':44s} {peer:9.1f} {1:7.2f}")
    for detector in ("mtcnn", "yunet"):
        try:
            embedder = load_embedder(ensure_default_model(), detector=detector, backend="onnx")
        except Exception as exc:  # a detector whose weights are absent here
            print(f"skipping {detector}: {exc}")
            continue
        assert isinstance(embedder, FaceEmbedder)
        rate = best_rate(lambda items, e=embedder: e.embed(items), timed_photos, repeats=2)
        print(f"{'ours: ' + detector + ' + dlib_resnet (ONNX Runtime)':44s} {rate:9.1f} {rate / peer:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
