"""The Ray Train loop (the paper's method: soft-encoded targets, class rebalancing, Adam with
betas 0.9/0.99 and weight decay), its checkpoints and the model it ships.

Data path: `pipeline.training.prepared` prepares the corpus once into committed Parquet shards (Ray
tasks) with the prior's bin counts; `pipeline.training.stream` streams them to each worker (a
deterministic permutation of blocks per epoch, split among the ranks, a bounded shuffle window,
crops seeded by each photo's position), decoding, cropping and converting to Lab in a
background thread ahead of the step. The checkpoint holds every rank's data position, so a run
resumed from a checkpoint at step s sees exactly the batches an uninterrupted run would have;
it also names the prepared data those positions index (its digest and block count), and a
run on other prepared data refuses to resume from it.

Every `val_every` steps rank 0 scores the shipped weights on the first `val_max_photos`
prepared validation photos (`pipeline.training.validation`, the metrics of `evaluate`); the best of
those checkpoints (`checkpoints/best.pt`) is the model the run ships, and `patience`
evaluations without gain stop the run early.

A `lite*` net starts from ImageNet: its encoder is frozen except for the top
`trainable_stages`, which learn at `encoder_lr_scale` times the rate from step `unfreeze_at`
on (their BatchNorm keeps its ImageNet statistics; see models/nets.py). An exponential moving
average of the weights (`ema_decay`) is what the run ships. A fine-tune (`init`) starts from
another model's whole net instead (no ImageNet weights loaded over it), with the same rule for
what trains; it is a fresh run's start only, a resumed run takes everything from its checkpoint.

On CUDA the step runs the network under bf16 autocast in channels-last layout (the loss in
fp32: soft-encoding on the device), fed by pinned, non-blocking copies; a CPU runs fp32 as
before.
"""

from __future__ import annotations

import io
import json
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

import models
from models.bins import gamut_bin_centers
from models.imagenet import imagenet_state
from models.nets import LiteColorNet
from models.targets import rebalance_weights, rebalanced_cross_entropy, smoothed_prior
from pipeline.archive import storage
from pipeline.training.config import TrainConfig
from pipeline.training.prepared import (
    Block,
    Prepared,
    PrepareSettings,
    prepare_photo_why,
)
from pipeline.training.stamps import decode_stamp
from pipeline.training.stream import Batch, Loader, Position
from pipeline.training.validation import SELECT, score, validation_photos

CHECKPOINTS = "checkpoints"
PROGRESS = "progress.json"
BEST = "best.pt"  # the best validated weights: what a run with --val-every ships


# -- data ----------------------------------------------------------------------------------
def prepare_photo(data: bytes, size: int) -> np.ndarray | None:
    """Encoded photo -> (size, size, 3) uint8 (short side resized, centre square); None for a
    gray or unreadable image (no colour to learn from)."""
    return prepare_photo_why(data, size)[0]


def prepare_settings(config: TrainConfig) -> PrepareSettings:
    """What the prepared data depends on (with the source shards' identity)."""
    assert config.prepared is not None  # resolved by TrainConfig
    return PrepareSettings(config.prepared, config.val_fraction, config.fold, config.id_column,
                           config.image_column, holdout=config.holdout)  # fmt: skip


def prior_of(counts: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    """The smoothed empirical prior p~ from the training split's bin counts."""
    return smoothed_prior(counts, gamut_bin_centers(), config.prior_sigma)


# -- checkpoints -----------------------------------------------------------------------------
def checkpoint_uri(out: str, step: int) -> str:
    return storage.join(out, CHECKPOINTS, f"step-{step:07d}.pt")


def latest_checkpoint(out: str) -> str | None:
    uris = [u for u in storage.list_files(storage.join(out, CHECKPOINTS))
            if u.rsplit("/", 1)[-1].startswith("step-") and u.endswith(".pt")]  # fmt: skip
    return max(uris, default=None)


def best_uri(out: str) -> str:
    return storage.join(out, CHECKPOINTS, BEST)


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


def step_seed(config: TrainConfig, step: int, rank: int) -> int:
    return int(np.random.SeedSequence([config.seed, step, rank, 2]).generate_state(1)[0])


def train_step(
    net: torch.nn.Module,
    colorizer: models.Colorizer,
    optimizer: torch.optim.Optimizer,
    lightness: torch.Tensor,
    ab: torch.Tensor,
    weights: torch.Tensor,
    config: TrainConfig,
    hints: torch.Tensor | None = None,
) -> float:
    """One optimizer step on a batch's L (the input, degraded where asked) and target ab
    (and, for a hint-aware net, its simulated hint planes).

    On CUDA: non-blocking copies (from pinned memory), channels-last input, the network under
    bf16 autocast; the loss (soft-encoding, rebalancing) in fp32 on the device. On a CPU the
    same fp32 computation as ever."""
    device = colorizer.device
    cuda = device.type == "cuda"
    lightness = lightness.to(device, non_blocking=cuda)
    ab = ab.to(device, non_blocking=cuda)
    x = (lightness - colorizer.l_center) / colorizer.l_scale
    if cuda:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
        logits = net(x) if hints is None else net(x, hints.to(device, non_blocking=cuda))
    loss = rebalanced_cross_entropy(
        logits.float(), ab, colorizer.centers, weights, k=config.soft_k, sigma=config.soft_sigma
    )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def make_optimizer(net: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """Adam; a pretrained encoder's trainable stages form their own group ("encoder")."""
    if isinstance(net, LiteColorNet):
        groups: list[dict[str, Any]] = [{"params": net.decoder_parameters(), "name": "decoder"}]
        if net.encoder_parameters():
            groups.append({"params": net.encoder_parameters(), "name": "encoder"})
        if net.hint_parameters():  # no decay: a hint touches few pixels, its gradient is small
            # and Adam's L2 term would hold the zero-started branches at zero
            groups.append({"params": net.hint_parameters(), "name": "hints", "weight_decay": 0.0})
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
        elif group.get("name") == "hints":
            scale = config.hint_lr_scale
        group["lr"] = learning_rate(config, step) * scale


def init_net(
    colorizer: models.Colorizer, config: TrainConfig, init: dict[str, torch.Tensor] | None = None
) -> None:
    """Before the first step: the weights it starts from (INIT, a fine-tuned model's whole
    net; else ImageNet's in a pretrained encoder), and what trains."""
    if init is not None:  # a hint-aware net from its automatic self: the hint branches new
        missing = colorizer.net.load_state_dict(init, strict=not colorizer.takes_hints)
        unexpected = [k for k in missing.missing_keys if not k.startswith("hint_")]
        if unexpected or missing.unexpected_keys:
            raise ValueError(f"--init's weights do not fit {config.arch}: {missing}")
    if isinstance(colorizer.net, LiteColorNet):
        if init is None:
            colorizer.net.encoder.load_state_dict(imagenet_state(colorizer.net.encoder.variant))
        colorizer.net.set_trainable_stages(config.trainable_stages)
        colorizer.net.set_dropout(config.dropout or 0.0)


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


@dataclass
class RunState:
    """What a checkpoint holds besides the weights: the step, the loss history, every rank's
    data position, the validation curve and the best validation so far."""

    step: int = 0
    history: list[float] = field(default_factory=list)
    positions: list[dict[str, int]] | None = None
    validation: list[dict[str, float]] = field(default_factory=list)
    best: dict[str, float] | None = None
    bad: int = 0  # validations since the last gain
    stopped: bool = False  # stopped early: a re-run does not train further

    @classmethod
    def from_checkpoint(cls, state: dict[str, Any]) -> RunState:
        return cls(int(state["step"]), list(state["history"]), state.get("data"),
                   list(state.get("validation") or []), state.get("best"),
                   int(state.get("bad", 0)), bool(state.get("stopped", False)))  # fmt: skip

    def checkpoint(self) -> dict[str, Any]:
        return {"step": self.step, "history": self.history, "data": self.positions,
                "validation": self.validation, "best": self.best, "bad": self.bad,
                "stopped": self.stopped}  # fmt: skip


def shipped_weights(
    net: torch.nn.Module, ema: dict[str, torch.Tensor], config: TrainConfig
) -> dict[str, torch.Tensor]:
    return ema if config.ema_decay else net.state_dict()


def validate(
    weights: dict[str, torch.Tensor], config: TrainConfig, prior: torch.Tensor, photos: list[bytes]
) -> dict[str, float]:
    """The shipped weights, as a model on the CPU, scored on the validation photos."""
    model = models.build(config.arch, prior=prior)
    model.net.load_state_dict({k: v.detach().cpu() for k, v in weights.items()})
    return score(model.eval(), photos)


def _all_ranks(value: Any, world: int, *, gather: bool) -> Any:
    """Rank 0's value on every rank (broadcast), or every rank's values (all-gather)."""
    if world == 1:
        return [value] if gather else value
    import torch.distributed as dist

    if gather:
        out: list[Any] = [None] * world
        dist.all_gather_object(out, value)
        return out
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@dataclass
class Trainee:
    """One worker's model and what trains it: the colorizer (its net on the worker's device),
    that net as DDP wraps it, the optimizer, the moving average and the rebalancing weights."""

    colorizer: models.Colorizer
    net: torch.nn.Module
    optimizer: torch.optim.Optimizer
    ema: dict[str, torch.Tensor]
    weights: torch.Tensor


def build_trainee(
    config: TrainConfig, prior: torch.Tensor, device: torch.device,
    init: dict[str, torch.Tensor] | None = None,
) -> Trainee:  # fmt: skip
    """The network as a new run starts it (seeded; from INIT's weights when fine-tuning), on
    the device, wrapped for DDP. A resumed run then loads its checkpoint over all of it."""
    import ray.train.torch

    torch.manual_seed(config.seed)
    colorizer = models.build(config.arch, prior=prior)
    init_net(colorizer, config, init)
    colorizer.to(device)
    if device.type == "cuda":
        colorizer.net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    optimizer = make_optimizer(colorizer.net, config)
    net = ray.train.torch.prepare_model(colorizer.net)
    weights = rebalance_weights(colorizer.prior, config.rebalance_lambda)
    ema = {k: v.detach().clone() for k, v in colorizer.net.state_dict().items()}
    return Trainee(colorizer, net, optimizer, ema, weights)


def data_record(prepared: Prepared) -> dict[str, Any]:
    """What a checkpoint's data positions index: the prepared data (its settings' digest) and
    its training blocks."""
    return {"digest": prepared.digest, "blocks": len(prepared.blocks["train"])}


def data_mismatch(uri: str, state: dict[str, Any], record: dict[str, Any]) -> str | None:
    """Why the checkpoint at URI cannot resume on the prepared data RECORD names (None: it
    can; a checkpoint from before the record was kept cannot tell, and resumes)."""
    recorded = state.get("prepared")
    if recorded is None or recorded == record:
        return None
    return (
        f"{uri} was trained on other prepared data (digest {recorded['digest']}, "
        f"{recorded['blocks']} training blocks; now {record['digest']}, {record['blocks']}): "
        f"its data positions index that data. The source or the preparation settings changed "
        f"since: restore them to resume, or train into a new OUT"
    )


def check_resumable(out: str, prepared: Prepared) -> None:
    """Before training: refuse (ValueError) when OUT's latest checkpoint was trained on other
    prepared data than PREPARED."""
    latest = latest_checkpoint(out)
    if latest is not None:
        problem = data_mismatch(latest, load_state(latest), data_record(prepared))
        if problem:
            raise ValueError(problem)


def restore(
    out: str, trainee: Trainee, record: dict[str, Any], device: torch.device, rank: int,
    world: int,
) -> tuple[RunState, Position]:  # fmt: skip
    """OUT's latest checkpoint into the trainee: the run's state and this rank's data position
    (a new run: step 0 at the stream's start). Everything the checkpoint holds replaces what
    `build_trainee` started with (the net, a fine-tune's init included; the optimizer; the
    moving average)."""
    latest = latest_checkpoint(out)
    if latest is None:
        return RunState(), Position()
    state = load_state(latest)
    problem = data_mismatch(latest, state, record)
    if problem:
        raise ValueError(problem)
    trainee.colorizer.net.load_state_dict(state["net"])
    trainee.optimizer.load_state_dict(state["optimizer"])
    trainee.ema = {k: v.to(device) for k, v in (state.get("ema") or trainee.ema).items()}
    run = RunState.from_checkpoint(state)
    if run.positions is None:
        return run, Position()
    if len(run.positions) != world:
        raise ValueError(
            f"{latest} was written by {len(run.positions)} workers: resume with "
            f"--workers {len(run.positions)}"
        )
    return run, Position.from_dict(run.positions[rank])


def optimise(
    trainee: Trainee, loader: Loader, config: TrainConfig, step: int, rank: int, run: RunState
) -> Batch:
    """Step `step`: its learning rates and dropout seed, the next batch, the update, the
    moving average, the loss history. Returns the batch (its data position)."""
    set_learning_rates(trainee.optimizer, config, step)
    torch.manual_seed(step_seed(config, step, rank))  # dropout: the same after a resume
    batch = loader.next()
    loss = train_step(trainee.net, trainee.colorizer, trainee.optimizer, batch.lightness,
                      batch.ab, trainee.weights, config, batch.hints)  # fmt: skip
    if config.ema_decay:
        update_ema(trainee.ema, trainee.colorizer.net, config.ema_decay, step)
    run.history.append(loss)
    run.step = step + 1
    return batch


def due(every: int, done: int, config: TrainConfig) -> bool:
    """Every `every` steps, and at the last one."""
    return done % every == 0 or done == config.steps


def validate_on_rank_zero(
    run: RunState, out: str, config: TrainConfig, trainee: Trainee, prior: torch.Tensor,
    photos: list[bytes], rank: int, world: int,
) -> bool:  # fmt: skip
    """Rank 0 scores the shipped weights (keeping best.pt); every rank learns whether to stop."""
    stop = False
    if rank == 0:
        shipped = shipped_weights(trainee.colorizer.net, trainee.ema, config)
        stop = _validation_point(run, out, config, prior, photos, shipped)
    run.stopped = bool(_all_ranks(stop, world, gather=False))
    return run.stopped


def write_checkpoint(
    out: str, trainee: Trainee, run: RunState, batch: Batch, config: TrainConfig,
    record: dict[str, Any], rank: int, world: int,
) -> None:  # fmt: skip
    """Every rank's data position, then (rank 0) the weights, the optimizer, the moving
    average, the run's state and the prepared data they index."""
    run.positions = _all_ranks(batch.position.as_dict(), world, gather=True)
    if rank == 0:
        save_state(
            checkpoint_uri(out, run.step),
            {"net": trainee.colorizer.net.state_dict(), "optimizer": trainee.optimizer.state_dict(),
             "ema": trainee.ema if config.ema_decay else None, "prepared": record,
             **run.checkpoint()},
        )  # fmt: skip


def report_progress(
    out: str, run: RunState, config: TrainConfig, step: int, loader: Loader,
    started: tuple[float, int], rank: int, world: int,
) -> None:  # fmt: skip
    """The recent loss (and last validation) to Ray Train; rank 0 also writes OUT/progress.json
    (the flow's progress bar) with the rate since `started` (time, step)."""
    import ray.train

    done = run.step
    recent = run.history[-config.log_every :]
    metrics = {
        "step": done,
        "loss": sum(recent) / len(recent),
        "lr": learning_rate(config, step),
        "data_wait_seconds": loader.wait_seconds,
    }
    if run.validation:
        metrics["val_" + SELECT] = run.validation[-1][SELECT]
    if rank == 0:
        t0, start = started
        rate = (done - start) * config.batch_size * world / (time.perf_counter() - t0)
        progress = {**metrics, "steps": config.steps, "images_per_second": rate}
        storage.write_bytes(storage.join(out, PROGRESS), json.dumps(progress).encode())
    ray.train.report(metrics)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train entry point (TorchTrainer, DDP). Rank 0 validates and writes checkpoints and
    progress; every rank streams its own share of the prepared data."""
    import ray.train
    import ray.train.torch

    config = TrainConfig(**loop_config["config"])
    out: str = loop_config["out"]
    record: dict[str, Any] = loop_config["data"]
    storage.configure(loop_config.get("s3_endpoint_url"))
    torch.set_num_threads(config.threads_per_worker)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    blocks = [Block(**b) for b in loop_config["train_blocks"]]
    stamps = load_stamps(config.stamps) if config.paste else None
    prior = torch.tensor(loop_config["prior"], dtype=torch.float32)
    device = ray.train.torch.get_device()
    trainee = build_trainee(config, prior, device, loop_config.get("init"))
    run, position = restore(out, trainee, record, device, rank, world)
    if run.stopped:
        return
    photos = (
        validation_photos([Block(**b) for b in loop_config["val_blocks"]], config.val_max_photos)
        if rank == 0 and config.val_every
        else []
    )
    loader = Loader(blocks, config, rank, world, run.step, position, stamps,
                    pin=device.type == "cuda")  # fmt: skip
    trainee.net.train()
    started = (time.perf_counter(), run.step)
    try:
        for step in range(run.step, config.steps):
            batch = optimise(trainee, loader, config, step, rank, run)
            stop = False
            if config.val_every and due(config.val_every, run.step, config):
                stop = validate_on_rank_zero(run, out, config, trainee, prior, photos, rank, world)
            if due(config.checkpoint_every, run.step, config) or stop:
                write_checkpoint(out, trainee, run, batch, config, record, rank, world)
            if due(config.log_every, run.step, config) or stop:
                report_progress(out, run, config, step, loader, started, rank, world)
            if stop:
                break
    finally:
        loader.close()


def _validation_point(
    run: RunState,
    out: str,
    config: TrainConfig,
    prior: torch.Tensor,
    photos: list[bytes],
    weights: dict[str, torch.Tensor],
) -> bool:
    """Score the shipped weights, keep them as best.pt when they beat the best so far; True
    when `patience` validations in a row brought no gain (stop)."""
    scores = validate(weights, config, prior, photos)
    run.validation.append({"step": run.step, **scores})
    value = scores.get(SELECT, -math.inf)
    if run.best is None or value > run.best["score"]:
        run.best, run.bad = {"step": run.step, "score": value}, 0
        kept = {k: v.detach().cpu() for k, v in weights.items()}
        save_state(
            best_uri(out), {"net": kept, "step": run.step, "score": value, "metrics": scores}
        )
    else:
        run.bad += 1
    return bool(config.patience and run.bad >= config.patience)


def fit(prepared: Prepared, out: str, config: TrainConfig, prior: torch.Tensor,
        s3_endpoint_url: str | None, scratch: str,
        init: dict[str, torch.Tensor] | None = None) -> None:  # fmt: skip
    """Run the Ray Train loop on `config.workers` workers (a GPU each when the cluster has
    enough, else CPU threads), resuming from the latest checkpoint under `out`. INIT: the net's
    weights a fine-tune starts from (`config.init`'s; sent to the workers, which may not see
    the file)."""
    import ray
    from ray.train import RunConfig, ScalingConfig
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
            "data": data_record(prepared),
            "s3_endpoint_url": s3_endpoint_url,
            "train_blocks": [asdict(b) for b in prepared.blocks["train"]],
            "val_blocks": [asdict(b) for b in prepared.blocks["val"]],
            "init": init,
        },
        scaling_config=ScalingConfig(
            num_workers=config.workers, use_gpu=use_gpu, resources_per_worker=per_worker
        ),
        run_config=RunConfig(name="archive-colorize-train", storage_path=scratch),
    )
    trainer.fit()


def ships_best(out: str, config: TrainConfig) -> bool:
    """The run ships its best validated checkpoint (best.pt), not its last one."""
    return bool(config.val_every) and storage.exists(best_uri(out))


def final_colorizer(out: str, config: TrainConfig, prior: torch.Tensor) -> models.Colorizer:
    """The model the run ships, with its prior, ready for `models.save`: the best validated
    checkpoint with --val-every, else the latest one (its EMA weights when kept)."""
    latest = latest_checkpoint(out)
    if latest is None:
        raise FileNotFoundError(f"no training checkpoint under {out}")
    state = load_state(latest)
    colorizer = models.build(config.arch, prior=prior)
    training: dict[str, Any] = {"steps": int(state["step"])}
    if ships_best(out, config):
        best = load_state(best_uri(out))
        colorizer.net.load_state_dict(best["net"])
        training.update(best_step=int(best["step"]), selected_by={SELECT: float(best["score"])})
        if state.get("stopped"):
            training["stopped_early_at"] = int(state["step"])
    else:
        colorizer.net.load_state_dict(state.get("ema") or state["net"])
    colorizer.card["training"] = training
    return colorizer.eval()


def loss_history(out: str) -> list[float]:
    latest = latest_checkpoint(out)
    return [] if latest is None else list(load_state(latest)["history"])


def validation_curve(out: str) -> list[dict[str, float]]:
    """The validation points of the latest checkpoint: [{"step", metric: mean, ...}]."""
    latest = latest_checkpoint(out)
    return [] if latest is None else list(load_state(latest).get("validation") or [])
