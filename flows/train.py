"""Prefect flow: train a colorization model with the paper's method on Ray Train.

The flow lists shards, prepares them once into committed Parquet shards with the prior's bin
counts (Ray tasks; reused by any later run with the same corpus and preparation settings),
runs the training (Ray Train workers streaming the prepared shards, validating every
`val_every` steps), then saves the model with its card, evaluates it against the gray
baseline on the validation split, and records those figures in the card. Re-running with the
same OUT resumes from the latest checkpoint there (the same recipe, OUT/recipe.json, and the
same prepared data only). Every input is checked before anything is written, so a run refused
for a bad option leaves nothing behind to refuse its corrected re-run.

With `init` (a model: "default", a path, s3://) the run fine-tunes it: the net starts from that
model's weights, keeps its architecture (--arch must name it) and trains against its prior, the
colours its output bins were trained on; the prepared data's counts are made all the same. Its
id (`<file name>@<sha256 prefix>`) is part of the recipe.
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

import pyarrow as pa
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
from pipeline.archive.pack import PACK_SCHEMA, pack_images
from pipeline.archive.shards import IMAGE_SUFFIXES, SourceError, parquet_schema
from pipeline.colorize.runner import ensure_ray
from pipeline.colorize.worker import model_id, resolve_model
from pipeline.review import report
from pipeline.review.artifact import artifact_from_files
from pipeline.training.config import (
    ARCHITECTURES,
    HINTS_SUFFIX,
    OPTIONS,
    TrainConfig,
    check_holdout_matches,
    describe_differences,
    option_defaults,
    recipe_differences,
)
from pipeline.training.evaluate import evaluation_markdown
from pipeline.training.loop import (
    PROGRESS,
    check_resumable,
    final_colorizer,
    fit,
    loss_history,
    prepare_settings,
    prior_of,
    ships_best,
    validation_curve,
)
from pipeline.training.prepared import prepare, source_folders, top_folder
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


def train_config(options: dict[str, Any]) -> TrainConfig:
    """The recipe of OPTIONS (`train`'s options by TrainConfig's names; any other key, such as
    prepared_data, is not a setting of the recipe), checked: a bad option is a ConfigError
    that says how to fix it. With --init, the model is read (storage configured first) and
    its id recorded in the recipe."""
    config = TrainConfig(**{k: v for k, v in options.items() if k in OPTIONS})
    try:
        config.validate()
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    check_init(config)
    return config


def init_mismatch(card: dict[str, Any], config: TrainConfig) -> str | None:
    """Why the model whose card is CARD cannot be fine-tuned with CONFIG (None: it can)."""
    arch = card["config"]["arch"]
    if arch not in (config.arch, config.arch.removesuffix(HINTS_SUFFIX)):
        hinted = f"{arch}{HINTS_SUFFIX}"
        return (
            f"--init {config.init!r} is a {arch} model and --arch is {config.arch}: a fine-tune "
            f"keeps the init model's architecture; pass --arch {arch} (the init model's"
            + (f", or {hinted} to add colour hints to it)" if hinted in ARCHITECTURES else ")")
            + (
                " with --hints 0.5 (a share of crops given hints)"
                if arch.endswith(HINTS_SUFFIX)
                else ""
            )
            + " or drop --init"
        )
    centers, ours = torch.tensor(card["centers"]), models.gamut_bin_centers()
    if centers.shape != ours.shape or not torch.allclose(centers, ours, atol=1e-4):
        return (
            f"--init {config.init!r} predicts {centers.shape[0]} colour bins that are not the "
            f"{ours.shape[0]} ab bins training uses (a model `archive-colorize train` did not "
            f"make, such as the converted ECCV16 release): it cannot be fine-tuned here"
        )
    return None


def check_init(config: TrainConfig) -> None:
    """--init names a model this recipe can fine-tune (there, readable, of --arch, on the
    training's bins): else a ConfigError, before anything is written. Its id goes into the
    recipe (`init_id`), so that a run resumed with other weights under the same name refuses."""
    if not config.init:
        return
    try:
        with resolve_model(config.init) as path:
            card = models.read_card(path)
            config.init_id = model_id(path)
    except Exception as exc:  # missing, unreadable, not a model card: the option is wrong
        raise ConfigError(
            f"--init {config.init!r}: no model to fine-tune there ({exc}); pass 'default', a "
            f".safetensors file written by `archive-colorize train`, or its s3:// URI"
        ) from exc
    problem = init_mismatch(card, config)
    if problem:
        raise ConfigError(problem)


def init_model(config: TrainConfig) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The net's weights and the prior of the model --init names: the one `check_init` read
    (refused if it changed since)."""
    with resolve_model(config.init) as path:
        found = model_id(path)
        if found != config.init_id:
            raise ConfigError(
                f"--init {config.init!r} changed since the run was checked ({config.init_id} "
                f"-> {found}): re-run"
            )
        model = models.load(path)
    weights = {k: v.detach().contiguous().clone() for k, v in model.net.state_dict().items()}
    return weights, model.prior.detach().clone()


def recipe_conflict(out: str, config: TrainConfig) -> str | None:
    """How CONFIG differs from the recipe OUT's run was started with (None: it does not, or
    OUT holds no run)."""
    recorded = recorded_recipe(out)
    differences = {} if recorded is None else recipe_differences(recorded, asdict(config))
    return describe_differences(differences) if differences else None


def check_recipe(out: str, config: TrainConfig) -> None:
    """One run, one recipe: a run into OUT with settings that change what it trains refuses
    before any work: it would resume another recipe's checkpoints and ship a model whose card
    names settings it was not trained with."""
    conflict = recipe_conflict(out, config)
    if conflict:
        raise ConfigError(
            f"{out} holds a run started with other settings ({conflict}): re-run with those to "
            f"resume it, or train into a new OUT"
        )


def claim_run(out: str, config: TrainConfig) -> None:
    """OUT/recipe.json on the first run (checked as `check_recipe` on the others). Called once
    everything about the inputs is checked, the prepared data included, right before the
    first checkpoint: a run refused for a bad option leaves no recipe to refuse its fix."""
    check_recipe(out, config)
    if not storage.exists(storage.join(out, RECIPE)):
        storage.write_bytes(storage.join(out, RECIPE), json.dumps(asdict(config)).encode())


def source_shards(source: str) -> list[str]:
    """SOURCE's Parquet shards; [] for a folder or prefix of images (packed before training)."""
    if not storage.source_exists(source):
        raise ConfigError(f"source {source!r} does not exist or is empty")
    uris = [u for u in storage.list_files(source) if u.endswith(".parquet")]
    if not uris and not image_ids(source):
        raise ConfigError(
            f"no Parquet shards and no image files under {source!r} ({', '.join(IMAGE_SUFFIXES)})"
        )
    return uris


def image_ids(source: str) -> list[str]:
    """The ids packing gives a folder's images: their paths relative to it."""
    return [storage.relative(source, u) for u in storage.list_files(source)
            if u.lower().endswith(IMAGE_SUFFIXES)]  # fmt: skip


def top_folders(source: str, uris: list[str], id_column: str) -> list[str]:
    """The top folders of SOURCE's ids, sorted ("": photos at its top level)."""
    if uris:
        return source_folders(source, id_column)
    return sorted({top_folder(i) for i in image_ids(source)})


def check_columns(uris: list[str], config: TrainConfig) -> None:
    """The id and image columns are there (a packed folder has PACK_SCHEMA's)."""
    try:
        names = parquet_schema(uris[0]).names if uris else PACK_SCHEMA.names
    except (OSError, pa.ArrowException) as exc:
        raise ConfigError(f"cannot read {uris[0]}: {exc}") from exc
    for column, option in (
        (config.image_column, "--image-column"),
        (config.id_column, "--id-column"),
    ):
        if column not in names:
            raise ConfigError(
                f"training data has no column {column!r} (columns: {', '.join(names)}): pass "
                f"{option}"
            )


def check_inputs(source: str, config: TrainConfig) -> list[str]:
    """Everything about SOURCE a run needs, checked before anything is written: it exists, has
    the columns, and the --holdout folder. Returns its Parquet shards ([]: images to pack)."""
    uris = source_shards(source)
    check_columns(uris, config)
    if config.holdout:
        try:
            check_holdout_matches(config.holdout, top_folders(source, uris, config.id_column))
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
    return uris


@task(cache_policy=NO_CACHE)
def packed_source(source: str, out: str, uris: list[str]) -> tuple[str, list[str]]:
    """(archive, its Parquet shards): SOURCE's own, or its images packed under OUT/data, for
    train and crossval alike. Packing runs every time: it keeps the shards already there and
    writes the rest, so an interrupted pack is completed, never trained on in part."""
    if uris:
        return source, uris
    packed = storage.join(out, "data")
    try:
        return packed, pack_images(source, packed)
    except SourceError as exc:
        raise ConfigError(str(exc)) from exc


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
    show_progress: bool, init: dict[str, torch.Tensor] | None = None,
) -> float:  # fmt: skip
    """Ray Train (from INIT's weights: a fine-tune); a watcher thread turns OUT/progress.json
    into a progress bar and artifact."""
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
            fit(data["prepared"], out, config, data["prior"], s3_endpoint_url, scratch, init)
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
    fine_tuned = {"init": {"model": config.init, "id": config.init_id}} if config.init else {}
    colorizer.card.update(
        {
            "name": "archive-colorize " + config.arch,
            "training": {
                **colorizer.card.get("training", {}),
                **fine_tuned,
                # the card's "prior": what the rebalancing weighed and what decoding assumes
                "prior_from": (
                    f"the init model {config.init_id} (its training photos' colours: its output "
                    f"bins were trained against it)"
                    if config.init
                    else "this run's training photos (smoothed bin counts)"
                ),
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


DEFAULTS = option_defaults()  # train_model's and the CLI's defaults: TrainConfig's own


def selection(config: TrainConfig, out: str) -> dict[str, Any]:
    """Whether the photos the evaluation scores chose the model shipped, for the card: with
    --val-every the run ships best.pt, the checkpoint that scored best on the first
    --val-max-photos photos of the validation split, the split the evaluation then scores."""
    chosen = ships_best(out, config)
    note = (
        f"the model shipped is the checkpoint that scored best ({SELECT}) on the first "
        f"{config.val_max_photos} photos of this validation split, the photos scored here: "
        f"these figures flatter it (cross-validate, or evaluate on photos the run never saw)"
        if chosen
        else "the last checkpoint's weights: no photo chose them"
    )
    return {"selected_on_evaluated_photos": chosen, "selection": note}


def note_selection(out: str, markdown: str, chosen: dict[str, Any]) -> str:
    """MARKDOWN with the selection's caveat, which also goes into OUT/evaluation/evaluation.md
    (written by the evaluation, which cannot know how the model was chosen)."""
    if not chosen["selected_on_evaluated_photos"]:
        return markdown
    line = f"\n**Selection:** {chosen['selection']}.\n"
    uri = storage.join(out, "evaluation", "evaluation.md")
    storage.write_bytes(uri, storage.read_bytes(uri) + line.encode())
    return markdown + line


@flow(name="train-model")
def train_model(
    source: str,
    out: str,
    arch: str = DEFAULTS["arch"],
    steps: int = DEFAULTS["steps"],
    batch_size: int = DEFAULTS["batch_size"],
    lr: float = DEFAULTS["lr"],
    lr_schedule: str = DEFAULTS["lr_schedule"],
    crop: int = DEFAULTS["crop"],
    prepared: int | None = DEFAULTS["prepared"],
    scale_min: float = DEFAULTS["scale_min"],
    trainable_stages: int = DEFAULTS["trainable_stages"],
    unfreeze_at: int = DEFAULTS["unfreeze_at"],
    encoder_lr_scale: float = DEFAULTS["encoder_lr_scale"],
    ema_decay: float = DEFAULTS["ema_decay"],
    weight_decay: float = DEFAULTS["weight_decay"],
    dropout: float | None = DEFAULTS["dropout"],
    degrade: float = DEFAULTS["degrade"],
    film: float = DEFAULTS["film"],
    hints: float = DEFAULTS["hints"],
    hint_points: float = DEFAULTS["hint_points"],
    stamps: str = DEFAULTS["stamps"],
    paste: float = DEFAULTS["paste"],
    val_fraction: float = DEFAULTS["val_fraction"],
    fold: int = DEFAULTS["fold"],
    holdout: str = DEFAULTS["holdout"],
    workers: int = DEFAULTS["workers"],
    checkpoint_every: int = DEFAULTS["checkpoint_every"],
    prepared_data: str | None = None,
    val_every: int = DEFAULTS["val_every"],
    val_max_photos: int = DEFAULTS["val_max_photos"],
    patience: int = DEFAULTS["patience"],
    loader_threads: int = DEFAULTS["loader_threads"],
    soft_k: int = DEFAULTS["soft_k"],
    seed: int = DEFAULTS["seed"],
    image_column: str = DEFAULTS["image_column"],
    id_column: str = DEFAULTS["id_column"],
    init: str = DEFAULTS["init"],
    ray_address: str | None = None,
    s3_endpoint_url: str | None = None,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Train ARCH on the colour photos of SOURCE (Parquet archive or image folder, local or
    s3://) into OUT (local or s3://): checkpoints, model.safetensors with its card, loss.png,
    and the validation evaluation against the gray baseline. The prepared data goes under
    PREPARED_DATA (local or s3://, shared by runs) or OUT/prepared. The recipe's options and
    their defaults are TrainConfig's (pipeline/training/config.py). INIT: a model to fine-tune
    (its weights, architecture and prior) instead of starting from ImageNet."""
    # the parameters named as TrainConfig's fields are the recipe (Prefect and deployments
    # need them spelled out; tests/test_cli.py checks they are OPTIONS, at its defaults)
    options = {k: v for k, v in locals().items() if k in OPTIONS}
    storage.configure(s3_endpoint_url)  # an s3:// --init is read by train_config
    config = train_config(options)
    uris = check_inputs(source, config)
    check_recipe(out, config)
    ensure_ray(ray_address)
    config.threads_per_worker = max(1, int(ray.cluster_resources().get("CPU", 1)) // workers)
    archive, uris = packed_source(source, out, uris)
    data = prepare_data(archive, uris, out, config, prepared_data, s3_endpoint_url)
    try:
        check_resumable(out, data["prepared"])
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    init_weights = None
    if config.init:  # its prior, not the data's: the one its output bins were trained against
        init_weights, data["prior"] = init_model(config)
        get_run_logger().info("fine-tuning %s (%s): its weights and its prior", config.init,
                              config.init_id)  # fmt: skip
    claim_run(out, config)
    seconds = run_training(data, out, config, s3_endpoint_url, show_progress, init_weights)
    model_uri = save_model(out, config, data, source, seconds, None)
    evaluation = evaluate_model(
        source=archive,
        model=model_uri, out=storage.join(out, "evaluation"), split="val",
        val_fraction=config.val_fraction, fold=config.fold, holdout=config.holdout,
        image_column=config.image_column, id_column=config.id_column,
        ray_address=ray_address, s3_endpoint_url=s3_endpoint_url,
    )  # fmt: skip
    chosen = selection(config, out)
    card_metrics = {**{k: v for k, v in evaluation.items() if k != "samples"}, **chosen}
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
    markdown = note_selection(out, markdown, chosen)
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
