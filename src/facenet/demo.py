"""`facenet demo`: the whole FaceNet story in a few minutes on a laptop CPU.

Train a small model with the triplet loss on synthetic identities (or a folder
of real ones), check verification on identities it never saw, enrol some of
them into a gallery and identify the rest, and write a short report with a ROC
curve. The model stays in the demo's folder (``<out>/run/model.safetensors``): the default model
of the other commands is the pretrained one, which a model of synthetic faces must not replace.
Running the demo again continues an interrupted run, or checks a finished one again: the report
keeps the untrained accuracy (from the run's history) and the training time (``<out>/training.json``).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facenet.train.config import TrainConfig

GALLERY_PEOPLE = 10


def demo_config(out: str | Path, data: str | None = None, steps: int = 850, seed: int = 0) -> TrainConfig:
    """Settings measured to reach >= 95% held-out accuracy on synthetic faces within the demo's budget."""
    return TrainConfig(
        data=data,
        out=str(out),
        arch="nns",
        image_size=64,
        loss="triplet",
        miner="semihard",
        identities_per_batch=16,
        faces_per_identity=8,
        steps=steps,
        optimizer="adamw",
        lr=3e-3,
        lr_schedule="cosine",
        eval_every=max(steps // 4, 1),
        checkpoint_every=100,
        synthetic_identities=400,
        synthetic_images_per_identity=20,
        holdout_identities=0.1,
        workers=1,
        seed=seed,
        device="cpu",
    )


@dataclass
class DemoReport:
    model_path: Path
    report_path: Path
    accuracy: float
    accuracy_std: float
    initial_accuracy: float | None
    training_seconds: float | None  # None: not recorded
    val_at_far: float
    auc: float
    eer: float
    threshold: float
    identification_accuracy: float  # at the verification threshold
    unknown_rejection: float
    openset: tuple[float, float, float]  # (threshold, identified, rejected) at identify's open-set threshold
    seconds: float


def run_demo(
    out: str | Path,
    data: str | None = None,
    steps: int = 850,
    seed: int = 0,
    progress: bool = True,
    fresh: bool = False,
) -> DemoReport:
    """Train (or continue, or reuse a finished run in ``out``; ``fresh`` starts over), check and report."""
    from facenet.evaluate.metrics import kfold_metrics
    from facenet.evaluate.plots import plot_distance_histogram, plot_roc
    from facenet.models.modelfile import load_model_file
    from facenet.train.data import build_sources, held_out_pairs
    from facenet.train.validate import embed_source

    start = time.perf_counter()
    out = Path(out)
    config = demo_config(out / "run", data, steps, seed)
    model_path, initial_accuracy, training_seconds = _trained_model(config, out / "training.json", fresh, progress)

    model, info = load_model_file(model_path)
    _, held = build_sources(config)
    if held is None:
        from facenet.errors import DataError

        raise DataError("the data has too few identities to hold some out for checking; add identities")
    embeddings = embed_source(model, held, np.arange(len(held)), config, model.last_linear.weight.device)
    pairs = held_out_pairs(held.labels, 6000, seed)
    metrics = kfold_metrics(embeddings[pairs.first], embeddings[pairs.second], pairs.same, pairs.folds)
    plot_roc(
        {f"{info.arch} (held-out identities)": (metrics.roc.fpr, metrics.roc.tpr)},
        out / "roc.png",
        title="Verification on held-out identities",
    )
    plot_distance_histogram(
        metrics.distances,
        pairs.same,
        info.threshold,
        out / "distances.png",
        title="Held-out pair distances (squared L2)",
    )
    from facenet.embedder import FaceEmbedder

    (ident_acc, rejection), openset = _gallery_check(
        out / "gallery.db", FaceEmbedder(model, info), embeddings, held.labels
    )

    report = DemoReport(
        model_path=model_path,
        report_path=out / "report.md",
        accuracy=float(metrics.accuracy.mean()),
        accuracy_std=float(metrics.accuracy.std()),
        initial_accuracy=initial_accuracy,
        training_seconds=training_seconds,
        val_at_far=float(metrics.val.mean()),
        auc=metrics.roc.auc,
        eer=metrics.roc.eer,
        threshold=info.threshold,
        identification_accuracy=ident_acc,
        unknown_rejection=rejection,
        openset=openset,
        seconds=time.perf_counter() - start,
    )
    report.report_path.write_text(_markdown(report, config, held))
    return report


def _trained_model(
    config: TrainConfig, timing: Path, fresh: bool, progress: bool
) -> tuple[Path, float | None, float | None]:
    """The run's model (trained now, continued from its checkpoint, or the finished one already there),
    its accuracy before training (from the run's history), and how long training took (``timing``)."""
    from facenet.errors import TrainingError
    from facenet.fileio import atomic_write_bytes
    from facenet.train.checkpoint import load_checkpoint
    from facenet.train.loop import MODEL_NAME, train

    run_dir = Path(config.out)
    if fresh:
        shutil.rmtree(run_dir, ignore_errors=True)
        timing.unlink(missing_ok=True)
    checkpoint = load_checkpoint(run_dir)
    if checkpoint is not None and TrainConfig.load(run_dir).to_json() != config.to_json():
        raise TrainingError(
            f"{run_dir} holds a demo run with other settings; use --fresh to start over or another --out"
        )
    if (run_dir / MODEL_NAME).exists():  # written only when a run finishes
        if checkpoint is None:
            raise TrainingError(
                f"{run_dir} holds a model without its training checkpoint; use --fresh to start over or another --out"
            )
        print(f"{run_dir} holds a finished demo run; checking it again (--fresh trains again)", flush=True)
        history = checkpoint["history"]
        return run_dir / MODEL_NAME, history[0].get("val_accuracy") if history else None, _recorded(timing)
    # said at once: in a log the first progress line comes only after a while
    print(
        f"facenet demo: {'continuing' if checkpoint else 'training'} a small {config.arch} model on "
        f"{config.data or 'synthetic faces'} in {run_dir} ({config.steps} steps, a few minutes on a CPU)",
        file=sys.stderr,
        flush=True,
    )
    began = time.perf_counter()
    result = train(config, resume=checkpoint is not None, progress=progress)
    atomic_write_bytes(timing, json.dumps({"seconds": time.perf_counter() - began}).encode())
    return result.model_path, result.initial_accuracy, _recorded(timing)


def _recorded(timing: Path) -> float | None:
    """Training seconds as recorded when the run ended (a continued run: its last part only)."""
    try:
        return float(json.loads(timing.read_text())["seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _gallery_check(path: Path, embedder, embeddings: np.ndarray, labels: np.ndarray):
    """Enrol one face of some held-out people; identify their other faces and reject strangers, at the
    verification threshold and at the open-set threshold `facenet identify` uses (from the FAR calibration).

    Returns ((identified, rejected) at the verification threshold, (threshold, identified, rejected) open-set).
    """
    from facenet.evaluate.calibrate import identification_threshold
    from facenet.gallery import Gallery

    path.unlink(missing_ok=True)
    people = np.unique(labels)
    known, strangers = people[:GALLERY_PEOPLE], people[GALLERY_PEOPLE : 2 * GALLERY_PEOPLE]
    # the same model id as the CLI's, so `facenet identify --gallery <out>/gallery.db` can use this gallery
    with Gallery.open(path, model_id=embedder.name, embedding_size=embedder.embedding_size) as gallery:
        queries, truth = [], []
        for person in known:
            faces = np.flatnonzero(labels == person)
            gallery.enroll(f"person_{person}", embeddings[faces[:1]], [f"held-out face {faces[0]}"])
            queries.extend(faces[1:])
            truth.extend([f"person_{person}"] * (len(faces) - 1))
        stranger_faces = embeddings[np.isin(labels, strangers)]

        def scores(threshold: float) -> tuple[float, float]:
            matches = gallery.identify(embeddings[queries], k=1, threshold=threshold)
            hits = [bool(m) and m[0].name == name for m, name in zip(matches, truth)]
            unknown = gallery.identify(stranger_faces, k=1, threshold=threshold)
            return float(np.mean(hits)), float(np.mean([not m for m in unknown]))

        openset = identification_threshold(embedder, gallery.comparisons())  # as `facenet identify`
        return scores(embedder.threshold), (openset, *scores(openset))


def _markdown(r: DemoReport, config: TrainConfig, held) -> str:
    start = f"{r.initial_accuracy:.1%}" if r.initial_accuracy is not None else "n/a"
    data = (
        config.data
        or f"synthetic faces ({config.synthetic_identities} identities x {config.synthetic_images_per_identity} images)"
    )
    lines = [
        "# facenet demo report",
        "",
        f"- data: {data}",
        f"- model: `{r.model_path}` ({config.arch}, {config.embedding_size}-D, {config.image_size} px, "
        f"{config.steps} steps of {config.identities_per_batch}x{config.faces_per_identity} faces, "
        f"triplet loss with {config.miner} mining, margin {config.margin})",
        f"- held-out identities: {held.num_identities} ({len(held)} images), never seen in training",
        "",
        "| check | result |",
        "|---|---|",
        f"| verification accuracy, 10-fold (untrained -> trained) | {start} -> "
        f"{r.accuracy:.1%} +- {r.accuracy_std:.1%} |",
        f"| VAL @ FAR=1e-3 | {r.val_at_far:.1%} |",
        f"| ROC AUC / EER | {r.auc:.4f} / {r.eer:.2%} |",
        f"| calibrated threshold (squared L2) | {r.threshold:.3f} |",
        f"| gallery: {GALLERY_PEOPLE} people enrolled with one face; their other faces identified | "
        f"{r.identification_accuracy:.1%} |",
        f"| gallery: faces of {GALLERY_PEOPLE} strangers rejected as unknown | {r.unknown_rejection:.1%} |",
        f"| the same at `facenet identify`'s open-set threshold {r.openset[0]:.3f} (stranger FAR 1e-2): "
        f"identified / rejected | {r.openset[1]:.1%} / {r.openset[2]:.1%} |",
        f"| training time | {_minutes(r.training_seconds)} |",
        f"| checks and report | {r.seconds / 60:.1f} min |",
        "",
        "![ROC](roc.png)",
        "",
        "![distances](distances.png)",
        "",
    ]
    lines.append(
        f"Use it with `--model {r.model_path}`; the default model of the other commands stays the pretrained one."
    )
    return "\n".join(lines) + "\n"


def _minutes(seconds: float | None) -> str:
    return f"{seconds / 60:.1f} min" if seconds is not None else "not recorded"


def print_summary(r: DemoReport) -> None:
    start = f"{r.initial_accuracy:.1%}" if r.initial_accuracy is not None else "n/a"
    print(
        f"held-out verification accuracy: {start} untrained -> {r.accuracy:.1%} +- {r.accuracy_std:.1%} "
        f"(VAL@FAR=1e-3 {r.val_at_far:.1%}, AUC {r.auc:.4f})"
    )
    print(
        f"gallery: {r.identification_accuracy:.1%} of enrolled people's faces identified, "
        f"{r.unknown_rejection:.1%} of strangers rejected (verification threshold); at identify's open-set "
        f"threshold: {r.openset[1]:.1%} identified, {r.openset[2]:.1%} rejected"
    )
    print(f"report: {r.report_path}  (training {_minutes(r.training_seconds)}, checks {r.seconds / 60:.1f} min)")


__all__ = ["run_demo", "demo_config", "DemoReport", "print_summary"]
