"""The review gallery: a static page over the committed output, for archivists to check a run.

`write_gallery(dest)` writes DEST/gallery/index.html and DEST/gallery/data/*.js. The page has
no server behind it: it is opened from disk (file://) or an S3 static website, where a
browser refuses fetch()/XHR of local JSON, so every data file is a script that calls a global
callback (JSONP style) and is loaded by adding a <script> tag. The views a person needs
(input order, most uncertain first, lowest colourfulness first; all rows or errors only) are
precomputed in pages of PAGE_SIZE items, so a 100,000-image archive opens as fast as a small
one: the browser only ever loads one page. The images are the workers' previews
(pipeline/previews.py), linked by relative URL; this module reads only the light columns of
the output shards, never an image.
"""

from __future__ import annotations

import html
import json
import math
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow.parquet as pq

from pipeline import storage
from pipeline.previews import GALLERY_DIR
from pipeline.report import load_committed_stats, merge_stats, models_line, models_present
from pipeline.stats import ShardStats

PAGE_SIZE = 200
DATA_DIR = "data"
ERROR_CHARS = 2000  # a traceback longer than this is cut in the page (the Parquet has it all)
IO_THREADS = 8  # shard reads and page writes overlap: on S3 each is a round trip

# The light columns an item carries, in display order; `image` is never read.
FLOAT_FIELDS = ("uncertainty", "colorfulness", "auc", "auc_rebalanced", "psnr", "ssim")
ITEM_FIELDS = ("id", "shard", "index", "status", "error", "width", "height", *FLOAT_FIELDS)
_READ_COLUMNS = ("id", "status", "error", "width", "height", *FLOAT_FIELDS)

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


def write_gallery(dest: str, *, s3_endpoint_url: str | None = None) -> dict[str, Any]:
    """Build DEST/gallery from everything committed in DEST (the shards named by _stats).

    Runs as a Ray task at the end of a colorize run (hence its own S3 setting). Data files
    first and index.html last, so a present index.html never points at missing pages; data
    files of an earlier, larger build are removed. Returns the totals, the pages per view and
    the URI of index.html.
    """
    storage.configure(s3_endpoint_url)
    stats = load_committed_stats(dest)
    totals = merge_stats(stats)  # the run report's totals, from the same stats
    items = read_items(dest, stats)
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
        "dest": dest,
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
    }
    files[f"{DATA_DIR}/meta.js"] = _script("galleryMeta", meta)
    root = storage.join(dest, GALLERY_DIR)
    _write_all(root, files)
    _remove_stale(storage.join(root, DATA_DIR), {storage.join(root, name) for name in files})
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


def index_html(build: str) -> str:
    """The page itself: self-contained HTML, CSS and JS (no external URL); `build` versions
    the data URLs, so a browser never mixes a cached page of an earlier build with this one."""
    options = "".join(
        f'<option value="{html.escape(sort)}">{html.escape(label)}</option>'
        for sort, (label, _key) in SORTS.items()
    )
    return (
        _PAGE.replace("__SORT_OPTIONS__", options)
        .replace("__BUILD__", html.escape(build))
        .replace("__GALLERY_CSS__", _CSS)
        .replace("__GALLERY_JS__", _JS)
    )


_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Review gallery</title>
<link rel="icon" href="data:,">
<style>__GALLERY_CSS__</style>
</head>
<body>
<header class="top">
  <div class="heading">
    <h1>Review gallery</h1>
    <p class="model" id="model">&nbsp;</p>
  </div>
  <dl class="totals">
    <div><dt>images</dt><dd id="n-images">–</dd></div>
    <div class="ok"><dt>ok</dt><dd id="n-ok">–</dd></div>
    <div class="err"><dt>errors</dt><dd id="n-errors">–</dd></div>
  </dl>
</header>
<nav class="bar" aria-label="view">
  <label>Sort <select id="sort">__SORT_OPTIONS__</select></label>
  <label class="check"><input type="checkbox" id="errors-only"> errors only</label>
  <span class="spacer"></span>
  <button type="button" id="prev" aria-label="previous page">&lsaquo; prev</button>
  <span id="page-info" class="page-info">page – of –</span>
  <button type="button" id="next" aria-label="next page">next &rsaquo;</button>
</nav>
<main>
  <p id="message" class="message" role="status"></p>
  <div id="grid" class="grid"></div>
</main>
<footer id="footer" class="footer"></footer>
<div id="overlay" class="overlay" hidden>
  <div class="sheet" role="dialog" aria-modal="true" aria-labelledby="ov-title">
    <div class="sheet-head">
      <h2 id="ov-title"></h2>
      <span id="ov-status" class="pill"></span>
      <span class="hint">Esc or click to close &middot; &larr; &rarr; neighbours</span>
    </div>
    <div id="ov-views" class="views">
      <figure><img id="ov-in" alt="gray input"><figcaption>input (gray)</figcaption></figure>
      <figure><img id="ov-out" alt="colour output"><figcaption>output (colour)</figcaption></figure>
    </div>
    <pre id="ov-error" class="ov-error"></pre>
    <dl id="ov-fields" class="fields"></dl>
  </div>
</div>
<script>__GALLERY_JS__</script>
<script src="data/meta.js?v=__BUILD__" onerror="galleryMissing()"></script>
</body>
</html>
"""

_CSS = """
:root {
  --bg: #f4f3f0; --card: #fff; --ink: #1f2328; --muted: #667085; --line: #e4e2dd;
  --ok: #1e7d45; --ok-bg: #e6f4eb; --err: #b42318; --err-bg: #fdeceb; --accent: #35618f;
  --warm: #d97706;
}
* { box-sizing: border-box; }
html { scrollbar-gutter: stable; }
body {
  margin: 0; background: var(--bg); color: var(--ink);
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", sans-serif;
}
body.noscroll { overflow: hidden; }
.top {
  display: flex; align-items: center; justify-content: space-between; gap: 24px;
  padding: 16px 24px; background: var(--card); border-bottom: 1px solid var(--line);
}
.top h1 { margin: 0; font-size: 20px; font-weight: 650; letter-spacing: -0.01em; }
.model { margin: 2px 0 0; color: var(--muted); font-size: 12px; }
.totals { display: flex; gap: 10px; margin: 0; }
.totals div {
  min-width: 84px; padding: 6px 12px; border: 1px solid var(--line); border-radius: 8px;
  text-align: right;
}
.totals dt { color: var(--muted); font-size: 11px; text-transform: uppercase;
  letter-spacing: .05em; }
.totals dd { margin: 0; font-size: 20px; font-weight: 650; font-variant-numeric: tabular-nums; }
.totals .ok dd { color: var(--ok); }
.totals .err dd { color: var(--err); }
.bar {
  position: sticky; top: 0; z-index: 2; display: flex; align-items: center; gap: 16px;
  padding: 10px 24px; background: rgba(244, 243, 240, .94); backdrop-filter: blur(6px);
  border-bottom: 1px solid var(--line);
}
.bar label { display: flex; align-items: center; gap: 8px; color: var(--muted); }
.bar select, .bar button {
  font: inherit; color: var(--ink); background: var(--card); border: 1px solid #cfccc5;
  border-radius: 6px; padding: 5px 10px;
}
.bar button { cursor: pointer; }
.bar button:disabled { opacity: .4; cursor: default; }
.bar .check { color: var(--ink); cursor: pointer; }
.spacer { flex: 1; }
.page-info { font-variant-numeric: tabular-nums; color: var(--muted); min-width: 92px;
  text-align: center; }
main { padding: 20px 24px 32px; }
.message { margin: 0 0 12px; color: var(--muted); }
.message:empty { display: none; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(330px, 1fr)); gap: 16px; }
.card {
  display: flex; flex-direction: column; background: var(--card); border: 1px solid var(--line);
  border-radius: 10px; overflow: hidden; cursor: pointer;
  box-shadow: 0 1px 2px rgba(16, 24, 40, .04); transition: box-shadow .15s, transform .15s;
}
.card:hover, .card:focus-visible {
  box-shadow: 0 6px 18px rgba(16, 24, 40, .12); transform: translateY(-1px); outline: none;
}
.card:focus-visible { border-color: var(--accent); }
.card.error { border-color: #f3c7c2; }
.pair {
  display: grid; grid-template-columns: 1fr 1fr; grid-template-rows: minmax(0, 1fr); gap: 2px;
  aspect-ratio: 8 / 3; overflow: hidden; background: var(--line);
}
.pair img {
  display: block; width: 100%; height: 100%; min-width: 0; min-height: 0; object-fit: contain;
  background: #ecebe7;
}
.nopreview {
  display: flex; align-items: center; justify-content: center; background: #ecebe7;
  color: var(--muted); font-size: 12px;
}
.errbox {
  grid-column: 1 / 3; height: 100%; margin: 0; padding: 12px 14px; overflow: hidden;
  background: var(--err-bg); color: var(--err); white-space: pre-wrap; word-break: break-word;
  font: 12px/1.45 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
}
.info { padding: 10px 12px 12px; display: flex; flex-direction: column; gap: 6px; }
.row { display: flex; align-items: center; gap: 8px; min-width: 0; }
.name { flex: 1; min-width: 0; font-weight: 600; overflow: hidden; text-overflow: ellipsis;
  white-space: nowrap; }
.where { color: var(--muted); font-size: 12px; }
.pill {
  display: inline-block; padding: 1px 8px; border-radius: 999px; font-size: 11px;
  font-weight: 650; text-transform: uppercase; letter-spacing: .04em;
}
.pill.ok { color: var(--ok); background: var(--ok-bg); }
.pill.error { color: var(--err); background: var(--err-bg); }
.doubt { display: flex; align-items: center; gap: 8px; font-size: 12px; color: var(--muted); }
.meter { flex: 1; height: 6px; border-radius: 3px; background: #eeece8; overflow: hidden; }
.meter span {
  display: block; height: 100%; background: linear-gradient(90deg, #f2c14e, var(--warm));
}
.doubt b { color: var(--ink); font-weight: 600; font-variant-numeric: tabular-nums; }
.metrics {
  display: grid; grid-template-columns: repeat(auto-fit, minmax(58px, 1fr)); gap: 4px; margin: 0;
}
.metrics div { background: #f7f6f3; border-radius: 6px; padding: 3px 6px; }
.metrics dt { color: var(--muted); font-size: 10px; white-space: nowrap; }
.metrics dd { margin: 0; font-size: 12px; font-variant-numeric: tabular-nums; }
.footer { padding: 0 24px 24px; color: var(--muted); font-size: 12px; }
.overlay {
  position: fixed; inset: 0; z-index: 10; display: flex; align-items: center;
  justify-content: center; padding: 24px; background: rgba(15, 17, 20, .78); cursor: zoom-out;
}
.overlay[hidden] { display: none; }
.sheet {
  width: min(1400px, 100%); max-height: 100%; overflow: auto; background: var(--card);
  border-radius: 12px; padding: 16px 20px 20px; box-shadow: 0 20px 60px rgba(0, 0, 0, .35);
}
.sheet-head { display: flex; align-items: center; gap: 12px; margin-bottom: 12px; }
.sheet-head h2 { margin: 0; font-size: 17px; word-break: break-all; }
.hint { margin-left: auto; color: var(--muted); font-size: 12px; white-space: nowrap; }
.views { display: grid; grid-template-columns: 1fr 1fr; gap: 12px; }
.views[hidden] { display: none; }
.views figure { margin: 0; }
.views img {
  display: block; width: 100%; max-height: 68vh; object-fit: contain; background: #ecebe7;
  border-radius: 6px;
}
.views figcaption { margin-top: 4px; color: var(--muted); font-size: 12px; text-align: center; }
.ov-error {
  margin: 0 0 12px; padding: 12px 14px; border-radius: 8px; background: var(--err-bg);
  color: var(--err); white-space: pre-wrap; word-break: break-word; max-height: 40vh;
  overflow: auto; font-size: 12px;
}
.ov-error:empty { display: none; }
.fields {
  display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); gap: 6px 16px;
  margin: 14px 0 0;
}
.fields dt { color: var(--muted); font-size: 11px; }
.fields dd { margin: 0; font-variant-numeric: tabular-nums; word-break: break-all; }
@media (max-width: 720px) {
  .top { flex-direction: column; align-items: flex-start; }
  .bar { flex-wrap: wrap; }
  .views { grid-template-columns: 1fr; }
}
"""

_JS = r"""
"use strict";
const state = { sort: "input", errors: false, page: 0 };
const pages = new Map();     // "view/page" -> items
const requested = new Set(); // data files already asked for
let meta = null;
let shown = [];              // the items of the page on screen
let opened = -1;             // index in `shown` of the item in the overlay
let build = "";

const $ = (id) => document.getElementById(id);
const EMPTY = "\u2013";

function fmt(value, digits, unit) {
  if (value === null || value === undefined) return EMPTY;
  return value.toFixed(digits) + (unit || "");
}
const METRICS = [
  ["uncertainty", "uncertainty", (v) => fmt(v, 3)],
  ["colorfulness", "colourful.", (v) => fmt(v, 1)],
  ["auc", "AuC", (v) => fmt(v, 3)],
  ["auc_rebalanced", "AuC rebal.", (v) => fmt(v, 3)],
  ["psnr", "PSNR", (v) => fmt(v, 1, " dB")],
  ["ssim", "SSIM", (v) => fmt(v, 3)],
];

function pathOf(item) {
  const shard = String(item.shard).split("/").map(encodeURIComponent).join("/");
  return shard + "/" + String(item.index).padStart(6, "0");
}
function preview(item, size, side) { return size + "/" + pathOf(item) + "-" + side + ".jpg"; }
function viewName() { return state.sort + "-" + (state.errors ? "errors" : "all"); }
function pageCount() { return meta ? meta.views[viewName()].pages : 1; }
function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

// --- data: JSONP callbacks --------------------------------------------------------------
function galleryMeta(m) {
  meta = m;
  build = m.build;
  $("n-images").textContent = m.images.toLocaleString("en");
  $("n-ok").textContent = m.ok.toLocaleString("en");
  $("n-errors").textContent = m.errors.toLocaleString("en");
  $("model").textContent = (m.model ? "model " + m.model + " \u00b7 " : "") +
    m.shards.toLocaleString("en") + " shards";
  $("footer").textContent = "Built " + m.generated + " from " + m.dest + ".";
  readHash();
  show();
}
function galleryPage(view, page, items) {
  pages.set(view + "/" + page, items);
  if (view === viewName() && page === state.page) show();
}
function galleryMissing() {
  $("message").textContent = "No gallery data found next to this page (data/meta.js).";
}

function request(view, page) {
  const file = "data/" + view + "-" + String(page).padStart(5, "0") + ".js";
  if (requested.has(file)) return;
  requested.add(file);
  const script = document.createElement("script");
  script.src = file + "?v=" + encodeURIComponent(build);
  script.onerror = () => {
    requested.delete(file);
    $("message").textContent = "Could not load " + file + ".";
  };
  document.head.appendChild(script);
}

// --- state in the URL hash, so reload and back keep the place ---------------------------
function readHash() {
  const params = new URLSearchParams(location.hash.slice(1));
  const sort = params.get("sort");
  state.sort = meta && sort && meta.sorts[sort] ? sort : "input";
  state.errors = params.get("errors") === "1";
  const page = parseInt(params.get("page") || "1", 10) - 1;
  state.page = Math.min(Math.max(Number.isFinite(page) ? page : 0, 0), pageCount() - 1);
}
function go(change) {
  Object.assign(state, change);
  state.page = Math.min(Math.max(state.page, 0), pageCount() - 1);
  const hash = "#sort=" + state.sort + "&errors=" + (state.errors ? 1 : 0) +
    "&page=" + (state.page + 1);
  if (location.hash === hash) show();
  else location.hash = hash;  // -> hashchange -> show()
}
window.addEventListener("hashchange", () => { if (meta) { readHash(); show(); } });

// --- rendering ------------------------------------------------------------------------------
function show() {
  const view = viewName();
  const total = pageCount();
  $("sort").value = state.sort;
  $("errors-only").checked = state.errors;
  $("page-info").textContent = "page " + (state.page + 1) + " of " + total;
  $("prev").disabled = state.page <= 0;
  $("next").disabled = state.page >= total - 1;
  const items = pages.get(view + "/" + state.page);
  if (!items) {
    $("message").textContent = "Loading\u2026";
    request(view, state.page);
    return;
  }
  shown = items;
  const count = meta.views[view].items;
  const first = state.page * meta.page_size;
  $("message").textContent = count === 0
    ? (state.errors ? "No errors in this archive." : "No images yet.")
    : (first + 1).toLocaleString("en") + "\u2013" + (first + items.length).toLocaleString("en") +
      " of " + count.toLocaleString("en") + (state.errors ? " error rows" : " images") +
      ", " + meta.sorts[state.sort];
  const grid = $("grid");
  grid.replaceChildren(...items.map(card));
  if (state.page + 1 < total) request(view, state.page + 1);  // the next page, ahead of time
}

function card(item, position) {
  const ok = item.status === "ok";
  const node = el("article", "card " + (ok ? "ok" : "error"));
  node.tabIndex = 0;
  node.dataset.id = item.id;
  node.dataset.status = item.status;
  node.dataset.position = String(position);
  const pair = el("div", "pair");
  if (ok) {
    for (const side of ["in", "out"]) {
      const img = el("img", "thumb");
      img.loading = "lazy";
      img.decoding = "async";
      img.alt = (side === "in" ? "gray input of " : "colour output of ") + item.id;
      img.src = preview(item, "thumbs", side);
      // e.g. shards committed before the workers wrote previews: say so, no broken image
      img.onerror = () => img.replaceWith(el("div", "nopreview", "no preview"));
      pair.appendChild(img);
    }
  } else {
    pair.appendChild(el("pre", "errbox", item.error || "error (no message)"));
  }
  node.appendChild(pair);
  const info = el("div", "info");
  const head = el("div", "row");
  const name = el("span", "name", item.id);
  name.title = item.id;
  head.append(name, el("span", "pill " + (ok ? "ok" : "error"), item.status));
  info.appendChild(head);
  info.appendChild(el("div", "where", item.shard + " \u00b7 row " + item.index +
    (item.width ? " \u00b7 " + item.width + "\u00d7" + item.height : "")));
  if (ok) {
    const doubt = el("div", "doubt");
    const meter = el("div", "meter");
    const fill = el("span");
    const u = item.uncertainty;
    fill.style.width = u === null ? "0" : Math.round(Math.min(Math.max(u, 0), 1) * 100) + "%";
    meter.appendChild(fill);
    const value = el("b", "", fmt(u, 3));
    doubt.append(el("span", "", "uncertainty"), meter, value);
    info.appendChild(doubt);
    const metrics = el("dl", "metrics");
    for (const [key, label, format] of METRICS.slice(1)) {
      const cell = el("div");
      cell.append(el("dt", "", label), el("dd", "", format(item[key])));
      metrics.appendChild(cell);
    }
    info.appendChild(metrics);
  } else {
    info.appendChild(el("div", "where", "no output image \u00b7 click for the whole message"));
  }
  node.appendChild(info);
  node.addEventListener("click", () => openItem(position));
  node.addEventListener("keydown", (e) => { if (e.key === "Enter") openItem(position); });
  return node;
}

// --- overlay -------------------------------------------------------------------------------
function openItem(position) {
  const item = shown[position];
  if (!item) return;
  opened = position;
  const ok = item.status === "ok";
  $("ov-title").textContent = item.id;
  const pill = $("ov-status");
  pill.className = "pill " + (ok ? "ok" : "error");
  pill.textContent = item.status;
  $("ov-views").hidden = !ok;
  $("ov-in").removeAttribute("src");
  $("ov-out").removeAttribute("src");
  if (ok) {
    $("ov-in").src = preview(item, "view", "in");
    $("ov-out").src = preview(item, "view", "out");
  }
  $("ov-error").textContent = ok ? "" : (item.error || "error (no message)");
  const fields = $("ov-fields");
  fields.replaceChildren();
  const rows = [["id", item.id], ["shard", item.shard], ["row", String(item.index)],
    ["status", item.status],
    ["size", item.width ? item.width + " \u00d7 " + item.height + " px" : EMPTY]];
  for (const [key, label, format] of METRICS) rows.push([label, format(item[key])]);
  for (const [label, value] of rows) {
    const cell = el("div");
    cell.append(el("dt", "", label), el("dd", "", value));
    fields.appendChild(cell);
  }
  $("overlay").hidden = false;
  document.body.classList.add("noscroll");
}
function closeItem() {
  if ($("overlay").hidden) return;
  $("overlay").hidden = true;
  document.body.classList.remove("noscroll");
  const node = document.querySelector('.card[data-position="' + opened + '"]');
  if (node) node.focus({ preventScroll: true });
  opened = -1;
}
$("overlay").addEventListener("click", closeItem);
document.addEventListener("keydown", (e) => {
  if ($("overlay").hidden) return;
  if (e.key === "Escape") closeItem();
  else if (e.key === "ArrowRight" && opened + 1 < shown.length) openItem(opened + 1);
  else if (e.key === "ArrowLeft" && opened > 0) openItem(opened - 1);
});

// --- controls ------------------------------------------------------------------------------
$("sort").addEventListener("change", (e) => go({ sort: e.target.value, page: 0 }));
$("errors-only").addEventListener("change", (e) => go({ errors: e.target.checked, page: 0 }));
$("prev").addEventListener("click", () => { go({ page: state.page - 1 }); window.scrollTo(0, 0); });
$("next").addEventListener("click", () => { go({ page: state.page + 1 }); window.scrollTo(0, 0); });
"""
