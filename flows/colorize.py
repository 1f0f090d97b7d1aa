"""The main job: colorize a whole archive, resumably, as a Prefect flow over Ray actors.

The flow handles URIs and statistics only: it validates the request, lists shards, skips the
committed ones, hands the rest to the actor pool, and publishes the report. Pixels stay in
the actors (and in the Ray task that draws the contact sheet).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
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
from models.nets import takes_hints
from pipeline.archive import hint_record, manifest, storage
from pipeline.archive.shards import ColumnNames, Shard, check_columns, list_shards, shard_ids
from pipeline.archive.stats import ShardStats
from pipeline.colorize.hints import HintsError, load_document
from pipeline.colorize.int8 import check_twin
from pipeline.colorize.precision import check_precision
from pipeline.colorize.runner import ActorPool, ActorSpec, ensure_ray, run_shards
from pipeline.colorize.worker import ColorizeOptions, model_id, resolve_model
from pipeline.imaging.images import DEFAULT_MAX_PIXELS
from pipeline.review import gallery, report


class ConfigError(ValueError):
    """A bad request, found before any work; the message says how to fix it."""


@dataclass
class Plan:
    todo: list[Shard]
    skipped: list[str]
    settings: dict[str, Any]  # DEST's manifest's (pipeline/archive/manifest.py): this run's


@dataclass(frozen=True)
class ModelFacts:
    id: str  # `worker.model_id`: what rows and DEST's manifest record
    temperature: float  # its own, from its card: the one in effect when none is given
    takes_hints: bool = False  # a hint-aware model (`colorize --hints`)


def check_workers_precision(precision: str, model: str, gpu: bool) -> None:
    """ConfigError, saying what to use, unless workers (with a GPU or not) can run MODEL's
    network in PRECISION: fp16 and int8 where their hardware is, int8 with the model's twin."""
    device = torch.device("cuda" if gpu else "cpu")
    try:
        check_precision(precision, device)
        if precision == "int8":
            with resolve_model(model) as path:
                check_twin(path, device)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def check_model(model: str) -> ModelFacts:
    """The model's id and own temperature, or a ConfigError naming what to pass instead."""
    try:
        with resolve_model(model) as path:
            card = models.read_card(path)
            config = card["config"]
            return ModelFacts(
                model_id(path), float(config["temperature"]), takes_hints(str(config["arch"]))
            )
    except FileNotFoundError as exc:
        hint = "no trained default model is installed; " if model == "default" else ""
        raise ConfigError(f"{hint}cannot read model {model!r}: {exc}. Pass --model PATH") from exc
    except Exception as exc:
        raise ConfigError(
            f"cannot read model {model!r} ({type(exc).__name__}: {exc}): pass a checkpoint "
            "written by models.save (a .safetensors file, local or s3://) or 'default'"
        ) from exc


def run_settings(model: ModelFacts, options: ColorizeOptions) -> dict[str, Any]:
    """The settings this run's output is made with, as DEST's manifest records them."""
    temperature = options.temperature
    if temperature is None:  # the model's own, as `Colorizer.decode` takes it
        temperature = model.temperature
    return manifest.output_settings(
        model.id,
        temperature,
        options.output_format,
        options.quality,
        options.precision,
        options.metrics_max_side,
    )


@task(cache_policy=NO_CACHE)
def plan_run(
    source: str,
    dest: str,
    model: str,
    options: ColorizeOptions,
    shard_size: int,
    recolorize: bool = False,
    add_source: bool = False,
    hints_file: str | None = None,
) -> Plan:
    """Check the request and DEST's manifest (settings, then source) before anything is
    written; then list the shards and keep those not yet committed with the manifest's
    settings (and, for shards holding hinted ids, the hints in effect: archive/hint_record.py).
    With `hints_file`, its hints are checked (ids in SOURCE, points, colours, a hint-aware
    model) and join DEST's, and only the shards holding its ids are to do. `source` is
    normalised (`storage.normalize`)."""
    try:
        options.validate()
        facts = check_model(model)
        new_hints = read_hints_file(hints_file, facts, model) if hints_file else None
        settings = run_settings(facts, options)
        committed = {s.shard: s for s in report.load_committed_stats(dest)}
        current, write_manifest = manifest.reconcile(
            dest, settings, list(committed.values()), recolorize
        )
        current, namespace, new_source = manifest.admit_source(dest, current, source, add_source)
        # with a hints file, the listing is frozen in DEST only once the file is found good
        shards = list_shards(source, dest, shard_size, namespace, freeze=new_hints is None)
        check_made_from(dest, shards, committed)
        columns = ColumnNames(options.image_column, options.id_column)
        check_columns(shards[0], columns)
        kept_hints = hint_record.read(dest)
        in_effect = kept_hints
        if new_hints is not None:
            in_effect = hint_record.merged(kept_hints, new_hints)
        if in_effect and not facts.takes_hints:
            raise ConfigError(
                f"DEST {dest} keeps colour hints ({hint_record.HINTS}) and model {model!r} "
                "takes none: colorize it with a hint-aware model (the default is one)"
            )
        ids = {s.name: shard_ids(s, columns) for s in shards} if in_effect or new_hints else {}
        hinted_shards = check_hinted_ids(new_hints, ids) if new_hints is not None else None
    except ConfigError:
        raise
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    if new_hints is not None:
        shards = list_shards(source, dest, shard_size, namespace)  # the same shards, frozen
    if write_manifest or new_source:
        manifest.write(dest, current)
    if in_effect != kept_hints:  # a second identical --hints run writes nothing
        hint_record.write(dest, in_effect)

    def current_for(shard: Shard) -> bool:
        stats = committed[shard.name]
        shard_hints = hint_record.of_ids(in_effect, ids.get(shard.name, []))
        if not shard_hints:
            return manifest.is_current(stats, current)
        want = hint_record.shard_settings_hash(
            current["settings"], current["settings_hash"], shard_hints
        )
        return stats.settings == want

    done = {s.name for s in shards if s.name in committed and current_for(s)}
    todo = [s for s in shards if s.name not in done]
    if hinted_shards is not None:  # --hints: the shards of its ids, and nothing else
        todo = [s for s in todo if s.name in hinted_shards]
        done = {s.name for s in shards} - {s.name for s in todo}
    redo = sum(s.name in committed for s in todo)
    get_run_logger().info(
        "%d shards: %d already committed, %d to do (%d of them to redo with DEST's settings)",
        len(shards),
        len(done),
        len(todo),
        redo,
    )
    return Plan(todo, sorted(done), current["settings"])


def read_hints_file(hints_file: str, facts: ModelFacts, model: str) -> dict[str, Any]:
    """The hints file's document, checked (pipeline/colorize/hints.py), for a model that takes
    hints; else a ConfigError that names the problem (and the id)."""
    if not facts.takes_hints:
        raise ConfigError(
            f"--hints: model {model!r} takes no colour hints; use a hint-aware model (the "
            "default is one; `train --arch lite2-plain-hints --hints 0.5` makes one)"
        )
    try:
        text = storage.read_bytes(hints_file)
    except Exception as exc:
        raise ConfigError(f"--hints {hints_file}: cannot read it ({exc})") from exc
    try:
        document, _ = load_document(text)
    except HintsError as exc:
        raise ConfigError(f"--hints {hints_file}: {exc}") from exc
    return document


def check_hinted_ids(new_hints: dict[str, Any], ids: dict[str, list[str]]) -> set[str]:
    """The names of the shards holding the hints file's ids; an id in no shard of SOURCE is a
    ConfigError naming it."""
    where = {row_id: name for name, shard_rows in ids.items() for row_id in shard_rows}
    unknown = sorted(set(new_hints) - set(where))
    if unknown:
        shown = ", ".join(repr(u) for u in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise ConfigError(
            f"--hints: {len(unknown)} id(s) of the hints file are not in SOURCE: {shown}. "
            "Nothing was written. Ids are the rows' `id` (a folder's: the file's path under "
            "it, as the gallery shows them)"
        )
    return {where[row_id] for row_id in new_hints}


def check_made_from(dest: str, shards: list[Shard], committed: dict[str, ShardStats]) -> None:
    """A committed shard of one of these names must have been made from this very input: else
    it is another source's output under the same name (a DEST older than its manifest's
    sources, adopted with the wrong SOURCE) and would be skipped as done."""
    for shard in shards:
        made = committed.get(shard.name)
        if made is not None and not storage.same_place(made.source, storage.normalize(shard.uri)):
            raise ConfigError(
                f"DEST {dest}'s shard {shard.name} was made from {made.source}, not from this "
                f"run's {shard.uri}: DEST holds another source's output under the same names. "
                "Nothing was written. Run it first with the SOURCE it was made from (DEST then "
                "records it), then this one with --add-source; or write to a new DEST."
            )


@task(cache_policy=NO_CACHE)
def process_shards(
    plan: Plan,
    dest: str,
    model: str,
    options: ColorizeOptions,
    actors: int | None,
    in_flight: int,
    max_attempts: int,
    s3_endpoint_url: str | None,
    show_progress: bool,
) -> dict[str, Any]:
    logger = get_run_logger()
    total = len(plan.todo)
    if not total:
        return {"done": [], "failed": [], "retries": 0}
    spec = ActorSpec(model, options, s3_endpoint_url=s3_endpoint_url)
    pool = ActorPool(spec, run=uuid.uuid4().hex[:8], actors=actors)
    progress_id = create_progress_artifact(
        progress=0.0, key="colorize-progress", description=f"shards of {dest}"
    )
    bar = _progress_bar(total, show_progress)
    images = errors = 0

    def on_shard(stats: dict[str, Any]) -> None:
        nonlocal images, errors
        images += stats["rows"]
        errors += stats["errors"]  # running totals of this run, like the bar itself
        bar.update(1)
        bar.set_postfix(images=images, errors=errors)
        done = bar.n
        update_progress_artifact(progress_id, progress=100.0 * done / total)  # type: ignore[arg-type]
        logger.info("shard %s: %d rows, %d errors", stats["shard"], stats["rows"], stats["errors"])

    try:
        outcome = run_shards(
            plan.todo,
            dest,
            pool,
            in_flight=in_flight,
            max_attempts=max_attempts,
            on_shard=on_shard,
        )
    finally:
        bar.close()
        pool.stop()
    return {"done": outcome.done, "failed": outcome.failed, "retries": outcome.retries}


def _progress_bar(total: int, show: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit="shard", disable=not show, dynamic_ncols=True)


@task(cache_policy=NO_CACHE)
def publish_report(
    source: str,
    dest: str,
    model: str,
    outcome: dict[str, Any],
    skipped: list[str],
    seconds: float,
    s3_endpoint_url: str | None,
    settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    run_names = [s["shard"] for s in outcome["done"]]
    # The contact sheet is drawn from thumbnails and the gallery is built from the output's
    # light columns, each in a Ray task (side by side): pixels never enter the flow.
    writer: Any = ray.remote(num_cpus=0)(report.write_run_report)  # type: ignore[arg-type]
    gallery_writer: Any = ray.remote(num_cpus=0)(gallery.write_gallery)
    gallery_ref = gallery_writer.remote(dest, s3_endpoint_url=s3_endpoint_url)
    result: dict[str, Any] = ray.get(
        writer.remote(
            dest,
            source=source,
            model=model,
            run_shards=run_names,
            shards_skipped=len(skipped),
            shards_failed=outcome["failed"],
            seconds=seconds,
            s3_endpoint_url=s3_endpoint_url,
            settings=settings,
        )
    )
    review: dict[str, Any] = ray.get(gallery_ref)
    create_markdown_artifact(
        markdown=result["artifact"], key="colorize-report", description=f"report for {dest}"
    )
    rows = [
        {"metric": name, **{k: m[k] for k in ("count", "mean", "std", "min", "max")}}
        for name, m in result["report"]["metrics"].items()
    ]
    if rows:
        create_table_artifact(table=rows, key="colorize-metrics", description="per-image metrics")
    summary: dict[str, Any] = result["report"]
    summary["gallery"] = review["index"]
    return summary


@flow(name="colorize-archive", log_prints=True)
def colorize_archive(
    source: str,
    dest: str,
    model: str = "default",
    temperature: float | None = None,
    batch_size: int = 8,
    actors: int | None = None,
    ray_address: str | None = None,
    shard_size: int = 256,
    image_column: str = "image",
    id_column: str = "id",
    output_format: str = "jpeg",
    quality: int = 95,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    metrics_max_side: int = 512,
    precision: str = "fp32",
    in_flight: int = 2,
    max_attempts: int = 3,
    s3_endpoint_url: str | None = None,
    show_progress: bool = False,
    recolorize: bool = False,
    add_source: bool = False,
    hints: str | None = None,
) -> dict[str, Any]:
    """Colorize every image of SOURCE (Parquet shards or image files, local or s3://) into
    DEST: one output shard per input shard, committed by its stats file; re-runs resume.
    `temperature` None: the model's own (its card's).

    DEST/_manifest.json records the model and settings DEST is made with: a run with other
    ones refuses before it writes anything (ConfigError), unless `recolorize`, which makes them
    DEST's and redoes every shard, each replaced when its new output commits. It records the
    SOURCE too: a run from another refuses the same way, unless `add_source`, which adds it
    to DEST in a namespace of its own (pipeline/archive/shards.py).

    HINTS: a hints file (local or s3://; pipeline/colorize/hints.py) of colour hints per row
    id: they join those DEST keeps (DEST/_hints.json) and only the shards holding its ids are
    colorized again, each replaced whole when its new output commits."""
    started = time.perf_counter()
    storage.configure(s3_endpoint_url)
    source = storage.normalize(source)  # one spelling, as DEST's manifest records it
    options = ColorizeOptions(
        temperature=temperature,
        batch_size=batch_size,
        image_column=image_column,
        id_column=id_column,
        output_format=output_format,
        quality=quality,
        max_pixels=max_pixels,
        metrics_max_side=metrics_max_side,
        precision=precision,
    )
    ensure_ray(ray_address)
    # before anything is written: a precision the workers cannot run
    check_workers_precision(precision, model, bool(ray.cluster_resources().get("GPU")))
    plan = plan_run(source, dest, model, options, shard_size, recolorize, add_source, hints)
    outcome = process_shards(
        plan,
        dest,
        model,
        options,
        actors,
        in_flight,
        max_attempts,
        s3_endpoint_url,
        show_progress,
    )
    storage.clean_staging(dest)
    seconds = time.perf_counter() - started
    result = publish_report(
        source, dest, model, outcome, plan.skipped, seconds, s3_endpoint_url, plan.settings
    )
    result["retries"] = outcome["retries"]
    return result
