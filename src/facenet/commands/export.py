"""`facenet export`: a model file -> a self-describing ONNX file (optionally int8), checked before it is written."""

from __future__ import annotations

import argparse
from pathlib import Path

INT8_WARN = 0.05  # squared-L2 change above which int8 may flip verification decisions


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a model to ONNX (checked against PyTorch, metadata kept; --int8 for 4x smaller/faster)",
        description="Export a facenet model file to ONNX: input standardised N,3,H,W float32 with a dynamic "
        "batch axis, output unit embeddings. The facenet metadata (architecture, input size, "
        "standardisation, threshold, model id) is stored in the file, so `--model FILE.onnx` "
        "works in every command. The export is compared with PyTorch before it is written. "
        "--int8 quantises it (static, per-channel), calibrated on face crops from --calibration, "
        "and reports how much that moves squared-L2 distances between faces it did not calibrate on.",
    )
    parser.add_argument("model", metavar="MODEL", help="facenet model file (.safetensors)")
    parser.add_argument("--format", default="onnx", choices=("onnx",), help="output format (default: onnx)")
    parser.add_argument("--out", help="output file (default: MODEL with the suffix .onnx, or .int8.onnx)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset version (default: 17)")
    parser.add_argument("--int8", action="store_true", help="quantise to int8 (about 3x faster on CPUs with VNNI)")
    parser.add_argument(
        "--calibration",
        metavar="DIR",
        help="face crops to calibrate int8 on, e.g. a `facenet align` output "
        "(default: synthetic faces; real crops give better scales)",
    )
    parser.add_argument(
        "--calibration-images",
        type=int,
        default=128,
        help="crops used to calibrate (as many again check the result; default: 128)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from facenet.export import check_onnx, export_onnx, int8_distance_error, onnx_bytes, quantize_int8
    from facenet.fileio import atomic_write_bytes
    from facenet.models.modelfile import load_model_file

    model, info = load_model_file(args.model)
    suffix = ".int8.onnx" if args.int8 else ".onnx"
    out = Path(args.out) if args.out else Path(args.model).with_suffix(suffix)
    if not args.int8:
        worst = export_onnx(model, info, out, opset=args.opset)
        print(
            f"wrote {out}: {info.arch}, {info.embedding_size}-D, input {info.input_size}px, opset {args.opset}; "
            f"max abs difference vs PyTorch {worst:.2e}"
        )
        return 0
    data = onnx_bytes(model, info, args.opset)
    check_onnx(model, data, info)
    crops = _crops(args.calibration, info.input_size, 2 * args.calibration_images)
    half = len(crops) // 2
    quantised = quantize_int8(data, info, crops[:half])
    error = int8_distance_error(model, quantised, info, crops[half:])
    atomic_write_bytes(out, quantised)
    print(
        f"wrote {out}: int8 {info.arch}, {len(quantised) / 2**20:.1f} MiB (fp32 {len(data) / 2**20:.1f} MiB); "
        f"largest change of a squared-L2 distance on {len(crops) - half} other faces: {error:.4f}"
    )
    if error > INT8_WARN:
        print(
            f"warning: int8 moves distances by up to {error:.3f} (threshold {info.threshold:.3f}); "
            "check accuracy with `facenet evaluate --model` on both files before using it"
        )
    return 0


def _crops(folder: str | None, size: int, count: int):
    """``count`` model-sized crops: images from ``folder`` (spread evenly) or synthetic faces."""
    from facenet.data.images import fit_to_input, load_image
    from facenet.errors import DataError

    if folder is None:
        from facenet.data.synthetic import SyntheticFaces

        faces = SyntheticFaces(count, seed=0, size=size)
        return [faces.render(i, 0) for i in range(count)]
    from facenet.data.images import expand_image_paths

    paths = expand_image_paths([folder])
    if len(paths) < 16:
        raise DataError(f"{folder}: only {len(paths)} images; calibrating int8 needs at least 16 face crops")
    step = max(1, len(paths) // count)
    return [fit_to_input(load_image(p), size) for p in paths[::step][:count]]
