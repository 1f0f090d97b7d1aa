"use strict";
const state = { sort: "input", errors: false, hinted: false, page: 0 };
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
function filterName() { return state.errors ? "errors" : state.hinted ? "hinted" : "all"; }
function viewName() { return state.sort + "-" + filterName(); }
function pageCount() { return meta ? meta.views[viewName()].pages : 1; }
function plural(n, word) { return n + " " + word + (n === 1 ? "" : "s"); }
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
  $("n-hinted").textContent = "(" + m.views["input-hinted"].items.toLocaleString("en") + ")";
  // one model's line already counts its shards; with several (or none), give the total too
  var oneModel = m.models && Object.keys(m.models).length === 1;
  $("model").textContent = oneModel ? "model " + m.model :
    (m.model ? "models " + m.model + " \u00b7 " : "") + m.shards.toLocaleString("en") + " shards";
  $("footer").textContent = "Built " + m.generated + " from " + m.dest + ".";
  loadHints();
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
  load("data/" + view + "-" + String(page).padStart(5, "0") + ".js");
}
function load(file) {
  if (requested.has(file)) return;
  requested.add(file);
  const script = document.createElement("script");
  script.src = file.split("/").map(encodeURIComponent).join("/") + "?v=" +
    encodeURIComponent(build);
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
  state.hinted = !state.errors && params.get("hinted") === "1";
  const page = parseInt(params.get("page") || "1", 10) - 1;
  state.page = Math.min(Math.max(Number.isFinite(page) ? page : 0, 0), pageCount() - 1);
}
function go(change) {
  Object.assign(state, change);
  state.page = Math.min(Math.max(state.page, 0), pageCount() - 1);
  const hash = "#sort=" + state.sort + "&errors=" + (state.errors ? 1 : 0) +
    (state.hinted ? "&hinted=1" : "") + "&page=" + (state.page + 1);
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
  $("hinted-only").checked = state.hinted;
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
  const [none, rows] = {
    all: ["No images yet.", " images"],
    errors: ["No errors in this archive.", " error rows"],
    hinted: ["No rows colorized with hints yet.", " rows colorized with hints"],
  }[filterName()];
  $("message").textContent = count === 0 ? none
    : (first + 1).toLocaleString("en") + "\u2013" + (first + items.length).toLocaleString("en") +
      " of " + count.toLocaleString("en") + rows + ", " + meta.sorts[state.sort];
  const grid = $("grid");
  grid.replaceChildren(...items.map(card));
  showHintCounts();
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
  const badge = el("span", "pill hinted");
  badge.title = "hints placed in this browser, not yet colorized";
  badge.hidden = true;
  head.append(name, badge, el("span", "pill " + (ok ? "ok" : "error"), item.status));
  info.appendChild(head);
  if (item.hints > 0) info.appendChild(usedHints(el("div", "used-hints"), item));
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

// a row's `hints` column: the hints its output was colorized with (not those placed here)
function usedHints(node, item) {
  node.hidden = !(item.hints > 0);
  node.textContent = item.hints > 0 ? "colorized with " + plural(item.hints, "hint") : "";
  node.title = "this output was colorized with " + plural(item.hints || 0, "colour hint") +
    " (colorize --hints; DEST/_hints.json keeps them)";
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
  usedHints($("ov-used"), item);
  $("ov-views").hidden = !ok;
  $("hint-tools").hidden = !ok;
  $("hint-list").hidden = !ok;
  $("ov-in").removeAttribute("src");
  $("ov-out").removeAttribute("src");
  if (ok) {
    for (const side of ["in", "out"]) {
      const stage = $("stage-" + side);
      // the box has the image's own aspect, as large as the sheet allows
      const ratio = item.width && item.height ? item.width / item.height : 4 / 3;
      stage.style.aspectRatio = String(ratio);
      stage.style.width = "min(100%, calc(62vh * " + ratio + "))";
      $("ov-" + side).src = preview(item, "view", side);
    }
    const colors = meta.colors && meta.colors[item.shard];
    if (colors) load(colors);
  }
  $("ov-error").textContent = ok ? "" : (item.error || "error (no message)");
  const fields = $("ov-fields");
  fields.replaceChildren();
  const rows = [["id", item.id], ["shard", item.shard], ["row", String(item.index)],
    ["status", item.status],
    ["size", item.width ? item.width + " \u00d7 " + item.height + " px" : EMPTY],
    ["colorized with", plural(item.hints || 0, "hint")]];
  for (const [key, label, format] of METRICS) rows.push([label, format(item[key])]);
  for (const [label, value] of rows) {
    const cell = el("div");
    cell.append(el("dt", "", label), el("dd", "", value));
    fields.appendChild(cell);
  }
  $("overlay").hidden = false;
  document.body.classList.add("noscroll");
  showHints();
}
function closeItem() {
  if ($("overlay").hidden) return;
  $("overlay").hidden = true;
  document.body.classList.remove("noscroll");
  showHintCounts();
  const node = document.querySelector('.card[data-position="' + opened + '"]');
  if (node) node.focus({ preventScroll: true });
  opened = -1;
}
$("overlay").addEventListener("click", closeItem);
document.addEventListener("keydown", (e) => {
  if ($("overlay").hidden) return;
  if (e.key === "Escape" && taking) setTaking(false);
  else if (e.key === "Escape") closeItem();
  else if (e.target.closest && e.target.closest("input, select")) return;
  else if (e.key === "ArrowRight" && opened + 1 < shown.length) openItem(opened + 1);
  else if (e.key === "ArrowLeft" && opened > 0) openItem(opened - 1);
});

// --- controls ------------------------------------------------------------------------------
$("sort").addEventListener("change", (e) => go({ sort: e.target.value, page: 0 }));
$("errors-only").addEventListener("change",
  (e) => go({ errors: e.target.checked, hinted: false, page: 0 }));
$("hinted-only").addEventListener("change",
  (e) => go({ hinted: e.target.checked, errors: false, page: 0 }));
$("prev").addEventListener("click", () => { go({ page: state.page - 1 }); window.scrollTo(0, 0); });
$("next").addEventListener("click", () => { go({ page: state.page + 1 }); window.scrollTo(0, 0); });

// --- colour hints --------------------------------------------------------------------------
// Per row id, the points an archivist placed: {id: [{x, y, rgb, r?}]}, x and y shares of the
// image's width and height, rgb "#rrggbb", r (optional) a share of the short side: the
// hints.json of `colorize --hints`. Kept in localStorage under DEST, so paging, reloading and
// rebuilding the gallery keep them. A colour is taken from an output through the shard's
// colour file (data/colors/*.js: each output as a small RGB grid), not from the image's
// pixels, which a canvas may not read on a page from file:// (or S3 without CORS).
const RGB = /^#[0-9a-f]{6}$/;
let hints = {};
let hintsKey = null;       // null: localStorage is unavailable, hints live as long as the page
const grids = new Map();   // "shard/index" -> [width, height, base64 RGB]
let taking = false;        // the next click on an image takes a colour instead of placing one

function cleanPoint(p) {
  if (!p || typeof p !== "object") return null;
  const inUnit = (v) => typeof v === "number" && v >= 0 && v <= 1;
  const rgb = typeof p.rgb === "string" ? p.rgb.toLowerCase() : "";
  if (!inUnit(p.x) || !inUnit(p.y) || !RGB.test(rgb)) return null;
  const point = { x: p.x, y: p.y, rgb: rgb };
  if (typeof p.r === "number" && p.r > 0 && p.r <= 0.5) point.r = p.r;
  return point;
}
function loadHints() {
  hints = {};
  try {
    hintsKey = "archive-colorize/hints/" + meta.dest;
    const stored = JSON.parse(localStorage.getItem(hintsKey) || "{}");
    for (const [id, points] of Object.entries(stored || {})) {
      const kept = Array.isArray(points) ? points.map(cleanPoint).filter(Boolean) : [];
      if (kept.length) hints[id] = kept;
    }
    const colour = localStorage.getItem("archive-colorize/hint-colour");
    if (colour && RGB.test(colour)) setColour(colour);
  } catch (err) {
    hintsKey = null;
    $("message").textContent = "This browser keeps no data for this page: hints last until " +
      "it is closed (download them before).";
  }
  showTotal();
}
function clearHints() {
  const count = hintCount();
  const ask = "Remove all " + plural(count, "hint") + " on " +
    plural(Object.keys(hints).length, "image") + " placed for " + meta.dest + "?\n" +
    "They are kept nowhere else unless you downloaded hints.json.";
  if (count === 0 || !confirm(ask)) return;
  hints = {};
  if (hintsKey !== null) {
    try { localStorage.removeItem(hintsKey); } catch (err) { /* none */ }
  }
  showHints();
  showHintCounts();
}
function saveHints() {
  if (hintsKey === null) return;
  try { localStorage.setItem(hintsKey, JSON.stringify(hints)); } catch (err) { /* full */ }
}
window.addEventListener("storage", (e) => {  // another tab of the same gallery
  if (hintsKey !== null && e.key === hintsKey) { loadHints(); showHints(); showHintCounts(); }
});

function hintsDocument() { return JSON.stringify(hints, null, 2) + "\n"; }
function downloadHints() {
  const url = URL.createObjectURL(new Blob([hintsDocument()], { type: "application/json" }));
  const link = el("a");
  link.href = url;
  link.download = "hints.json";
  document.body.appendChild(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
}

function openedItem() { return opened >= 0 && !$("overlay").hidden ? shown[opened] : null; }
function share(v) { return Math.round(Math.min(Math.max(v, 0), 1) * 10000) / 10000; }
function pointAt(stage, e) {
  const box = stage.getBoundingClientRect();
  return { x: share((e.clientX - box.left) / box.width),
           y: share((e.clientY - box.top) / box.height) };
}
function pct(v) { return (v * 100).toFixed(1) + "%"; }

function addHint(item, x, y) {
  const point = { x: x, y: y, rgb: $("hint-colour").value.toLowerCase() };
  const r = parseFloat($("hint-radius").value);
  if (r > 0) point.r = r;
  (hints[item.id] = hints[item.id] || []).push(point);
  saveHints();
  showHints();
}
function removeHint(item, index) {
  const points = hints[item.id] || [];
  points.splice(index, 1);
  if (!points.length) delete hints[item.id];
  saveHints();
  showHints();
}

// the output's colour at a point of an image, from its shard's colour grid
function galleryColors(file, shardGrids) {
  const shard = Object.keys(meta.colors).find((s) => meta.colors[s] === file);
  if (shard === undefined) return;
  shardGrids.forEach((grid, index) => { if (grid) grids.set(shard + "/" + index, grid); });
  showTools();
}
function colourAt(item, x, y) {
  const grid = grids.get(item.shard + "/" + item.index);
  if (!grid) return null;
  const [width, height, data] = grid;
  if (!grid.bytes) grid.bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
  const col = Math.min(Math.floor(x * width), width - 1);
  const row = Math.min(Math.floor(y * height), height - 1);
  const at = (row * width + col) * 3;
  return "#" + [0, 1, 2].map((i) => grid.bytes[at + i].toString(16).padStart(2, "0")).join("");
}
function setColour(rgb) {
  $("hint-colour").value = rgb;
  $("hint-hex").textContent = rgb;
  try { localStorage.setItem("archive-colorize/hint-colour", rgb); } catch (err) { /* none */ }
}
function setTaking(on) {
  taking = on;
  $("hint-take").setAttribute("aria-pressed", on ? "true" : "false");
  document.querySelector(".sheet").classList.toggle("taking", on);
  showTools();
}

function showTools() {
  const item = openedItem();
  const hasGrid = !!item && grids.has(item.shard + "/" + item.index);
  const take = $("hint-take");
  take.disabled = !hasGrid && !taking;
  $("hint-help").textContent = taking
    ? (hasGrid ? "click a point of this image (or go to another: \u2190 \u2192) to take " +
       "its output colour \u00b7 Esc cancels" : "no colour data for this image: go to another")
    : "click an image to place a hint";
}
function hintCount() { return Object.values(hints).reduce((n, points) => n + points.length, 0); }
function showTotal() {
  const ids = Object.keys(hints);
  const count = hintCount();
  $("hints-total").textContent = count === 0 ? "no hints" :
    count + (count === 1 ? " hint" : " hints") + " on " + ids.length +
    (ids.length === 1 ? " image" : " images");
  $("hints-download").disabled = count === 0;
  $("hints-clear").disabled = count === 0;
}
function showHintCounts() {
  for (const node of document.querySelectorAll(".card")) {
    const n = (hints[node.dataset.id] || []).length;
    const badge = node.querySelector(".pill.hinted");
    badge.hidden = n === 0;
    badge.textContent = n + (n === 1 ? " hint" : " hints");
  }
}
function mark(point, number) {
  const dot = el("span", "mark");
  dot.style.left = point.x * 100 + "%";
  dot.style.top = point.y * 100 + "%";
  dot.style.background = point.rgb;
  dot.appendChild(el("b", "", String(number)));
  const ring = el("span", "ring");
  ring.style.left = dot.style.left;
  ring.style.top = dot.style.top;
  // r is a share of the short side: cqmin is 1% of the stage's shorter side
  const size = 2 * (point.r || 0.01) * 100 + "cqmin";
  ring.style.width = ring.style.height = size;
  return [ring, dot];
}
function showHints() {
  showTotal();
  const item = openedItem();
  const points = (item && hints[item.id]) || [];
  for (const side of ["in", "out"]) {
    const layer = $("stage-" + side).querySelector(".marks");
    layer.replaceChildren(...points.flatMap((p, i) => mark(p, i + 1)));
  }
  const list = $("hint-list");
  list.replaceChildren(...points.map((p, i) => {
    const row = el("li");
    row.dataset.x = String(p.x);
    row.dataset.y = String(p.y);
    row.dataset.rgb = p.rgb;
    const swatch = el("span", "swatch");
    swatch.style.background = p.rgb;
    const remove = el("button", "", "\u00d7");
    remove.type = "button";
    remove.title = "remove hint " + (i + 1);
    remove.setAttribute("aria-label", remove.title);
    remove.addEventListener("click", () => removeHint(item, i));
    row.append(el("span", "num", String(i + 1)), swatch, el("code", "", p.rgb),
      el("span", "", "x " + pct(p.x) + ", y " + pct(p.y) + (p.r ? ", r " + pct(p.r) : "")),
      remove);
    return row;
  }));
  if (item && !points.length) list.appendChild(el("li", "empty", "no hints on this image"));
  showTools();
}

for (const side of ["in", "out"]) {
  $("stage-" + side).addEventListener("click", (e) => {
    const item = openedItem();
    if (!item) return;
    const { x, y } = pointAt(e.currentTarget, e);
    if (taking) {
      const rgb = colourAt(item, x, y);
      if (rgb) { setColour(rgb); setTaking(false); }
      return;
    }
    addHint(item, x, y);
  });
}
// clicks on the images and the hint tools do not close the overlay
for (const id of ["ov-views", "hint-tools", "hint-list"]) {
  $(id).addEventListener("click", (e) => e.stopPropagation());
}
$("hint-colour").addEventListener("input", (e) => setColour(e.target.value.toLowerCase()));
$("hint-take").addEventListener("click", () => setTaking(!taking));
$("hints-download").addEventListener("click", downloadHints);
$("hints-clear").addEventListener("click", clearHints);
