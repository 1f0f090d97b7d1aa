"""k-fold cross-validation figures: each fold's evaluation -> mean and spread over folds.

A recipe is trained k times, each time holding out one fold of the corpus (by id hash, see
`training.split_of`; or one source folder; or a group of them, `group_sources`), and scored
on that fold against the gray baseline. The figure that selects a recipe is the mean over
folds of model - gray; its spread (the standard deviation over folds) says how much of a
difference between two recipes is noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

# (name in the report, metric, scale): AuC in points (x100), the rest as measured
FIGURES = (
    ("rebalanced AuC - gray (points)", "auc_rebalanced", 100.0),
    ("raw AuC - gray (points)", "auc", 100.0),
    ("set-rebalanced AuC - gray (points)", "auc_set_rebalanced", 100.0),
    ("PSNR - gray (dB)", "psnr", 1.0),
    ("SSIM - gray", "ssim", 1.0),
)


def group_sources(sizes: dict[str, int], groups: int) -> list[list[str]]:
    """Source folders ({name: photos}) in GROUPS folds of similar size, no source split, each
    fold's names sorted. Deterministic: the largest source first (names ascending for equal
    sizes), each to the fold with the fewest photos so far (the lowest index among equals)."""
    folds: list[list[str]] = [[] for _ in range(groups)]
    totals = [0] * groups
    for name, n in sorted(sizes.items(), key=lambda item: (-item[1], item[0])):
        k = min(range(groups), key=lambda i: (totals[i], i))
        folds[k].append(name)
        totals[k] += n
    return [sorted(fold) for fold in folds]


DOUBT = "uncertainty vs error (Spearman)"


def fold_figures(evaluation: dict[str, Any]) -> dict[str, float]:
    """One fold's evaluation -> {figure: value}: the model's gain over gray per metric, its
    colourfulness as a share of the truth's (the gray image's shortfall is the truth's), and
    how well its uncertainty ranks its per-image errors."""
    metrics = evaluation["metrics"]
    out = {}
    for name, metric, scale in FIGURES:
        m = metrics.get(metric)
        if m and m["model"] is not None and m["gray"] is not None:
            out[name] = (m["model"] - m["gray"]) * scale
    delta = metrics.get("colorfulness_delta")
    if delta and delta["gray"]:
        truth = -delta["gray"]
        out["colourfulness (% of the truth)"] = 100.0 * metrics["colorfulness"]["model"] / truth
    spearman = (evaluation.get("uncertainty") or {}).get("spearman")
    if spearman is not None:
        out[DOUBT] = spearman
    return out


def summarise(folds: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per figure: mean, standard deviation over folds (n - 1), min, max, folds."""
    out: dict[str, dict[str, float]] = {}
    for name in folds[0] if folds else []:
        values = [f[name] for f in folds if name in f]
        mean = sum(values) / len(values)
        var = sum((v - mean) ** 2 for v in values) / max(1, len(values) - 1)
        out[name] = {"mean": mean, "std": math.sqrt(var), "min": min(values),
                     "max": max(values), "folds": len(values)}  # fmt: skip
    return out


# colourfulness (% of the truth, fold mean) a chosen decoding must reach: the floor is
# 70 %; grouped source folds predicted it for photos from elsewhere within about a point
# (65 % against 64 % measured), leave-one-source-out folds overshot by 5-15 points
COLOUR_FLOOR = 72.0
COLOUR = "colourfulness (% of the truth)"
RAW = "raw AuC - gray (points)"


@dataclass(frozen=True, order=True)
class Decoding:
    """How the predicted distributions become ab: the annealed mean at TEMPERATURE, times
    CHROMA_GAIN. Written `T` or `TxG` (0.26, 0.38x1.15)."""

    temperature: float
    chroma_gain: float = 1.0

    @classmethod
    def parse(cls, text: str) -> Decoding:
        t, _, g = text.strip().partition("x")
        decoding = cls(float(t), float(g) if g else 1.0)
        if not (0 < decoding.temperature <= 2 and 0 < decoding.chroma_gain <= 3):
            raise ValueError(
                f"{text!r}: the temperature must be in (0, 2] (the paper's is 0.38; lower "
                f"paints more colour) and the chroma gain in (0, 3] (1: the annealed mean)"
            )
        return decoding

    @property
    def name(self) -> str:
        gain = "" if self.chroma_gain == 1.0 else f"x{self.chroma_gain:g}"
        return f"{self.temperature:g}{gain}"


def choose_decoding(
    candidates: dict[Decoding, dict[str, dict[str, float]]], floor: float = COLOUR_FLOOR
) -> Decoding:
    """The decoding to ship, from each candidate's clean summary over the folds ({decoding:
    `summarise` output}): of those whose mean colourfulness reaches FLOOR % of the truth's,
    the best mean raw AuC (the fewest wrong colours for colour enough); if none reaches it,
    the most colourful."""
    if not candidates:
        raise ValueError("no candidate decoding to choose from")
    colour = {d: s[COLOUR]["mean"] for d, s in candidates.items() if COLOUR in s}
    if not colour:
        raise ValueError(f"the candidates' summaries have no {COLOUR!r} figure")
    reaching = [d for d, c in colour.items() if c >= floor]
    if not reaching:
        return max(colour, key=lambda d: (colour[d], d))
    return max(reaching, key=lambda d: (candidates[d][RAW]["mean"], d))


def decoding_lines(decoding: dict[str, Any]) -> list[str]:
    """crossval.md's table of the candidate decodings, the chosen one in bold."""
    names = [FIGURES[0][0], FIGURES[1][0], FIGURES[2][0], "PSNR - gray (dB)", COLOUR]
    lines = [
        "",
        f"Decoding chosen by the folds: **{decoding['chosen']}** (temperature x chroma gain; "
        f"{decoding['rule']}). Clean photos, mean (spread) over folds:",
        "",
        "| decoding | " + " | ".join(n.split(" (")[0] for n in names) + " |",
        "|---" * (len(names) + 1) + "|",
    ]
    for name, summary in decoding["candidates"].items():
        cells = [f"{summary[n]['mean']:+.2f} ({summary[n]['std']:.2f})" if n in summary else ""
                 for n in names]  # fmt: skip
        label = f"**{name}**" if name == decoding["chosen"] else name
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


SELECTION_NOTE = [
    "Selection: each fold ships the checkpoint that scored best on its own held-out photos "
    "(--val-every), the photos scored here: the clean figures flatter it.",
    "",
]


def crossval_markdown(result: dict[str, Any]) -> str:
    groups = result.get("groups")
    if groups:
        kind = " (the source folders in groups of similar size, each group left out in turn)"
    else:
        kind = " (one per source folder, left out in turn)" if result.get("fold_names") else ""
    lines = [
        f"# Cross-validation: {result['folds']} folds of `{result['source']}`{kind}",
        "",
        f"Recipe: `{result['recipe']}`",
        "",
        *(SELECTION_NOTE if result.get("selected_on_evaluated_photos") else []),
        *(group_lines(groups) if groups else []),
        "| inputs | figure | mean | spread (sd over folds) | min | max |",
        "|---|---|---|---|---|---|",
    ]
    for inputs, summary in (("clean", result["clean"]), ("old print", result["old_print"])):
        for name, s in summary.items():
            lines.append(
                f"| {inputs} | {name} | {s['mean']:+.2f} | {s['std']:.2f} | {s['min']:+.2f} "
                f"| {s['max']:+.2f} |"
            )
    lines += ["", "Per fold (clean, then old print):", ""]
    per_fold = result["per_fold"]
    names = result.get("fold_names") or list(range(len(per_fold["clean"])))
    for i, clean, old in zip(names, per_fold["clean"], per_fold["old_print"], strict=True):
        figures = ", ".join(f"{k.split(' (')[0]} {v:+.2f}" for k, v in clean.items())
        old_auc = old.get(FIGURES[0][0])
        label = i if groups else f"fold {i}"  # a group's name says what it is: group-K
        lines.append(f"- {label}: {figures}; old print rebalanced AuC - gray "
                     f"{'n/a' if old_auc is None else f'{old_auc:+.2f}'}")  # fmt: skip
    if result.get("decoding"):
        lines += decoding_lines(result["decoding"])
    return "\n".join(lines) + "\n"


def group_lines(groups: list[dict[str, Any]]) -> list[str]:
    """The groups' table: each fold's photos and its sources (photos each, largest first)."""
    lines = ["| fold | photos | sources held out (photos) |", "|---|---|---|"]
    for group in groups:
        sources = sorted(group["sources"].items(), key=lambda item: (-item[1], item[0]))
        named = ", ".join(f"{name} ({n})" for name, n in sources)
        lines.append(f"| {group['name']} | {group['photos']} | {named} |")
    return [*lines, ""]
