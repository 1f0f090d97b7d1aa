"""The training recipe (`TrainConfig`: every option of `archive-colorize train`) and the checks
that turn a bad option into a message saying how to fix it."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from models.nets import ARCHITECTURES


@dataclass
class TrainConfig:
    arch: str = "lite2-plain"
    crop: int = 176  # the released training's crop size
    prepared: int = 256  # square the photos are resized to once; random crops are taken in it
    scale_min: float = 0.3  # random resized crops: least area fraction (1.0: plain crops)
    batch_size: int = 16  # per worker
    steps: int = 3000
    lr: float = 1e-3
    lr_schedule: str = "cosine"  # or "constant"
    warmup_steps: int = 50
    weight_decay: float = 1e-2  # the shipped default's, as every default here (docs/training.md)
    dropout: float = 0.3  # lite*: before the classifier (training only: weights do not carry it)
    betas: tuple[float, float] = (0.9, 0.99)
    soft_k: int = 5
    soft_sigma: float = 5.0
    prior_sigma: float = 5.0
    rebalance_lambda: float = 0.5
    trainable_stages: int = 0  # lite*: top encoder stages that train (0: frozen encoder)
    unfreeze_at: int = 0  # lite*: the step from which those stages learn
    encoder_lr_scale: float = 0.1  # lite*: their learning rate, relative to --lr
    ema_decay: float = 0.999  # moving average of the weights, shipped instead of the last ones
    degrade: float = 0.6  # share of crops whose L input is degraded as an old print
    stamps: str = (
        ""  # folder or s3:// prefix of photographic cut-outs (pipeline/training/stamps.py)
    )
    paste: float = 0.0  # share of crops that get one of them pasted on
    val_fraction: float = 0.1
    fold: int = 0  # which val_fraction-wide slice of the id hashes is held out
    holdout: str = ""  # or: the top folder of the ids held out (a source never seen)
    seed: int = 0
    checkpoint_every: int = 200
    log_every: int = 10
    val_every: int = 0  # steps between validations of the shipped weights (0: none)
    val_max_photos: int = 64  # validation photos scored each time (the first ones, fixed)
    patience: int = 0  # stop after this many validations without gain (0: never)
    shuffle_blocks: int = 8  # blocks of 32 photos per rank shuffled together (the buffer)
    loader_threads: int = 1  # threads decoding and cropping ahead of the step
    workers: int = 1
    threads_per_worker: int = 1
    image_column: str = "image"
    id_column: str = "id"
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"--arch must be one of {', '.join(ARCHITECTURES)}, got {self.arch!r}")
        if self.crop % 8 or self.crop < 32:
            raise ValueError(f"--crop must be a multiple of 8 and >= 32, got {self.crop}")
        if self.prepared < self.crop:
            raise ValueError(f"--prepared ({self.prepared}) must be >= --crop ({self.crop})")
        for name in ("batch_size", "steps", "checkpoint_every", "log_every", "workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
        if not 0 < self.lr < 1:
            raise ValueError(f"--lr must be in (0, 1), got {self.lr}")
        if self.lr_schedule not in ("cosine", "constant"):
            raise ValueError(
                f"--lr-schedule must be 'cosine' or 'constant', got {self.lr_schedule!r}"
            )
        if not 0 < self.scale_min <= 1:
            raise ValueError(f"--scale-min must be in (0, 1], got {self.scale_min}")
        if not 0 <= self.trainable_stages <= 8:
            raise ValueError(f"--trainable-stages must be in 0..8, got {self.trainable_stages}")
        if self.trainable_stages and not self.arch.startswith("lite"):
            raise ValueError("--trainable-stages applies to the lite* architectures only")
        if self.weight_decay < 0:
            raise ValueError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"--dropout must be in [0, 1), got {self.dropout}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"--ema-decay must be in [0, 1), got {self.ema_decay}")
        if not 0 <= self.paste <= 1:
            raise ValueError(f"--paste must be in [0, 1], got {self.paste}")
        if self.paste and not self.stamps:
            raise ValueError("--paste needs --stamps DIR (make stamp-corpus builds one)")
        if not 0 <= self.degrade <= 1:
            raise ValueError(f"--degrade must be in [0, 1], got {self.degrade}")
        for name in ("val_every", "patience"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0")
        for name in ("val_max_photos", "shuffle_blocks", "loader_threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
        if self.val_every and not self.val_fraction:
            raise ValueError("--val-every needs a validation split (--val-fraction > 0)")
        if self.patience and not self.val_every:
            raise ValueError("--patience needs --val-every N")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        check_fold(self.fold, self.val_fraction)
        check_holdout(self.holdout)


# settings that change how a run goes, not what it trains: free to differ when it resumes
RUN_ONLY = frozenset({"checkpoint_every", "log_every", "loader_threads", "threads_per_worker"})


def recipe_differences(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The settings that change what a run trains, {name: (old, new)} where they differ, as
    JSON values (a tuple and its list are equal); a setting either side lacks is not compared."""

    def same(a: Any, b: Any) -> bool:
        return bool(json.loads(json.dumps(a)) == json.loads(json.dumps(b)))

    return {
        name: (old[name], value)
        for name, value in sorted(new.items())
        if name in old and name not in RUN_ONLY and not same(old[name], value)
    }


def describe_differences(differences: dict[str, tuple[Any, Any]]) -> str:
    return ", ".join(f"{name} {old!r} -> {new!r}" for name, (old, new) in differences.items())


def check_holdout(holdout: str) -> None:
    if "/" in holdout:
        raise ValueError(
            f"--holdout names one top folder of the ids (e.g. mvtb-data), got {holdout!r}"
        )


def check_fold(fold: int, val_fraction: float) -> None:
    folds = math.floor(1 / val_fraction + 1e-9) if val_fraction else 1
    if not 0 <= fold < folds:
        raise ValueError(
            f"--fold must be in 0..{folds - 1} for --val-fraction {val_fraction} "
            f"(fold f holds out the ids hashed into [f * fraction, (f + 1) * fraction))"
        )
