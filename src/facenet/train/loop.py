"""The training loop, readable top to bottom: batch -> embed -> mine -> loss -> step -> check -> save.

One process or many (``torchrun``): each rank embeds its slice of the global
P x K batch, the slices are gathered so every rank mines the same triplets over
the whole batch, and gradients are averaged. Checkpoints are atomic and hold
all state, so ``resume=True`` continues a killed run to the exact same end.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from facenet.data.images import standardise
from facenet.data.sampler import PKSampler
from facenet.errors import TrainingError
from facenet.fileio import atomic_write
from facenet.losses import FaceLoss, triplet_loss
from facenet.losses.distill import distillation_loss
from facenet.models import EmbeddingModel, create_model, l2_normalize
from facenet.models.modelfile import ModelInfo, load_model_file, model_info_for, read_model_info, save_model
from facenet.seeding import seed_everything
from facenet.train import distributed
from facenet.train.checkpoint import load_checkpoint, save_checkpoint
from facenet.train.config import TrainConfig
from facenet.train.data import (
    StepBatches,
    TeacherFeed,
    augment_seed,
    batch_augmentation,
    build_sources,
    build_unlabelled,
    data_recipe,
    data_summary,
    face_augmentation,
    held_out_pairs,
    loader_workers,
    step_loader,
)
from facenet.train.offline import OfflineTriplets
from facenet.train.precision import autocast, grad_scaler, resolve_precision
from facenet.train.validate import verification

if TYPE_CHECKING:  # the teacher module is imported only by runs that use one
    from facenet.train.teacher import OnlineTeacher

METRICS_FIELDS = [
    "step",
    "loss",
    "triplet_loss",
    "softmax_loss",
    "centre_loss",
    "distill_agreement",
    "distill_relations",
    "active_fraction",
    "num_triplets",
    "d_ap",
    "d_an",
    "lr",
    "images_per_s",
    "val_accuracy",
    "val_threshold",
]
MODEL_NAME = "model.safetensors"


@dataclass
class TrainResult:
    run_dir: Path
    model_path: Path
    steps: int
    initial_accuracy: float | None = None
    final_accuracy: float | None = None
    threshold: float | None = None
    history: list[dict] = field(default_factory=list)


def train(config: TrainConfig, resume: bool = False, progress: bool = True) -> TrainResult:
    """Train (or resume) the run in ``config.out``; returns where the model went and how it did."""
    config.validate()
    ctx = distributed.setup(config.device)
    try:
        return _train(config, resume, progress, ctx)
    finally:
        distributed.teardown(ctx)


def _train(config: TrainConfig, resume: bool, progress: bool, ctx: distributed.Context) -> TrainResult:
    run_dir = Path(config.out)
    checkpoint = load_checkpoint(run_dir) if resume else None
    if checkpoint is not None and int(checkpoint["step"]) >= config.steps and (run_dir / MODEL_NAME).exists():
        return _finished(run_dir, config, checkpoint)
    _check_start(run_dir, config, resume, checkpoint, ctx)
    run = _setup(config, ctx, run_dir)
    _resume(run, checkpoint)
    _open_batches(run, checkpoint, progress and ctx.is_main)
    metrics = _MetricsLog(run_dir / "metrics.csv", keep_until=run.start, enabled=ctx.is_main)
    initial = _initial_check(run, metrics)
    _steps(run, metrics, _progress(progress and ctx.is_main, run.start, config.steps))
    return _finish(run, initial)


@dataclass
class _Run:
    """What the loop works on: the data, the training step and its schedule, and the record so far."""

    config: TrainConfig
    ctx: distributed.Context
    run_dir: Path
    train_source: object
    held_source: object
    unlabelled: object
    summary: dict
    trainer: TrainingStep
    schedule: torch.optim.lr_scheduler.LambdaLR
    pairs: object
    start: int = 0
    history: list[dict] = field(default_factory=list)
    loader: object = None  # the batches of the steps to come, or (offline mining) ...
    offline: OfflineTriplets | None = None  # ... the pool of offline-mined triplets
    last_check: tuple | None = None  # the last held-out verification (accuracy, threshold, Calibration)


def _check_start(
    run_dir: Path, config: TrainConfig, resume: bool, checkpoint: dict | None, ctx: distributed.Context
) -> None:
    """Refuse a run that cannot start (a finished run's folder without --resume, an uneven batch split);
    record its configuration."""
    if resume and checkpoint is None and ctx.is_main:
        print(
            f"{run_dir}: no checkpoint yet (the run stopped before its first one); starting from step 0",
            file=sys.stderr,
        )
    if not resume and (run_dir / "checkpoint.pt").exists():
        raise TrainingError(
            f"{run_dir} already holds a training run; continue it with --resume or choose another --out"
        )
    if config.batch_size % ctx.world_size:
        raise TrainingError(
            f"the batch of {config.batch_size} faces does not split evenly over {ctx.world_size} processes"
        )
    if ctx.is_main:
        atomic_write(run_dir / "config.json", lambda tmp: tmp.write_text(config.to_json()))


def _setup(config: TrainConfig, ctx: distributed.Context, run_dir: Path) -> _Run:
    """The data (summarised in data.json), the model, losses, optimizer and schedule, the held-out pairs."""
    seed_everything(config.seed)
    train_source, held_source = build_sources(config)
    unlabelled = build_unlabelled(config)
    summary = data_summary(config, train_source, unlabelled)
    if ctx.is_main:
        atomic_write(run_dir / "data.json", lambda tmp: tmp.write_text(json.dumps(summary, indent=2)))
    trainer = TrainingStep.build(config, ctx, train_source.num_identities)
    schedule = torch.optim.lr_scheduler.LambdaLR(trainer.optimizer, _lr_factor(config))
    pairs = (
        held_out_pairs(held_source.labels, 6000, config.seed, max_images=config.eval_max_images)
        if held_source is not None
        else None
    )
    return _Run(config, ctx, run_dir, train_source, held_source, unlabelled, summary, trainer, schedule, pairs)


def _resume(run: _Run, checkpoint: dict | None) -> None:
    """Continue from ``checkpoint`` (every state and random generator), or start every rank from the same
    weights (the --init model's when given)."""
    trainer = run.trainer
    if checkpoint is None:
        if run.config.init:
            _load_init(trainer.model, run.config)
        distributed.broadcast_parameters(trainer.model, run.ctx)
        return
    trainer.model.load_state_dict(checkpoint["model"])
    trainer.loss_fn.load_state_dict(checkpoint["loss"])
    trainer.optimizer.load_state_dict(checkpoint["optimizer"])
    run.schedule.load_state_dict(checkpoint["schedule"])
    if "scaler" in checkpoint:
        trainer.scaler.load_state_dict(checkpoint["scaler"])
    torch.set_rng_state(checkpoint["torch_rng"])
    if "cuda_rng" in checkpoint and torch.cuda.is_available():  # dropout etc. on the GPU resume exactly too
        torch.cuda.set_rng_state_all(checkpoint["cuda_rng"])
    run.start = int(checkpoint["step"])
    run.history = [dict(row) for row in checkpoint["history"]]


def _open_batches(run: _Run, checkpoint: dict | None, progress: bool) -> None:
    """The batches of the steps still to run: the loader's, or the offline miner's pool."""
    config, ctx = run.config, run.ctx
    sampler = PKSampler(
        run.train_source.labels,
        config.identities_per_batch,
        config.faces_per_identity,
        seed=config.seed,
        weights=run.train_source.identity_weights,
    )
    augment = face_augmentation(config)
    batches = StepBatches(
        run.train_source,
        sampler,
        augment,
        config.seed,
        shard=(ctx.rank, ctx.world_size),
        unlabelled=run.unlabelled,
        unlabelled_count=config.unlabelled_batch_size,
        teacher=_teacher_feed(run.trainer, run.train_source, run.unlabelled, augment, progress),
    )
    if config.offline_every:
        if ctx.distributed:
            raise TrainingError("offline mining runs in one process; drop --offline-every under torchrun")
        run.offline = OfflineTriplets(batches, config, ctx.device, checkpoint.get("offline") if checkpoint else None)
    else:
        run.loader = step_loader(
            batches,
            range(run.start, config.steps),
            loader_workers(config.workers),
            pin_memory=ctx.device.type == "cuda",
        )


def _validate(run: _Run) -> tuple[float, float, dict] | None:
    """The held-out verification of the model now; only the main process records and saves what it finds."""
    if run.pairs is None or not run.ctx.is_main:
        return None
    return verification(run.trainer.model, run.held_source, run.pairs, run.config, run.ctx.device)


def _initial_check(run: _Run, metrics: _MetricsLog) -> float | None:
    """The held-out accuracy before training (measured now on a fresh run, else from the history)."""
    if run.start:
        return run.history[0].get("val_accuracy") if run.history else None
    checked = _validate(run)
    initial = checked[0] if checked else None
    run.history = [{"step": 0, "val_accuracy": initial}]
    if run.ctx.is_main and checked:
        metrics.write({"step": 0, "val_accuracy": checked[0], "val_threshold": checked[1]})
    return initial


def _steps(run: _Run, metrics: _MetricsLog, bar) -> None:
    """Every step still to run; the loop reads values from the device only at steps that log, check or save."""
    config = run.config
    collapsed = torch.zeros((), dtype=torch.long, device=run.ctx.device)  # consecutive collapsed steps, on the device
    tick, ticked_at = time.perf_counter(), run.start
    for step in range(run.start, config.steps):
        loss, stats, prelogits = _step(run, step)
        run.schedule.step()
        collapsed = (collapsed + 1) * _is_collapsed(prelogits) if prelogits is not None else collapsed * 0

        done = step + 1
        logged = done % config.log_every == 0 or done == config.steps
        evaluated = done % config.eval_every == 0 or done == config.steps
        saved = done % config.checkpoint_every == 0 or done == config.steps
        if bar is not None:
            bar.update(1)
        if not (logged or evaluated or saved):
            # a GPU runs ahead of Python until the host reads a device value (loss.item() would wait for
            # the step to finish); so the host reads them only at steps that log, check or save
            continue
        _check_health(config, done, loss, collapsed)
        now = time.perf_counter()
        images_per_s = config.batch_size * (done - ticked_at) / max(now - tick, 1e-9)
        tick, ticked_at = now, done
        _record(run, metrics, bar, done, loss, stats, images_per_s, evaluated, logged)
        _save(run, done, saved)
    if bar is not None:
        bar.close()


def _step(run: _Run, step: int) -> tuple[torch.Tensor, dict, torch.Tensor | None]:
    """(loss, stats, prelogits) of one optimisation step on step ``step``'s batch."""
    if run.offline is None:
        images, labels, teacher_input = next(run.loader)
        return run.trainer(images, labels, step, None, teacher_input)
    images, labels, triplets = run.offline.batch(step, run.trainer.model)
    if not len(triplets[0]):  # the pool had no informative triplet left
        return torch.zeros(()), {"num_triplets": 0.0, "active_fraction": 0.0}, None
    return run.trainer(images, labels, step, triplets, None)


def _check_health(config: TrainConfig, done: int, loss: torch.Tensor, collapsed: torch.Tensor) -> None:
    """Stop a run whose embeddings collapsed for ``collapse_patience`` steps or whose loss is not finite."""
    if int(collapsed) >= config.collapse_patience:
        raise TrainingError(
            f"embeddings collapsed by step {done}: every face maps to the same point. "
            "Lower the learning rate (--lr), use the semihard miner, or add softmax "
            "(--loss both)"
        )
    if not math.isfinite(loss.item()):
        raise TrainingError(f"loss became {loss.item()} by step {done}; lower the learning rate")


def _record(
    run: _Run,
    metrics: _MetricsLog,
    bar,
    done: int,
    loss: torch.Tensor,
    stats: dict,
    images_per_s: float,
    evaluated: bool,
    logged: bool,
) -> None:
    """The step's metrics row (with a held-out check when due) to metrics.csv and the progress bar; the losses'
    statistics are device tensors until here."""
    stats = {key: float(value) for key, value in stats.items()}
    row = {
        "step": done,
        "loss": loss.item(),
        "lr": run.schedule.get_last_lr()[0],
        **stats,
        "images_per_s": images_per_s,
    }
    if evaluated:
        run.last_check = _validate(run)
        if run.last_check:
            row["val_accuracy"], row["val_threshold"] = run.last_check[:2]
            run.history.append({"step": done, "val_accuracy": run.last_check[0]})
    if logged or "val_accuracy" in row:
        metrics.write(row)
    if bar is not None:
        val = run.history[-1].get("val_accuracy")
        bar.set_postfix(
            loss=f"{row['loss']:.3f}",
            active=f"{stats.get('active_fraction', 0):.2f}",
            img_s=f"{row['images_per_s']:.0f}",
            val=f"{val:.3f}" if val else "-",
        )


def _save(run: _Run, done: int, saved: bool) -> None:
    """The main process's model snapshot (every ``snapshot_every`` steps) and checkpoint (when ``saved``)."""
    config, trainer = run.config, run.trainer
    if not run.ctx.is_main:
        return
    if config.snapshot_every and done % config.snapshot_every == 0 and done < config.steps:
        (run.run_dir / "snapshots").mkdir(exist_ok=True)
        _save_model(
            trainer.model,
            config,
            run.train_source,
            run.summary,
            run.run_dir / "snapshots" / f"step-{done:06d}.safetensors",
            run.last_check,
            run.history[-1].get("val_accuracy"),
            steps=done,
        )
    if saved:
        save_checkpoint(
            run.run_dir,
            {
                "model": trainer.model.state_dict(),
                "loss": trainer.loss_fn.state_dict(),
                "optimizer": trainer.optimizer.state_dict(),
                "schedule": run.schedule.state_dict(),
                "scaler": trainer.scaler.state_dict(),
                "torch_rng": torch.get_rng_state(),
                **({"cuda_rng": torch.cuda.get_rng_state_all()} if torch.cuda.is_available() else {}),
                "step": done,
                "history": run.history,
                **({"offline": run.offline.state_dict()} if run.offline is not None else {}),
            },
        )


def _finish(run: _Run, initial: float | None) -> TrainResult:
    """The final model file, with the thresholds of the last held-out check."""
    if run.last_check is None:  # resumed after its last step (stopped before the final model was written): the
        run.last_check = _validate(run)  # calibration is recomputed from the same weights, never left at a default
    final_accuracy = run.history[-1].get("val_accuracy") if len(run.history) > 1 else None
    threshold = run.last_check[1] if run.last_check else None
    model_path = run.run_dir / MODEL_NAME
    if run.ctx.is_main:
        _save_model(
            run.trainer.model, run.config, run.train_source, run.summary, model_path, run.last_check, final_accuracy
        )
    return TrainResult(run.run_dir, model_path, run.config.steps, initial, final_accuracy, threshold, run.history)


def _finished(run_dir: Path, config: TrainConfig, checkpoint: dict) -> TrainResult:
    """A run that already ended: its model file stays as it is (weights, thresholds and id)."""
    model_path = run_dir / MODEL_NAME
    info = read_model_info(model_path)
    history = [dict(row) for row in checkpoint["history"]]
    print(
        f"{run_dir} finished at step {config.steps}; its model {model_path} is left as it is "
        "(raise --steps to train further)",
        file=sys.stderr,
    )
    final = history[-1].get("val_accuracy") if len(history) > 1 else None
    return TrainResult(
        run_dir,
        model_path,
        config.steps,
        history[0].get("val_accuracy") if history else None,
        final,
        info.threshold,
        history,
    )


@dataclass
class TrainingStep:
    """One optimisation step on a batch the loader delivered: to the device -> (augmentation there) ->
    standardise -> the network in the run's precision -> float32 losses and mining -> (scaled) backward
    -> gradients averaged over ranks -> update. The loop calls it once a step; the training benchmark
    times it alone on batches already in memory (the model's own speed, without the loader)."""

    config: TrainConfig
    ctx: distributed.Context
    model: EmbeddingModel
    loss_fn: FaceLoss
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    precision: str
    generator: torch.Generator
    teacher_mode: str | None = None  # online | cached | None (no teacher)
    teacher: OnlineTeacher | None = None

    @classmethod
    def build(cls, config: TrainConfig, ctx: distributed.Context, num_classes: int) -> TrainingStep:
        model = create_model(config.arch, embedding_size=config.embedding_size, dropout=config.dropout)
        model.input_size = config.image_size
        # channels_last: about 15% faster convolutions on CPUs and tensor cores alike
        model = distributed.sync_batchnorm(model, ctx).to(ctx.device, memory_format=torch.channels_last)
        generator = torch.Generator()
        loss_fn = FaceLoss(
            config.embedding_size,
            num_classes=num_classes,
            triplet_weight=0.0 if config.loss == "softmax" else 1.0,
            softmax_weight=0.0 if config.loss == "triplet" else config.softmax_weight,
            centre_weight=config.centre_loss_weight,
            miner=config.miner,
            margin=config.margin,
            generator=generator,
        ).to(ctx.device)
        optimizer = _optimizer(config, list(model.parameters()) + list(loss_fn.parameters()), ctx.device)
        precision = resolve_precision(config.precision, ctx.device)
        mode, teacher = None, None
        if config.teacher:
            from facenet.train.teacher import OnlineTeacher, resolve_mode, teacher_path

            mode = resolve_mode(config.teacher, config.teacher_mode, ctx.device)
            teacher = OnlineTeacher(teacher_path(config.teacher), ctx.device) if mode == "online" else None
        return cls(
            config,
            ctx,
            model,
            loss_fn,
            optimizer,
            grad_scaler(precision, ctx.device),
            precision,
            generator,
            mode,
            teacher,
        )

    def __post_init__(self):
        # compiling the bound method leaves the module (and so its state dict and checkpoints) as it is
        self.embed = torch.compile(self.model.prelogits) if self.config.compile else self.model.prelogits
        self.augment = batch_augmentation(self.config)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, step: int, triplets=None, teacher_input=None):
        """(loss, stats, prelogits) of step ``step``: ``labels`` are the whole global batch's (-1: an
        unlabelled photo), ``images`` (uint8 N,3,S,S) this rank's share of it or the whole batch; with
        ``triplets`` (offline mining) the loss is on those, else the loss function mines its own.
        ``teacher_input`` is what the loader made for the teacher (``facenet.train.data.TeacherFeed``)."""
        config, ctx = self.config, self.ctx
        self.model.train()
        if config.init:
            freeze_norm_statistics(self.model)
        self.loss_fn.train()
        self.generator.manual_seed(config.seed * 1_000_003 + step)
        per_rank = len(labels) // ctx.world_size  # the loader hands each rank its share (StepBatches' shard)
        if len(images) != per_rank:  # a whole global batch (one process, offline mining, the benchmark)
            images = images[ctx.rank * per_rank : (ctx.rank + 1) * per_rank]
        local = self._augmented(images, step, per_rank, len(labels))
        x = standardise(local, config.standardisation).contiguous(memory_format=torch.channels_last)
        with autocast(self.precision, ctx.device):  # the network only: losses and mining stay float32
            prelogits = distributed.gather_with_grad(self.embed(x).float(), ctx)
        labels = labels.to(ctx.device, non_blocking=True)
        if triplets is not None:
            loss, active = triplet_loss(
                l2_normalize(prelogits), *(t.to(ctx.device) for t in triplets), margin=config.margin
            )
            stats = {"num_triplets": float(len(triplets[0])), "active_fraction": active}
        elif config.loss == "none":
            loss, stats = prelogits.sum() * 0, {}
        else:  # the P x K labelled faces come first; unlabelled photos (after them) only meet the teacher
            labelled = config.labelled_batch_size
            loss, stats = self.loss_fn(prelogits[:labelled], labels[:labelled])
        if self.teacher_mode is not None:
            distill, distill_stats = distillation_loss(
                l2_normalize(prelogits), self._teacher_embeddings(local, teacher_input, step, per_rank, len(labels))
            )
            loss = loss + config.distill_weight * distill
            stats.update(distill_stats)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        distributed.average_gradients(self.model, ctx)  # before unscaling, so every rank sees the same inf/NaN
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss, stats, prelogits

    def _augmented(self, images: torch.Tensor, step: int, per_rank: int, total: int) -> torch.Tensor:
        """This rank's images on the device, after the on-device augmentation when the run has one."""
        local = images.to(self.ctx.device, non_blocking=True)
        if self.augment is None:
            return local
        return self.augment(local, augment_seed(self.config.seed, step), self.ctx.rank * per_rank, total)

    def _teacher_embeddings(
        self, local: torch.Tensor, teacher_input, step: int, per_rank: int, total: int
    ) -> torch.Tensor:
        """The teacher's unit embeddings of the whole global batch: cached rows from the loader, or the
        online teacher on this rank's views (those without occluders when the loader made them), gathered."""
        if self.teacher_mode == "cached":
            return teacher_input.to(self.ctx.device, non_blocking=True)
        views = (
            local
            if teacher_input is None or not teacher_input.numel()
            else self._augmented(teacher_input, step, per_rank, total)
        )  # same seed: the same jitter, flip and colour
        return distributed.gather_with_grad(self.teacher(views), self.ctx)


def _optimizer(config: TrainConfig, params, device: torch.device) -> torch.optim.Optimizer:
    """The run's optimizer; weight decay applies to weight matrices and filters only, never to BatchNorm
    scales and shifts or biases (decaying those pulls normalised activations towards zero, not complexity)."""
    params = list(params)
    groups = [
        {"params": [p for p in params if p.ndim > 1], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
    ]
    if config.optimizer == "adagrad":  # the paper's choice; its fused kernel is CPU-only
        return torch.optim.Adagrad(groups, lr=config.lr)
    # on GPUs, one fused kernel updates every parameter (instead of several launches per tensor group)
    fused = {"fused": True} if device.type == "cuda" else {}
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr, **fused)
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=True, **fused)


def _lr_factor(config: TrainConfig):
    def factor(step: int) -> float:
        if config.warmup_steps and step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        if config.lr_schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(step / config.steps, 1.0)))
        if config.lr_schedule == "step" and config.lr_step_every:
            return 0.1 ** (step // config.lr_step_every)
        return 1.0

    return factor


def _is_collapsed(prelogits: torch.Tensor) -> torch.Tensor:
    """All embeddings (nearly) identical: the triplet loss then sits at the margin and learns nothing.
    A 0-d bool tensor on the embeddings' device (reading it would make the host wait for the device)."""
    with torch.no_grad():
        embeddings = l2_normalize(prelogits.detach())
        return embeddings.var(dim=0).sum() < 1e-6


def freeze_norm_statistics(model: torch.nn.Module) -> None:
    """Fine-tuning keeps a pretrained model's BatchNorm statistics: the layers normalise with the stored
    running mean and variance (their scale and shift still learn). Batches of a user's few hundred faces
    cannot re-estimate them, and the converted dlib network stores them folded into its scales."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()


def _load_init(model, config: TrainConfig) -> None:
    """Start from a model file's weights (fine-tuning); its head must match the run's embedding size."""
    start, info = load_model_file(config.init)
    if (info.arch, info.embedding_size) != (config.arch, config.embedding_size):
        raise TrainingError(
            f"--init {config.init} is a {info.arch} with {info.embedding_size}-D embeddings, "
            f"but the run asks for {config.arch} with {config.embedding_size}-D; "
            "drop --arch/--embedding-size to take the file's"
        )
    state = {k: v for k, v in start.state_dict().items() if not k.startswith("logits.")}
    model.load_state_dict(state, strict=False)


def _teacher_feed(trainer: TrainingStep, source, unlabelled, augment, progress: bool) -> TeacherFeed | None:
    """What the loader hands the teacher: cached embeddings of every training photo (made now, or read from
    the teacher's cache), or the views without occluders for an online teacher when occluders are drawn."""
    config = trainer.config
    if trainer.teacher_mode == "cached":
        from facenet.train.teacher import cached_targets

        if getattr(source, "path", None) is None:
            raise TrainingError(
                "a cached teacher embeds the training photos' files; synthetic faces have none "
                "(use --teacher-mode online with a model file)"
            )
        paths = [source.path(i) for i in range(len(source))]
        extra = [unlabelled.path(i) for i in range(len(unlabelled))] if unlabelled is not None else []
        targets = cached_targets(config.teacher, paths + extra, progress)  # one teacher, one pass over the cache
        return TeacherFeed(targets=targets[: len(paths)], unlabelled_targets=targets[len(paths) :] if extra else None)
    if trainer.teacher_mode == "online" and augment.landmarks is not None and augment.occlusion > 0:
        return TeacherFeed(clean_views=True)
    return None


def _recipe(config: TrainConfig) -> dict:
    """How the training crops were made (``recipe.json`` of the aligned folders), else the --init model's."""
    recipe = data_recipe(config)
    if recipe is not None:
        return {k: v for k, v in recipe.items() if k != "size"}
    return read_model_info(config.init).recipe if config.init else {}


def _save_model(
    model, config: TrainConfig, source, summary: dict, path: Path, check, accuracy, steps: int | None = None
) -> ModelInfo:
    """The model file after ``steps`` (the final one by default), with the last held-out check's thresholds
    (verification and FAR table)."""
    clean = create_model(config.arch, embedding_size=config.embedding_size)
    clean.load_state_dict(model.state_dict())
    clean.input_size = config.image_size
    provenance = {
        "trained_by": "facenet train",
        "data": ", ".join(config.data) if config.data else "synthetic",
        "identities": int(source.num_identities),
        "images": int(len(source)),
        "data_summary": summary,
        "steps": steps or config.steps,
        "seed": config.seed,
        "loss": config.loss,
        "miner": config.miner,
        "held_out_accuracy": accuracy,
        **({"init": config.init} if config.init else {}),
        **({"teacher": config.teacher, "distill_weight": config.distill_weight} if config.teacher else {}),
        **({"occlusion": config.augment_occlusion} if config.augment_occlusion else {}),
    }
    info = model_info_for(clean, standardisation=config.standardisation, provenance=provenance, recipe=_recipe(config))
    if check is not None:
        calibration = check[2]
        info = dataclasses.replace(
            info, threshold=check[1], far_thresholds=calibration.thresholds, far_calibration=calibration.details
        )
    return save_model(clean, path, info)


class _MetricsLog:
    """metrics.csv (cut back to the checkpoint on resume, so it matches an uninterrupted run),
    mirrored to TensorBoard event files under ``tensorboard/`` when the tensorboard package is installed."""

    def __init__(self, path: Path, keep_until: int, enabled: bool):
        self.path, self.enabled, self.board = path, enabled, None
        if not enabled:
            return
        rows = []
        if keep_until and path.exists():
            with path.open() as fh:
                rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= keep_until]
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, METRICS_FIELDS)
            writer.writeheader()
            writer.writerows(rows)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            return
        self.board = SummaryWriter(str(path.parent / "tensorboard"), purge_step=keep_until + 1 if keep_until else None)

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a", newline="") as fh:
            csv.DictWriter(fh, METRICS_FIELDS, extrasaction="ignore").writerow(
                {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()}
            )
        if self.board is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                    self.board.add_scalar(key, value, row["step"])
            self.board.flush()


def _progress(enabled: bool, start: int, total: int):
    """A bar on a terminal, a few plain lines in a log (facenet.progress), nothing when disabled."""
    if not enabled:
        return None
    from facenet.progress import progress_bar

    return progress_bar(total, "training", unit="step", initial=start)
