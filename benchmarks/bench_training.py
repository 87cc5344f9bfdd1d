"""Training images/s per network, precision and option: model only, end to end, loader only, vs the arithmetic limit.

Rows (every one runs the project's own training code, nothing re-implemented here):
  * model only: ``facenet.train.loop.TrainingStep``, the step ``facenet train`` runs (network in the chosen
    precision, channels_last, float32 semi-hard mining + triplet loss, backward, AdamW), on one P x K batch of
    synthetic faces already in memory: the model's own speed, no loader.
  * end to end: ``facenet.train.loop.train`` itself on a folder of JPEG photos (LFW's when
    ../shared/data/lfw/images exists, else a temporary folder of synthetic faces): decoding, cropping and
    augmenting in worker processes, then the step; images/s over the timed steps.
  * loader only: ``facenet.train.data.measure_loader``, the data path with no model (``facenet train --loader-only``).
  * peer (Inception-ResNet-v1 only): a plain fp32 eager training loop over facenet-pytorch's ``InceptionResnetV1``
    as its fine-tuning example runs it (classify=True, cross-entropy, Adam, NCHW, ``loss.item()`` every
    batch), on the same faces, standardised and already on the device (model only), timed in turns with ours.

%peak = FLOPs per training image x images/s / the device's peak for the row's precision. FLOPs per training
image = 3 x the forward FLOPs that ``facenet.models.complexity`` counts (the backward pass costs about two
forwards). A CPU's peak is an estimate from lscpu (flags, cores, clock) printed with the table; a GPU's is
its datasheet's dense figure (``--peak-tflops`` overrides either). The same script runs on CPUs and GPUs.

    .venv/bin/python benchmarks/bench_training.py                         # CPU defaults (small batches)
    .venv/bin/python benchmarks/bench_training.py --device cuda --compile # GPU: batch 512 / 1024, bf16 and fp32
"""

from __future__ import annotations

import argparse
import csv
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from facenet.data.images import standardise, to_batch
from facenet.data.synthetic import SyntheticFaces
from facenet.models import create_model
from facenet.models.complexity import count_flops
from facenet.train.config import TrainConfig
from facenet.train.data import measure_loader
from facenet.train.distributed import Context
from facenet.train.loop import TrainingStep, train

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # peers.py, shared with the tests
from peers import peer_inception_resnet_v1  # noqa: E402

HERE = Path(__file__).resolve().parent
LFW = HERE.parent.parent / "shared" / "data" / "lfw" / "images"
SIZES = {"inception_resnet_v1": 160, "nns": 64}
PEER = "inception_resnet_v1"
K = 4  # faces per identity in a batch

# dense tensor-core (bf16, fp16) and plain fp32 datasheet peaks, TFLOP/s; the first name found in the GPU's wins
GPU_PEAKS = [
    ("H200", {"bf16": 989, "fp16": 989, "fp32": 67}),
    ("H100 PCIe", {"bf16": 756, "fp16": 756, "fp32": 51}),
    ("H100", {"bf16": 989, "fp16": 989, "fp32": 67}),
    ("A100", {"bf16": 312, "fp16": 312, "fp32": 19.5}),
    ("L40S", {"bf16": 362, "fp16": 362, "fp32": 91.6}),
    ("L4", {"bf16": 121, "fp16": 121, "fp32": 30.3}),
    ("A10", {"bf16": 125, "fp16": 125, "fp32": 31.2}),
    ("V100", {"fp16": 125, "fp32": 15.7}),
    ("T4", {"fp16": 65, "fp32": 8.1}),
]


def lscpu() -> dict[str, str]:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    return {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in out.splitlines() if ":" in line)}


def cpu_peak(precision: str, threads: int) -> tuple[float, str]:
    """(FLOP/s, how it was estimated) for ``threads`` cores of this CPU, from lscpu's flags, family and clock.

    FLOPs per cycle per core: two FMA pipes of the vector width (AVX-512: 64 fp32, AVX2: 32; AMD before
    Zen 5 runs 512-bit instructions on 256-bit pipes, so 32); bf16 doubles that with AVX512_BF16
    (dot products of pairs) and is 1024 with AMX; without bf16 instructions bf16 runs at the fp32 rate.
    """
    info = lscpu()
    flags = set(info.get("Flags", "").split())
    amd_256 = info.get("Vendor ID") == "AuthenticAMD" and int(info.get("CPU family", "0") or 0) < 26
    fp32 = 64 if "avx512f" in flags and not amd_256 else 32 if "fma" in flags else 16
    per_cycle = {
        "fp32": fp32,
        "bf16": 1024 if "amx_bf16" in flags else 2 * fp32 if "avx512_bf16" in flags else fp32,
        "fp16": 1024 if "amx_fp16" in flags else 2 * fp32 if "avx512_fp16" in flags else fp32,
    }[precision]
    mhz = info.get("CPU max MHz") or _cpuinfo_mhz() or str(float(info.get("BogoMIPS", "0")) / 2)
    cores = min(threads, int(info.get("Core(s) per socket", threads)) * int(info.get("Socket(s)", 1)))
    ghz = float(mhz) / 1000
    return cores * ghz * 1e9 * per_cycle, f"{cores} cores x {ghz:.2f} GHz x {per_cycle} {precision} FLOPs/cycle"


def _cpuinfo_mhz() -> str | None:
    try:
        found = re.search(r"^cpu MHz\s*:\s*([\d.]+)", Path("/proc/cpuinfo").read_text(), re.M)
    except OSError:
        return None
    return found.group(1) if found else None


def device_peak(device: torch.device, precision: str, threads: int, override: dict[str, float]) -> tuple[float, str]:
    if precision in override:
        return override[precision] * 1e12, "given with --peak-tflops"
    if device.type == "cpu":
        flops, how = cpu_peak(precision, threads)
        return flops, f"estimate: {how}"
    name = torch.cuda.get_device_name(device)
    for key, peaks in GPU_PEAKS:
        if key in name and precision in peaks:
            return peaks[precision] * 1e12, f"{key} datasheet, dense {precision}"
    return float("nan"), f"unknown for {name}: pass --peak-tflops"


def machine_line(device: torch.device, threads: int) -> str:
    import os

    info = lscpu()
    gpu = f"; GPU {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    return (
        f"machine: {info.get('Model name', 'unknown CPU')}, {os.cpu_count()} logical CPUs, {threads} torch threads, "
        f"load average {load}{gpu}; torch {torch.__version__}"
    )


def synthetic_faces(identities: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A P x K batch of synthetic faces (uint8 N,3,S,S) and their labels: realistic mining work."""
    people = SyntheticFaces(identities, seed=1, size=size)
    images = to_batch([people.render(i, j) for i in range(identities) for j in range(K)])
    return images, torch.arange(identities).repeat_interleave(K)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_step_seconds(runs: list, steps: int, warmup: int, seconds: float, device: torch.device) -> list[float]:
    """Best seconds per call of each ``run(i)``, timed in turns (one call of each per round, at least
    ``steps`` rounds and ``seconds``) after ``warmup`` untimed calls each: on a shared machine every
    candidate then sees the same load, and the best call is the one other jobs slowed down least."""
    for run in runs:
        for i in range(warmup):
            run(i)
    times = [[] for _ in runs]
    start, rounds = time.perf_counter(), 0
    while rounds < steps or time.perf_counter() - start < seconds:
        for run, spent in zip(runs, times):
            _sync(device)
            tick = time.perf_counter()
            run(warmup + rounds)
            _sync(device)
            spent.append(time.perf_counter() - tick)
        rounds += 1
    return [min(spent) for spent in times]


def base_config(arch: str, batch: int, precision: str, device: torch.device, **options) -> TrainConfig:
    return TrainConfig(
        arch=arch,
        image_size=SIZES[arch],
        identities_per_batch=batch // K,
        faces_per_identity=K,
        precision=precision,
        device=device.type,
        holdout_identities=0.0,
        **options,
    ).validate()


def model_step(config: TrainConfig, faces, device: torch.device):
    """One of our training steps on ``faces`` already on the device, as ``run(i)``."""
    images, labels = (t.to(device) for t in faces)
    step = TrainingStep.build(config, Context(device=device), num_classes=config.identities_per_batch)
    return lambda i: step(images, labels, i)


def peer_step(faces, device: torch.device):
    """One step of the peer's training loop, as ``run(i)``; None without facenet-pytorch."""
    module = peer_inception_resnet_v1()
    if module is None:
        return None
    images, labels = faces
    x, y = standardise(images).to(device), labels.to(device)
    net = module.InceptionResnetV1(classify=True, num_classes=int(labels.max()) + 1).to(device).train()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step(_):
        loss = loss_fn(net(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        loss.item()  # its training loop logs every batch's loss

    return step


def end_to_end(config: TrainConfig, data: Path, steps: int, warmup: int, window: int) -> float:
    """``train()`` on ``data``: the median images/s of its ``window``-step log intervals after the
    warm-up, from its own metrics.csv (a window includes waiting for the loader when it is slower)."""
    with tempfile.TemporaryDirectory() as out:
        run = TrainConfig(
            **{
                **vars(config),
                "data": str(data),
                "out": out,
                "steps": warmup + steps,
                "log_every": window,
                "eval_every": 10**9,
                "checkpoint_every": 10**9,
            }
        )
        train(run, progress=False)
        with open(Path(out) / "metrics.csv") as fh:
            rates = [
                float(r["images_per_s"])
                for r in csv.DictReader(fh)
                if r["images_per_s"] and int(r["step"]) > warmup and int(r["step"]) % window == 0
            ]
    return float(np.median(rates))


def jpeg_folder(root: Path, identities: int = 64, per_identity: int = 8, size: int = 182) -> Path:
    """Synthetic faces saved as JPEG photos, one folder per identity (Sandberg's 182 px training crops)."""
    from PIL import Image

    people = SyntheticFaces(identities, seed=4, size=size)
    for i in range(identities):
        (root / f"id{i:03d}").mkdir(parents=True)
        for j in range(per_identity):
            Image.fromarray(people.render(i, j)).save(root / f"id{i:03d}" / f"{j}.jpg", quality=90)
    return root


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument("--networks", default="inception_resnet_v1,nns", help="comma-separated (default both)")
    ap.add_argument("--precisions", default="fp32,bf16", help="comma-separated from fp32, bf16, fp16")
    ap.add_argument("--batch", type=int, help="Inception-ResNet-v1 batch (default 32 on CPU, 512 on GPU)")
    ap.add_argument("--small-batch", type=int, help="nns batch (default 128 on CPU, 1024 on GPU)")
    ap.add_argument("--steps", type=int, help="at least this many timed steps per row (default 4 on CPU, 20 on GPU)")
    ap.add_argument(
        "--seconds",
        type=float,
        default=10.0,
        help="and at least this long (end to end: the steps the model-only rate fits in it; default 10)",
    )
    ap.add_argument("--warmup", type=int, help="untimed steps first (default 2 on CPU, 5 on GPU)")
    ap.add_argument("--compile", action="store_true", help="add torch.compile rows (compiling takes minutes)")
    ap.add_argument("--data", type=Path, help="JPEG folder of identities (default: LFW if present, else synthetic)")
    ap.add_argument("--workers", type=int, default=-1, help="loader processes (default -1: sized to the machine)")
    ap.add_argument("--no-end-to-end", action="store_true", help="model-only and peer rows only")
    ap.add_argument(
        "--threads", type=int, default=torch.get_num_threads(), help="CPU threads (default: physical cores)"
    )
    ap.add_argument("--peak-tflops", default="", help="override peaks, e.g. bf16=989,fp32=67")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else "cpu"
        if args.device == "auto"
        else args.device
    )
    gpu = device.type == "cuda"
    batch = {
        "inception_resnet_v1": args.batch or (512 if gpu else 32),
        "nns": args.small_batch or (1024 if gpu else 128),
    }
    steps, warmup = args.steps or (20 if gpu else 4), args.warmup or (5 if gpu else 2)
    override = {k: float(v) for k, v in (p.split("=") for p in args.peak_tflops.split(",") if p)}
    precisions = args.precisions.split(",")
    options = [("eager", {})] + ([("compile", {"compile": True})] if args.compile else [])

    rows = []  # (network, batch, precision, option, measure, img/s)
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or (LFW if LFW.is_dir() else jpeg_folder(Path(tmp) / "faces"))
        for arch in args.networks.split(","):
            faces = synthetic_faces(batch[arch] // K, SIZES[arch])
            runs, labels = [], []  # model-only candidates, timed in turns
            peer = peer_step(faces, device) if arch == PEER else None
            if peer is not None:
                runs.append(peer)
                labels.append(("fp32", "facenet-pytorch", "peer, model only", None))
            for precision in precisions:
                for label, option in options:
                    config = base_config(arch, batch[arch], precision, device, workers=args.workers, **option)
                    runs.append(model_step(config, faces, device))
                    labels.append((precision, label, "model only", config))
            seconds = best_step_seconds(runs, steps, warmup, args.seconds, device)
            del runs
            for (precision, label, measure, config), spent in zip(labels, seconds):
                rows.append((arch, batch[arch], precision, label, measure, batch[arch] / spent))
                if config is not None and not args.no_end_to_end:
                    fitting = max(steps, round(args.seconds / spent))
                    rows.append(
                        (
                            arch,
                            batch[arch],
                            precision,
                            label,
                            "end to end",
                            end_to_end(config, data, fitting, warmup, window=5 if gpu else 1),
                        )
                    )
            if not args.no_end_to_end:
                for label, option in [
                    ("workers augment", {}),
                    ("workers augment, --cache", {"cache_crops": True}),
                    ("device augment", {"augment_on": "device"}),
                ]:
                    config = base_config(
                        arch, batch[arch], "fp32", device, workers=args.workers, data=str(data), **option
                    )
                    rate = measure_loader(config, device, steps=max(8, 2 * steps), warmup=warmup)
                    rows.append(
                        (
                            arch,
                            batch[arch],
                            "-",
                            f"{label} ({rate['workers']} workers)",
                            "loader only",
                            rate["images_per_s"],
                        )
                    )
        print_table(rows, device, args.threads, override, data)
    return 0


def print_table(rows, device, threads, override, data) -> None:
    flops = {arch: 3 * count_flops(create_model(arch), SIZES[arch]) for arch in {r[0] for r in rows}}
    peaks = {p: device_peak(device, p, threads, override) for p in {r[2] for r in rows if r[2] != "-"}}
    peer = {r[1]: r[5] for r in rows if r[3] == "facenet-pytorch"}
    model = {(r[0], r[2], r[3]): r[5] for r in rows if r[4] == "model only"}
    print(machine_line(device, threads))
    print(f"end-to-end data: {data}")
    for precision, (peak, how) in sorted(peaks.items()):
        print(f"peak {precision}: {peak / 1e9:,.0f} GFLOP/s ({how})")
    head = (
        f"{'network':20s} {'px':>4s} {'batch':>5s} {'prec':5s} {'option':36s} {'measure':17s} {'img/s':>8s} "
        f"{'vs peer':>7s} {'e2e/model':>9s} {'GFLOP/img':>9s} {'%peak':>6s}"
    )
    print(head)
    print("-" * len(head))
    for arch, batch, precision, option, measure, rate in rows:
        ratio = f"{rate / peer[batch]:.2f}" if arch == PEER and batch in peer and measure != "loader only" else "-"
        e2e = f"{rate / model[(arch, precision, option)]:.2f}" if measure == "end to end" else "-"
        share = "-"
        if precision != "-":
            share = f"{100 * flops[arch] * rate / peaks[precision][0]:.1f}"
        print(
            f"{arch:20s} {SIZES[arch]:4d} {batch:5d} {precision:5s} {option:36s} {measure:17s} {rate:8.1f} "
            f"{ratio:>7s} {e2e:>9s} {flops[arch] / 1e9:9.3f} {share:>6s}"
        )
    print(
        "vs peer = img/s / facenet-pytorch InceptionResnetV1 fp32 eager training img/s, same batch, same run; "
        "e2e/model = end to end / model only (1.0: the loader keeps up); GFLOP/img = 3 x forward FLOPs; "
        "loader rows: images/s delivered with no model (standardised, on the device)"
    )


if __name__ == "__main__":
    sys.exit(main())
