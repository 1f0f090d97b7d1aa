"""Run report: exact merges, archive vs this-run totals, markdown, figures and files."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest
from PIL import Image

from pipeline.archive import storage
from pipeline.archive.stats import HIST_BINS, ShardStats
from pipeline.review.report import (
    PANEL_HEIGHT,
    PANEL_WIDTH,
    SHEET_HEADER,
    SHEET_MARGIN,
    build_report,
    contact_sheet,
    load_committed_stats,
    merge_stats,
    metrics_figure,
    report_markdown,
    write_report,
    write_run_report,
)


def _shards() -> list[ShardStats]:
    """Three shards; a and c are done "this run", b was committed by an earlier run."""
    a = ShardStats(shard="a", source="src/a.parquet", output="out/a.parquet", seconds=2.0)
    a.add_ok({"psnr": 20.0, "ssim": 0.5})
    a.add_ok({"psnr": 30.0, "ssim": 0.75})
    a.add_error("decode")
    b = ShardStats(shard="b", source="src/b.parquet", output="out/b.parquet", seconds=3.0)
    b.add_ok({"psnr": 40.0})
    b.add_ok({"psnr": math.inf})  # exact match: ok, but not part of the PSNR summary
    b.add_error("decode")
    b.add_error("too_small")
    c = ShardStats(shard="c", source="src/c.parquet", output="out/c.parquet", seconds=1.0)
    c.add_ok({"colorfulness": 12.0})
    return [a, b, c]


def _report(seconds: float = 2.0) -> dict:
    return build_report(
        _shards(),
        run_shards={"a", "c"},
        shards_done=2,
        shards_skipped=1,
        shards_failed=[{"shard": "d", "error": "OOM | killed\nby kernel"}],
        seconds=seconds,
        model="eccv16",
        source="s3://bucket/in",
        dest="s3://bucket/out",
    )


def _strip(width: int, height: int = 128, colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    """A real gray | colour pair, side by side, as PNG bytes."""
    half = width // 2
    image = Image.new("RGB", (width, height), colour)
    image.paste(Image.new("L", (half, height), 90).convert("RGB"), (0, 0))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _open_png(data: bytes) -> Image.Image:
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    image.load()
    return image


def test_merge_stats_totals_and_means() -> None:
    merged = merge_stats(_shards())
    assert merged["shards"] == 3
    assert merged["images"] == 8  # 3 + 4 + 1 rows
    assert merged["ok"] == 5
    assert merged["errors"] == 3
    assert merged["errors_by_kind"] == {"decode": 2, "too_small": 1}
    assert merged["shard_seconds"] == 6.0
    psnr = merged["metrics"]["psnr"]
    assert (psnr.count, psnr.mean, psnr.min, psnr.max) == (3, 30.0, 20.0, 40.0)
    assert psnr.std == pytest.approx(math.sqrt(200 / 3))  # population std of 20, 30, 40
    ssim = merged["metrics"]["ssim"]
    assert (ssim.count, ssim.mean) == (2, 0.625)
    assert merged["metrics"]["colorfulness"].mean == 12.0
    assert list(merged["metrics"]) == ["colorfulness", "psnr", "ssim"]  # METRIC_RANGES order


def test_merge_stats_histograms_add_up() -> None:
    shards = _shards()
    merged = merge_stats(shards)
    for name, summary in merged["metrics"].items():
        assert len(summary.hist) == HIST_BINS
        assert sum(summary.hist) == summary.count
        per_shard = [s.metrics[name].hist for s in shards if name in s.metrics]
        assert summary.hist == [sum(col) for col in zip(*per_shard, strict=True)]
    psnr_hist = merged["metrics"]["psnr"].hist  # 0..50 in 50 bins: one bin per dB
    assert [i for i, n in enumerate(psnr_hist) if n] == [20, 30, 40]


def test_merge_stats_empty_and_inputs_untouched() -> None:
    empty = merge_stats([])
    assert (empty["images"], empty["ok"], empty["errors"], empty["metrics"]) == (0, 0, 0, {})
    shards = _shards()
    before = [s.to_json() for s in shards]
    merge_stats(shards)
    merge_stats(shards)
    assert [s.to_json() for s in shards] == before


def test_build_report_archive_vs_this_run() -> None:
    report = _report(seconds=2.0)
    assert (report["images"], report["ok"], report["errors"]) == (8, 5, 3)
    assert report["archive"]["images"] == 8
    assert report["archive"]["shards"] == 3
    assert report["archive"]["shard_seconds"] == 6.0
    run = report["this_run"]
    assert (run["shards"], run["images"], run["ok"], run["errors"]) == (2, 4, 3, 1)
    assert run["errors_by_kind"] == {"decode": 1}
    assert run["seconds"] == 2.0
    assert run["shard_seconds"] == 3.0
    assert run["images_per_second"] == 2.0  # 4 images this run / 2 s; b's 4 images excluded
    assert report["images_per_second"] == 2.0
    assert report["shards"] == {
        "total": 4,
        "done": 2,
        "skipped": 1,
        "failed": [{"shard": "d", "error": "OOM | killed\nby kernel"}],
    }
    assert (report["source"], report["dest"], report["model"]) == (
        "s3://bucket/in",
        "s3://bucket/out",
        "eccv16",
    )


def test_build_report_metrics_are_json_with_edges() -> None:
    report = _report()
    assert json.loads(json.dumps(report, allow_nan=False)) == report
    psnr = report["metrics"]["psnr"]
    assert set(psnr) == {"count", "mean", "std", "min", "max", "hist", "edges"}
    assert (psnr["count"], psnr["mean"], psnr["min"], psnr["max"]) == (3, 30.0, 20.0, 40.0)
    assert len(psnr["edges"]) == HIST_BINS + 1
    assert (psnr["edges"][0], psnr["edges"][-1]) == (0.0, 50.0)
    assert sum(psnr["hist"]) == 3
    assert report["metrics"]["colorfulness"]["edges"][-1] == 150.0


def test_build_report_zero_seconds_rate_is_zero() -> None:
    report = _report(seconds=0.0)
    assert report["images_per_second"] == 0.0
    assert report["this_run"]["images_per_second"] == 0.0
    assert "| images/s | – | 0.0 |" in report_markdown(report)


def test_report_markdown_contains_key_figures() -> None:
    md = report_markdown(_report(seconds=2.0))
    assert md.startswith("# Colorization report")
    assert "| images | 8 | 4 |" in md
    assert "| ok | 5 | 3 |" in md
    assert "| errors | 3 | 1 |" in md
    assert "2 done, 1 skipped, 1 failed (of 4)" in md
    assert "| images/s | – | 2.0 |" in md
    assert "| psnr | 3 | 30 | 8.165 | 20 | 40 |" in md
    assert "| ssim | 2 | 0.625 |" in md
    assert "| decode | 2 |" in md
    assert "| too_small | 1 |" in md
    assert "| d | OOM \\| killed by kernel |" in md  # pipes escaped, newline flattened
    assert "![metric histograms](metrics.png)" in md
    assert "(contact_sheet.png)" in md


def test_report_markdown_without_errors_or_metrics() -> None:
    report = build_report(
        [],
        run_shards=set(),
        shards_done=0,
        shards_skipped=0,
        shards_failed=[],
        seconds=1.0,
        model="m",
        source="in",
        dest="out",
    )
    md = report_markdown(report)
    assert "No metrics recorded." in md
    assert "No errors." in md
    assert "| images | 0 | 0 |" in md


def test_metrics_figure_is_a_png_grid() -> None:
    report = _report()
    image = _open_png(metrics_figure(report))
    assert image.size == (3 * PANEL_WIDTH, PANEL_HEIGHT)  # three metrics: one row of three
    assert image.mode == "RGB"
    assert len(image.getcolors(maxcolors=1 << 16) or []) > 2  # bars and text were drawn
    report["metrics"]["auc"] = report["metrics"]["ssim"]
    image = _open_png(metrics_figure(report))
    assert image.size == (3 * PANEL_WIDTH, 2 * PANEL_HEIGHT)
    report["metrics"] = {}
    assert _open_png(metrics_figure(report)).size[0] > 0


def test_contact_sheet_size_grows_with_strips() -> None:
    strips = [_strip(256), _strip(512), _strip(384)]
    one = _open_png(contact_sheet(strips[:1]))
    three = _open_png(contact_sheet(strips))
    assert one.size == (256, SHEET_HEADER + 128 + SHEET_MARGIN)
    assert three.size == (512, SHEET_HEADER + 3 * (128 + SHEET_MARGIN))
    assert three.height > one.height


def test_contact_sheet_places_strips_and_caps_rows() -> None:
    strips = [_strip(256, colour=(0, 200, 0)), _strip(512)]
    sheet = _open_png(contact_sheet(strips)).convert("RGB")
    assert sheet.getpixel((10, SHEET_HEADER + 5)) == (90, 90, 90)  # gray half of strip 1
    assert sheet.getpixel((200, SHEET_HEADER + 5)) == (0, 200, 0)  # colour half of strip 1
    assert sheet.getpixel((400, SHEET_HEADER + 5)) == (255, 255, 255)  # beyond strip 1: white
    second = SHEET_HEADER + 128 + SHEET_MARGIN
    assert sheet.getpixel((400, second + 5)) == (200, 30, 30)
    capped = _open_png(contact_sheet([_strip(256)] * 20, max_rows=5))
    assert capped.height == SHEET_HEADER + 5 * (128 + SHEET_MARGIN)


def test_contact_sheet_empty_says_no_images() -> None:
    image = _open_png(contact_sheet([]))
    assert 0 < image.width <= 400 and 0 < image.height <= 100


def test_write_report_writes_four_files(tmp_path: Path) -> None:
    report = _report()
    written = write_report(str(tmp_path), report, [_strip(256), _strip(300)])
    names = {"report.json", "report.md", "metrics.png", "contact_sheet.png"}
    assert set(written) == names
    for name, uri in written.items():
        assert uri == str(tmp_path / name)
        assert Path(uri).is_file()
    assert json.loads((tmp_path / "report.json").read_text()) == report
    assert (tmp_path / "report.md").read_text() == report_markdown(report)
    assert _open_png((tmp_path / "metrics.png").read_bytes()).width == 3 * PANEL_WIDTH
    assert _open_png((tmp_path / "contact_sheet.png").read_bytes()).width == 300
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)  # no temp files left


def test_load_committed_stats_round_trips(tmp_path: Path) -> None:
    dest = str(tmp_path / "out")
    shards = _shards()
    for s in reversed(shards):
        data = json.dumps(s.to_json()).encode()
        storage.write_bytes(storage.join(dest, "_stats", f"{s.shard}.json"), data)
    storage.write_bytes(storage.join(dest, "_stats", "notes.txt"), b"not stats")
    loaded = load_committed_stats(dest)
    assert [s.shard for s in loaded] == ["a", "b", "c"]
    assert [s.to_json() for s in loaded] == [s.to_json() for s in shards]
    assert merge_stats(loaded)["metrics"]["psnr"].mean == 30.0


def test_load_committed_stats_missing_folder(tmp_path: Path) -> None:
    assert load_committed_stats(str(tmp_path / "nothing-here")) == []
    (tmp_path / "empty" / "_stats").mkdir(parents=True)
    assert load_committed_stats(str(tmp_path / "empty")) == []


def test_write_run_report_reads_committed_stats_and_samples(tmp_path: Path) -> None:
    dest = str(tmp_path / "out")
    widths = {"a": 256, "b": 400, "c": 300}
    for s in _shards():
        s.sample = storage.join(dest, "_samples", f"{s.shard}.png")
        storage.write_bytes(s.sample, _strip(widths[s.shard]))
        storage.write_bytes(
            storage.join(dest, "_stats", f"{s.shard}.json"), json.dumps(s.to_json()).encode()
        )
    result = write_run_report(
        dest,
        source="in",
        model="eccv16",
        run_shards=["a", "c"],
        shards_skipped=1,
        shards_failed=[],
        seconds=4.0,
    )
    report = result["report"]
    assert (report["images"], report["this_run"]["images"]) == (8, 4)
    assert report["this_run"]["images_per_second"] == 1.0
    assert report["shards"] == {"total": 3, "done": 2, "skipped": 1, "failed": []}
    assert result["markdown"] == (tmp_path / "out" / "report.md").read_text()
    assert json.loads((tmp_path / "out" / "report.json").read_text()) == report
    sheet = _open_png((tmp_path / "out" / "contact_sheet.png").read_bytes())
    assert sheet.size == (400, SHEET_HEADER + 3 * (128 + SHEET_MARGIN))
    assert set(result["files"]) == {"report.json", "report.md", "metrics.png", "contact_sheet.png"}
