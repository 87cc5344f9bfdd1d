"""Everything that defines a training run; stored beside its checkpoints so a run can be resumed."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from facenet.errors import TrainingError

OPTIMIZERS = ("adagrad", "adamw", "sgd")
SCHEDULES = ("constant", "cosine", "step")
LOSSES = ("triplet", "softmax", "both")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
AUGMENT_ON = ("workers", "device")


@dataclass
class TrainConfig:
    data: str | None = None              # folder-per-identity dataset; None = synthetic identities
    init: str | None = None              # model file whose weights start the run (fine-tuning)
    out: str = "runs/facenet"
    arch: str = "mobilefacenet"
    embedding_size: int = 128
    image_size: int = 160
    standardisation: str = "fixed"
    loss: str = "triplet"                # triplet | softmax | both
    miner: str = "semihard"
    margin: float = 0.2
    offline_every: int = 0               # > 0: mine a pool every N steps with the current weights (paper's option 1)
    offline_pool_batches: int = 8        # the offline pool: this many P x K batches
    softmax_weight: float = 1.0
    centre_loss_weight: float = 0.0
    identities_per_batch: int = 16       # P
    faces_per_identity: int = 8          # K
    steps: int = 1000
    optimizer: str = "adamw"              # decoupled weight decay, none on BatchNorm weights and biases
    lr: float = 1e-3
    lr_schedule: str = "cosine"
    lr_step_every: int = 0               # for the "step" schedule: divide lr by 10 this often
    warmup_steps: int = 0
    momentum: float = 0.9
    weight_decay: float = 5e-4
    dropout: float = 0.0
    augment_flip: bool = True
    augment_crop: bool = True
    augment_colour: float = 0.2          # max relative brightness/contrast/saturation jitter; 0 = off
    augment_occlusion: float = 0.0       # probability of a random synthetic occlusion
    holdout_identities: float = 0.1      # fraction of identities kept out of training for verification
    min_images_per_identity: int = 1
    exclude_identities: str | None = None  # file with one identity (folder name) per line, never trained on
    eval_every: int = 200
    eval_max_images: int = 2000
    checkpoint_every: int = 100
    log_every: int = 10
    workers: int = -1                    # data-loading processes; -1 = one per CPU core the training process leaves
    cache_crops: bool = False            # decode every image once and keep the crops in RAM (uint8)
    augment_on: str = "workers"          # workers (NumPy/OpenCV per face) | device (tensor ops on the whole batch)
    precision: str = "auto"              # auto = bf16 on GPUs that have it, else fp32 | fp32 | bf16 | fp16
    compile: bool = False                # torch.compile the network
    seed: int = 0
    device: str = "auto"
    synthetic_identities: int = 400      # used when data is None
    synthetic_images_per_identity: int = 20
    collapse_patience: int = 20          # consecutive steps of collapsed embeddings before stopping

    def validate(self) -> "TrainConfig":
        checks = [
            (self.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}"),
            (self.lr_schedule in SCHEDULES, f"lr schedule must be one of {SCHEDULES}"),
            (self.loss in LOSSES, f"loss must be one of {LOSSES}"),
            (self.identities_per_batch >= 2, "need at least 2 identities per batch (negatives)"),
            (self.faces_per_identity >= 2 or self.loss == "softmax", "triplets need >= 2 faces per identity"),
            (self.steps >= 1, "steps must be >= 1"),
            (min(self.eval_every, self.checkpoint_every, self.log_every) >= 1,
             "eval, checkpoint and log intervals must be >= 1 step"),
            (self.lr > 0, "learning rate must be positive"),
            (0 <= self.holdout_identities < 1, "holdout fraction must be in [0, 1)"),
            (self.offline_every == 0 or self.loss == "triplet", "offline mining trains the triplet loss only"),
            (self.offline_every >= 0 and self.offline_pool_batches >= 1, "offline settings must be positive"),
            (self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}"),
            (self.augment_on in AUGMENT_ON, f"augmentation runs on one of {AUGMENT_ON}"),
            (self.workers >= -1, "workers must be -1 (sized to the machine), 0 (none) or more"),
        ]
        for ok, message in checks:
            if not ok:
                raise TrainingError(f"invalid training configuration: {message}")
        return self

    @property
    def batch_size(self) -> int:
        return self.identities_per_batch * self.faces_per_identity

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in json.loads(text).items() if k in known}
        if values.get("optimizer") == "adam":  # runs started before the name said what it is (AdamW)
            values["optimizer"] = "adamw"
        return cls(**values)

    @classmethod
    def load(cls, run_dir: str | Path) -> "TrainConfig":
        path = Path(run_dir) / "config.json"
        if not path.is_file():
            raise TrainingError(f"{run_dir} is not a training run (no config.json); start it without --resume")
        return cls.from_json(path.read_text())
