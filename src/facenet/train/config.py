"""Everything that defines a training run; stored beside its checkpoints so a run can be resumed."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from facenet.errors import TrainingError

OPTIMIZERS = ("adagrad", "adamw", "sgd")
SCHEDULES = ("constant", "cosine", "step")
LOSSES = ("triplet", "softmax", "both", "none")  # none: the distillation term alone (needs a teacher)
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
AUGMENT_ON = ("workers", "device")
TEACHER_MODES = ("auto", "online", "cached")


@dataclass
class TrainConfig:
    data: list[str] | None = None  # folder(s)-per-identity datasets; None = synthetic identities
    merge_names: bool = False  # identity folders named alike in several data folders are one person
    source_weights: list[float] | None = None  # share of the batch identities drawn from each data folder
    unlabelled: list[str] | None = None  # folders of photos without identities (distillation term only)
    unlabelled_per_batch: int = 0  # unlabelled photos added to each batch; 0 = half the P x K batch
    teacher: str | None = None  # dlib | dlib-cpp | a model file | an ONNX file (knowledge distillation)
    teacher_mode: str = "auto"  # online (embeds every view in the step) | cached (each photo once) | auto
    distill_weight: float = 1.0  # weight of the distillation term
    init: str | None = None  # model file whose weights start the run (fine-tuning)
    out: str = "runs/facenet"
    arch: str = "mobilefacenet"
    embedding_size: int = 128
    image_size: int = 160
    standardisation: str = "fixed"
    loss: str = "triplet"  # triplet | softmax | both
    miner: str = "semihard"
    margin: float = 0.2
    offline_every: int = 0  # > 0: mine a pool every N steps with the current weights (paper's option 1)
    offline_pool_batches: int = 8  # the offline pool: this many P x K batches
    softmax_weight: float = 1.0
    centre_loss_weight: float = 0.0
    identities_per_batch: int = 16  # P
    faces_per_identity: int = 8  # K
    steps: int = 1000
    optimizer: str = "adamw"  # decoupled weight decay, none on BatchNorm weights and biases
    lr: float = 1e-3
    lr_schedule: str = "cosine"
    lr_step_every: int = 0  # for the "step" schedule: divide lr by 10 this often
    warmup_steps: int = 0
    momentum: float = 0.9
    weight_decay: float = 5e-4
    dropout: float = 0.0
    augment_flip: bool = True
    augment_crop: bool = True
    augment_colour: float = 0.2  # max relative brightness/contrast/saturation jitter; 0 = off
    augment_occlusion: float = 0.0  # probability of a random synthetic occlusion
    holdout_identities: float = 0.1  # fraction of identities kept out of training for verification
    min_images_per_identity: int = 1
    exclude_identities: str | None = None  # file with one identity (folder name) per line, never trained on
    eval_every: int = 200
    eval_max_images: int = 2000
    checkpoint_every: int = 100
    snapshot_every: int = 0  # keep the model file every N steps (snapshots/): learning curves; 0 = off
    log_every: int = 10
    workers: int = -1  # data-loading processes; -1 = one per CPU core the training process leaves
    cache_crops: bool = False  # decode every image once and keep the crops in RAM (uint8)
    augment_on: str = "workers"  # workers (NumPy/OpenCV per face) | device (tensor ops on the whole batch)
    precision: str = "auto"  # auto = bf16 on GPUs that have it, else fp32 | fp32 | bf16 | fp16
    compile: bool = False  # torch.compile the network
    seed: int = 0
    device: str = "auto"
    synthetic_identities: int = 400  # used when data is None
    synthetic_images_per_identity: int = 20
    collapse_patience: int = 20  # consecutive steps of collapsed embeddings before stopping

    def __post_init__(self):
        for name in ("data", "unlabelled"):  # one folder may be given as a plain path
            if isinstance(getattr(self, name), (str, Path)):
                setattr(self, name, [str(getattr(self, name))])

    def validate(self) -> TrainConfig:
        checks = [
            (self.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}"),
            (self.lr_schedule in SCHEDULES, f"lr schedule must be one of {SCHEDULES}"),
            (self.loss in LOSSES, f"loss must be one of {LOSSES}"),
            (self.identities_per_batch >= 2, "need at least 2 identities per batch (negatives)"),
            (self.faces_per_identity >= 2 or self.loss == "softmax", "triplets need >= 2 faces per identity"),
            (self.steps >= 1, "steps must be >= 1"),
            (
                min(self.eval_every, self.checkpoint_every, self.log_every) >= 1,
                "eval, checkpoint and log intervals must be >= 1 step",
            ),
            (self.snapshot_every >= 0, "snapshot interval must be >= 0 steps (0 = no snapshots)"),
            (self.lr > 0, "learning rate must be positive"),
            (0 <= self.holdout_identities < 1, "holdout fraction must be in [0, 1)"),
            (self.offline_every == 0 or self.loss == "triplet", "offline mining trains the triplet loss only"),
            (self.offline_every >= 0 and self.offline_pool_batches >= 1, "offline settings must be positive"),
            (self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}"),
            (self.augment_on in AUGMENT_ON, f"augmentation runs on one of {AUGMENT_ON}"),
            (self.workers >= -1, "workers must be -1 (sized to the machine), 0 (none) or more"),
            (self.teacher_mode in TEACHER_MODES, f"teacher mode must be one of {TEACHER_MODES}"),
            (
                self.teacher is not None or self.loss != "none",
                "--loss none trains on a teacher's embeddings alone; name one with --teacher",
            ),
            (
                self.teacher is not None or not self.unlabelled,
                "unlabelled photos feed the distillation term only; name a teacher with --teacher",
            ),
            (self.teacher is None or self.offline_every == 0, "offline mining does not combine with a teacher"),
            (
                self.distill_weight >= 0 and self.unlabelled_per_batch >= 0,
                "distillation weight and unlabelled photos per batch must be >= 0",
            ),
            (
                self.data is not None or not (self.merge_names or self.source_weights or self.unlabelled),
                "--merge-names, --source-weights and --unlabelled need data folders",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise TrainingError(f"invalid training configuration: {message}")
        return self

    @property
    def labelled_batch_size(self) -> int:
        return self.identities_per_batch * self.faces_per_identity

    @property
    def unlabelled_batch_size(self) -> int:
        if not self.unlabelled:
            return 0
        return self.unlabelled_per_batch or self.labelled_batch_size // 2

    @property
    def batch_size(self) -> int:
        """Faces in a global batch: P x K labelled ones, then the unlabelled ones."""
        return self.labelled_batch_size + self.unlabelled_batch_size

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in json.loads(text).items() if k in known}
        if isinstance(values.get("data"), str):  # runs started when a run had one data folder
            values["data"] = [values["data"]]
        if values.get("optimizer") == "adam":  # runs started before the name said what it is (AdamW)
            values["optimizer"] = "adamw"
        return cls(**values)

    @classmethod
    def load(cls, run_dir: str | Path) -> TrainConfig:
        path = Path(run_dir) / "config.json"
        if not path.is_file():
            raise TrainingError(f"{run_dir} is not a training run (no config.json); start it without --resume")
        return cls.from_json(path.read_text())
