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
from facenet.train.data import (StepBatches, TeacherFeed, augment_seed, batch_augmentation, build_sources,
                                 build_unlabelled, data_recipe, data_summary, face_augmentation, held_out_pairs,
                                 loader_workers, step_loader)
from facenet.train.offline import OfflineTriplets
from facenet.train.validate import verification
from facenet.train.precision import autocast, grad_scaler, resolve_precision

METRICS_FIELDS = ["step", "loss", "triplet_loss", "softmax_loss", "centre_loss", "distill_agreement",
                  "distill_relations", "active_fraction", "num_triplets", "d_ap", "d_an", "lr", "images_per_s",
                  "val_accuracy", "val_threshold"]
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
    if resume and checkpoint is None and ctx.is_main:
        print(f"{run_dir}: no checkpoint yet (the run stopped before its first one); starting from step 0",
              file=sys.stderr)
    if checkpoint is not None and int(checkpoint["step"]) >= config.steps and (run_dir / MODEL_NAME).exists():
        return _finished(run_dir, config, checkpoint)
    if not resume and (run_dir / "checkpoint.pt").exists():
        raise TrainingError(f"{run_dir} already holds a training run; continue it with --resume "
                            "or choose another --out")
    if config.batch_size % ctx.world_size:
        raise TrainingError(f"the batch of {config.batch_size} faces does not split evenly over "
                            f"{ctx.world_size} processes")
    if ctx.is_main:
        atomic_write(run_dir / "config.json", lambda tmp: tmp.write_text(config.to_json()))

    seed_everything(config.seed)
    train_source, held_source = build_sources(config)
    unlabelled = build_unlabelled(config)
    summary = data_summary(config, train_source, unlabelled)
    if ctx.is_main:
        atomic_write(run_dir / "data.json", lambda tmp: tmp.write_text(json.dumps(summary, indent=2)))
    trainer = TrainingStep.build(config, ctx, train_source.num_identities)
    model, loss_fn, optimizer, scaler = trainer.model, trainer.loss_fn, trainer.optimizer, trainer.scaler
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(config))

    start = 0
    history: list[dict] = []
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        loss_fn.load_state_dict(checkpoint["loss"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        schedule.load_state_dict(checkpoint["schedule"])
        if "scaler" in checkpoint:
            scaler.load_state_dict(checkpoint["scaler"])
        torch.set_rng_state(checkpoint["torch_rng"])
        if "cuda_rng" in checkpoint and torch.cuda.is_available():  # dropout etc. on the GPU resume exactly too
            torch.cuda.set_rng_state_all(checkpoint["cuda_rng"])
        start = int(checkpoint["step"])
        history = [dict(row) for row in checkpoint["history"]]
    else:
        if config.init:
            _load_init(model, config)
        distributed.broadcast_parameters(model, ctx)

    sampler = PKSampler(train_source.labels, config.identities_per_batch, config.faces_per_identity,
                        seed=config.seed, weights=train_source.identity_weights)
    augment = face_augmentation(config)
    batches = StepBatches(train_source, sampler, augment, config.seed, shard=(ctx.rank, ctx.world_size),
                          unlabelled=unlabelled, unlabelled_count=config.unlabelled_batch_size,
                          teacher=_teacher_feed(trainer, train_source, unlabelled, augment, progress and ctx.is_main))
    offline = None
    if config.offline_every:
        if ctx.distributed:
            raise TrainingError("offline mining runs in one process; drop --offline-every under torchrun")
        offline = OfflineTriplets(batches, config, ctx.device, checkpoint.get("offline") if checkpoint else None)
    else:
        loader = step_loader(batches, range(start, config.steps), loader_workers(config.workers),
                             pin_memory=ctx.device.type == "cuda")
    metrics = _MetricsLog(run_dir / "metrics.csv", keep_until=start, enabled=ctx.is_main)
    pairs = held_out_pairs(held_source.labels, 6000, config.seed, max_images=config.eval_max_images) \
        if held_source is not None else None

    def validate() -> tuple[float, float, dict] | None:
        if pairs is None or not ctx.is_main:  # only the main process records and saves what it finds
            return None
        return verification(model, held_source, pairs, config, ctx.device)

    initial = history[0].get("val_accuracy") if history else None
    if start == 0:
        checked = validate()
        initial = checked[0] if checked else None
        history = [{"step": 0, "val_accuracy": initial}]
        if ctx.is_main and checked:
            metrics.write({"step": 0, "val_accuracy": checked[0], "val_threshold": checked[1]})

    bar = _progress(progress and ctx.is_main, start, config.steps)
    collapsed = torch.zeros((), dtype=torch.long, device=ctx.device)  # consecutive collapsed steps, on the device
    last_check = None
    tick, ticked_at = time.perf_counter(), start
    for step in range(start, config.steps):
        teacher_input = None
        if offline is None:
            images, labels, teacher_input = next(loader)
        else:
            images, labels, triplets = offline.batch(step, model)
        if offline is not None and not len(triplets[0]):  # the pool had no informative triplet left
            loss, stats, prelogits = torch.zeros(()), {"num_triplets": 0.0, "active_fraction": 0.0}, None
        else:
            loss, stats, prelogits = trainer(images, labels, step, triplets if offline is not None else None,
                                             teacher_input)
        schedule.step()
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
        if int(collapsed) >= config.collapse_patience:
            raise TrainingError(f"embeddings collapsed by step {done}: every face maps to the same point. "
                                "Lower the learning rate (--lr), use the semihard miner, or add softmax "
                                "(--loss both)")
        if not math.isfinite(loss.item()):
            raise TrainingError(f"loss became {loss.item()} by step {done}; lower the learning rate")

        row = {"step": done, "loss": loss.item(), "lr": schedule.get_last_lr()[0], **stats}
        now = time.perf_counter()
        row["images_per_s"] = config.batch_size * (done - ticked_at) / max(now - tick, 1e-9)
        tick, ticked_at = now, done
        if evaluated:
            last_check = validate()
            if last_check:
                row["val_accuracy"], row["val_threshold"] = last_check[:2]
                history.append({"step": done, "val_accuracy": last_check[0]})
        if logged or "val_accuracy" in row:
            metrics.write(row)
        if bar is not None:
            bar.set_postfix(loss=f"{row['loss']:.3f}", active=f"{stats.get('active_fraction', 0):.2f}",
                            img_s=f"{row['images_per_s']:.0f}",
                            val=f"{history[-1]['val_accuracy']:.3f}" if history[-1].get("val_accuracy") else "-")
        if ctx.is_main and config.snapshot_every and done % config.snapshot_every == 0 and done < config.steps:
            (run_dir / "snapshots").mkdir(exist_ok=True)
            _save_model(model, config, train_source, summary, run_dir / "snapshots" / f"step-{done:06d}.safetensors",
                        last_check, history[-1].get("val_accuracy"), steps=done)
        if ctx.is_main and saved:
            save_checkpoint(run_dir, {
                "model": model.state_dict(), "loss": loss_fn.state_dict(), "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(), "scaler": scaler.state_dict(), "torch_rng": torch.get_rng_state(),
                **({"cuda_rng": torch.cuda.get_rng_state_all()} if torch.cuda.is_available() else {}),
                "step": done,
                "history": history, **({"offline": offline.state_dict()} if offline is not None else {})})
    if bar is not None:
        bar.close()

    if last_check is None:  # resumed after its last step (stopped before the final model was written): the
        last_check = validate()  # calibration is recomputed from the same weights, never left at a default
    final_accuracy = history[-1].get("val_accuracy") if len(history) > 1 else None
    threshold = last_check[1] if last_check else None
    model_path = run_dir / MODEL_NAME
    if ctx.is_main:
        _save_model(model, config, train_source, summary, model_path, last_check, final_accuracy)
    return TrainResult(run_dir, model_path, config.steps, initial, final_accuracy, threshold, history)


def _finished(run_dir: Path, config: TrainConfig, checkpoint: dict) -> TrainResult:
    """A run that already ended: its model file stays as it is (weights, thresholds and id)."""
    model_path = run_dir / MODEL_NAME
    info = read_model_info(model_path)
    history = [dict(row) for row in checkpoint["history"]]
    print(f"{run_dir} finished at step {config.steps}; its model {model_path} is left as it is "
          "(raise --steps to train further)", file=sys.stderr)
    final = history[-1].get("val_accuracy") if len(history) > 1 else None
    return TrainResult(run_dir, model_path, config.steps, history[0].get("val_accuracy") if history else None,
                       final, info.threshold, history)


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
    teacher: "OnlineTeacher | None" = None

    @classmethod
    def build(cls, config: TrainConfig, ctx: distributed.Context, num_classes: int) -> "TrainingStep":
        model = create_model(config.arch, embedding_size=config.embedding_size, dropout=config.dropout)
        model.input_size = config.image_size
        # channels_last: about 15% faster convolutions on CPUs and tensor cores alike
        model = distributed.sync_batchnorm(model, ctx).to(ctx.device, memory_format=torch.channels_last)
        generator = torch.Generator()
        loss_fn = FaceLoss(config.embedding_size, num_classes=num_classes,
                           triplet_weight=0.0 if config.loss == "softmax" else 1.0,
                           softmax_weight=0.0 if config.loss == "triplet" else config.softmax_weight,
                           centre_weight=config.centre_loss_weight, miner=config.miner, margin=config.margin,
                           generator=generator).to(ctx.device)
        optimizer = _optimizer(config, list(model.parameters()) + list(loss_fn.parameters()), ctx.device)
        precision = resolve_precision(config.precision, ctx.device)
        mode, teacher = None, None
        if config.teacher:
            from facenet.train.teacher import OnlineTeacher, resolve_mode, teacher_path

            mode = resolve_mode(config.teacher, config.teacher_mode, ctx.device)
            teacher = OnlineTeacher(teacher_path(config.teacher), ctx.device) if mode == "online" else None
        return cls(config, ctx, model, loss_fn, optimizer, grad_scaler(precision, ctx.device), precision, generator,
                   mode, teacher)

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
            images = images[ctx.rank * per_rank:(ctx.rank + 1) * per_rank]
        local = self._augmented(images, step, per_rank, len(labels))
        x = standardise(local, config.standardisation).contiguous(memory_format=torch.channels_last)
        with autocast(self.precision, ctx.device):  # the network only: losses and mining stay float32
            prelogits = distributed.gather_with_grad(self.embed(x).float(), ctx)
        labels = labels.to(ctx.device, non_blocking=True)
        if triplets is not None:
            loss, active = triplet_loss(l2_normalize(prelogits), *(t.to(ctx.device) for t in triplets),
                                        margin=config.margin)
            stats = {"num_triplets": float(len(triplets[0])), "active_fraction": active}
        elif config.loss == "none":
            loss, stats = prelogits.sum() * 0, {}
        else:  # the P x K labelled faces come first; unlabelled photos (after them) only meet the teacher
            labelled = config.labelled_batch_size
            loss, stats = self.loss_fn(prelogits[:labelled], labels[:labelled])
        if self.teacher_mode is not None:
            distill, distill_stats = distillation_loss(l2_normalize(prelogits),
                                                       self._teacher_embeddings(local, teacher_input, step, per_rank,
                                                                                len(labels)))
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

    def _teacher_embeddings(self, local: torch.Tensor, teacher_input, step: int, per_rank: int,
                            total: int) -> torch.Tensor:
        """The teacher's unit embeddings of the whole global batch: cached rows from the loader, or the
        online teacher on this rank's views (those without occluders when the loader made them), gathered."""
        if self.teacher_mode == "cached":
            return teacher_input.to(self.ctx.device, non_blocking=True)
        views = local if teacher_input is None or not teacher_input.numel() else \
            self._augmented(teacher_input, step, per_rank, total)  # same seed: the same jitter, flip and colour
        return distributed.gather_with_grad(self.teacher(views), self.ctx)


def _optimizer(config: TrainConfig, params, device: torch.device) -> torch.optim.Optimizer:
    """The run's optimizer; weight decay applies to weight matrices and filters only, never to BatchNorm
    scales and shifts or biases (decaying those pulls normalised activations towards zero, not complexity)."""
    params = list(params)
    groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": config.weight_decay},
              {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
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
        raise TrainingError(f"--init {config.init} is a {info.arch} with {info.embedding_size}-D embeddings, "
                            f"but the run asks for {config.arch} with {config.embedding_size}-D; "
                            "drop --arch/--embedding-size to take the file's")
    state = {k: v for k, v in start.state_dict().items() if not k.startswith("logits.")}
    model.load_state_dict(state, strict=False)


def _teacher_feed(trainer: TrainingStep, source, unlabelled, augment, progress: bool) -> TeacherFeed | None:
    """What the loader hands the teacher: cached embeddings of every training photo (made now, or read from
    the teacher's cache), or the views without occluders for an online teacher when occluders are drawn."""
    config = trainer.config
    if trainer.teacher_mode == "cached":
        from facenet.train.teacher import cached_targets

        if getattr(source, "path", None) is None:
            raise TrainingError("a cached teacher embeds the training photos' files; synthetic faces have none "
                                "(use --teacher-mode online with a model file)")
        paths = [source.path(i) for i in range(len(source))]
        extra = [unlabelled.path(i) for i in range(len(unlabelled))] if unlabelled is not None else []
        targets = cached_targets(config.teacher, paths + extra, progress)  # one teacher, one pass over the cache
        return TeacherFeed(targets=targets[:len(paths)], unlabelled_targets=targets[len(paths):] if extra else None)
    if trainer.teacher_mode == "online" and augment.landmarks is not None and augment.occlusion > 0:
        return TeacherFeed(clean_views=True)
    return None


def _recipe(config: TrainConfig) -> dict:
    """How the training crops were made (``recipe.json`` of the aligned folders), else the --init model's."""
    recipe = data_recipe(config)
    if recipe is not None:
        return {k: v for k, v in recipe.items() if k != "size"}
    return read_model_info(config.init).recipe if config.init else {}


def _save_model(model, config: TrainConfig, source, summary: dict, path: Path, check, accuracy,
                steps: int | None = None) -> ModelInfo:
    """The model file after ``steps`` (the final one by default), with the last held-out check's thresholds
    (verification and FAR table)."""
    clean = create_model(config.arch, embedding_size=config.embedding_size)
    clean.load_state_dict(model.state_dict())
    clean.input_size = config.image_size
    provenance = {"trained_by": "facenet train", "data": ", ".join(config.data) if config.data else "synthetic",
                  "identities": int(source.num_identities), "images": int(len(source)), "data_summary": summary,
                  "steps": steps or config.steps,
                  "seed": config.seed, "loss": config.loss, "miner": config.miner,
                  "held_out_accuracy": accuracy, **({"init": config.init} if config.init else {}),
                  **({"teacher": config.teacher, "distill_weight": config.distill_weight} if config.teacher else {}),
                  **({"occlusion": config.augment_occlusion} if config.augment_occlusion else {})}
    info = model_info_for(clean, standardisation=config.standardisation, provenance=provenance,
                          recipe=_recipe(config))
    if check is not None:
        info = dataclasses.replace(info, threshold=check[1], far_thresholds=check[2])
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
                {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
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
