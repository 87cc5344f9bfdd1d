"""`facenet demo`: train, verify, identify and report, on synthetic faces by default."""

from __future__ import annotations

import argparse


def run_demo_command(args: argparse.Namespace) -> int:
    from facenet.demo import print_summary, run_demo

    report = run_demo(args.out, data=args.data, steps=args.steps, seed=args.seed, fresh=args.fresh)
    print_summary(report)
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="train a small model on synthetic faces, check it, and write a report (a few minutes)",
        description="The whole pipeline in a few minutes on a CPU: train a small FaceNet model with the triplet "
        "loss on synthetic identities (or --data DIR), measure verification on identities it never "
        "saw, enrol some into a gallery and identify the rest, then write report.md with a ROC curve. "
        "The model stays in --out (OUT/run/model.safetensors); the default model of the other "
        "commands stays the pretrained one. Run again: an interrupted run continues, a finished "
        "one is reported on again.",
    )
    p.add_argument("--out", default="facenet-demo", help="folder for the run, report and plots (default: facenet-demo)")
    p.add_argument("--data", help="a folder with one sub-folder of face crops per identity instead of synthetic faces")
    p.add_argument("--steps", type=int, default=850, help="training steps (default: 850)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--fresh", action="store_true", help="delete the demo run in --out and train from scratch")
    p.set_defaults(func=run_demo_command)
