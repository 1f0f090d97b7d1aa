"""Training data and the Ray Train loop (the paper's method: soft-encoded targets, class
rebalancing, Adam with betas 0.9/0.99 and weight decay 1e-3).

Data path: Ray Data reads the Parquet shards, keeps the split, decodes and resizes each colour
photo to a `prepared` square (Ray tasks, once); a second pass counts ab bins for the prior.
Each training worker then draws its own random crops and flips, converts to Lab and
soft-encodes on the fly, with random numbers derived from (seed, step, rank): a run resumed
from a checkpoint at step s sees exactly the batches an uninterrupted run would have.

A `lite*` net starts from ImageNet: its encoder is frozen except for the top
`trainable_stages`, which learn at `encoder_lr_scale` times the rate from step `unfreeze_at`
on (their BatchNorm keeps its ImageNet statistics; see models/nets.py). An exponential moving
average of the weights (`ema_decay`) is what the run ships.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from PIL import Image

import models
from models.bins import gamut_bin_centers
from models.imagenet import imagenet_state
from models.nets import ARCHITECTURES, LiteColorNet
from models.targets import (
    bin_histogram,
    rebalance_weights,
    rebalanced_cross_entropy,
    smoothed_prior,
)
from pipeline import storage
from pipeline.color import rgb_to_lab
from pipeline.degrade import degrade_lightness, random_old_print
from pipeline.images import decode_image
from pipeline.shards import image_bytes_column
from pipeline.stamps import decode_stamp, paste_stamp

CHECKPOINTS = "checkpoints"
PROGRESS = "progress.json"


def split_of(row_id: str, val_fraction: float, fold: int = 0) -> str:
    """The split of a row, from a hash of its id: stable across runs, machines and shardings.

    Fold f holds out the ids hashed into [f * val_fraction, (f + 1) * val_fraction): with
    val_fraction 1/k, folds 0..k-1 partition the corpus (k-fold cross-validation)."""
    h = int.from_bytes(hashlib.sha1(row_id.encode()).digest()[:8], "big") / 2.0**64
    return "val" if fold * val_fraction <= h < (fold + 1) * val_fraction else "train"


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
    weight_decay: float = 1e-3
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
    stamps: str = ""  # folder or s3:// prefix of photographic cut-outs (pipeline/stamps.py)
    paste: float = 0.0  # share of crops that get one of them pasted on
    val_fraction: float = 0.1
    fold: int = 0  # which val_fraction-wide slice of the id hashes is held out
    seed: int = 0
    checkpoint_every: int = 200
    log_every: int = 10
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
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"--ema-decay must be in [0, 1), got {self.ema_decay}")
        if not 0 <= self.paste <= 1:
            raise ValueError(f"--paste must be in [0, 1], got {self.paste}")
        if self.paste and not self.stamps:
            raise ValueError("--paste needs --stamps DIR (make stamp-corpus builds one)")
        if not 0 <= self.degrade <= 1:
            raise ValueError(f"--degrade must be in [0, 1], got {self.degrade}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        check_fold(self.fold, self.val_fraction)


def check_fold(fold: int, val_fraction: float) -> None:
    folds = math.floor(1 / val_fraction + 1e-9) if val_fraction else 1
    if not 0 <= fold < folds:
        raise ValueError(
            f"--fold must be in 0..{folds - 1} for --val-fraction {val_fraction} "
            f"(fold f holds out the ids hashed into [f * fraction, (f + 1) * fraction))"
        )


# -- data (Ray Data) -----------------------------------------------------------------------
def prepare_photo(data: bytes, size: int) -> np.ndarray | None:
    """Encoded photo -> (size, size, 3) uint8 (short side resized, centre square); None for a
    gray or unreadable image (no colour to learn from)."""
    try:
        decoded = decode_image(data)
    except Exception:  # one unreadable photo is skipped, never the whole preparation task
        return None
    if decoded.rgb is None:
        return None
    img = Image.fromarray(np.round(decoded.rgb * 255).astype(np.uint8))
    scale = size / min(img.size)
    w, h = max(size, round(img.width * scale)), max(size, round(img.height * scale))
    img = img.resize((w, h), Image.Resampling.BICUBIC, reducing_gap=3.0)
    left, top = (w - size) // 2, (h - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)))


def prepare_batch(batch: pa.Table, config: TrainConfig, split: str) -> dict[str, np.ndarray]:
    """Ray Data map_batches: raw Parquet rows -> prepared colour squares of one split."""
    ids = [str(v) for v in batch.column(config.id_column).to_pylist()]
    blobs = image_bytes_column(batch.column(config.image_column))
    keep_ids, photos = [], []
    for row_id, blob in zip(ids, blobs, strict=True):
        if split_of(row_id, config.val_fraction, config.fold) != split or not blob:
            continue
        photo = prepare_photo(blob, config.prepared)
        if photo is not None:
            keep_ids.append(row_id)
            photos.append(photo)
    size = config.prepared
    return {
        "id": np.array(keep_ids, dtype=object),
        "rgb": np.stack(photos) if photos else np.zeros((0, size, size, 3), np.uint8),
    }


def read_split(shard_uris: list[str], config: TrainConfig, split: str) -> Any:
    """A Ray Dataset of prepared photos of `split` ("train" or "val")."""
    import ray.data

    fs, _ = storage.arrow_fs(shard_uris[0])
    paths = [storage.arrow_fs(u)[1] for u in shard_uris]
    ds = ray.data.read_parquet(
        paths, filesystem=fs, columns=[config.id_column, config.image_column]
    )
    return ds.map_batches(
        partial(prepare_batch, config=config, split=split), batch_format="pyarrow", batch_size=16
    )


def ab_targets(rgb_uint8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, S, S, 3) uint8 -> L (N, 1, S, S) and ab at the output resolution (N, 2, S/4, S/4)."""
    lab = rgb_to_lab(rgb_uint8.permute(0, 3, 1, 2).float() / 255.0)
    return lab[:, :1], F.avg_pool2d(lab[:, 1:], 4)


def count_bins(batch: dict[str, np.ndarray], centers: torch.Tensor) -> dict[str, np.ndarray]:
    """Ray Data map_batches: bin counts of the photos' ab at the output resolution."""
    if len(batch["rgb"]) == 0:
        return {"counts": np.zeros((0, centers.shape[0]))}
    _, ab = ab_targets(torch.from_numpy(np.asarray(batch["rgb"])))
    return {"counts": bin_histogram(ab, centers).numpy()[None]}


def empirical_prior(ds: Any, config: TrainConfig) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(counts, smoothed prior, images) over the prepared training split (a distributed pass)."""
    centers = gamut_bin_centers()
    per_batch = ds.map_batches(
        partial(count_bins, centers=centers), batch_format="numpy"
    ).take_all()
    counts = torch.zeros(centers.shape[0], dtype=torch.float64)
    for row in per_batch:
        counts += torch.from_numpy(np.array(row["counts"]))  # a writable copy
    images = int(ds.count())
    return counts, smoothed_prior(counts, centers, config.prior_sigma), images


# -- checkpoints -----------------------------------------------------------------------------
def checkpoint_uri(out: str, step: int) -> str:
    return storage.join(out, CHECKPOINTS, f"step-{step:07d}.pt")


def latest_checkpoint(out: str) -> str | None:
    uris = [u for u in storage.list_files(storage.join(out, CHECKPOINTS)) if u.endswith(".pt")]
    return max(uris, default=None)


def load_state(uri: str) -> dict[str, Any]:
    """A training checkpoint; tensors and plain containers only (weights_only: no unpickling)."""
    state: dict[str, Any] = torch.load(
        io.BytesIO(storage.read_bytes(uri)), map_location="cpu", weights_only=True
    )
    return state


def save_state(uri: str, state: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    storage.write_bytes(uri, buf.getvalue())


# -- the loop --------------------------------------------------------------------------------
def learning_rate(config: TrainConfig, step: int) -> float:
    warm = min(1.0, (step + 1) / max(1, config.warmup_steps))
    if config.lr_schedule == "constant":
        return config.lr * warm
    return config.lr * warm * 0.5 * (1.0 + math.cos(math.pi * step / config.steps))


def load_stamps(uri: str) -> list[np.ndarray]:
    """The stamp PNGs under a folder or s3:// prefix, as RGBA arrays (a few MB in all)."""
    uris = sorted(u for u in storage.list_files(uri) if u.endswith(".png"))
    if not uris:
        raise FileNotFoundError(f"no stamp PNGs under {uri} (make stamp-corpus builds them)")
    return [decode_stamp(storage.read_bytes(u)) for u in uris]


def sample_batch(
    photos: np.ndarray,
    config: TrainConfig,
    step: int,
    rank: int,
    stamps: list[np.ndarray] | None = None,
) -> torch.Tensor:
    """This rank's batch for `step`: deterministic in (seed, step, rank); random crops, flips,
    and with `stamps`, a `config.paste` share of the crops with a stamp pasted on."""
    n = len(photos)
    per_epoch = max(1, n // config.batch_size)
    epoch, position = divmod(step, per_epoch)
    order = np.random.default_rng([config.seed, epoch, rank]).permutation(n)
    take = order[(np.arange(config.batch_size) + position * config.batch_size) % n]
    rng = np.random.default_rng([config.seed, step, rank, 1])
    crops = [random_crop(photos[i], config, rng) for i in take]
    if stamps and config.paste:
        crops = [paste_stamp(c, stamps[rng.integers(len(stamps))], rng)
                 if rng.random() < config.paste else c for c in crops]  # fmt: skip
    return torch.from_numpy(np.ascontiguousarray(np.stack(crops)))


def step_seed(config: TrainConfig, step: int, rank: int) -> int:
    return int(np.random.SeedSequence([config.seed, step, rank, 2]).generate_state(1)[0])


def random_crop(photo: np.ndarray, config: TrainConfig, rng: np.random.Generator) -> np.ndarray:
    """A random crop of a prepared square, flipped half the time. With `scale_min` < 1, a
    random resized crop: area fraction in [scale_min, 1], aspect ratio in [3/4, 4/3], resized
    to `crop` (objects at several scales; inference squashes whole photos to a square)."""
    size, out = config.prepared, config.crop
    if config.scale_min < 1:
        area = rng.uniform(config.scale_min, 1.0) * size * size
        aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        w = min(size, max(8, round(math.sqrt(area * aspect))))
        h = min(size, max(8, round(math.sqrt(area / aspect))))
    else:
        w = h = out
    y, x = rng.integers(0, size - h + 1), rng.integers(0, size - w + 1)
    crop = photo[y : y + h, x : x + w]
    if (h, w) != (out, out):
        image = Image.fromarray(crop)
        crop = np.asarray(image.resize((out, out), Image.Resampling.BILINEAR, reducing_gap=2.0))
    return crop[:, ::-1] if rng.random() < 0.5 else crop


def degraded_input(
    lightness: torch.Tensor, config: TrainConfig, step: int, rank: int
) -> torch.Tensor:
    """L (N, 1, S, S) with a `config.degrade` share of its images turned into old prints at
    random strengths (deterministic in (seed, step, rank)); the target keeps the clean ab."""
    if config.degrade <= 0:
        return lightness
    rng = np.random.default_rng([config.seed, step, rank, 3])
    out = lightness.detach().cpu().numpy().copy()
    for i in range(len(out)):
        if rng.random() < config.degrade:
            out[i, 0] = degrade_lightness(out[i, 0], random_old_print(rng), rng)
    return torch.from_numpy(out).to(lightness.device)


def train_step(
    net: torch.nn.Module,
    colorizer: models.Colorizer,
    optimizer: torch.optim.Optimizer,
    rgb: torch.Tensor,
    weights: torch.Tensor,
    config: TrainConfig,
    step: int = 0,
    rank: int = 0,
) -> float:
    lightness, ab = ab_targets(rgb.to(colorizer.device))
    lightness = degraded_input(lightness, config, step, rank)
    logits = net((lightness - colorizer.l_center) / colorizer.l_scale)
    loss = rebalanced_cross_entropy(
        logits, ab, colorizer.centers, weights, k=config.soft_k, sigma=config.soft_sigma
    )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def make_optimizer(net: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """Adam; a pretrained encoder's trainable stages form their own group ("encoder")."""
    if isinstance(net, LiteColorNet):
        groups = [{"params": net.decoder_parameters(), "name": "decoder"}]
        if net.encoder_parameters():
            groups.append({"params": net.encoder_parameters(), "name": "encoder"})
    else:
        groups = [{"params": list(net.parameters()), "name": "decoder"}]
    return torch.optim.Adam(
        groups, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay
    )


def set_learning_rates(optimizer: torch.optim.Optimizer, config: TrainConfig, step: int) -> None:
    """The schedule; the encoder's group learns at a fraction of it, from `unfreeze_at` on."""
    for group in optimizer.param_groups:
        scale = 1.0
        if group.get("name") == "encoder":
            scale = config.encoder_lr_scale if step >= config.unfreeze_at else 0.0
        group["lr"] = learning_rate(config, step) * scale


def init_net(colorizer: models.Colorizer, config: TrainConfig) -> None:
    """Before the first step: ImageNet weights in a pretrained encoder, and what trains."""
    if isinstance(colorizer.net, LiteColorNet):
        colorizer.net.encoder.load_state_dict(imagenet_state(colorizer.net.encoder.variant))
        colorizer.net.set_trainable_stages(config.trainable_stages)


def update_ema(ema: dict[str, torch.Tensor], net: torch.nn.Module, decay: float, step: int) -> None:
    """ema <- decay * ema + (1 - decay) * weights; the decay ramps up over the first steps so
    that the average is not dominated by the initial weights."""
    d = min(decay, (1.0 + step) / (10.0 + step))
    with torch.no_grad():
        for name, value in net.state_dict().items():
            if value.is_floating_point():
                ema[name].lerp_(value, 1.0 - d)
            else:
                ema[name].copy_(value)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train entry point (TorchTrainer, DDP). Rank 0 writes checkpoints and progress."""
    import ray.train
    import ray.train.torch

    config = TrainConfig(**loop_config["config"])
    out: str = loop_config["out"]
    storage.configure(loop_config.get("s3_endpoint_url"))
    torch.set_num_threads(config.threads_per_worker)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()

    # Every worker reads the whole prepared split, sorted by id, and keeps its rank's rows:
    # the assignment is the same on every run (a streaming split is not).
    rows = list(ray.train.get_dataset_shard("train").iter_rows())
    rows.sort(key=lambda r: r["id"])
    photos = np.stack([r["rgb"] for r in rows[rank::world]])
    stamps = load_stamps(config.stamps) if config.paste else None

    torch.manual_seed(config.seed)
    prior = torch.tensor(loop_config["prior"], dtype=torch.float32)
    colorizer = models.build(config.arch, prior=prior)
    init_net(colorizer, config)
    device = ray.train.torch.get_device()
    colorizer.to(device)
    optimizer = make_optimizer(colorizer.net, config)
    net = ray.train.torch.prepare_model(colorizer.net)
    weights = rebalance_weights(colorizer.prior, config.rebalance_lambda)
    ema = {k: v.detach().clone() for k, v in colorizer.net.state_dict().items()}
    start, history = 0, []
    latest = latest_checkpoint(out)
    if latest is not None:
        state = load_state(latest)
        colorizer.net.load_state_dict(state["net"])
        optimizer.load_state_dict(state["optimizer"])
        start, history = int(state["step"]), list(state["history"])
        ema = state.get("ema") or ema
    net.train()
    t0 = time.perf_counter()
    for step in range(start, config.steps):
        set_learning_rates(optimizer, config, step)
        torch.manual_seed(step_seed(config, step, rank))  # dropout: the same after a resume
        batch = sample_batch(photos, config, step, rank, stamps)
        loss = train_step(net, colorizer, optimizer, batch, weights, config, step, rank)
        if config.ema_decay:
            update_ema(ema, colorizer.net, config.ema_decay, step)
        history.append(loss)
        done = step + 1
        if rank == 0 and (done % config.checkpoint_every == 0 or done == config.steps):
            save_state(
                checkpoint_uri(out, done),
                {"net": colorizer.net.state_dict(), "optimizer": optimizer.state_dict(),
                 "step": done, "history": history, "ema": ema if config.ema_decay else None},
            )  # fmt: skip
        if done % config.log_every == 0 or done == config.steps:
            recent = history[-config.log_every :]
            metrics = {
                "step": done,
                "loss": sum(recent) / len(recent),
                "lr": learning_rate(config, step),
            }
            if rank == 0:
                rate = (done - start) * config.batch_size * world / (time.perf_counter() - t0)
                progress = {**metrics, "steps": config.steps, "images_per_second": rate}
                storage.write_bytes(storage.join(out, PROGRESS), json.dumps(progress).encode())
            ray.train.report(metrics)


def fit(train_ds: Any, out: str, config: TrainConfig, prior: torch.Tensor,
        s3_endpoint_url: str | None, scratch: str) -> None:  # fmt: skip
    """Run the Ray Train loop on `config.workers` workers (a GPU each when the cluster has
    enough, else CPU threads), resuming from the latest checkpoint under `out`."""
    import ray
    from ray.train import DataConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    resources = ray.cluster_resources()
    use_gpu = resources.get("GPU", 0) >= config.workers
    cpus = resources.get("CPU", 1)
    per_worker: dict[str, float] = {"CPU": max(0.25, min(1.0, (cpus - 0.5) / config.workers))}
    if use_gpu:
        per_worker["GPU"] = 1
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "config": asdict(config),
            "out": out,
            "prior": prior.tolist(),
            "s3_endpoint_url": s3_endpoint_url,
        },
        scaling_config=ScalingConfig(
            num_workers=config.workers, use_gpu=use_gpu, resources_per_worker=per_worker
        ),
        run_config=RunConfig(name="archive-colorize-train", storage_path=scratch),
        datasets={"train": train_ds},
        dataset_config=DataConfig(datasets_to_split=[]),
    )
    trainer.fit()


def final_colorizer(out: str, config: TrainConfig, prior: torch.Tensor) -> models.Colorizer:
    """The model of the latest checkpoint, with its prior, ready for `models.save`."""
    latest = latest_checkpoint(out)
    if latest is None:
        raise FileNotFoundError(f"no training checkpoint under {out}")
    state = load_state(latest)
    colorizer = models.build(config.arch, prior=prior)
    colorizer.net.load_state_dict(state.get("ema") or state["net"])
    colorizer.card["training"] = {"steps": int(state["step"])}
    return colorizer.eval()


def loss_history(out: str) -> list[float]:
    latest = latest_checkpoint(out)
    return [] if latest is None else list(load_state(latest)["history"])
