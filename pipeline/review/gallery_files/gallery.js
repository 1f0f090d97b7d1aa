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
  // one model's line already counts its shards; with several (or none), give the total too
  var oneModel = m.models && Object.keys(m.models).length === 1;
  $("model").textContent = oneModel ? "model " + m.model :
    (m.model ? "models " + m.model + " \u00b7 " : "") + m.shards.toLocaleString("en") + " shards";
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
