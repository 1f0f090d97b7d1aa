"""Prefect flow: train a colorization model with the paper's method on Ray Train.

The flow lists shards, prepares them once into committed Parquet shards with the prior's bin
counts (Ray tasks; reused by any later run with the same corpus and preparation settings),
runs the training (Ray Train workers streaming the prepared shards, validating every
`val_every` steps), then saves the model with its card, evaluates it against the gray
baseline on the validation split, and records those figures in the card. Re-running with the
same OUT resumes from the latest checkpoint there.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import ray
import torch
from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE

import models
from flows.colorize import ConfigError
from flows.evaluate import evaluate_model
from pipeline.archive import storage
from pipeline.archive.pack import pack_images
from pipeline.archive.shards import SourceError, parquet_schema
from pipeline.colorize.runner import ensure_ray
from pipeline.review import report
from pipeline.review.artifact import artifact_from_files
from pipeline.training.config import TrainConfig, describe_differences, recipe_differences
from pipeline.training.evaluate import evaluation_markdown
from pipeline.training.loop import (
    PROGRESS,
    final_colorizer,
    fit,
    loss_history,
    prepare_settings,
    prior_of,
    validation_curve,
)
from pipeline.training.prepared import prepare
from pipeline.training.validation import SELECT


def code_version() -> str:
    try:
        root = Path(__file__).resolve().parent.parent
        return subprocess.run(
            ["git", "-C", str(root), "describe", "--always", "--dirty"],
            capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import version

        return f"archive-colorize {version('archive-colorize')}"


RECIPE = "recipe.json"


def recorded_recipe(out: str) -> dict[str, Any] | None:
    """The settings a run in OUT was started with: OUT/recipe.json, or (a run from before it was
    written) its model card's; None for a new OUT."""
    recipe = storage.read_json(storage.join(out, RECIPE))
    if recipe is not None:
        return recipe
    card = storage.read_json(storage.join(out, "model.json"))
    return None if card is None else dict(card["training"]["hyperparameters"])


def claim_run(out: str, config: TrainConfig) -> None:
    """One run, one recipe: OUT/recipe.json on the first run. A later run into OUT with
    settings that change what it trains refuses before anything else: it would resume another
    recipe's checkpoints and ship a model whose card names settings it was not trained with."""
    recorded = recorded_recipe(out)
    differences = {} if recorded is None else recipe_differences(recorded, asdict(config))
    if differences:
        raise ConfigError(
            f"{out} holds a run started with other settings ({describe_differences(differences)})"
            f": re-run with those to resume it, or train into a new OUT"
        )
    if not storage.exists(storage.join(out, RECIPE)):
        storage.write_bytes(storage.join(out, RECIPE), json.dumps(asdict(config)).encode())


@task(cache_policy=NO_CACHE)
def training_shards(source: str, out: str, config: TrainConfig) -> tuple[str, list[str]]:
    """(archive, its Parquet shards) to train on; a folder of images is packed under OUT/data."""
    try:
        uris = [u for u in storage.list_files(source) if u.endswith(".parquet")]
        if not uris:
            packed = storage.join(out, "data")
            uris = pack_images(source, packed)
            source = packed
        names = parquet_schema(uris[0]).names
    except SourceError as exc:
        raise ConfigError(str(exc)) from exc
    for column, option in (
        (config.image_column, "--image-column"),
        (config.id_column, "--id-column"),
    ):
        if column not in names:
            raise ConfigError(f"training data has no column {column!r}: pass {option}")
    return source, uris


@task(cache_policy=NO_CACHE)
def prepare_data(
    archive: str, uris: list[str], out: str, config: TrainConfig, prepared_data: str | None,
    s3_endpoint_url: str | None,
) -> dict[str, Any]:  # fmt: skip
    """The prepared squares and the prior's counts: made once under BASE/<settings digest>
    (BASE: --prepared-data, else OUT/prepared), reused when already committed there."""
    base = prepared_data or storage.join(out, "prepared")
    prepared = prepare(archive, uris, base, prepare_settings(config), s3_endpoint_url)
    images = prepared.images["train"]
    if images == 0:
        raise ConfigError("no colour photos in the training split: training needs colour images")
    if config.val_every and prepared.images["val"] == 0:
        raise ConfigError("--val-every: no colour photos in the validation split")
    prior = prior_of(prepared.counts, config)
    get_run_logger().info(
        "prepared data %s: %d shards (%d prepared now, %d reused), %d training and %d "
        "validation photos, skipped %s; prior over %d bins",
        prepared.root, prepared.shards, prepared.prepared_now,
        prepared.shards - prepared.prepared_now, images, prepared.images["val"],
        prepared.skipped, prior.shape[0],
    )  # fmt: skip
    return {"prepared": prepared, "prior": prior, "counts": prepared.counts, "images": images}


@task(cache_policy=NO_CACHE)
def run_training(
    data: dict[str, Any], out: str, config: TrainConfig, s3_endpoint_url: str | None,
    show_progress: bool,
) -> float:  # fmt: skip
    """Ray Train; a watcher thread turns OUT/progress.json into a progress bar and artifact."""
    from tqdm import tqdm

    started = time.perf_counter()
    artifact = create_progress_artifact(progress=0.0, key="train-progress", description=out)
    bar = tqdm(total=config.steps, unit="step", disable=not show_progress, dynamic_ncols=True)
    stop = threading.Event()

    def watch() -> None:
        uri = storage.join(out, PROGRESS)
        while not stop.wait(2.0):
            try:
                progress = json.loads(storage.read_bytes(uri))
            except Exception:  # not written yet (or S3 hiccup): try again next tick
                continue
            bar.update(progress["step"] - bar.n)
            bar.set_postfix(
                loss=f"{progress['loss']:.3f}", img_s=f"{progress['images_per_second']:.1f}"
            )
            update_progress_artifact(artifact, 100.0 * progress["step"] / config.steps)  # type: ignore[arg-type]

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        with tempfile.TemporaryDirectory(prefix="ray-train-") as scratch:
            fit(data["prepared"], out, config, data["prior"], s3_endpoint_url, scratch)
    finally:
        stop.set()
        watcher.join()
        bar.close()
    return time.perf_counter() - started


@task(cache_policy=NO_CACHE)
def save_model(
    out: str, config: TrainConfig, data: dict[str, Any], source: str, seconds: float,
    evaluation: dict[str, Any] | None,
) -> str:  # fmt: skip
    """OUT/model.safetensors (+ model.json) with its card, and OUT/loss.png."""
    colorizer = final_colorizer(out, config, data["prior"])
    colorizer.card.update(
        {
            "name": "archive-colorize " + config.arch,
            "training": {
                **colorizer.card.get("training", {}),
                "source": source,
                "images": data["images"],
                "prepared_data": data["prepared"].digest,  # the preparation settings' hash
                "hyperparameters": asdict(config),
                "seconds": round(seconds, 1),
                "code_version": code_version(),
                "torch": torch.__version__,
            },
            "metrics": evaluation,
        }
    )
    uri = storage.join(out, "model.safetensors")
    with tempfile.TemporaryDirectory() as tmp:
        local = models.save(colorizer, Path(tmp) / "model.safetensors")
        storage.put_file(local, uri)
        storage.put_file(local.with_suffix(".json"), storage.join(out, "model.json"))
    curve = [(int(p["step"]), p[SELECT]) for p in validation_curve(out) if SELECT in p]
    storage.write_bytes(
        storage.join(out, "loss.png"), report.loss_curve(loss_history(out), curve, SELECT)
    )
    return uri


@flow(name="train-model")
def train_model(
    source: str,
    out: str,
    arch: str = "lite2-plain",
    steps: int = 3000,
    batch_size: int = 16,
    lr: float = 1e-3,
    lr_schedule: str = "cosine",
    crop: int = 176,
    prepared: int | None = None,
    scale_min: float = 0.3,
    trainable_stages: int = 0,
    unfreeze_at: int = 0,
    encoder_lr_scale: float = 0.1,
    ema_decay: float = 0.999,
    weight_decay: float = 1e-2,
    dropout: float = 0.3,
    degrade: float = 0.6,
    stamps: str = "",
    paste: float = 0.0,
    val_fraction: float = 0.1,
    fold: int = 0,
    holdout: str = "",
    workers: int = 1,
    checkpoint_every: int = 200,
    prepared_data: str | None = None,
    val_every: int = 0,
    val_max_photos: int = 64,
    patience: int = 0,
    loader_threads: int = 1,
    soft_k: int = 5,
    seed: int = 0,
    image_column: str = "image",
    id_column: str = "id",
    ray_address: str | None = None,
    s3_endpoint_url: str | None = None,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Train ARCH on the colour photos of SOURCE (Parquet archive or image folder, local or
    s3://) into OUT (local or s3://): checkpoints, model.safetensors with its card, loss.png,
    and the validation evaluation against the gray baseline. The prepared data goes under
    PREPARED_DATA (local or s3://, shared by runs) or OUT/prepared."""
    config = TrainConfig(
        arch=arch, steps=steps, batch_size=batch_size, lr=lr, lr_schedule=lr_schedule,
        crop=crop, prepared=prepared or max(crop, round(crop * 16 / 11 / 8) * 8),
        scale_min=scale_min, trainable_stages=trainable_stages, unfreeze_at=unfreeze_at,
        encoder_lr_scale=encoder_lr_scale, ema_decay=ema_decay, weight_decay=weight_decay,
        dropout=dropout, degrade=degrade,
        stamps=stamps, paste=paste,
        val_fraction=val_fraction, fold=fold, holdout=holdout,
        workers=workers, checkpoint_every=checkpoint_every, soft_k=soft_k, seed=seed,
        val_every=val_every, val_max_photos=val_max_photos, patience=patience,
        loader_threads=loader_threads,
        image_column=image_column, id_column=id_column,
    )  # fmt: skip
    try:
        config.validate()
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    storage.configure(s3_endpoint_url)
    ensure_ray(ray_address)
    config.threads_per_worker = max(1, int(ray.cluster_resources().get("CPU", 1)) // workers)
    claim_run(out, config)
    archive, uris = training_shards(source, out, config)
    data = prepare_data(archive, uris, out, config, prepared_data, s3_endpoint_url)
    seconds = run_training(data, out, config, s3_endpoint_url, show_progress)
    model_uri = save_model(out, config, data, source, seconds, None)
    evaluation = evaluate_model(
        source=archive,
        model=model_uri, out=storage.join(out, "evaluation"), split="val",
        val_fraction=val_fraction, fold=fold, holdout=holdout, image_column=image_column,
        id_column=id_column,
        ray_address=ray_address, s3_endpoint_url=s3_endpoint_url,
    )  # fmt: skip
    card_metrics = {k: v for k, v in evaluation.items() if k != "samples"}
    model_uri = save_model(out, config, data, source, seconds, card_metrics)
    prep = data["prepared"]
    curve = validation_curve(out)
    summary = {
        "model": model_uri,
        "train_images": data["images"],
        "seconds": seconds,
        "prepared": {"root": prep.root, "shards": prep.shards,
                     "prepared_now": prep.prepared_now, "skipped": prep.skipped},
        "validation": curve,
        **card_metrics,
    }  # fmt: skip
    markdown = evaluation_markdown(card_metrics, model_uri, archive, "val")
    markdown += "\n## Training loss\n\n![loss](loss.png)\n"
    if curve:
        best = max(curve, key=lambda p: p.get(SELECT, float("-inf")))
        markdown += (
            f"\nValidation every {val_every} steps on {val_max_photos} photos at most: best "
            f"{SELECT} {best[SELECT]:.4f} at step {int(best['step'])} (the model shipped).\n"
        )
    figures = {"contact_sheet.png": storage.join(out, "evaluation", "contact_sheet.png"),
               "loss.png": storage.join(out, "loss.png")}  # fmt: skip
    links = {"model": model_uri, "model card": storage.join(out, "model.json"),
             "evaluation": storage.join(out, "evaluation", "evaluation.md")}  # fmt: skip
    embed: Any = ray.remote(num_cpus=0)(artifact_from_files)  # figures stay out of the flow
    artifact = ray.get(embed.remote(markdown, figures, links, s3_endpoint_url))
    create_markdown_artifact(markdown=artifact, key="train-report")
    create_table_artifact(
        table=[{"metric": k, **v} for k, v in card_metrics["metrics"].items()], key="train-metrics"
    )
    if curve:
        create_table_artifact(table=curve, key="train-validation")
    return summary
