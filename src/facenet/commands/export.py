"""``facenet export``: a model file -> a self-describing ONNX graph, checked against PyTorch."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "export", help="export a model to ONNX (checked against PyTorch, metadata kept)",
        description="Export a facenet model file to ONNX: input standardised N,3,H,W float32 with a dynamic "
                    "batch axis, output unit embeddings. The facenet metadata (architecture, input size, "
                    "standardisation, threshold, model id) is stored in the file, so `--model FILE.onnx` "
                    "works in every command. The export is compared with PyTorch before it is written.")
    parser.add_argument("model", metavar="MODEL", help="facenet model file (.safetensors)")
    parser.add_argument("--format", default="onnx", choices=("onnx",), help="output format (default: onnx)")
    parser.add_argument("--out", help="output file (default: MODEL with the suffix .onnx)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset version (default: 17)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from facenet.export import export_onnx
    from facenet.models.modelfile import load_model_file

    model, info = load_model_file(args.model)
    out = Path(args.out) if args.out else Path(args.model).with_suffix(".onnx")
    worst = export_onnx(model, info, out, opset=args.opset)
    print(f"wrote {out}: {info.arch}, {info.embedding_size}-D, input {info.input_size}px, opset {args.opset}; "
          f"max abs difference vs PyTorch {worst:.2e}")
    return 0
