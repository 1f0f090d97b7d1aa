"""The hints file: colour hints an archivist placed, per row id, for `colorize --hints`.

    {"<row id>": [{"x": 0.42, "y": 0.31, "rgb": "#8a2a1e"},
                  {"x": 0.7, "y": 0.8, "rgb": "#2f5d2a", "r": 0.01}]}

`x`, `y` in [0, 1] of the image's width and height (a hint holds at any resolution), `rgb` an
sRGB colour as #rrggbb (its ab is what counts: the output keeps the scan's own L), `r` an
optional radius as a share of the short side (models.hints.DEFAULT_RADIUS if absent). Every
problem is a `HintsError` naming the id and the point, found before anything is written.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, TypeGuard

import numpy as np
import torch

from models.hints import DEFAULT_RADIUS, Hint, hint_planes
from pipeline.imaging.color import rgb_to_lab

RGB_PATTERN = re.compile(r"^#[0-9a-fA-F]{6}$")
MAX_RADIUS = 0.5  # a share of the short side: a hint larger than half the image is a mistake

HintsById = dict[str, list[Hint]]


class HintsError(ValueError):
    """A hints file that cannot be used as it is; the message names the id and says why."""


def rgb_to_ab(rgb: str) -> tuple[float, float]:
    """'#rrggbb' (sRGB) -> its CIELAB a, b."""
    values = torch.tensor([int(rgb[i : i + 2], 16) / 255.0 for i in (1, 3, 5)])
    lab = rgb_to_lab(values[:, None, None])
    return float(lab[1, 0, 0]), float(lab[2, 0, 0])


def parse_point(row_id: str, index: int, point: Any) -> Hint:
    where = f"hints file: id {row_id!r}, point {index}"
    if not isinstance(point, Mapping):
        raise HintsError(f"{where}: expected an object with x, y, rgb (and r), got {point!r}")
    unknown = set(point) - {"x", "y", "rgb", "r"}
    if unknown:
        raise HintsError(f"{where}: unknown keys {sorted(unknown)}; a point has x, y, rgb, r")
    for key in ("x", "y"):
        value = point.get(key)
        if not _is_number(value) or not 0.0 <= value <= 1.0:
            raise HintsError(
                f"{where}: {key} must be a number in [0, 1] (a share of the image's "
                f"{'width' if key == 'x' else 'height'}), got {value!r}: the point is outside "
                "the image"
            )
    rgb = point.get("rgb")
    if not isinstance(rgb, str) or not RGB_PATTERN.match(rgb):
        raise HintsError(f"{where}: rgb must be an sRGB colour as '#rrggbb', got {rgb!r}")
    radius = point.get("r", DEFAULT_RADIUS)
    if not _is_number(radius) or not 0.0 < radius <= MAX_RADIUS:
        raise HintsError(
            f"{where}: r must be a share of the short side in (0, {MAX_RADIUS}], got {radius!r}"
        )
    a, b = rgb_to_ab(rgb)
    return Hint(float(point["x"]), float(point["y"]), a, b, float(radius))


def _is_number(value: Any) -> TypeGuard[float]:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def parse_hints(document: Any) -> HintsById:
    """The file's JSON document -> hints per id (ids with an empty list are kept: no hints)."""
    if not isinstance(document, Mapping):
        raise HintsError(
            'hints file: expected an object {"<row id>": [{"x": ..., "y": ..., "rgb": '
            f'"#rrggbb"}}, ...]}}, got {type(document).__name__}'
        )
    out: HintsById = {}
    for row_id, points in document.items():
        if not isinstance(points, Sequence) or isinstance(points, str):
            raise HintsError(f"hints file: id {row_id!r}: expected a list of points")
        out[str(row_id)] = parse_points(row_id, points)
    if not out:
        raise HintsError("hints file: it names no id; there is nothing to colorize again")
    return out


def loads(text: str | bytes) -> HintsById:
    return load_document(text)[1]


def load_document(text: str | bytes) -> tuple[dict[str, list[dict[str, Any]]], HintsById]:
    """A hints file's text -> (its document as given, checked; the parsed hints)."""
    try:
        document = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HintsError(f"hints file: not JSON ({exc})") from exc
    parsed = parse_hints(document)
    return {str(k): list(v) for k, v in document.items()}, parsed


def parse_points(row_id: str, points: Sequence[Any]) -> list[Hint]:
    """One id's points (as a hints file or DEST's record holds them) -> its hints."""
    return [parse_point(row_id, i, p) for i, p in enumerate(points)]


def batch_planes(
    hints: Sequence[Sequence[Hint]], height: int, width: int, device: torch.device
) -> torch.Tensor | None:
    """Each image's hints -> the batch's planes (N, 3, height, width) on `device`; None when
    no image of the batch has any (the automatic forward)."""
    if not any(hints):
        return None
    return torch.stack([hint_planes(h, height, width) for h in hints]).to(device)


def sample_hints(ab: np.ndarray, count: int, seed: int) -> list[Hint]:
    """`count` hints drawn from the true ab (2, h, w) of a photo at the network's output grid:
    uniform places (fixed by `seed`), each the true colour of its cell (evaluate --hints:
    what an archivist who knows the colours would say)."""
    if count <= 0:
        return []
    rng = np.random.default_rng([seed, 30])
    _, h, w = ab.shape
    rows, cols = rng.integers(0, h, count), rng.integers(0, w, count)
    return [
        Hint((c + 0.5) / w, (r + 0.5) / h, float(ab[0, r, c]), float(ab[1, r, c]))
        for r, c in zip(rows, cols, strict=True)
    ]
