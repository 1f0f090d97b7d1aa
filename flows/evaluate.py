"""Prefect flow: evaluate a model against the gray baseline on an archive of colour photos."""

from __future__ import annotations

from typing import Any

import ray
import torch
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

import models
from flows.colorize import ConfigError, check_model, check_workers_precision
from models import nets
from pipeline.archive import storage
from pipeline.archive.shards import ColumnNames, SourceError, list_shards
from pipeline.colorize.runner import ensure_ray
from pipeline.colorize.worker import resolve_model
from pipeline.imaging.degrade import FILMS
from pipeline.training.config import check_fold, check_holdout
from pipeline.training.evaluate import (
    SPLITS,
    evaluate_shard,
    evaluation_markdown,
    merge_evaluations,
    write_evaluation,
)

MAX_EVALUATION_HINTS = 256


def takes_hints(model: str) -> bool:
    with resolve_model(model) as path:
        return nets.takes_hints(str(models.read_card(path)["config"]["arch"]))


@task(cache_policy=NO_CACHE)
def evaluate_shards(
    source: str,
    out: str,
    model: str,
    split: str,
    val_fraction: float,
    fold: int,
    holdout: str,
    degrade: bool,
    film: str | None,
    hints: int,
    columns: ColumnNames,
    temperature: float | None,
    chroma_gain: float | None,
    flip_average: bool | None,
    precision: str,
    s3_endpoint_url: str | None,
) -> dict[str, Any]:
    try:
        shards = list_shards(source, out)
    except SourceError as exc:
        raise ConfigError(str(exc)) from exc
    remote: Any = ray.remote(num_cpus=1, max_retries=2)(evaluate_shard)
    refs = [
        remote.remote(
            model,
            shard,
            split=split,
            val_fraction=val_fraction,
            fold=fold,
            holdout=holdout,
            degrade=degrade,
            film=film,
            hints=hints,
            columns=columns,
            temperature=temperature,
            chroma_gain=chroma_gain,
            flip_average=flip_average,
            precision=precision,
            s3_endpoint_url=s3_endpoint_url,
            sample_uri=storage.join(out, "_samples", f"{shard.name}.png"),
        )
        for shard in shards
    ]
    parts = ray.get(refs)
    merged = merge_evaluations(parts)
    merged["samples"] = [p["sample"] for p in parts if p["sample"]]
    return merged


@flow(name="evaluate-model")
def evaluate_model(
    source: str,
    model: str = "default",
    out: str = "out/evaluate",
    split: str = "val",
    val_fraction: float = 0.1,
    fold: int = 0,
    holdout: str = "",
    degrade: bool = False,
    film: str | None = None,
    hints: int = 0,
    temperature: float | None = None,
    chroma_gain: float | None = None,
    flip_average: bool | None = None,
    precision: str = "fp32",
    image_column: str = "image",
    id_column: str = "id",
    ray_address: str | None = None,
    s3_endpoint_url: str | None = None,
) -> dict[str, Any]:
    """Score MODEL and the gray baseline on the colour photos of SPLIT of SOURCE; write
    OUT/evaluation.json, evaluation.md and contact_sheet.png. SPLIT and FOLD select rows by
    id hash as training does (HOLDOUT: the photos under that top folder); DEGRADE scores the
    old-print versions of the photos; FILM (a name of pipeline.imaging.degrade.FILMS) the
    photos as shot on that film: its gray is the L both the model and the gray baseline see
    (then damaged, with DEGRADE), scored against the true colours. TEMPERATURE and CHROMA_GAIN
    decode otherwise than the model's card says. HINTS N > 0 gives a hint-aware model N hint
    points per photo drawn from its true colours (a fixed seed per id) and scores it beside
    its automatic self (no hints) and the gray baseline, with its ab error at the points.
    PRECISION: the network's number type, as colorize's --precision."""
    if split not in SPLITS:
        raise ConfigError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    if film is not None and film not in FILMS:
        raise ConfigError(
            f"--film must name one of the films {', '.join(FILMS)} (or be left out for Lab's "
            f"L), got {film!r}"
        )
    if chroma_gain is not None and not 0 < chroma_gain <= 3:
        raise ConfigError(
            f"--chroma-gain must be in (0, 3] (1: the annealed mean as is), got {chroma_gain}"
        )
    try:
        check_fold(fold, val_fraction)
        check_holdout(holdout)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    if not 0 <= hints <= MAX_EVALUATION_HINTS:
        raise ConfigError(
            f"--hints must be a number of hint points per photo in 0..{MAX_EVALUATION_HINTS} "
            f"(0: none), got {hints}"
        )
    storage.configure(s3_endpoint_url)
    check_model(model)
    check_workers_precision(precision, model, torch.cuda.is_available())  # local workers
    if hints and not takes_hints(model):
        raise ConfigError(
            f"--hints {hints}: model {model!r} takes no colour hints; evaluate a hint-aware "
            "model (architecture ending in -hints, trained with `train --hints`)"
        )
    ensure_ray(ray_address)
    evaluation = evaluate_shards(
        source,
        out,
        model,
        split,
        val_fraction,
        fold,
        holdout,
        degrade,
        film,
        hints,
        ColumnNames(image_column, id_column),
        temperature,
        chroma_gain,
        flip_average,
        precision,
        s3_endpoint_url,
    )
    evaluation.update(
        split=split, val_fraction=val_fraction, fold=fold, holdout=holdout, degrade=degrade,
        film=film, source=source, model=model, flip_average=flip_average,
    )  # fmt: skip
    markdown = evaluation_markdown(evaluation, model, source, split)
    writer: Any = ray.remote(num_cpus=0)(write_evaluation)  # samples stay out of the flow
    artifact = ray.get(writer.remote(out, evaluation, markdown, s3_endpoint_url))
    create_markdown_artifact(
        markdown=artifact, key="evaluation", description=f"{model} on {source}"
    )
    rows = [
        {"metric": k, "model": v["model"], "gray": v["gray"]}
        for k, v in evaluation["metrics"].items()
    ]
    if rows:
        create_table_artifact(table=rows, key="evaluation-metrics")
    return evaluation
