"""Evaluation of a model against the gray baseline (ab = 0) on the colour photos of a split.

One Ray task per shard: decode at full resolution, colorize with the model (the same code
path as the archive job), and score both the model and the gray baseline with every metric.
Deterministic, so re-running it reproduces the figures a model card records.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import numpy as np
import torch
from PIL import Image

import models
from models.hints import Hint
from pipeline.archive import storage
from pipeline.archive.shards import ColumnNames, Shard, read_batches
from pipeline.archive.stats import MetricSummary, ShardStats
from pipeline.colorize.hints import sample_hints
from pipeline.colorize.int8 import Int8Forward
from pipeline.colorize.precision import resolve_precision
from pipeline.colorize.predict import finish, predict_low
from pipeline.colorize.previews import gray_and_colour, sample_pair, sample_strip
from pipeline.colorize.worker import resolve_model
from pipeline.imaging.color import lab_to_rgb
from pipeline.imaging.degrade import FILMS, OLD_PRINT, degrade_lightness, film_lightness
from pipeline.imaging.images import Decoded, decode_image
from pipeline.imaging.metrics import auc_by_true_bin, image_metrics, set_rebalanced_auc
from pipeline.imaging.resize_cpu import shrink
from pipeline.review.artifact import artifact_markdown
from pipeline.review.report import contact_sheet
from pipeline.training.prepared import split_of

SPLITS = ("val", "train", "all")


def gray_baseline(lightness: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The image with no colour at all: (RGB, ab = 0)."""
    ab = np.zeros((2, *lightness.shape), dtype=np.float32)
    lab = torch.from_numpy(np.concatenate([lightness[None], ab]))
    return lab_to_rgb(lab).permute(1, 2, 0).numpy(), ab


def film_version(decoded: Decoded, film: str) -> Decoded:
    """The photo as shot on `film` (one of `FILMS`): its L is that film's gray of the photo's
    colours; its colours (rgb, ab), the truth it is scored against, stay."""
    assert decoded.rgb is not None  # a colour photo
    return dataclasses.replace(decoded, lightness=film_lightness(decoded.rgb, FILMS[film]))


def old_print_version(decoded: Decoded, row_id: str) -> Decoded:
    """The photo with its L degraded as an old print (the same for an id on every run)."""
    rng = np.random.default_rng(id_seed(row_id))
    lightness = degrade_lightness(decoded.lightness, OLD_PRINT, rng)
    return dataclasses.replace(decoded, lightness=lightness)


def id_seed(row_id: str) -> int:
    return int.from_bytes(hashlib.sha1(row_id.encode()).digest()[:8], "big")


def truth_hints(decoded: Decoded, row_id: str, count: int, grid: int) -> list[Hint]:
    """`count` hints of the photo's true colours (`sample_hints` on its ab at the network's
    output grid, `grid` square), the same for an id on every run."""
    assert decoded.ab is not None  # a colour photo
    if count <= 0:
        return []
    ab_grid = np.stack([shrink(plane, (grid, grid)) for plane in decoded.ab])
    return sample_hints(ab_grid, count, id_seed(row_id))


def errors_at_hints(ab: np.ndarray, hints: list[Hint]) -> list[float]:
    """The output's ab (2, H, W) at each hint's point: its distance to the hint's ab."""
    _, height, width = ab.shape
    out = []
    for h in hints:
        y, x = min(int(h.y * height), height - 1), min(int(h.x * width), width - 1)
        out.append(float(np.hypot(ab[0, y, x] - h.a, ab[1, y, x] - h.b)))
    return out


def evaluate_shard(
    model: str,
    shard: Shard,
    *,
    split: str = "val",
    val_fraction: float = 0.1,
    fold: int = 0,
    holdout: str = "",
    degrade: bool = False,
    film: str | None = None,
    hints: int = 0,
    columns: ColumnNames | None = None,
    temperature: float | None = None,
    chroma_gain: float | None = None,
    flip_average: bool | None = None,
    precision: str = "fp32",
    batch_size: int = 4,
    s3_endpoint_url: str | None = None,
    sample_uri: str | None = None,
    samples: int = 2,
    metrics_max_side: int = 512,
) -> dict[str, Any]:
    """Scores of the model and of the gray baseline over the colour photos of `split` in
    `shard`: {"shard", "model": ShardStats JSON, "gray": ShardStats JSON, "skipped": {...},
    "uncertainty_error": [(uncertainty, mean ab error)] per image, "auc_bin_sums": {"model",
    "gray"}: `auc_by_true_bin` summed over the shard's images ((2, Q), whatever the number of
    images), "bin_centers": their bins, "temperature": the decoding's (the model's own unless
    `temperature`), "chroma_gain": the decoded ab's (the model's own unless `chroma_gain`)}.

    With `degrade`, both see the old-print version of each photo's L (`OLD_PRINT`, seeded by
    its id) and are scored against its clean colours. With `film` (a name of `FILMS`), both
    see that film's gray of each photo instead of its Lab L (then, with `degrade`, damaged as
    an old print); the model's output keeps that L, as colorize keeps a scan's own, so the
    metrics on RGB (PSNR, SSIM, colourfulness) see the film's tonality too, those on ab (the
    AuCs) only the colours.

    With `hints` N > 0 (a hint-aware model), the model is given N hints per photo drawn from
    its true colours (`truth_hints`, seeded by its id): "model" is then the hinted output,
    "automatic" the same model with none, and "hint_errors" the hinted output's ab distance
    to each hint at its point."""
    if film is not None and film not in FILMS:
        raise ValueError(f"film must be one of {', '.join(FILMS)}, got {film!r}")
    storage.configure(s3_endpoint_url)
    with resolve_model(model) as path:  # an S3 model's copy goes with the block
        colorizer = models.load(path)
        precision = resolve_precision(precision, colorizer.device, path)  # `auto`: this one's
        int8 = Int8Forward(path, colorizer) if precision == "int8" else None
    if flip_average is not None:  # test-time flip averaging on or off, whatever the card says
        colorizer.flip_average = flip_average
    if chroma_gain is not None:  # the decoded ab scaled otherwise than the card says
        colorizer.chroma_gain = chroma_gain
    who = ("model", "gray", "automatic") if hints else ("model", "gray")
    scored = {name: ShardStats(shard.name, shard.uri, "") for name in who}
    hint_errors: list[float] = []
    skipped = {"other_split": 0, "gray_input": 0, "unreadable": 0}
    cols = columns or ColumnNames()
    pairs: list[Image.Image] = []
    doubt: list[tuple[float, float]] = []  # (uncertainty, mean ab error) per image
    bins = colorizer.centers.shape[0]  # auc_by_true_bin summed over the shard's images
    bin_sums = {name: np.zeros((2, bins), np.int64) for name in who}
    grid = colorizer.working_size // 4  # the network's output grid, where hints are placed
    for batch in read_batches(shard, cols, batch_size):
        kept = []
        for row_id, load in zip(batch.ids, batch.loaders, strict=True):
            if split != "all" and split_of(row_id, val_fraction, fold, holdout) != split:
                skipped["other_split"] += 1
                continue
            try:
                data = load()
                decoded = decode_image(data) if data else None
            except Exception:  # ImageError, or any other fault of one file: counted, skipped
                decoded = None
            if decoded is None:
                skipped["unreadable"] += 1
            elif decoded.rgb is None:
                skipped["gray_input"] += 1
            else:
                if film is not None:  # the film's gray first, then the old print's damage
                    decoded = film_version(decoded, film)
                decoded = old_print_version(decoded, row_id) if degrade else decoded
                kept.append((decoded, truth_hints(decoded, row_id, hints, grid)))
        if not kept:
            continue
        lightness = [d.lightness for d, _ in kept]
        given = [h for _, h in kept] if hints else None
        ab_low, uncertainty = predict_low(colorizer, lightness, temperature, precision, given, int8)
        auto_low = (
            predict_low(colorizer, lightness, temperature, precision, int8=int8)[0]
            if hints
            else ab_low
        )
        for (dec, dec_hints), ab_one, auto_one, u in zip(
            kept, ab_low, auto_low, uncertainty.tolist(), strict=True
        ):
            rgb, ab, _ = finish(dec.lightness, ab_one)
            assert ab is not None and dec.ab is not None  # keep_ab; a colour photo
            doubt.append((u, float(np.hypot(*(ab - dec.ab)).mean())))
            hint_errors += errors_at_hints(ab, dec_hints)
            if len(pairs) < samples:
                pairs.append(sample_pair(*gray_and_colour(dec.lightness, rgb)))
            outputs = {"model": (rgb, ab), "gray": gray_baseline(dec.lightness)}
            if hints:
                auto_rgb, auto_ab, _ = finish(dec.lightness, auto_one)
                assert auto_ab is not None
                outputs["automatic"] = (auto_rgb, auto_ab)
            for name, (p_rgb, p_ab) in outputs.items():
                bin_sums[name] += auc_by_true_bin(p_ab, dec.ab, colorizer.centers, metrics_max_side)
                scored[name].add_ok(
                    image_metrics(
                        p_rgb,
                        p_ab,
                        dec.rgb,
                        dec.ab,
                        colorizer.centers,
                        colorizer.prior,
                        metrics_max_side,
                    )
                )
    if sample_uri and pairs:
        storage.write_bytes(sample_uri, sample_strip(pairs))
    return {
        "shard": shard.name,
        "sample": sample_uri if pairs else None,
        **{name: stats.to_json() for name, stats in scored.items()},
        "hints": hints,
        "hint_errors": hint_errors,
        "skipped": skipped,
        "uncertainty_error": doubt,
        "auc_bin_sums": bin_sums,
        "bin_centers": colorizer.centers.tolist(),
        "temperature": colorizer.temperature if temperature is None else temperature,
        "chroma_gain": colorizer.chroma_gain,
        "precision": precision,
    }


def merge_evaluations(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-shard evaluations -> {"images", "skipped", "metrics": {name: {"model", "gray"}}}.

    `auc_set_rebalanced` needs the whole set (its weights are the set's own ab frequencies),
    so it is made here, once, from the shards' per-bin sums added up (not averaged per shard):
    the same figure as from the whole set in one shard."""
    outputs = (
        ("model", "gray", "automatic") if parts and parts[0].get("hints") else ("model", "gray")
    )
    merged: dict[str, dict[str, MetricSummary]] = {who: {} for who in outputs}
    skipped: dict[str, int] = {}
    images = 0
    for part in parts:
        images += part["model"]["ok"]
        for kind, count in part["skipped"].items():
            skipped[kind] = skipped.get(kind, 0) + count
        for who in outputs:
            for name, summary in part[who]["metrics"].items():
                merged[who].setdefault(name, MetricSummary()).merge(
                    MetricSummary.from_json(summary)
                )
    metrics = {
        name: {who: merged[who][name].mean for who in outputs} for name in sorted(merged["model"])
    }
    if images:
        centers = parts[0]["bin_centers"]  # one model: the same bins in every part
        metrics["auc_set_rebalanced"] = {
            who: set_rebalanced_auc(
                np.sum([part["auc_bin_sums"][who] for part in parts], axis=0), centers
            )
            for who in outputs
        }
    pairs = [pair for part in parts for pair in part.get("uncertainty_error", [])]
    hint_errors = [e for part in parts for e in part.get("hint_errors", [])]
    return {"images": images, "skipped": skipped, "metrics": metrics,
            "uncertainty": uncertainty_vs_error(pairs),
            "hints": parts[0].get("hints", 0) if parts else 0,
            "hint_error": {"median": float(np.median(hint_errors)) if hint_errors else None,
                           "points": len(hint_errors)},
            "temperature": parts[0]["temperature"] if parts else None,
            "chroma_gain": parts[0]["chroma_gain"] if parts else None,
            "precision": parts[0].get("precision", "fp32") if parts else None}  # fmt: skip


def uncertainty_vs_error(pairs: list[tuple[float, float]]) -> dict[str, float | None]:
    """Does the model know when it is wrong? Spearman's rank correlation, over images, of its
    uncertainty with its mean ab error (1: the most uncertain are exactly the worst)."""
    from scipy.stats import spearmanr

    if len(pairs) < 3:
        return {"spearman": None, "images": len(pairs)}
    u, err = zip(*pairs, strict=True)
    rho = float(spearmanr(u, err).statistic)
    return {"spearman": rho if np.isfinite(rho) else None, "images": len(pairs)}


def evaluation_markdown(evaluation: dict[str, Any], model: str, source: str, split: str) -> str:
    lines = [
        f"# Evaluation of `{model}`",
        "",
        f"Source `{source}`, split `{split}`: {evaluation['images']} colour photos "
        f"(skipped: {evaluation['skipped']}).",
        "",
        f"Inputs: {_inputs(evaluation)}.",
        "",
    ]
    hints = evaluation.get("hints") or 0
    if hints:
        error = evaluation["hint_error"]
        lines += [
            f"Hints: {hints} per photo, drawn from its true colours (the same points for an id "
            f'on every run); "model" is the output given them, "automatic" the same model '
            f"given none. At the {error['points']} hint points, the output's ab is "
            f"{_fmt(error['median'])} from the hint's (median).",
            "",
            "| metric | model | automatic | gray baseline | model - gray | model - automatic |",
            "|---|---|---|---|---|---|",
        ]
    else:
        lines += ["| metric | model | gray baseline | model - gray |", "|---|---|---|---|"]
    for name, m in evaluation["metrics"].items():
        model_v, gray_v = m["model"], m["gray"]
        diff = "" if model_v is None or gray_v is None else f"{model_v - gray_v:+.4f}"
        if not hints:
            lines.append(f"| {name} | {_fmt(model_v)} | {_fmt(gray_v)} | {diff} |")
            continue
        auto_v = m["automatic"]
        gain = "" if model_v is None or auto_v is None else f"{model_v - auto_v:+.4f}"
        lines.append(
            f"| {name} | {_fmt(model_v)} | {_fmt(auto_v)} | {_fmt(gray_v)} | {diff} | {gain} |"
        )
    doubt = evaluation.get("uncertainty") or {}
    if doubt.get("spearman") is not None:
        lines += ["", f"Uncertainty vs mean ab error, rank correlation (Spearman) over "
                      f"{doubt['images']} images: **{doubt['spearman']:.2f}**"]  # fmt: skip
    lines += ["", "![samples](contact_sheet.png)", ""]
    return "\n".join(lines)


def _inputs(evaluation: dict[str, Any]) -> str:
    """What the model and the gray baseline saw as L, in words."""
    film = evaluation.get("film")
    if film is None:
        seen = "Lab's L of each photo"
    else:
        weights = ", ".join(f"{w:.3f}" for w in FILMS[film])
        seen = (
            f"film: {film}, the gray of each photo as shot on it (linear-sRGB weights {weights}); "
            "the outputs keep that L, so PSNR, SSIM and colourfulness count its difference "
            "from the truth's L, the AuCs compare ab only"
        )
    return seen + (", then degraded as an old print" if evaluation.get("degrade") else "")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def write_evaluation(
    out: str, evaluation: dict[str, Any], markdown: str, s3_endpoint_url: str | None
) -> str:
    """OUT/evaluation.json, evaluation.md and contact_sheet.png (from the sample strips).
    Returns the markdown for a Prefect artifact, the contact sheet embedded."""
    storage.configure(s3_endpoint_url)
    strips = [storage.read_bytes(uri) for uri in evaluation["samples"][:12]]
    sheet = contact_sheet(strips)
    storage.write_bytes(storage.join(out, "contact_sheet.png"), sheet)
    storage.write_bytes(storage.join(out, "evaluation.md"), markdown.encode())
    storage.write_bytes(
        storage.join(out, "evaluation.json"), json.dumps(evaluation, indent=2).encode()
    )
    links = {"full evaluation": storage.join(out, "evaluation.md")}
    return artifact_markdown(markdown, {"contact_sheet.png": sheet}, links)
