"""More real colours: photographic cut-outs ("stamps") pasted onto training crops.

Debian's `tuxpaint-stamps-default` (GPL-2) holds ~800 PNG stamps with an alpha channel. About
half are photographs cut out of their background (animals, birds, fish, fruit, vegetables,
flowers, tools); the rest are clip art, letters and symbols, which would teach flat cartoon
colours. `is_photographic` is the rule that tells them apart:

- not under a folder of clip art or symbols (`CLIPART_FOLDERS`);
- at least `MIN_OPAQUE` opaque pixels;
- photographic texture: more than `MIN_UNIQUE` of the opaque pixels have a colour of their
  own (clip art reuses a few fill colours), and fewer than `MAX_FLAT` of the horizontally
  adjacent opaque pairs are exactly equal (clip art is flat fills).

`select_stamps` writes the chosen ones (at most `MAX_SIDE` px) and `stamps.tsv`, their
licence record. Training pastes them onto random crops of the corpus photos (`paste_stamp`,
`train --stamps DIR --paste P`): the crop keeps its true colours around the stamp, the stamp
brings its own, and no validation photo is ever used as a background.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

PACKAGE = "tuxpaint-stamps-default"
LICENCE = "GPL-2.0"
STAMPS_DIR = "usr/share/tuxpaint/stamps"
CLIPART_FOLDERS = frozenset(
    {"cartoon", "symbols", "alphabets", "roadsigns", "flags", "shapes", "math", "operators"}
)
MIN_OPAQUE = 2000
MIN_UNIQUE = 0.2
MAX_FLAT = 0.2
MAX_SIDE = 256


@dataclass(frozen=True)
class StampFeatures:
    opaque: int  # pixels with alpha >= 250
    unique: float  # share of opaque pixels with a colour of their own
    flat: float  # share of adjacent opaque pairs with exactly the same colour


def stamp_features(rgba: np.ndarray) -> StampFeatures:
    opaque = rgba[..., 3] >= 250
    n = int(opaque.sum())
    if n == 0:
        return StampFeatures(0, 0.0, 1.0)
    rgb = np.ascontiguousarray(rgba[..., :3][opaque])
    unique = len(np.unique(rgb.view(np.dtype((np.void, 3))))) / n
    pairs = opaque[:, 1:] & opaque[:, :-1]
    same = (rgba[:, 1:, :3] == rgba[:, :-1, :3]).all(axis=-1) & pairs
    return StampFeatures(n, unique, float(same.sum()) / max(1, int(pairs.sum())))


def is_photographic(relative_path: str, rgba: np.ndarray) -> bool:
    """The rule in the module docstring."""
    if CLIPART_FOLDERS & set(Path(relative_path).parts[:-1]):
        return False
    f = stamp_features(rgba)
    return f.opaque >= MIN_OPAQUE and f.unique > MIN_UNIQUE and f.flat < MAX_FLAT


def select_stamps(root: str | Path, out: str | Path) -> list[dict[str, str]]:
    """The photographic stamps under ROOT (the unpacked package) -> OUT/<folder>__<name>.png
    (RGBA, at most MAX_SIDE px) and OUT/stamps.tsv (package, path, size, licence, features)."""
    base, out = Path(root) / STAMPS_DIR, Path(out)
    if not base.is_dir():
        raise FileNotFoundError(f"no {STAMPS_DIR} under {root}: unpack {PACKAGE} there first")
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for path in sorted(base.rglob("*.png")):
        rel = str(path.relative_to(base))
        rgba = np.asarray(Image.open(path).convert("RGBA"))
        if not is_photographic(rel, rgba):
            continue
        image = Image.fromarray(rgba, "RGBA")
        image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
        image.save(out / rel.replace("/", "__"))
        f = stamp_features(rgba)
        rows.append({"kind": "deb", "package": PACKAGE, "path": f"/{STAMPS_DIR}/{rel}",
                     "width": str(rgba.shape[1]), "height": str(rgba.shape[0]),
                     "license": LICENCE, "opaque": str(f.opaque), "unique": f"{f.unique:.3f}",
                     "flat": f"{f.flat:.3f}"})  # fmt: skip
    with open(out / "stamps.tsv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["path"], delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)
    return rows


def decode_stamp(data: bytes) -> np.ndarray:
    """PNG bytes -> (H, W, 4) uint8 RGBA."""
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGBA"))


def paste_stamp(crop: np.ndarray, stamp: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A (S, S, 3) uint8 crop with the RGBA stamp alpha-composited on it: its long side 30-70 %
    of S, mirrored half the time, at a random place (it may overhang the edges)."""
    size = crop.shape[0]
    image = Image.fromarray(stamp, "RGBA")
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    scale = rng.uniform(0.3, 0.7) * size / max(image.size)
    w, h = max(1, round(image.width * scale)), max(1, round(image.height * scale))
    image = image.resize((w, h), Image.Resampling.BILINEAR)
    x = int(rng.integers(-w // 4, size - 3 * w // 4 + 1))
    y = int(rng.integers(-h // 4, size - 3 * h // 4 + 1))
    canvas = Image.fromarray(np.ascontiguousarray(crop), "RGB").convert("RGBA")
    canvas.alpha_composite(image, (max(0, x), max(0, y)), (max(0, -x), max(0, -y)))
    return np.asarray(canvas.convert("RGB"))
