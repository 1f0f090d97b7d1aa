"""Prefect flow: k-fold cross-validation of a training recipe.

The corpus is packed once; fold f trains the recipe (the `train_model` flow) with the ids
hashed into [f/k, (f+1)/k) held out (or, `by_folder`, every photo of one source folder: leave
one source out), and scores the model on them against the gray baseline,
on clean inputs (training's own evaluation) and on their old-print versions. The figures of
every fold, their mean and spread go to OUT/crossval.json and crossval.md. Re-running resumes:
a fold whose evaluations exist is not trained again, and an interrupted one resumes from its
checkpoints.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

import models
from flows.colorize import ConfigError
from flows.evaluate import evaluate_model
from flows.train import recorded_recipe, train_model
from pipeline.archive import storage
from pipeline.archive.pack import pack_images
from pipeline.archive.shards import SourceError
from pipeline.training.config import describe_differences, recipe_differences
from pipeline.training.crossval import crossval_markdown, fold_figures, summarise
from pipeline.training.prepared import source_folders


def packed_archive(source: str, out: str) -> str:
    """SOURCE if it holds Parquet shards, else its images packed once under OUT/data."""
    try:
        if any(u.endswith(".parquet") for u in storage.list_files(source)):
            return source
        packed = storage.join(out, "data")
        if not any(u.endswith(".parquet") for u in storage.list_files(packed)):
            pack_images(source, packed)
        return packed
    except SourceError as exc:
        raise ConfigError(str(exc)) from exc


@flow(name="cross-validate")
def cross_validate(
    source: str,
    out: str,
    recipe: dict[str, Any] | None = None,
    folds: int = 5,
    ray_address: str | None = None,
    s3_endpoint_url: str | None = None,
    show_progress: bool = False,
    final: bool = False,
    by_folder: bool = False,
) -> dict[str, Any]:
    """Train RECIPE (`train_model` options) FOLDS times on SOURCE, each time holding out one
    fold, and score each model on its fold, clean and as old prints. With FINAL, then train
    the recipe on every photo into OUT/final, its card carrying the cross-validated figures:
    the model to ship. BY_FOLDER: one fold per top folder of the ids instead (OUT/fold-NAME),
    each model scored on a source it never saw: the figure for an archive's own photos."""
    recipe = dict(recipe or {})
    if not 2 <= folds <= 20:
        raise ConfigError(f"--folds must be in 2..20, got {folds}")
    for name in ("val_fraction", "fold", "holdout", "source", "out"):
        if name in recipe:
            raise ConfigError(f"cross-validation sets {name} itself; do not pass it")
    storage.configure(s3_endpoint_url)
    logger = get_run_logger()
    archive = packed_archive(source, out)
    splits: dict[str, dict[str, Any]] = {
        str(k): {"val_fraction": 1.0 / folds, "fold": k} for k in range(folds)
    }
    if by_folder:
        names = source_folders(archive, recipe.get("id_column", "id"))
        if len(names) < 2:
            raise ConfigError(
                f"--by-folder needs photos in at least two top folders of {source}, found "
                f"{names or 'none'}: arrange the corpus by source, or use --folds"
            )
        splits = {name: {"holdout": name} for name in names}
    where: dict[str, Any] = {"ray_address": ray_address, "s3_endpoint_url": s3_endpoint_url}
    clean, old_print = [], []
    for name, split in splits.items():
        fold_out = storage.join(out, f"fold-{name}")
        evaluation = storage.read_json(storage.join(fold_out, "evaluation", "evaluation.json"))
        recorded = recorded_recipe(fold_out)
        wanted = {k: v for k, v in {**recipe, **split}.items() if v is not None}
        differences = {} if recorded is None else recipe_differences(recorded, wanted)
        if differences:  # a fold of another recipe must not stand in for this one's
            raise ConfigError(
                f"{fold_out} was trained with other settings ({describe_differences(differences)})"
                f": cross-validate this recipe into a new OUT"
            )
        if evaluation is None:
            train_model(source=archive, out=fold_out, show_progress=show_progress,
                        **split, **where, **recipe)  # fmt: skip
            evaluation = storage.read_json(storage.join(fold_out, "evaluation", "evaluation.json"))
        degraded_out = storage.join(fold_out, "evaluation-old-print")
        degraded = storage.read_json(storage.join(degraded_out, "evaluation.json"))
        if degraded is None:
            degraded = evaluate_model(
                source=archive, model=storage.join(fold_out, "model.safetensors"),
                out=degraded_out, split="val", degrade=True, **split, **where,
            )  # fmt: skip
        assert evaluation is not None and degraded is not None
        clean.append(fold_figures(evaluation))
        old_print.append(fold_figures(degraded))
        logger.info("fold %s (%d of %d): %s", name, len(clean), len(splits), clean[-1])
    result = {
        "source": source,
        "folds": len(splits),
        "fold_names": list(splits) if by_folder else None,
        "recipe": recipe,
        "clean": summarise(clean),
        "old_print": summarise(old_print),
        "per_fold": {"clean": clean, "old_print": old_print},
    }
    markdown = crossval_markdown(result)
    storage.write_bytes(storage.join(out, "crossval.json"), json.dumps(result, indent=2).encode())
    storage.write_bytes(storage.join(out, "crossval.md"), markdown.encode())
    create_markdown_artifact(markdown=markdown, key="crossval")
    if final:
        result["final"] = train_final(archive, storage.join(out, "final"), recipe, result, where,
                                      show_progress)  # fmt: skip
    return result


def train_final(
    archive: str, out: str, recipe: dict[str, Any], result: dict[str, Any],
    where: dict[str, Any], show_progress: bool,
) -> str:  # fmt: skip
    """The recipe trained on every photo (no validation split: the folds measured it), its
    card carrying the cross-validated figures, as OUT/model.safetensors (+ model.json)."""
    uri = storage.join(out, "model.safetensors")
    train_model(source=archive, out=out, val_fraction=0.0, fold=0, show_progress=show_progress,
                **where, **recipe)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "model.safetensors"
        local.write_bytes(storage.read_bytes(uri))
        colorizer = models.load(local)
        colorizer.card["metrics"] = None  # no held-out photos: the folds' figures stand for it
        colorizer.card["crossval"] = {k: result[k] for k in ("folds", "clean", "old_print")}
        models.save(colorizer, local)
        storage.put_file(local, uri)
        storage.put_file(local.with_suffix(".json"), storage.join(out, "model.json"))
    return uri
