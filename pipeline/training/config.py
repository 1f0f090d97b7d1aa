"""The training recipe (`TrainConfig`: every option of `archive-colorize train`) and the checks
that turn a bad option into a message saying how to fix it.

Torch-free: the command line reads its options' defaults and the architectures' names here,
so that `train_model`'s parameters, the CLI and the recipe cannot drift apart."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

# models.nets' architectures by name (that module imports torch, this one must not: the CLI
# reads them; tests/test_models.py checks the two agree)
AUTOMATIC = ("eccv16", "small", "lite0", "lite0-plain", "lite2", "lite2-plain", "lite2-slim")
HINTS_SUFFIX = "-hints"  # a hint-aware net (models/hints.py): the lite* ones only
ARCHITECTURES = (*AUTOMATIC, *(a + HINTS_SUFFIX for a in AUTOMATIC if a.startswith("lite")))
LITE_DROPOUT = 0.3  # the lite* nets' classifier dropout unless --dropout says otherwise


def is_lite(arch: str) -> bool:
    """An ImageNet encoder under our decoder: the nets with a dropout before the classifier."""
    return arch.startswith("lite")


def default_prepared(crop: int) -> int:
    """16/11 of the crop in multiples of 8 (256 for 176), as the paper's data layer."""
    return max(crop, round(crop * 16 / 11 / 8) * 8)


@dataclass
class TrainConfig:
    arch: str = "lite2-plain"
    crop: int = 176  # the released training's crop size
    # square the photos are resized to once; random crops are taken in it (None: 16/11 of crop)
    prepared: int | None = None
    scale_min: float = 0.3  # random resized crops: least area fraction (1.0: plain crops)
    batch_size: int = 16  # per worker
    steps: int = 3000
    lr: float = 1e-3
    lr_schedule: str = "cosine"  # or "constant"
    warmup_steps: int = 50
    # the shipped default's, as every default here but `steps` and `checkpoint_every` (it was
    # trained 300 steps, a checkpoint every 100: docs/training.md has its command)
    weight_decay: float = 1e-2
    # lite* only, before the classifier (training only: weights do not carry it); None: 0.3
    # for lite*, 0 for small/eccv16 (they have no dropout layer)
    dropout: float | None = None
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
    film: float = 0.0  # share of crops whose L input is a random film's gray (degrade.py)
    # -hints architectures: share of crops given simulated colour hints (models/hints.py),
    # a geometric number of them, `hint_points` on average; the rest get none
    hints: float = 0.0
    hint_points: float = 8.0
    hint_lr_scale: float = 10.0  # the hint branches' learning rate, relative to --lr (new)
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
    # a model to fine-tune ("default", a path or s3://): its weights, architecture and prior
    # replace ImageNet's/random ones and the data's prior (flows/train.py); "": none
    init: str = ""
    init_id: str = ""  # set by the run: that model's `<file name>@<sha256 prefix>`
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # the derived defaults are resolved here, so that the recipe recorded (recipe.json,
        # the card) names the values the run trained with
        if self.prepared is None:
            self.prepared = default_prepared(self.crop)
        if self.dropout is None:
            self.dropout = LITE_DROPOUT if is_lite(self.arch) else 0.0

    def validate(self) -> None:
        assert self.prepared is not None and self.dropout is not None  # __post_init__
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
        if self.trainable_stages and not is_lite(self.arch):
            raise ValueError("--trainable-stages applies to the lite* architectures only")
        if self.weight_decay < 0:
            raise ValueError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"--dropout must be in [0, 1), got {self.dropout}")
        if self.dropout and not is_lite(self.arch):
            raise ValueError(
                f"--dropout applies to the lite* architectures only ({self.arch} has no dropout "
                f"layer): leave it out or pass --dropout 0"
            )
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"--ema-decay must be in [0, 1), got {self.ema_decay}")
        if not 0 <= self.paste <= 1:
            raise ValueError(f"--paste must be in [0, 1], got {self.paste}")
        if self.paste and not self.stamps:
            raise ValueError("--paste needs --stamps DIR (make stamp-corpus builds one)")
        if not 0 <= self.degrade <= 1:
            raise ValueError(f"--degrade must be in [0, 1], got {self.degrade}")
        if not 0 <= self.film <= 1:
            raise ValueError(
                f"--film must be in [0, 1] (the share of crops seen as a film's gray, 0: none), "
                f"got {self.film}"
            )
        takes_hints = self.arch.endswith(HINTS_SUFFIX)
        if not 0 <= self.hints < 1 or (takes_hints and not self.hints):
            raise ValueError(
                f"--hints is the share of crops given simulated colour hints, in (0, 1) for a "
                f"-hints architecture (0.5 keeps it a good automatic model), got {self.hints}"
            )
        if self.hints and not takes_hints:
            raise ValueError(
                f"--hints needs a hint-aware architecture: --arch {self.arch}{HINTS_SUFFIX}"
                if self.arch.startswith("lite")
                else "--hints needs a hint-aware lite* architecture (--arch lite2-plain-hints)"
            )
        if not 1 <= self.hint_points <= 32:
            raise ValueError(f"--hint-points must be in [1, 32], got {self.hint_points}")
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


# the fields that are options of `train` (its CLI's and `train_model`'s parameters, their
# defaults read from here); the others are the paper's constants or set by the run itself
OPTIONS = (
    "arch", "steps", "batch_size", "lr", "lr_schedule", "crop", "prepared", "scale_min",
    "trainable_stages", "unfreeze_at", "encoder_lr_scale", "ema_decay", "weight_decay", "dropout",
    "degrade", "film", "hints", "hint_points", "stamps", "paste", "val_fraction", "fold",
    "holdout", "workers", "checkpoint_every", "soft_k", "seed", "val_every", "val_max_photos",
    "patience", "loader_threads", "image_column", "id_column", "init",
)  # fmt: skip
SPLIT_OPTIONS = ("val_fraction", "fold", "holdout")  # which photos are held out: crossval's


def option_defaults() -> dict[str, Any]:
    """Each option's declared default (None where another option's value derives it)."""
    declared = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    return {name: declared[name] for name in OPTIONS}


# settings that change how a run goes, not what it trains: free to differ when it resumes
RUN_ONLY = frozenset({"checkpoint_every", "log_every", "loader_threads", "threads_per_worker"})

# What the code did before a setting existed (git log -p of this file, and of
# pipeline/training.py before it): a recorded recipe (recipe.json, an older card) without the
# setting was trained with this value. Every recorded recipe has the settings not listed
# here; one that lacks such a setting cannot be compared, and is refused.
BEFORE_IT_EXISTED: dict[str, Any] = {
    "scale_min": 1.0,  # d07c6f9: plain crops before random resized ones
    "trainable_stages": 0,  # d07c6f9 (lite0): no encoder to train before it
    "unfreeze_at": 0,
    "encoder_lr_scale": 0.1,
    "ema_decay": 0.0,  # d07c6f9: the last weights were shipped
    "degrade": 0.0,  # 084291c: clean inputs only
    "film": 0.0,  # issue 29: every input L was Lab's
    "hints": 0.0,  # issue 30: no hints (so any of the two below trained the same)
    "hint_points": 8.0,
    "hint_lr_scale": 10.0,
    "fold": 0,  # 084291c: the one split was fold 0's
    "stamps": "",  # 672bda9: no stamps pasted
    "paste": 0.0,
    "val_every": 0,  # 7a0bc99: no validation in the loop
    "val_max_photos": 64,  # (no validation: any value trained the same)
    "patience": 0,
    "holdout": "",  # 5ae6287: split by id hash only
    "init": "",  # issue 29: every run started from ImageNet (lite*) or at random
    "init_id": "",
    # "dropout": arch-dependent, see recorded_as_trained; "shuffle_blocks" (7a0bc99): the data
    # path before it had no shuffle window, no value of it trains the same: refused
}
NOT_RECORDED = "<not recorded>"


def recorded_as_trained(recorded: dict[str, Any]) -> dict[str, Any]:
    """A recorded recipe as the run was trained: the settings it lacks at the value the code
    used before they existed, and dropout as the network applied it."""
    out = {**{k: v for k, v in BEFORE_IT_EXISTED.items() if k not in recorded}, **recorded}
    lite = is_lite(str(recorded.get("arch", "")))
    if "dropout" not in recorded:  # 56e4aa5: lite* nets had a fixed Dropout2d(0.1)
        out["dropout"] = 0.1 if lite else 0.0
    elif not lite:  # recorded before small/eccv16 refused it: they never applied it
        out["dropout"] = 0.0
    return out


def recipe_differences(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The settings that change what a run trains, {name: (old, new)} where they differ, as
    JSON values (a tuple and its list are equal). OLD is a recorded recipe: a setting it
    lacks counts at the value the code used before it existed (`recorded_as_trained`), or as
    a difference when that is not known."""

    def same(a: Any, b: Any) -> bool:
        return bool(json.loads(json.dumps(a)) == json.loads(json.dumps(b)))

    trained = recorded_as_trained(old)
    return {
        name: (trained.get(name, NOT_RECORDED), value)
        for name, value in sorted(new.items())
        if name not in RUN_ONLY and (name not in trained or not same(trained[name], value))
    }


def describe_differences(differences: dict[str, tuple[Any, Any]]) -> str:
    return ", ".join(f"{name} {old!r} -> {new!r}" for name, (old, new) in differences.items())


def check_holdout(holdout: str) -> None:
    """One top folder, or several comma-separated (crossval --groups), none empty."""
    if "/" in holdout or (holdout and "" in holdout.split(",")):
        raise ValueError(
            f"--holdout names one top folder of the ids (e.g. mvtb-data), or several "
            f"comma-separated (e.g. mvtb-data,pygame), got {holdout!r}"
        )


def check_holdout_matches(holdout: str, folders: list[str]) -> None:
    """Each folder --holdout names is a top folder the ids have: else the run would train on
    that source's photos and hold out none of them."""
    for name in holdout.split(",") if holdout else []:
        if name not in folders:
            named = ", ".join(repr(f) for f in folders if f) or "none, every photo is at the top"
            raise ValueError(
                f"--holdout {name!r} matches no top folder of the ids (the folders: {named}): "
                f"it would hold out no photo; name one of those folders"
            )


def check_fold(fold: int, val_fraction: float) -> None:
    folds = math.floor(1 / val_fraction + 1e-9) if val_fraction else 1
    if not 0 <= fold < folds:
        raise ValueError(
            f"--fold must be in 0..{folds - 1} for --val-fraction {val_fraction} "
            f"(fold f holds out the ids hashed into [f * fraction, (f + 1) * fraction))"
        )
