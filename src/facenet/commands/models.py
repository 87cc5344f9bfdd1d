"""``facenet models``: the available architectures with their measured size and cost, and the model files
on this machine with what they were trained on, their thresholds and ids."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "models",
        help="list architectures (parameters, FLOPs) and model files (training data, threshold, id)",
        description="List every registered architecture with its parameter count and the cost of "
        "embedding one face (MACs = multiply-adds; FLOPs = 2 x MACs, convolutions and "
        "matrix products only); then the model files: $FACENET_MODEL, the installed default "
        "and every other *.safetensors in the models folder, each with what it was trained on, "
        "its squared-L2 threshold and its id (galleries record the id of the model that filled them).",
    )
    parser.add_argument(
        "--embedding-size",
        type=int,
        default=128,
        metavar="D",
        help="embedding (head) size to measure with (default: 128)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from facenet.models.complexity import describe_models

    print(f"{'name':<22}{'params (M)':>11}{'MACs (G)':>10}{'FLOPs (G)':>11}{'input':>9}{'embedding':>11}")
    for row in describe_models(args.embedding_size):
        print(
            f"{row.name:<22}{row.params / 1e6:>11.2f}{row.macs / 1e9:>10.3f}{row.gflops:>11.3f}"
            f"{row.input_size:>6}px{row.embedding_size:>11}"
        )
    print()
    print("model files (* = used when --model is not given):")
    for label, path in model_files():
        print(f"{label}  {path}")
        print(f"    {_describe_file(path)}")
    return 0


def model_files() -> list[tuple[str, Path]]:
    """(label, path): $FACENET_MODEL, the installed default, then the other model files in the models folder."""
    from facenet.paths import MODEL_ENV, models_dir

    env = os.environ.get(MODEL_ENV)
    installed = models_dir() / "default.safetensors"
    files = [(f"* ${MODEL_ENV}", Path(env))] if env else []
    files.append(("  installed default" if env else "* installed default", installed))
    others = sorted(p for p in models_dir().glob("*.safetensors") if p != installed and p != Path(env or ""))
    files += [("  installed", p) for p in others]
    return files


def _describe_file(path: Path) -> str:
    from facenet.embedder import trained_on
    from facenet.errors import FaceNetError
    from facenet.models.modelfile import read_model_info

    if not path.is_file():
        return (
            "not installed yet: installed on first use (or `facenet convert reid --default`)"
            if path.name == "default.safetensors"
            else "missing"
        )
    try:
        info = read_model_info(path)
    except FaceNetError as exc:
        return f"unreadable: {exc}"
    return (
        f"{info.arch}, {info.embedding_size}-D, {info.input_size} px, threshold {info.threshold:.4f}, "
        f"id {info.id}; trained on: {trained_on(info)}"
    )
