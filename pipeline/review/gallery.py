"""The review gallery: a static page over the committed output, for archivists to check a run.

`write_gallery(dest)` writes DEST/gallery/index.html and DEST/gallery/data/*.js. The page has
no server behind it: it is opened from disk (file://) or an S3 static website, where a
browser refuses fetch()/XHR of local JSON, so every data file is a script that calls a global
callback (JSONP style) and is loaded by adding a <script> tag. The views a person needs
(input order, most uncertain first, lowest colourfulness first; all rows, errors only or the
rows colorized with colour hints, by the shards' `hints` column) are precomputed in pages of
PAGE_SIZE items, so a 100,000-image archive opens as fast as a small one: the browser only ever
loads one page. The images are the workers' previews
(pipeline/colorize/previews.py), linked by relative URL; this module reads only the light columns of
the output shards, never an output image.

The page also lets an archivist place colour hints (x, y as shares of the image, an sRGB colour)
and download them as the `hints.json` that `colorize --hints` reads (pipeline/colorize/hints.py);
they are kept in the browser's localStorage under DEST. To take a colour from an output, the
page cannot read the previews' pixels (an image from file://, or from S3 without CORS, taints a
canvas), so each shard gets a colour file: every ok row's output as a grid of at most GRID
pixels on its long side, made from its thumbnail and loaded as a script like the pages. A
shard's colour file is named by a hash of its stats file, so a rebuild reuses it until the shard
is redone.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import math
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from typing import Any

import pyarrow.parquet as pq
from PIL import Image

from pipeline.archive import storage
from pipeline.archive.stats import ShardStats
from pipeline.colorize.previews import GALLERY_DIR, fit, preview_uri
from pipeline.review.report import load_committed_stats, merge_stats, models_line, models_present

PAGE_SIZE = 200
DATA_DIR = "data"
ERROR_CHARS = 2000  # a traceback longer than this is cut in the page (the Parquet has it all)
IO_THREADS = 8  # shard reads and page writes overlap: on S3 each is a round trip
COLORS_DIR = f"{DATA_DIR}/colors"
GRID = 48  # the long side of an output's colour grid (the page takes hint colours from it)

# The light columns an item carries, in display order; `image` is never read.
FLOAT_FIELDS = ("uncertainty", "colorfulness", "auc", "auc_rebalanced", "psnr", "ssim")
ITEM_FIELDS = ("id", "shard", "index", "status", "error", "width", "height", "hints", *FLOAT_FIELDS)
_READ_COLUMNS = ("id", "status", "error", "width", "height", "hints", *FLOAT_FIELDS)

Item = dict[str, Any]


def _by_uncertainty(item: Item) -> tuple[bool, float]:
    u = item["uncertainty"]
    return u is None, -u if u is not None else 0.0


def _by_colorfulness(item: Item) -> tuple[bool, float]:
    c = item["colorfulness"]
    return c is None, c if c is not None else 0.0


# sort name -> (label, key); Python's sort is stable, so ties and nulls keep input order.
SORTS: dict[str, tuple[str, Callable[[Item], Any] | None]] = {
    "input": ("input order", None),
    "uncertain": ("most uncertain first", _by_uncertainty),
    "colourless": ("lowest colourfulness first", _by_colorfulness),
}
FILTERS: dict[str, Callable[[Item], bool]] = {
    "all": lambda item: True,
    "errors": lambda item: item["status"] != "ok",
    "hinted": lambda item: item["hints"] > 0,  # colorized with colour hints
}


def view_name(sort: str, filter_name: str) -> str:
    return f"{sort}-{filter_name}"


def page_file(view: str, page: int) -> str:
    """The data file of one page, relative to DEST/gallery."""
    return f"{DATA_DIR}/{view}-{page:05d}.js"


def _finite(value: Any) -> float | None:
    """A JSON-safe float: NaN and inf (e.g. PSNR of an exact match) become null."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def read_items(dest: str, stats: list[ShardStats]) -> list[Item]:
    """Every row of the committed shards, in input order (shard by name, then position)."""
    names = sorted(s.shard for s in stats)
    with ThreadPoolExecutor(IO_THREADS) as pool:
        shards = list(pool.map(lambda name: _read_shard(dest, name), names))
    return [item for items in shards for item in items]


def _hint_count(value: Any) -> int:
    """A row's `hints` column: the hints it was colorized with; null (or no column, in shards of
    runs before hints) is none."""
    return int(value) if value is not None else 0


def _clip(error: str | None) -> str | None:
    return error if error is None or len(error) <= ERROR_CHARS else error[: ERROR_CHARS - 1] + "…"


def _read_shard(dest: str, shard: str) -> list[Item]:
    fs, path = storage.arrow_fs(storage.join(dest, f"{shard}.parquet"))
    with fs.open_input_file(path) as f:
        parquet = pq.ParquetFile(f)
        present = set(parquet.schema_arrow.names)
        table = parquet.read(columns=[c for c in _READ_COLUMNS if c in present])
    columns = {name: table.column(name).to_pylist() for name in table.column_names}
    missing = [None] * table.num_rows  # e.g. `uncertainty` in shards of older runs
    items = []
    for i in range(table.num_rows):
        row = {name: columns.get(name, missing)[i] for name in _READ_COLUMNS}
        items.append(
            {
                "id": str(row["id"]),
                "shard": shard,
                "index": i,
                "status": row["status"],
                "error": _clip(row["error"]),
                "width": row["width"],
                "height": row["height"],
                "hints": _hint_count(row["hints"]),
                **{name: _finite(row[name]) for name in FLOAT_FIELDS},
            }
        )
    return items


def build_views(items: list[Item]) -> dict[str, list[Item]]:
    """Every (sort, filter) view of the items: {view name: items in display order}."""
    views: dict[str, list[Item]] = {}
    for filter_name, keep in FILTERS.items():
        kept = [item for item in items if keep(item)]
        for sort, (_label, key) in SORTS.items():
            views[view_name(sort, filter_name)] = sorted(kept, key=key) if key else kept
    return views


def paginate(items: list[Item], size: int = PAGE_SIZE) -> list[list[Item]]:
    """Pages of at most `size` items; an empty view still has one (empty) page to show."""
    return [items[i : i + size] for i in range(0, len(items), size)] or [[]]


def _script(callback: str, *args: Any) -> bytes:
    """A JS file that calls `callback(args...)`; ASCII-only JSON, so no charset can garble it."""
    return f"{callback}({','.join(json.dumps(a, separators=(',', ':')) for a in args)});\n".encode()


def colour_grid(jpeg: bytes, longest: int = GRID) -> list[Any]:
    """An output preview (JPEG) -> [width, height, base64 of its 8-bit RGB bytes, row by row],
    shrunk to fit `longest` by averaging (each cell the mean colour of its patch)."""
    with Image.open(io.BytesIO(jpeg)) as image:
        rgb = image.convert("RGB")
    size = fit(rgb.size, longest)
    if size != rgb.size:
        rgb = rgb.resize(size, Image.Resampling.BOX)
    return [rgb.width, rgb.height, base64.b64encode(rgb.tobytes()).decode("ascii")]


def colors_file(stats: ShardStats) -> str:
    """The colour file of a committed shard, relative to DEST/gallery: named by its stats file
    (and GRID), so that it changes exactly when the shard is redone."""
    document = json.dumps([GRID, stats.to_json()], sort_keys=True, default=str)
    return f"{COLORS_DIR}/{stats.shard}.{hashlib.sha1(document.encode()).hexdigest()[:12]}.js"


def _shard_grids(dest: str, shard: str, rows: int, ok: list[int]) -> list[Any]:
    """One shard's colour grids by row position (null for error rows and missing previews)."""

    def grid(position: int) -> list[Any] | None:
        try:
            return colour_grid(
                storage.read_bytes(preview_uri(dest, "thumbs", shard, position, "out"))
            )
        except (OSError, ValueError):  # no preview (a shard of an older run) or a broken one
            return None

    grids: list[Any] = [None] * rows
    with ThreadPoolExecutor(IO_THREADS) as pool:
        for position, value in zip(ok, pool.map(grid, ok), strict=True):
            grids[position] = value
    return grids


def write_colors(dest: str, stats: list[ShardStats], items: list[Item]) -> dict[str, str]:
    """Each committed shard's colour file, written unless present: {shard: its file, relative
    to DEST/gallery}."""
    rows: dict[str, int] = {}
    ok: dict[str, list[int]] = {}
    for item in items:
        rows[item["shard"]] = max(rows.get(item["shard"], 0), item["index"] + 1)
        if item["status"] == "ok":
            ok.setdefault(item["shard"], []).append(item["index"])
    root = storage.join(dest, GALLERY_DIR)
    files = {s.shard: colors_file(s) for s in stats if s.shard in rows}
    with ThreadPoolExecutor(IO_THREADS) as pool:
        present = list(pool.map(lambda f: storage.exists(storage.join(root, f)), files.values()))
    for (shard, name), done in zip(files.items(), present, strict=True):
        if not done:
            grids = _shard_grids(dest, shard, rows[shard], ok.get(shard, []))
            storage.write_bytes(storage.join(root, name), _script("galleryColors", name, grids))
    return files


def write_gallery(dest: str, *, s3_endpoint_url: str | None = None) -> dict[str, Any]:
    """Build DEST/gallery from everything committed in DEST (the shards named by _stats).

    Runs as a Ray task at the end of a colorize run (hence its own S3 setting). Data files
    first and index.html last, so a present index.html never points at missing pages; data
    files of an earlier, larger build (and colour files of shards redone or gone) are removed.
    Returns the totals, the pages per view and the URI of index.html.
    """
    storage.configure(s3_endpoint_url)
    stats = load_committed_stats(dest)
    totals = merge_stats(stats)  # the run report's totals, from the same stats
    items = read_items(dest, stats)
    colors = write_colors(dest, stats, items)
    build = uuid.uuid4().hex[:12]
    files: dict[str, bytes] = {}
    views: dict[str, dict[str, int]] = {}
    for name, view_items in build_views(items).items():
        pages = paginate(view_items)
        views[name] = {"items": len(view_items), "pages": len(pages)}
        for number, page in enumerate(pages):
            files[page_file(name, number)] = _script("galleryPage", name, number, page)
    uncertainties = [i["uncertainty"] for i in items if i["uncertainty"] is not None]
    meta = {
        "build": build,
        "generated": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "dest": storage.normalize(dest),  # one spelling: the page keeps its hints under it
        "model": models_line(models_present(stats)),  # every model in DEST, with counts
        "models": models_present(stats),
        "shards": totals["shards"],
        "images": totals["images"],
        "ok": totals["ok"],
        "errors": totals["errors"],
        "errors_by_kind": totals["errors_by_kind"],
        "rows": len(items),
        "uncertainty_max": max(uncertainties, default=None),
        "page_size": PAGE_SIZE,
        "sorts": {sort: label for sort, (label, _key) in SORTS.items()},
        "views": views,
        "colors": colors,
        "grid": GRID,
    }
    files[f"{DATA_DIR}/meta.js"] = _script("galleryMeta", meta)
    root = storage.join(dest, GALLERY_DIR)
    _write_all(root, files)
    keep = {storage.join(root, name) for name in [*files, *colors.values()]}
    _remove_stale(storage.join(root, DATA_DIR), keep)
    index = storage.join(root, "index.html")
    storage.write_bytes(index, index_html(build).encode())
    return {
        "images": totals["images"],
        "ok": totals["ok"],
        "errors": totals["errors"],
        "rows": len(items),
        "views": {name: v["pages"] for name, v in views.items()},
        "pages": sum(v["pages"] for v in views.values()),
        "index": index,
    }


def _write_all(root: str, files: dict[str, bytes]) -> None:
    def write(name: str) -> None:
        storage.write_bytes(storage.join(root, name), files[name])

    with ThreadPoolExecutor(IO_THREADS) as pool:
        list(pool.map(write, files))


def _remove_stale(data_dir: str, keep: Iterable[str]) -> None:
    keep = set(keep)
    if not storage.is_s3(data_dir) and not storage.exists(data_dir):
        return
    for uri in storage.list_files(data_dir):
        if uri not in keep:
            storage.delete(uri)


def page_asset(name: str) -> str:
    """One of the page's own files (pipeline/review/gallery_files/: index.html, gallery.css,
    gallery.js), shipped as package data."""
    return resources.files("pipeline.review").joinpath("gallery_files", name).read_text("utf-8")


def index_html(build: str) -> str:
    """The page itself: its HTML with the CSS and JS inlined, so the one file works from
    file:// with no external URL; `build` versions the data URLs, so a browser never mixes a
    cached page of an earlier build with this one."""
    options = "".join(
        f'<option value="{html.escape(sort)}">{html.escape(label)}</option>'
        for sort, (label, _key) in SORTS.items()
    )
    return (
        page_asset("index.html")
        .replace("__SORT_OPTIONS__", options)
        .replace("__BUILD__", html.escape(build))
        .replace("__GALLERY_CSS__", page_asset("gallery.css"))
        .replace("__GALLERY_JS__", page_asset("gallery.js"))
    )
