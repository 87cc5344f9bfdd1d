"""`facenet train`: learn an embedding from a folder of identities (or synthetic ones)."""

from __future__ import annotations

import argparse
import dataclasses

from facenet.train.config import AUGMENT_ON, LOSSES, OPTIMIZERS, PRECISIONS, SCHEDULES, TEACHER_MODES, TrainConfig

# (option, config field, type, help); defaults come from TrainConfig so there is one source of truth.
OPTIONS = [
    ("--arch", "arch", str, "architecture (see `facenet models`)"),
    ("--embedding-size", "embedding_size", int, "embedding dimensions"),
    ("--image-size", "image_size", int, "face crop size in pixels"),
    ("--loss", "loss", str, f"one of {', '.join(LOSSES)} (none: the distillation term alone)"),
    ("--miner", "miner", str, "triplet miner: semihard (the paper's), hard, all, sandberg"),
    ("--margin", "margin", float, "triplet margin alpha on squared L2 distances"),
    (
        "--offline-every",
        "offline_every",
        int,
        "offline mining (the paper's option 1): every N steps mine a pool with the current weights (0 = online)",
    ),
    ("--offline-pool", "offline_pool_batches", int, "batches in the offline mining pool"),
    ("--softmax-weight", "softmax_weight", float, "weight of the softmax loss with --loss softmax/both"),
    ("--centre-loss", "centre_loss_weight", float, "weight of the centre loss (0 = off)"),
    ("--identities-per-batch", "identities_per_batch", int, "P: identities in each batch"),
    ("--faces-per-identity", "faces_per_identity", int, "K: faces of each identity in a batch"),
    ("--steps", "steps", int, "training steps (batches)"),
    (
        "--optimizer",
        "optimizer",
        str,
        f"one of {', '.join(OPTIMIZERS)} (adagrad is the paper's; adamw: Adam with "
        "decoupled weight decay); --weight-decay applies to weights, not to BatchNorm parameters or biases",
    ),
    ("--lr", "lr", float, "learning rate"),
    ("--lr-schedule", "lr_schedule", str, f"one of {', '.join(SCHEDULES)}"),
    ("--lr-step-every", "lr_step_every", int, "with --lr-schedule step: divide the rate by 10 this often"),
    ("--warmup-steps", "warmup_steps", int, "linear learning-rate warm-up steps"),
    ("--weight-decay", "weight_decay", float, "weight decay"),
    ("--dropout", "dropout", float, "dropout before the bottleneck layer"),
    ("--colour-jitter", "augment_colour", float, "max relative brightness/contrast/saturation change (0 = off)"),
    (
        "--occlusion",
        "augment_occlusion",
        float,
        "probability of an occluder per face: on similarity-aligned data a mask, sunglasses, scarf, hand or cap shadow "
        "placed from the recipe's landmarks (the training looks, never the ones `facenet evaluate --occlude` draws), "
        "else a flat band over the eyes or the lower face",
    ),
    (
        "--teacher",
        "teacher",
        str,
        "knowledge distillation from default (the installed default model), dlib (the converted dlib network), "
        "dlib-cpp (dlib's own C++ pipeline), a model file or an ONNX file; with --occlusion an online teacher "
        "embeds each view before its occluder is drawn",
    ),
    (
        "--teacher-mode",
        "teacher_mode",
        str,
        f"one of {', '.join(TEACHER_MODES)}: online = the teacher (a model file) embeds every augmented view in the "
        "step; cached = each photo once, kept in the cache folder for later runs; auto = online on a GPU",
    ),
    ("--distill-weight", "distill_weight", float, "weight of the distillation term"),
    (
        "--unlabelled-per-batch",
        "unlabelled_per_batch",
        int,
        "--unlabelled photos added to each batch (0 = half the P x K batch)",
    ),
    ("--holdout", "holdout_identities", float, "fraction of identities held out for verification checks"),
    ("--min-images", "min_images_per_identity", int, "ignore identities with fewer images"),
    (
        "--exclude-identities",
        "exclude_identities",
        str,
        "file naming identities (one per line) to keep out of training, e.g. a test fold's people",
    ),
    ("--eval-every", "eval_every", int, "steps between held-out verification checks"),
    ("--eval-images", "eval_max_images", int, "held-out images the checks use at most (a seeded sample)"),
    ("--checkpoint-every", "checkpoint_every", int, "steps between checkpoints"),
    (
        "--snapshot-every",
        "snapshot_every",
        int,
        "also keep the model file every N steps, as snapshots/step-N.safetensors, for a learning curve "
        "(benchmarks/learning_curve.py; 0 = off)",
    ),
    ("--workers", "workers", int, "data-loading processes (-1: one per CPU core left by the training process)"),
    (
        "--precision",
        "precision",
        str,
        f"one of {', '.join(PRECISIONS)}; auto = bf16 on GPUs that support it, fp32 otherwise (fp16 adds loss scaling)",
    ),
    (
        "--augment-on",
        "augment_on",
        str,
        f"one of {', '.join(AUGMENT_ON)}: where flips, jitter, colour and occlusion run (device: tensor ops on the "
        "whole batch, so loader workers only decode; use it on GPUs)",
    ),
    ("--seed", "seed", int, "random seed (recorded in the run)"),
    ("--device", "device", str, "auto, cpu or cuda"),
    ("--synthetic-identities", "synthetic_identities", int, "identities to generate when DATA_DIR is omitted"),
    ("--synthetic-images", "synthetic_images_per_identity", int, "images per synthetic identity"),
]


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values = {field: getattr(args, field) for _, field, _, _ in OPTIONS if getattr(args, field) is not None}
    if args.init == "default":  # the installed default model, by its file
        from facenet.embedder import ensure_default_model

        args.init = str(ensure_default_model())
    if args.resume:
        return _resumed_config(args, values)
    if args.init:  # fine-tuning: the model file decides what it is, unless told otherwise
        from facenet.models.modelfile import read_model_info

        info = read_model_info(args.init)
        values = {
            "arch": info.arch,
            "embedding_size": info.embedding_size,
            "image_size": info.input_size,
            "standardisation": info.standardisation,
            **values,
        }
    return TrainConfig(
        data=args.data or None,
        out=args.out,
        init=args.init,
        augment_flip=not args.no_flip,
        augment_crop=not args.no_crop,
        cache_crops=args.cache,
        compile=args.compile,
        merge_names=args.merge_names,
        source_weights=args.source_weights,
        unlabelled=args.unlabelled,
        **values,
    )


RESUMABLE_CHANGES = ("steps", "device", "workers")  # what may differ when a run continues; the rest decides results


def _resumed_config(args: argparse.Namespace, values: dict) -> TrainConfig:
    """The stored run's configuration, in the folder given now (a run may have been moved), with the options
    that may change on resume; any other option given differently is an error, never silently dropped."""
    from facenet.errors import TrainingError

    stored = TrainConfig.load(args.out)
    asked = {
        **values,
        **({"data": args.data} if args.data else {}),
        **({"init": args.init} if args.init else {}),
        **({"unlabelled": args.unlabelled} if args.unlabelled else {}),
        **({"source_weights": args.source_weights} if args.source_weights else {}),
        **({"merge_names": True} if args.merge_names else {}),
    }
    refused = {k: v for k, v in asked.items() if k not in RESUMABLE_CHANGES and getattr(stored, k) != v}
    if refused:
        change = ", ".join(f"{k}={v!r} (the run has {getattr(stored, k)!r})" for k, v in sorted(refused.items()))
        raise TrainingError(
            f"--resume continues the run in {args.out} exactly as it was started; it cannot change "
            f"{change}. Only {', '.join(RESUMABLE_CHANGES)} may change; start a new run with "
            "another --out (or --init from this run's model) to change the rest"
        )
    return dataclasses.replace(
        stored,
        **{k: v for k, v in values.items() if k in RESUMABLE_CHANGES},
        out=args.out,
        cache_crops=args.cache or stored.cache_crops,
    )


def run_train(args: argparse.Namespace) -> int:
    from facenet.train.loop import train

    if args.loader_only:
        return _measure_loader(config_from_args(args))
    result = train(config_from_args(args), resume=args.resume)
    print(f"model written to {result.model_path}")
    if result.final_accuracy is not None:
        start = f"{result.initial_accuracy:.4f}" if result.initial_accuracy is not None else "n/a"
        print(
            f"held-out verification accuracy: {start} at start -> {result.final_accuracy:.4f} "
            f"(threshold {result.threshold:.3f}, squared L2)"
        )
    return 0


def _measure_loader(config: TrainConfig) -> int:
    from facenet.train.data import measure_loader
    from facenet.train.distributed import setup

    rate = measure_loader(config.validate(), setup(config.device).device)
    print(
        f"loader alone: {rate['images_per_s']:.0f} images/s ({rate['workers']} workers, batches of "
        f"{rate['batch_size']}, augmentation on {rate['augment_on']}{', cached crops' if rate['cached'] else ''}); "
        "if training runs at about this rate, the loader limits it"
    )
    return 0


def add_training_options(parser: argparse.ArgumentParser) -> None:
    defaults = TrainConfig()
    for flag, field, kind, text in OPTIONS:
        parser.add_argument(
            flag, dest=field, type=kind, default=None, help=f"{text} (default: {getattr(defaults, field)})"
        )
    parser.add_argument("--no-flip", action="store_true", help="no random horizontal flips")
    parser.add_argument("--no-crop", action="store_true", help="no random shift/scale/rotation jitter")
    parser.add_argument(
        "--cache",
        action="store_true",
        help="decode every image once and keep the face crops in RAM as uint8 (for datasets that "
        "fit: LFW at 160 px takes 1 GB); workers then only augment",
    )
    parser.add_argument(
        "--merge-names",
        action="store_true",
        help="with several DATA_DIRs: identity folders of the same name are one person, underscores "
        "counting as spaces (LFW's George_W_Bush is PubFig83's George W Bush); by default each "
        "folder's identities are its own, namespaced by the folder's name",
    )
    parser.add_argument(
        "--source-weights",
        type=_weights,
        default=None,
        metavar="W1,W2,...",
        help="with several DATA_DIRs: the share of each batch's identities drawn from each folder "
        "(default: every identity alike)",
    )
    parser.add_argument(
        "--unlabelled",
        action="append",
        default=None,
        metavar="DIR",
        help="a folder of face photos without identities (any depth; repeatable): they feed the "
        "distillation term only (needs --teacher)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the network (minutes of compiling, then faster steps on GPUs)",
    )


def _weights(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers such as 2,1,1; got {text!r}") from None


def register(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train an embedding model with the triplet loss (and/or softmax)",
        description="Train a FaceNet embedding on folders with one sub-folder of face crops per identity "
        "(or on synthetic identities when DATA_DIR is omitted). Several DATA_DIRs train on all of them, "
        "each folder's identities kept apart (see --merge-names). Writes config.json, data.json (people "
        "and images per folder), metrics.csv, checkpoint.pt and model.safetensors to --out. Under "
        "torchrun, trains data-parallel.",
    )
    p.add_argument("data", nargs="*", metavar="DATA_DIR", help="folders of identities (default: synthetic faces)")
    p.add_argument("--out", required=True, help="run folder for checkpoints, metrics and the final model")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument(
        "--init",
        metavar="MODEL",
        default=None,
        help="fine-tune: start from this model file's weights ('default': the installed default model; "
        "its architecture, embedding size, "
        "input size, standardisation and recipe become the run's; its BatchNorm statistics stay "
        "fixed), e.g. the installed default model",
    )
    p.add_argument(
        "--loader-only",
        action="store_true",
        help="measure the data loader alone (images/s, no model) with these options, then exit "
        "(nothing is written to --out)",
    )
    add_training_options(p)
    p.set_defaults(func=run_train)
