"""``facenet models``: the available architectures with their measured size and cost."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "models", help="list architectures with parameters and FLOPs measured from the code",
        description="List every registered architecture with its parameter count and the cost of "
                    "embedding one face (MACs = multiply-adds; FLOPs = 2 x MACs, convolutions and "
                    "matrix products only).")
    parser.add_argument("--embedding-size", type=int, default=128, metavar="D",
                        help="embedding (head) size to measure with (default: 128)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from facenet.models.complexity import describe_models

    print(f"{'name':<22}{'params (M)':>11}{'MACs (G)':>10}{'FLOPs (G)':>11}{'input':>9}{'embedding':>11}")
    for row in describe_models(args.embedding_size):
        print(f"{row.name:<22}{row.params / 1e6:>11.2f}{row.macs / 1e9:>10.3f}{row.gflops:>11.3f}"
              f"{row.input_size:>6}px{row.embedding_size:>11}")
    return 0
