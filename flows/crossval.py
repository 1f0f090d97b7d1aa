"""Prefect flow: k-fold cross-validation of a training recipe.

The corpus is packed once (an interrupted pack is completed); fold f trains the recipe (the
`train_model` flow) with the ids hashed into [f/k, (f+1)/k) held out (or, `by_folder`, every
photo of one source folder: leave one source out; or, `groups`, every photo of a group of
source folders, the groups of similar size), and scores the model on them against the
gray baseline, on clean inputs (training's own evaluation) and on their old-print versions.
Every option, and every fold's recorded recipe, is checked before the first fold trains. The
figures of every fold, their mean and spread go to OUT/crossval.json and crossval.md.
Re-running resumes: a fold whose evaluations exist is not trained again, and an interrupted
one resumes from its checkpoints.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

import models
from flows.colorize import ConfigError
from flows.evaluate import evaluate_model
from flows.train import (
    check_inputs,
    image_ids,
    packed_source,
    recipe_conflict,
    train_config,
    train_model,
)
from pipeline.archive import storage
from pipeline.training.config import SPLIT_OPTIONS, TrainConfig
from pipeline.training.crossval import (
    COLOUR_FLOOR,
    Decoding,
    choose_decoding,
    crossval_markdown,
    fold_figures,
    group_sources,
    summarise,
)
from pipeline.training.prepared import source_sizes, top_folder

FINAL_SPLIT: dict[str, Any] = {"val_fraction": 0.0, "fold": 0}  # every photo trains


@dataclass(frozen=True)
class Fold:
    """One fold: its name in the report, its run folder under OUT, the split options that
    hold it out, and (--groups) the source folders it holds out with their photos."""

    name: str
    folder: str
    split: dict[str, Any]
    sources: dict[str, int] = field(default_factory=dict)


def check_request(
    recipe: dict[str, Any], folds: int, final: bool, by_folder: bool = False,
    groups: int | None = None, decodings: list[str] | None = None,
) -> None:  # fmt: skip
    """The options crossval itself owns, checked before anything runs."""
    for text in decodings or []:
        try:
            Decoding.parse(text)
        except ValueError as exc:
            raise ConfigError(
                f"--decodings takes temperatures, each with an optional chroma gain after an "
                f"x, separated by commas (e.g. 0.26,0.18,0.26x1.15): {exc}"
            ) from None
    if not 2 <= folds <= 20:
        raise ConfigError(f"--folds must be in 2..20, got {folds}")
    if groups is not None:
        if by_folder:
            raise ConfigError(
                "--groups and --by-folder are two ways to leave sources out: one fold per "
                "group of source folders, or one per source folder; pass one of them"
            )
        if not 2 <= groups <= 20:
            raise ConfigError(f"--groups must be in 2..20, got {groups}")
    for name in (*SPLIT_OPTIONS, "source", "out"):
        if name in recipe:
            raise ConfigError(f"cross-validation sets {name} itself; do not pass it")
    if final and (recipe.get("val_every") or recipe.get("patience")):
        raise ConfigError(
            "--final trains on every photo, with no validation split to choose its checkpoint "
            "by: with --val-every/--patience the folds would measure a recipe the final model "
            "does not follow. Drop --val-every and --patience, or drop --final"
        )


def source_photos(source: str, uris: list[str], id_column: str) -> dict[str, int]:
    """{top folder of SOURCE's ids: its ids}, by name ("": photos at its top level)."""
    if uris:
        return source_sizes(source, id_column)
    return dict(sorted(Counter(top_folder(i) for i in image_ids(source)).items()))


def fold_splits(
    source: str, uris: list[str], config: TrainConfig, folds: int, by_folder: bool,
    groups: int | None = None,
) -> list[Fold]:  # fmt: skip
    """The folds: FOLDS by id hash (OUT/fold-K), or one per top folder of the ids
    (OUT/fold-NAME), or GROUPS groups of top folders of similar size (OUT/group-K)."""
    if not by_folder and groups is None:
        return [Fold(str(k), f"fold-{k}", {"val_fraction": 1.0 / folds, "fold": k})
                for k in range(folds)]  # fmt: skip
    option = "--by-folder" if by_folder else f"--groups {groups}"
    sizes = source_photos(source, uris, config.id_column)
    if "" in sizes:  # --holdout "" means no holdout: these would form a hash split
        raise ConfigError(
            f"{option}: some photos of {source} are at its top level, in no source folder: "
            f"move them into a folder of their own (each top folder is one source), or use "
            f"--folds"
        )
    commas = [name for name in sizes if "," in name]
    if commas:  # --holdout a,b names two folders
        raise ConfigError(
            f"{option}: the source folders {commas} of {source} have a comma in their name, "
            f"which --holdout reads as a list of folders: rename them"
        )
    if len(sizes) < max(2, groups or 0):
        raise ConfigError(
            f"{option} needs photos in at least {max(2, groups or 0)} top folders of "
            f"{source}, found {list(sizes) or 'none'}: arrange the corpus by source, or use "
            f"--folds"
        )
    if by_folder:
        return [Fold(name, f"fold-{name}", {"holdout": name}) for name in sizes]
    return [
        Fold(f"group-{k}", f"group-{k}", {"holdout": ",".join(names)},
             {name: sizes[name] for name in names})
        for k, names in enumerate(group_sources(sizes, groups or 0))
    ]  # fmt: skip


def group_records(splits: list[Fold]) -> list[dict[str, Any]]:
    """--groups: each fold's name, holdout, photos and its sources' photos, for crossval.json."""
    return [{"name": f.name, "holdout": f.split["holdout"], "photos": sum(f.sources.values()),
             "sources": f.sources} for f in splits]  # fmt: skip


def check_runs(runs: dict[str, TrainConfig]) -> None:
    """A run folder of another recipe must not stand in for this one's: every fold's (and the
    final model's) checked before the first trains."""
    for run_out, config in runs.items():
        conflict = recipe_conflict(run_out, config)
        if conflict:
            raise ConfigError(
                f"{run_out} was trained with other settings ({conflict}): cross-validate this "
                f"recipe into a new OUT"
            )


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
    groups: int | None = None,
    decodings: list[str] | None = None,
) -> dict[str, Any]:
    """Train RECIPE (`train_model` options) FOLDS times on SOURCE, each time holding out one
    fold, and score each model on its fold, clean and as old prints. With FINAL, then train
    the recipe on every photo into OUT/final, its card carrying the cross-validated figures:
    the model to ship. BY_FOLDER: one fold per top folder of the ids instead (OUT/fold-NAME),
    each model scored on a source it never saw: the figure for an archive's own photos.
    GROUPS: the top folders in GROUPS folds of similar size instead (OUT/group-K), no source
    split: each model scored on sources it never saw, fewer and steadier folds. DECODINGS
    (`Decoding` texts: temperature[xchroma gain]): each fold model is also scored decoded so,
    and the decoding to ship chosen by the folds (`choose_decoding`): the final model decodes
    so, its card says why."""
    recipe = {k: v for k, v in (recipe or {}).items() if v is not None}  # None: the default
    check_request(recipe, folds, final, by_folder, groups, decodings)
    storage.configure(s3_endpoint_url)
    uris = check_inputs(source, train_config(recipe))
    splits = fold_splits(source, uris, train_config(recipe), folds, by_folder, groups)
    runs = {storage.join(out, fold.folder): train_config({**recipe, **fold.split})
            for fold in splits}  # fmt: skip
    if final:
        runs[storage.join(out, "final")] = train_config({**recipe, **FINAL_SPLIT})
    check_runs(runs)
    logger = get_run_logger()
    archive, _ = packed_source(source, out, uris)
    where: dict[str, Any] = {"ray_address": ray_address, "s3_endpoint_url": s3_endpoint_url}
    clean, old_print, own_decodings = [], [], set()
    for fold in splits:
        fold_out = storage.join(out, fold.folder)
        evaluation, degraded = evaluate_fold(
            archive, fold_out, runs[fold_out], {**fold.split, **recipe}, where, show_progress
        )
        clean.append(fold_figures(evaluation))
        old_print.append(fold_figures(degraded))
        # an evaluation older than its decoding's record decoded as the only one of its time
        own_decodings.add(Decoding(evaluation.get("temperature", models.DEFAULT_TEMPERATURE),
                                   evaluation.get("chroma_gain", 1.0)))  # fmt: skip
        logger.info("fold %s (%d of %d): %s", fold.name, len(clean), len(splits), clean[-1])
    result = {
        "source": source,
        "folds": len(splits),
        "fold_names": [f.name for f in splits] if by_folder or groups is not None else None,
        "groups": group_records(splits) if groups is not None else None,
        "recipe": recipe,
        # with --val-every each fold ships the checkpoint its own held-out photos chose
        "selected_on_evaluated_photos": bool(recipe.get("val_every")),
        "clean": summarise(clean),
        "old_print": summarise(old_print),
        "per_fold": {"clean": clean, "old_print": old_print},
    }
    if decodings:
        result["decoding"] = decoding_by_folds(
            archive, out, splits, runs, [Decoding.parse(d) for d in decodings], clean,
            own_decoding(own_decodings), where,
        )  # fmt: skip
    markdown = crossval_markdown(result)
    storage.write_bytes(storage.join(out, "crossval.json"), json.dumps(result, indent=2).encode())
    storage.write_bytes(storage.join(out, "crossval.md"), markdown.encode())
    create_markdown_artifact(markdown=markdown, key="crossval")
    if final:
        result["final"] = train_final(archive, storage.join(out, "final"), recipe, result, where,
                                      show_progress)  # fmt: skip
    return result


def evaluate_fold(
    archive: str, fold_out: str, config: TrainConfig, options: dict[str, Any],
    where: dict[str, Any], show_progress: bool,
) -> tuple[dict[str, Any], dict[str, Any]]:  # fmt: skip
    """A fold's evaluations (clean: its training's own; old prints), each made unless there
    already: the fold trained (or resumed) with OPTIONS (its split and the recipe) first."""
    evaluation_uri = storage.join(fold_out, "evaluation", "evaluation.json")
    evaluation = storage.read_json(evaluation_uri)
    if evaluation is None:
        train_model(source=archive, out=fold_out, show_progress=show_progress, **options,
                    **where)  # fmt: skip
        evaluation = storage.read_json(evaluation_uri)
    degraded = held_out_evaluation(archive, fold_out, config, where, degrade=True)
    assert evaluation is not None and degraded is not None
    return evaluation, degraded


def own_decoding(found: set[Decoding]) -> Decoding:
    """The fold models' own decoding: one for all (one recipe, one init)."""
    if len(found) != 1:
        raise ConfigError(f"the fold models decode in different ways: {sorted(found)}")
    return found.pop()


def held_out_evaluation(
    archive: str, fold_out: str, config: TrainConfig, where: dict[str, Any],
    degrade: bool = False, decoding: Decoding | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The fold model's evaluation on the photos its fold held out (by the recipe's columns),
    as old prints with DEGRADE, decoded so (None: the model's own way), in
    FOLD_OUT/evaluation[-old-print][-T<t>[-G<gain>]]/: made unless already there."""
    name = "evaluation" + ("-old-print" if degrade else "")
    if decoding is not None:
        name += f"-T{decoding.temperature:g}"
        name += "" if decoding.chroma_gain == 1.0 else f"-G{decoding.chroma_gain:g}"
    out = storage.join(fold_out, name)
    found = storage.read_json(storage.join(out, "evaluation.json"))
    if found is not None:
        return found
    return evaluate_model(
        source=archive, model=storage.join(fold_out, "model.safetensors"), out=out,
        split="val", degrade=degrade, val_fraction=config.val_fraction, fold=config.fold,
        holdout=config.holdout, image_column=config.image_column, id_column=config.id_column,
        temperature=None if decoding is None else decoding.temperature,
        chroma_gain=None if decoding is None else decoding.chroma_gain, **where,
    )  # fmt: skip


def decoding_by_folds(
    archive: str, out: str, splits: list[Fold], runs: dict[str, TrainConfig],
    decodings: list[Decoding], clean_folds: list[dict[str, float]], own: Decoding,
    where: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    """Every fold model scored on its held-out photos decoded each of the DECODINGS ways
    (clean; decoded its OWN way, CLEAN_FOLDS: the folds' figures already made), the decoding
    to ship chosen from them (`choose_decoding`), and the old prints' figures decoded so."""
    fold_outs = [storage.join(out, fold.folder) for fold in splits]
    per_fold = {own: clean_folds}
    for decoding in decodings:
        if decoding != own:
            per_fold[decoding] = [
                fold_figures(held_out_evaluation(archive, f, runs[f], where, decoding=decoding))
                for f in fold_outs
            ]
    candidates = {d: summarise(figures) for d, figures in sorted(per_fold.items())}
    chosen = choose_decoding(candidates)
    old_print = summarise([
        fold_figures(held_out_evaluation(archive, f, runs[f], where, degrade=True,
                                         decoding=None if chosen == own else chosen))
        for f in fold_outs
    ])  # fmt: skip
    return {
        "chosen": chosen.name,
        "temperature": chosen.temperature,
        "chroma_gain": chosen.chroma_gain,
        "rule": f"of the decodings whose mean colourfulness over the folds reaches "
        f"{COLOUR_FLOOR:g} % of the truth's, the best mean raw AuC; else the most colourful",
        "candidates": {d.name: summary for d, summary in candidates.items()},
        "per_fold": {d.name: figures for d, figures in sorted(per_fold.items())},
        "old_print": old_print,
    }


def train_final(
    archive: str, out: str, recipe: dict[str, Any], result: dict[str, Any],
    where: dict[str, Any], show_progress: bool,
) -> str:  # fmt: skip
    """The recipe trained on every photo (no validation split: the folds measured it), its
    card carrying the cross-validated figures, as OUT/model.safetensors (+ model.json)."""
    uri = storage.join(out, "model.safetensors")
    train_model(source=archive, out=out, show_progress=show_progress, **FINAL_SPLIT, **where,
                **recipe)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "model.safetensors"
        local.write_bytes(storage.read_bytes(uri))
        colorizer = models.load(local)
        colorizer.card["metrics"] = None  # no held-out photos: the folds' figures stand for it
        colorizer.card["crossval"] = {k: result[k] for k in ("folds", "clean", "old_print")}
        if result.get("decoding"):  # it decodes as the folds chose
            colorizer.temperature = result["decoding"]["temperature"]
            colorizer.chroma_gain = result["decoding"]["chroma_gain"]
            colorizer.card["crossval"]["decoding"] = result["decoding"]
        models.save(colorizer, local)
        storage.put_file(local, uri)
        storage.put_file(local.with_suffix(".json"), storage.join(out, "model.json"))
    return uri
