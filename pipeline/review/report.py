"""The run report: merged shard stats as JSON, a markdown page, a metrics figure, a contact sheet.

Everything is built from the per-shard stats documents (DEST/_stats/*.json) and a few small
sample strips, so a report over millions of images never reads the output images themselves.
Only `write_report` and `load_committed_stats` touch storage; the rest are pure functions.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Collection, Iterable
from typing import Any, TypeAlias

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pipeline.archive import storage
from pipeline.archive.stats import METRIC_RANGES, MetricSummary, ShardStats, hist_edges
from pipeline.review.artifact import artifact_markdown

PANEL_WIDTH = 320
PANEL_HEIGHT = 200
PANEL_COLUMNS = 3
SHEET_HEADER = 24
SHEET_MARGIN = 8
SHEET_HEADER_TEXT = "input (gray) | output (colour)"

_WHITE = (255, 255, 255)
_BLACK = (0, 0, 0)
_GRAY = (110, 110, 110)
_BAR = (70, 130, 180)

Font: TypeAlias = ImageFont.FreeTypeFont | ImageFont.ImageFont


def _font(size: int = 12) -> Font:
    """Pillow's bundled font: no system fonts needed on workers or CI images."""
    return ImageFont.load_default(size=size)


def _metric_order(names: Iterable[str]) -> list[str]:
    """Known metrics in METRIC_RANGES order (a meaningful reading order), unknown ones after."""
    known = list(METRIC_RANGES)
    return sorted(names, key=lambda n: (known.index(n) if n in known else len(known), n))


def merge_stats(stats: list[ShardStats]) -> dict[str, Any]:
    """Totals over shards; metric summaries merge exactly because histogram edges are fixed.

    Returns shards, images (sum of rows), ok, errors, errors_by_kind, metadata_dropped (ok
    images whose damaged metadata of a kind was left out), shard_seconds (sum of the shards'
    own timings, not wall clock) and metrics {name: MetricSummary}. Inputs are not modified.
    """
    errors_by_kind: dict[str, int] = {}
    metadata_dropped: dict[str, int] = {}
    metrics: dict[str, MetricSummary] = {}
    for s in stats:
        for kind, n in s.errors_by_kind.items():
            errors_by_kind[kind] = errors_by_kind.get(kind, 0) + n
        for kind, n in s.metadata_dropped.items():
            metadata_dropped[kind] = metadata_dropped.get(kind, 0) + n
        for name, summary in s.metrics.items():
            metrics.setdefault(name, MetricSummary()).merge(summary)
    return {
        "shards": len(stats),
        "images": sum(s.rows for s in stats),
        "ok": sum(s.ok for s in stats),
        "errors": sum(s.errors for s in stats),
        "errors_by_kind": dict(sorted(errors_by_kind.items())),
        "metadata_dropped": dict(sorted(metadata_dropped.items())),
        "hinted": sum(s.hinted for s in stats),
        "shard_seconds": sum(s.seconds for s in stats),
        "metrics": {name: metrics[name] for name in _metric_order(metrics)},
    }


def models_present(stats: list[ShardStats]) -> dict[str, dict[str, int]]:
    """Every model that made committed shards: {model id: {"shards", "images"}}. One archive,
    one model: more than one entry means DEST mixes outputs (see pipeline/archive/manifest.py)."""
    found: dict[str, dict[str, int]] = {}
    for s in stats:
        entry = found.setdefault(s.model or "unknown", {"shards": 0, "images": 0})
        entry["shards"] += 1
        entry["images"] += s.rows
    return dict(sorted(found.items()))


def models_line(models: dict[str, dict[str, int]]) -> str:
    """`a.safetensors@1234 (6 images, 2 shards)`, joined by "; " (export's and the CLI's)."""
    return "; ".join(
        f"{name} ({m['images']:,} images, {m['shards']:,} shards)" for name, m in models.items()
    )


def _metric_json(name: str, summary: MetricSummary) -> dict[str, Any]:
    return {
        "count": summary.count,
        "mean": summary.mean,
        "std": summary.std,
        "min": summary.min if summary.count else None,
        "max": summary.max if summary.count else None,
        "hist": list(summary.hist),
        "edges": [float(e) for e in hist_edges(name)],
    }


def _rate(images: int, seconds: float) -> float:
    """Images per second; 0.0 for a zero-length run so callers can always format it."""
    return images / seconds if seconds > 0 else 0.0


def build_report(
    stats: list[ShardStats],
    *,
    run_shards: set[str],
    shards_done: int,
    shards_skipped: int,
    shards_failed: list[dict[str, Any]],
    seconds: float,
    model: str,
    source: str,
    dest: str,
    settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A JSON-able report of the whole archive and of this run.

    `stats` covers every committed shard (those done now and those skipped because an earlier
    run committed them), so the top-level totals and metrics describe the archive;
    `run_shards` names the shards done in this run, whose totals and throughput go to
    "this_run" (skipped shards cost this run nothing, so they must not inflate images/s).
    """
    archive = merge_stats(stats)
    run = merge_stats([s for s in stats if s.shard in run_shards])
    failed = [
        {"shard": str(f["shard"]), "error": str(f["error"])}
        | ({"attempts": int(f["attempts"])} if "attempts" in f else {})
        for f in shards_failed
    ]
    run_rate = _rate(run["images"], seconds)
    return {
        "source": source,
        "dest": dest,
        "model": model,
        "models": models_present(stats),  # every model in DEST, with counts: one, normally
        "settings": settings or {},  # DEST's manifest: what made it
        "images": archive["images"],
        "ok": archive["ok"],
        "errors": archive["errors"],
        "errors_by_kind": archive["errors_by_kind"],
        "metadata_dropped": archive["metadata_dropped"],
        "hinted": archive["hinted"],  # images colorized with colour hints
        "shards": {
            "total": shards_done + shards_skipped + len(failed),
            "done": shards_done,
            "skipped": shards_skipped,
            "failed": failed,
        },
        "seconds": seconds,
        "images_per_second": run_rate,
        "archive": {
            "shards": archive["shards"],
            "images": archive["images"],
            "ok": archive["ok"],
            "errors": archive["errors"],
            "errors_by_kind": archive["errors_by_kind"],
            "metadata_dropped": archive["metadata_dropped"],
            "shard_seconds": archive["shard_seconds"],
        },
        "this_run": {
            "shards": run["shards"],
            "images": run["images"],
            "ok": run["ok"],
            "errors": run["errors"],
            "errors_by_kind": run["errors_by_kind"],
            "metadata_dropped": run["metadata_dropped"],
            "hinted": run["hinted"],
            "seconds": seconds,
            "shard_seconds": run["shard_seconds"],
            "images_per_second": run_rate,
        },
        "metrics": {name: _metric_json(name, m) for name, m in archive["metrics"].items()},
        "nodes": per_node(stats),
    }


def per_node(stats: list[ShardStats]) -> dict[str, dict[str, Any]]:
    """Shards and images per Ray node (and its devices, each with the number type the network
    ran in there, e.g. "cpu int8"): who did the work, and how."""
    nodes: dict[str, dict[str, Any]] = {}
    for s in stats:
        entry = nodes.setdefault(s.node or "unknown", {"shards": 0, "images": 0, "devices": []})
        entry["shards"] += 1
        entry["images"] += s.rows
        device = f"{s.device} {s.precision}".strip() if s.device else ""
        if device and device not in entry["devices"]:
            entry["devices"].append(device)
    return dict(sorted(nodes.items()))


def _num(value: float | int | None, fmt: str = ".4g") -> str:
    if value is None:
        return "–"
    if isinstance(value, int):
        return f"{value:,}"
    return format(value, fmt)


def _cell(text: str, limit: int = 300) -> str:
    """One markdown table cell: no pipes or newlines, and long tracebacks cut (JSON has them)."""
    flat = " ".join(text.split()).replace("|", "\\|")
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def report_markdown(report: dict[str, Any]) -> str:
    """A page a person reads first: totals, metric table, what went wrong, then the figures."""
    archive, run, shards = report["archive"], report["this_run"], report["shards"]
    lines = [
        "# Colorization report",
        "",
        f"- source: `{report['source']}`",
        f"- dest: `{report['dest']}`",
        f"- model: `{report['model']}`",
        *_models_lines(report.get("models", {})),
        *_settings_lines(report.get("settings", {})),
        "- every image, sortable by uncertainty: [review gallery](gallery/index.html)",
        "",
        "## Summary",
        "",
        "| | archive | this run |",
        "|---|---:|---:|",
        f"| images | {_num(archive['images'])} | {_num(run['images'])} |",
        f"| ok | {_num(archive['ok'])} | {_num(run['ok'])} |",
        f"| errors | {_num(archive['errors'])} | {_num(run['errors'])} |",
        f"| shards | {_num(archive['shards'])} committed | {_num(shards['done'])} done, "
        f"{_num(shards['skipped'])} skipped, {_num(len(shards['failed']))} failed "
        f"(of {_num(shards['total'])}) |",
        f"| seconds | {_num(archive['shard_seconds'], '.1f')} (sum over shards) "
        f"| {_num(run['seconds'], '.1f')} (wall clock) |",
        f"| images/s | – | {_num(run['images_per_second'], '.1f')} |",
        "",
        "## Metrics",
        "",
    ]
    metrics: dict[str, dict[str, Any]] = report["metrics"]
    if metrics:
        lines += ["| metric | count | mean | std | min | max |", "|---|---:|---:|---:|---:|---:|"]
        for name, m in metrics.items():
            values = [m["count"], m["mean"], m["std"], m["min"], m["max"]]
            lines.append(f"| {name} | " + " | ".join(_num(v) for v in values) + " |")
    else:
        lines.append("No metrics recorded.")
    lines += ["", "## Errors by kind", ""]
    if report["errors_by_kind"]:
        lines += ["| kind | images |", "|---|---:|"]
        lines += [f"| {_cell(k)} | {_num(n)} |" for k, n in report["errors_by_kind"].items()]
    else:
        lines.append("No errors.")
    lines += ["", "## Metadata dropped", ""]
    if report.get("metadata_dropped"):
        lines += [
            "Damaged metadata is left out, never guessed at; these images are ok rows all the "
            "same.",
            "",
            "| kind | images |",
            "|---|---:|",
        ]
        lines += [f"| {_cell(k)} | {_num(n)} |" for k, n in report["metadata_dropped"].items()]
    else:
        lines.append("None.")
    if report.get("hinted"):
        lines += ["", f"{_num(report['hinted'])} images were colorized with colour hints "
                      "(`colorize --hints`; DEST/_hints.json keeps them).", ""]  # fmt: skip
    lines += ["", "## Failed shards", ""]
    if shards["failed"]:
        lines += ["| shard | error |", "|---|---|"]
        lines += [f"| {_cell(f['shard'])} | {_cell(f['error'])} |" for f in shards["failed"]]
    else:
        lines.append("None.")
    lines += ["", "## Nodes", "", "| node | devices | shards | images |", "|---|---|---:|---:|"]
    lines += [
        f"| {_cell(node)} | {_cell(', '.join(n['devices']))} | {n['shards']} | {n['images']} |"
        for node, n in report.get("nodes", {}).items()
    ]
    lines += [
        "",
        "## Figures",
        "",
        "![metric histograms](metrics.png)",
        "",
        "![contact sheet: input (gray) | output (colour)](contact_sheet.png)",
        "",
    ]
    return "\n".join(lines)


def _models_lines(models: dict[str, dict[str, int]]) -> list[str]:
    """Every model in DEST with its counts; a warning when there is more than one."""
    lines = [
        f"- made by: `{name}` ({_num(m['images'])} images, {_num(m['shards'])} shards)"
        for name, m in models.items()
    ]
    if len(models) > 1:
        lines.append(
            f"- **warning: {len(models)} models in one DEST**: rerun with `--recolorize` to "
            "redo every shard with one"
        )
    return lines


def _settings_lines(settings: dict[str, Any]) -> list[str]:
    if not settings:
        return []
    shown = ", ".join(f"{k} `{v}`" for k, v in settings.items() if k != "model")
    return [f"- settings (DEST/_manifest.json): {shown}"]


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _message_png(text: str) -> bytes:
    """A small placeholder image, so report.md never links a missing file."""
    image = Image.new("RGB", (240, 48), _WHITE)
    ImageDraw.Draw(image).text((120, 24), text, fill=_GRAY, font=_font(14), anchor="mm")
    return _png(image)


def _draw_panel(draw: ImageDraw.ImageDraw, x0: int, y0: int, name: str, m: dict[str, Any]) -> None:
    """One histogram panel: title (name, mean, n), bars on fixed edges, range labels."""
    font = _font(12)
    left, right, top, bottom = x0 + 36, x0 + PANEL_WIDTH - 12, y0 + 28, y0 + PANEL_HEIGHT - 26
    draw.rectangle((x0, y0, x0 + PANEL_WIDTH - 1, y0 + PANEL_HEIGHT - 1), outline=(220, 220, 220))
    title = f"{name}   mean {_num(m['mean'])}   n={_num(m['count'])}"
    draw.text((x0 + PANEL_WIDTH // 2, y0 + 12), title, fill=_BLACK, font=font, anchor="mm")
    hist: list[int] = m["hist"]
    peak = max(hist, default=0)
    if peak > 0:
        width = (right - left) / len(hist)
        for i, count in enumerate(hist):
            if count:
                height = max(1, round(count / peak * (bottom - top)))
                xa = round(left + i * width)
                xb = max(xa, round(left + (i + 1) * width) - 1)
                draw.rectangle((xa, bottom - height, xb, bottom), fill=_BAR)
    draw.line((left, bottom, right, bottom), fill=_BLACK)
    draw.line((left, top, left, bottom), fill=_BLACK)
    edges: list[float] = m["edges"]
    label_y = bottom + 4
    draw.text((left, label_y), _num(edges[0]), fill=_GRAY, font=font, anchor="lt")
    draw.text((right, label_y), _num(edges[-1]), fill=_GRAY, font=font, anchor="rt")
    draw.text((left - 4, top), _num(peak), fill=_GRAY, font=font, anchor="rt")
    draw.text((left - 4, bottom), "0", fill=_GRAY, font=font, anchor="rb")


def metrics_figure(report: dict[str, Any]) -> bytes:
    """PNG grid of one histogram per metric (PANEL_WIDTH x PANEL_HEIGHT each, up to 3 a row)."""
    metrics: dict[str, dict[str, Any]] = report["metrics"]
    if not metrics:
        return _message_png("no metrics")
    columns = min(PANEL_COLUMNS, len(metrics))
    rows = math.ceil(len(metrics) / columns)
    image = Image.new("RGB", (columns * PANEL_WIDTH, rows * PANEL_HEIGHT), _WHITE)
    draw = ImageDraw.Draw(image)
    for i, (name, m) in enumerate(metrics.items()):
        row, col = divmod(i, columns)
        _draw_panel(draw, col * PANEL_WIDTH, row * PANEL_HEIGHT, name, m)
    return _png(image)


def contact_sheet(strips: list[bytes], max_rows: int = 12) -> bytes:
    """Stack the first `max_rows` sample strips (PNG bytes) under a header, on white.

    Width is that of the widest strip; each strip keeps its own size and is followed by a
    SHEET_MARGIN gap. An undecodable strip raises (PIL.UnidentifiedImageError) rather than
    silently vanishing from the sheet.
    """
    images = [Image.open(io.BytesIO(data)).convert("RGB") for data in strips[: max(0, max_rows)]]
    if not images:
        return _message_png("no images")
    width = max(im.width for im in images)
    height = SHEET_HEADER + sum(im.height + SHEET_MARGIN for im in images)
    sheet = Image.new("RGB", (width, height), _WHITE)
    draw = ImageDraw.Draw(sheet)
    draw.text((4, SHEET_HEADER // 2), SHEET_HEADER_TEXT, fill=_BLACK, font=_font(14), anchor="lm")
    y = SHEET_HEADER
    for im in images:
        sheet.paste(im, (0, y))
        y += im.height + SHEET_MARGIN
    return _png(sheet)


def report_files(report: dict[str, Any], strips: list[bytes]) -> dict[str, bytes]:
    """{file name: bytes}: metrics.png, contact_sheet.png, report.md, report.json, in the order
    they are written (report.json last: a present report.json means the whole report is there)."""
    return {
        "metrics.png": metrics_figure(report),
        "contact_sheet.png": contact_sheet(strips),
        "report.md": report_markdown(report).encode(),
        "report.json": (json.dumps(report, indent=2) + "\n").encode(),
    }


def write_report(dest: str, report: dict[str, Any], strips: list[bytes]) -> dict[str, str]:
    """Write the report's files (`report_files`) into `dest`. Returns {file name: URI}."""
    return write_files(dest, report_files(report, strips))


def write_files(dest: str, files: dict[str, bytes]) -> dict[str, str]:
    written: dict[str, str] = {}
    for name, data in files.items():
        uri = storage.join(dest, name)
        storage.write_bytes(uri, data)
        written[name] = uri
    return written


def load_committed_stats(dest: str) -> list[ShardStats]:
    """Every committed shard's stats (DEST/_stats/*.json); [] when nothing is committed yet."""
    root = storage.join(dest, "_stats")
    if not storage.is_s3(root) and not storage.exists(root):
        return []
    return [
        ShardStats.from_json(json.loads(storage.read_bytes(uri)))
        for uri in storage.list_files(root)
        if uri.endswith(".json")
    ]


def write_run_report(
    dest: str,
    *,
    source: str,
    model: str,
    run_shards: Collection[str],
    shards_skipped: int,
    shards_failed: list[dict[str, Any]],
    seconds: float,
    max_rows: int = 12,
    s3_endpoint_url: str | None = None,
    settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """End-of-run entry point: everything committed in DEST -> the four report files.

    Runs as a Ray task (pixels of the samples stay out of the flow), hence its own S3 setting.

    Reads the stats of every committed shard (so a resumed run reports the whole archive) and
    the sample strips of the first `max_rows` shards that have one. Returns {"report": dict,
    "markdown": str, "files": {name: URI}}.
    """
    storage.configure(s3_endpoint_url)
    stats = load_committed_stats(dest)
    report = build_report(
        stats,
        run_shards=set(run_shards),
        shards_done=len(set(run_shards)),
        shards_skipped=shards_skipped,
        shards_failed=shards_failed,
        seconds=seconds,
        model=model,
        source=source,
        dest=dest,
        settings=settings,
    )
    samples = [s.sample for s in stats if s.sample][: max(0, max_rows)]
    strips = [storage.read_bytes(uri) for uri in samples]
    contents = report_files(report, strips)
    files = write_files(dest, contents)
    markdown = report_markdown(report)
    artifact = artifact_markdown(
        markdown,
        {name: contents[name] for name in ("metrics.png", "contact_sheet.png")},
        {"full report": files["report.md"],
         "review gallery (open in a browser)": storage.join(dest, "gallery", "index.html")},
    )  # fmt: skip
    return {"report": report, "markdown": markdown, "artifact": artifact, "files": files}


def loss_curve(
    history: list[float],
    validation: list[tuple[int, float]] | None = None,
    metric: str = "validation",
    width: int = 720,
    height: int = 360,
) -> bytes:
    """Training loss per step (light) and its running mean over 50 steps (dark), as a PNG;
    with `validation` [(step, score)], the validation curve on its own scale (right axis,
    orange), the best point ringed."""
    if not history:
        return _message_png("no training steps")
    img = Image.new("RGB", (width, height), _WHITE)
    draw = ImageDraw.Draw(img)
    font = _font()
    left, right, top, bottom = 60, width - (60 if validation else 20), 30, height - 40
    values = np.asarray(history, dtype=np.float64)
    window = min(50, len(values))
    smooth = np.convolve(values, np.ones(window) / window, mode="valid")
    lo, hi = float(values.min()), float(np.percentile(values, 99))
    hi = hi if hi > lo else lo + 1.0

    def xy(i: int, v: float) -> tuple[float, float]:
        x = left + (right - left) * i / max(1, len(values) - 1)
        y = bottom - (bottom - top) * (min(max(v, lo), hi) - lo) / (hi - lo)
        return x, y

    draw.line([xy(i, v) for i, v in enumerate(values)], fill=(170, 200, 230), width=1)
    offset = window - 1
    draw.line([xy(i + offset, v) for i, v in enumerate(smooth)], fill=_BAR, width=2)
    draw.rectangle((left, top, right, bottom), outline=_GRAY)
    draw.text((left, 8), f"training loss ({len(values)} steps)", fill=_BLACK, font=font)
    draw.text((left - 6, top), f"{hi:.3g}", fill=_GRAY, font=font, anchor="ra")
    draw.text((left - 6, bottom), f"{lo:.3g}", fill=_GRAY, font=font, anchor="rd")
    draw.text((left, bottom + 6), "0", fill=_GRAY, font=font)
    draw.text((right, bottom + 6), str(len(values)), fill=_GRAY, font=font, anchor="ra")
    if validation:
        steps = [s for s, _ in validation]
        scores = np.asarray([v for _, v in validation], dtype=np.float64)
        v_lo, v_hi = float(scores.min()), float(scores.max())
        v_hi = v_hi if v_hi > v_lo else v_lo + 1e-3

        def vxy(step: int, v: float) -> tuple[float, float]:
            x = left + (right - left) * (step - 1) / max(1, len(values) - 1)
            return x, bottom - (bottom - top) * (v - v_lo) / (v_hi - v_lo)

        points = [vxy(s, v) for s, v in zip(steps, scores, strict=True)]
        orange = (230, 120, 20)
        if len(points) > 1:
            draw.line(points, fill=orange, width=2)
        for x, y in points:
            draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=orange)
        bx, by = points[int(np.argmax(scores))]
        draw.ellipse((bx - 6, by - 6, bx + 6, by + 6), outline=_BLACK, width=2)
        draw.text((right, 8), f"validation {metric} (best ringed)", fill=orange, font=font,
                  anchor="ra")  # fmt: skip
        draw.text((right + 2, top), f"{v_hi:.3g}", fill=orange, font=font, anchor="la")
        draw.text((right + 2, bottom), f"{v_lo:.3g}", fill=orange, font=font, anchor="ld")
    return _png(img)
