"""Embedding throughput (img/s) per backend vs facenet-pytorch's InceptionResnetV1 in eager PyTorch.

Rows: our Inception-ResNet-v1 on eager PyTorch, channels-last PyTorch, ONNX Runtime fp32, ONNX Runtime
int8 (static QDQ quantisation calibrated on synthetic faces) and optionally ``torch.compile``; the
small networks on PyTorch and ONNX Runtime. The peer gets the same weights (its state-dict keys are
ours), so the table also shows each backend's max abs difference from the peer's embeddings (for
int8: from our fp32 embeddings) on face-like inputs. Throughput is the best of repeated calls
(the CPU may be shared), ratio = img/s / the peer's img/s at the same batch size.

    .venv/bin/python benchmarks/bench_embedding.py --seconds 3 --batches 1,32
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from facenet.backends import OnnxBackend, TorchBackend
from facenet.data.images import standardise, to_batch
from facenet.data.synthetic import SyntheticFaces
from facenet.export import onnx_bytes, quantize_int8
from facenet.models import create_model
from facenet.models.modelfile import load_model_file, model_info_for

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # peers.py, shared with the tests
from peers import peer_inception_resnet_v1  # noqa: E402

SMALL = {"mobilefacenet": 160, "nns": 64}


def realistic(model):
    """Non-trivial BatchNorm statistics, so numerical differences between backends would show."""
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def faces(n: int, size: int, seed: int) -> torch.Tensor:
    people = SyntheticFaces(n, seed=seed, size=size)
    return standardise(to_batch([people.render(i, 0) for i in range(n)]))


def throughput(run, x: torch.Tensor, seconds: float) -> float:
    """Best img/s over repeated calls lasting ``seconds`` in all (after one warm-up call)."""
    run(x)
    best, spent, calls = float("inf"), 0.0, 0
    while spent < seconds or calls < 2:
        start = time.perf_counter()
        run(x)
        took = time.perf_counter() - start
        best, spent, calls = min(best, took), spent + took, calls + 1
    return len(x) / best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", default="1,32", help="batch sizes (default 1,32)")
    ap.add_argument("--seconds", type=float, default=2.0, help="timed seconds per row and batch size (default 2)")
    ap.add_argument(
        "--threads", type=int, default=torch.get_num_threads(), help="CPU threads (default: physical cores)"
    )
    ap.add_argument("--no-int8", action="store_true", help="skip the int8 ONNX Runtime row (quantising takes ~1 min)")
    ap.add_argument("--compile", action="store_true", help="add a torch.compile row (compiling takes minutes)")
    ap.add_argument("--small", default="mobilefacenet,nns", help="small networks to time ('' for none)")
    ap.add_argument(
        "--models",
        nargs="*",
        default=[],
        type=Path,
        help="model files to time as well, at their own input size (e.g. a trained student and flagship)",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    probe = faces(8, 160, seed=1)

    ours = realistic(create_model("inception_resnet_v1", embedding_size=512))
    info = model_info_for(ours)
    peer_module = peer_inception_resnet_v1()
    rows = []  # (network, backend, {batch: img/s}, max abs diff, note)
    peer_speed = {}
    if peer_module is not None:
        peer = peer_module.InceptionResnetV1(classify=False).eval()
        peer.load_state_dict({k: v for k, v in ours.state_dict().items() if not k.startswith("logits")})
        with torch.inference_mode():
            reference = peer(probe).numpy()
        peer_run = lambda x: peer(x).numpy()  # noqa: E731

        def peer_call(x):
            with torch.inference_mode():
                return peer_run(x)

        peer_speed = {b: throughput(peer_call, faces(b, 160, 2), args.seconds) for b in batches}
        rows.append(("facenet-pytorch IRv1 (peer)", "torch eager", peer_speed, 0.0, ""))
    else:
        with torch.inference_mode():
            reference = ours(probe).numpy()
        print("facenet-pytorch not installed: no peer row, ratios omitted")

    data = onnx_bytes(ours, info)
    candidates = [
        ("torch eager", TorchBackend(ours)),
        ("torch channels_last", TorchBackend(_copy(ours), channels_last=True)),
        ("onnxruntime fp32", OnnxBackend(data)),
    ]
    if not args.no_int8:
        people = SyntheticFaces(32, seed=3, size=160)
        calibration = [people.render(i, 0) for i in range(32)]
        candidates.append(("onnxruntime int8", OnnxBackend(quantize_int8(data, info, calibration))))
    if args.compile:
        candidates.append(("torch.compile", TorchBackend(_copy(ours), compile=True)))
    for label, backend in candidates:
        diff = float(np.abs(backend(probe) - reference).max())
        speed = {b: throughput(backend, faces(b, 160, 2), args.seconds) for b in batches}
        rows.append(("ours IRv1", label, speed, diff, "int8 vs fp32 embeddings" if "int8" in label else ""))

    timed = [
        (f"ours {arch} ({SMALL.get(arch, 160)}px)", realistic(create_model(arch)), SMALL.get(arch, 160))
        for arch in filter(None, args.small.split(","))
    ]
    for path in args.models:
        model, file_info = load_model_file(path)
        name = f"{path.parent.name or path.stem} ({file_info.arch[:12]}, {file_info.input_size}px)"
        timed.append((name, model.eval(), file_info.input_size))
    for name, model, size in timed:
        small_info = model_info_for(model, input_size=size)
        for label, backend in (
            ("torch eager", TorchBackend(model)),
            ("onnxruntime fp32", OnnxBackend(onnx_bytes(model, small_info))),
        ):
            speed = {b: throughput(backend, faces(b, size, 2), args.seconds) for b in batches}
            rows.append((name, label, speed, float("nan"), ""))

    print_table(rows, batches, peer_speed, args.threads)
    return 0


def _copy(model):
    twin = create_model("inception_resnet_v1", embedding_size=model.embedding_size).eval()
    twin.load_state_dict(model.state_dict())
    return twin


def machine_line(threads: int) -> str:
    """CPU model, cores and load: the context every figure needs (the CPU may be shared)."""
    import os
    import platform

    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return (
        f"machine: {model}, {os.cpu_count()} logical CPUs, {threads} threads used, load average {load}; "
        f"torch {torch.__version__}"
    )


def print_table(rows, batches, peer_speed, threads) -> None:
    print(machine_line(threads))
    head = (
        f"{'network':30s} {'backend':22s}"
        + "".join(f" {'b=' + str(b) + ' img/s':>12s} {'ratio':>6s}" for b in batches)
        + f" {'max|diff|':>10s}"
    )
    print(head)
    print("-" * len(head))
    for network, backend, speed, diff, note in rows:
        cells = ""
        for b in batches:
            ratio = f"{speed[b] / peer_speed[b]:.2f}" if b in peer_speed else "-"
            cells += f" {speed[b]:12.1f} {ratio:>6s}"
        shown = "-" if diff != diff else f"{diff:.1e}"
        print(f"{network:30s} {backend:22s}{cells} {shown:>10s}" + (f"  ({note})" if note else ""))
    print(
        "ratio = img/s / facenet-pytorch InceptionResnetV1 eager img/s at the same batch, same run; "
        "160x160 unless noted; max|diff| = max abs embedding difference from the peer on 8 face-like inputs"
    )


if __name__ == "__main__":
    raise SystemExit(main())
