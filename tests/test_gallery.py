"""The review gallery: its data files on a hand-made output folder (real Parquet, stats and
JPEGs), and the page itself in a real headless Chromium (Debian's), over file://, after a real
colorize run."""

from __future__ import annotations

import io
import itertools
import json
import math
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select, WebDriverWait

from flows.colorize import colorize_archive
from pipeline.archive import storage
from pipeline.archive.shards import OUTPUT_SCHEMA
from pipeline.archive.stats import ShardStats
from pipeline.review.gallery import ERROR_CHARS, ITEM_FIELDS, PAGE_SIZE, write_gallery
from tests.archive_helpers import make_image_folder
from tests.test_archive import ray_local  # noqa: F401 - the shared local Ray fixture

pytestmark = pytest.mark.slow

CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM = "/usr/bin/chromium"
SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "gallery.png"
SCREENSHOT_MAX_BYTES = 300_000
HOSTILE_ERROR = 'not_an_image: <img src=x onerror="document.title=1"> & </script>'
LIGHT = ["id", "status", "error", "colorfulness", "uncertainty"]


# --- a hand-made output folder ----------------------------------------------------------------
def _schema() -> pa.Schema:
    """The worker's output schema, with the `uncertainty` column of the gallery's contract."""
    if "uncertainty" in OUTPUT_SCHEMA.names:
        return OUTPUT_SCHEMA
    return OUTPUT_SCHEMA.append(pa.field("uncertainty", pa.float64()))


def _jpeg(image: Image.Image, longest: int) -> bytes:
    small = image.copy()
    small.thumbnail((longest, longest))
    buf = io.BytesIO()
    small.save(buf, "JPEG", quality=80)
    return buf.getvalue()


def _photo(i: int) -> Image.Image:
    """A small colour picture that differs per row (a hue ramp), 96 x 64."""
    x, y = np.meshgrid(np.linspace(0, 1, 96), np.linspace(0, 1, 64))
    phase = (i % 12) / 12
    rgb = np.stack([x * (1 - phase) + phase * y, y, 1 - x], axis=2)
    return Image.fromarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8), "RGB")


def _write_shard(dest: Path, name: str, rows: list[dict[str, Any]], commit: bool) -> None:
    """One output shard as the worker leaves it: Parquet, previews of its ok rows, and the stats
    file that commits it (skipped with `commit=False`: a shard still in flight)."""
    columns = {field: [r.get(field) for r in rows] for field in _schema().names}
    pq.write_table(pa.table(columns, schema=_schema()), dest / f"{name}.parquet")
    stats = ShardStats(name, f"src/{name}.parquet", str(dest / f"{name}.parquet"), model="m@1")
    for i, row in enumerate(rows):
        if row["status"] != "ok":
            stats.add_error("corrupt")
            continue
        stats.add_ok({"colorfulness": row["colorfulness"]})
        photo = _photo(i)
        for size, longest in (("thumbs", 192), ("view", 1024)):
            folder = dest / "gallery" / size / name
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{i:06d}-in.jpg").write_bytes(_jpeg(photo.convert("L"), longest))
            (folder / f"{i:06d}-out.jpg").write_bytes(_jpeg(photo, longest))
    if commit:
        (dest / "_stats").mkdir(exist_ok=True)
        (dest / "_stats" / f"{name}.json").write_text(json.dumps(stats.to_json()))


def _rows(prefix: str, n: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    image = _jpeg(_photo(0), 96)
    rows = []
    for i in range(n):
        row: dict[str, Any] = {"id": f"{prefix}/{i:04d}.jpg", "model": "m@1"}
        if i % 9 == 4:
            message = HOSTILE_ERROR if i == 4 else f"corrupt: truncated file ({i})"
            row.update(status="error", error=message)
        else:
            row.update(
                status="ok",
                image=image,
                width=96,
                height=64,
                # two decimals: ties, which must keep input order
                uncertainty=round(float(rng.uniform(0.05, 0.95)), 2),
                colorfulness=float(rng.uniform(0, 80)),
                psnr=math.inf if i == 3 else float(rng.uniform(15, 35)),
                ssim=float(rng.uniform(0.5, 1)),
                auc=None if i % 2 else float(rng.uniform(0.5, 1)),
                auc_rebalanced=None if i % 2 else float(rng.uniform(0.5, 1)),
            )
        rows.append(row)
    if prefix == "b":
        rows[1].update(status="error", error="x" * (ERROR_CHARS + 500))
        for key in ("image", "width", "height", "uncertainty", "colorfulness", "psnr", "ssim"):
            rows[1][key] = None
    return rows


@pytest.fixture
def handmade(tmp_path: Path) -> tuple[Path, list[dict[str, Any]]]:
    """DEST with committed shards "a" (230 rows) and "b" (25 rows), and "c" not committed.
    Returns (DEST, the committed rows in input order with their shard and index)."""
    dest = tmp_path / "out"
    dest.mkdir()
    rng = np.random.default_rng(7)
    rows: list[dict[str, Any]] = []
    for name, n, commit in (("a", 230, True), ("b", 25, True), ("c", 5, False)):
        shard_rows = _rows(name, n, rng)
        _write_shard(dest, name, shard_rows, commit)
        if commit:
            rows += [{**r, "shard": name, "index": i} for i, r in enumerate(shard_rows)]
    return dest, rows


def _call(path: Path) -> tuple[str, list[Any]]:
    """(callback, arguments) of a JSONP data file."""
    text = path.read_text()
    name, _, rest = text.partition("(")
    assert rest.endswith(");\n"), path
    return name, json.loads("[" + rest[: -len(");\n")] + "]")


def _view(dest: Path, view: str, pages: int) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for page in range(pages):
        name, (view_arg, page_arg, page_items) = _call(
            dest / "gallery" / "data" / f"{view}-{page:05d}.js"
        )
        assert (name, view_arg, page_arg) == ("galleryPage", view, page)
        assert len(page_items) <= PAGE_SIZE
        items += page_items
    return items


def _input_position(item: dict[str, Any]) -> tuple[str, int]:
    return item["shard"], item["index"]


def test_write_gallery_views_pages_and_counts(handmade) -> None:
    dest, rows = handmade
    errors = [r for r in rows if r["status"] == "error"]
    summary = write_gallery(str(dest))

    assert summary["images"] == summary["rows"] == len(rows) == 255
    assert (summary["ok"], summary["errors"]) == (len(rows) - len(errors), len(errors))
    assert summary["views"] == {
        "input-all": 2,
        "uncertain-all": 2,
        "colourless-all": 2,
        "input-errors": 1,
        "uncertain-errors": 1,
        "colourless-errors": 1,
        "input-hinted": 1,  # no row of this DEST was colorized with hints: one empty page
        "uncertain-hinted": 1,
        "colourless-hinted": 1,
    }
    assert summary["pages"] == 12 and summary["index"] == str(dest / "gallery" / "index.html")

    name, (meta,) = _call(dest / "gallery" / "data" / "meta.js")
    assert name == "galleryMeta"
    assert (meta["images"], meta["ok"], meta["errors"]) == (255, summary["ok"], len(errors))
    assert meta["model"] == "m@1 (255 images, 2 shards)" and meta["shards"] == 2  # one model
    assert meta["views"]["input-all"] == {"items": 255, "pages": 2}
    assert meta["views"]["input-errors"] == {"items": len(errors), "pages": 1}

    # input order: shard by name, then row position; the uncommitted shard "c" is not there
    by_input = _view(dest, "input-all", 2)
    assert [(i["id"], i["shard"], i["index"]) for i in by_input] == [
        (r["id"], r["shard"], r["index"]) for r in rows
    ]
    assert all(set(item) == set(ITEM_FIELDS) for item in by_input)
    first = by_input[0]
    assert first["id"] == "a/0000.jpg" and first["width"] == 96 and first["height"] == 64
    assert by_input[3]["psnr"] is None  # inf is no JSON: null
    long_error = next(i for i in by_input if i["id"] == "b/0001.jpg")["error"]
    assert len(long_error) == ERROR_CHARS and long_error.endswith("…")
    assert next(i for i in by_input if i["id"] == "a/0004.jpg")["error"] == HOSTILE_ERROR

    uncertain = _view(dest, "uncertain-all", 2)
    assert sorted(map(_input_position, uncertain)) == sorted(map(_input_position, by_input))
    known = [i for i in uncertain if i["uncertainty"] is not None]
    assert [i["status"] for i in uncertain[len(known) :]] == ["error"] * len(errors)  # nulls last
    for a, b in itertools.pairwise(known):
        assert a["uncertainty"] > b["uncertainty"] or (
            a["uncertainty"] == b["uncertainty"] and _input_position(a) < _input_position(b)
        )
    ties = len(known) - len({i["uncertainty"] for i in known})
    assert ties > 0  # the fixture really exercises the tie-break

    colourless = _view(dest, "colourless-all", 2)
    values = [i["colorfulness"] for i in colourless if i["colorfulness"] is not None]
    assert values == sorted(values) and len(values) == summary["ok"]
    assert all(i["colorfulness"] is None for i in colourless[len(values) :])

    error_ids = [r["id"] for r in errors]
    for sort in ("input", "uncertain", "colourless"):
        assert [i["id"] for i in _view(dest, f"{sort}-errors", 1)] == error_ids

    page = (dest / "gallery" / "index.html").read_text()
    for forbidden in ("http://", "https://", "fetch(", "XMLHttpRequest", "//cdn"):
        assert forbidden not in page
    assert '<script src="data/meta.js?v=' in page and 'rel="icon" href="data:,"' in page

    # a smaller rebuild leaves no page of the earlier build behind
    (dest / "_stats" / "a.json").unlink()
    smaller = write_gallery(str(dest))
    assert smaller["images"] == 25 and smaller["views"]["input-all"] == 1
    data = dest / "gallery" / "data"
    assert sorted(p.name for p in data.iterdir() if p.is_file()) == sorted(
        ["meta.js"] + [f"{v}-00000.js" for v in smaller["views"]]
    )
    assert [p.name for p in (data / "colors").iterdir()] == [
        _call(data / "meta.js")[1][0]["colors"]["b"].rsplit("/", 1)[1]
    ]  # the colour file of "a" is gone with it (tests/test_gallery_hints.py has the rest)


def test_write_gallery_empty_archive(tmp_path: Path) -> None:
    summary = write_gallery(str(tmp_path / "nothing"))
    assert (summary["images"], summary["pages"]) == (0, 9)  # 3 sorts x (all, errors, hinted)
    _, (_view_name, _page, items) = _call(tmp_path / "nothing/gallery/data/input-all-00000.js")
    assert items == []


def test_write_gallery_on_s3(handmade, s3_server) -> None:
    """The same build over s3://, with the content types a static website must serve."""
    dest, rows = handmade
    bucket = f"gallery-{uuid.uuid4().hex[:8]}"
    client = boto3.client("s3", endpoint_url=s3_server)
    client.create_bucket(Bucket=bucket)
    storage.configure(s3_server)
    try:
        for path in [*dest.glob("*.parquet"), *dest.glob("_stats/*.json")]:
            storage.write_bytes(f"s3://{bucket}/out/{path.relative_to(dest)}", path.read_bytes())
        summary = write_gallery(f"s3://{bucket}/out", s3_endpoint_url=s3_server)
    finally:
        storage.configure(None)
    assert (
        summary["images"] == len(rows)
        and summary["index"] == f"s3://{bucket}/out/gallery/index.html"
    )
    head = client.head_object(Bucket=bucket, Key="out/gallery/index.html")
    assert head["ContentType"].startswith("text/html")
    meta = client.get_object(Bucket=bucket, Key="out/gallery/data/meta.js")
    assert meta["ContentType"].endswith("javascript")
    assert b'"images":255' in meta["Body"].read()


# --- the page in a real browser ---------------------------------------------------------------
@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """Headless Chromium from Debian, driven by its chromedriver (`make browser` installs both)."""
    if not os.access(CHROMEDRIVER, os.X_OK):
        pytest.fail(
            f"{CHROMEDRIVER} is missing: run `make browser` (as root) or "
            "`sudo apt-get install -y chromium chromium-driver`"
        )

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1200,800",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    width, height = driver.execute_script("return [window.innerWidth, window.innerHeight]")
    driver.set_window_size(2400 - width, 1600 - height)  # the viewport, not the window: 1200x800
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver: Any, condition: Any, what: str, timeout: float = 30) -> Any:
    return WebDriverWait(driver, timeout).until(lambda d: condition(d), message=what)


def _cards(driver: Any) -> list[dict[str, str]]:
    return driver.execute_script(
        "return [...document.querySelectorAll('.card')]"
        ".map(c => ({id: c.dataset.id, status: c.dataset.status}))"
    )


def _open(driver: Any, dest: Path) -> None:
    driver.get((dest / "gallery" / "index.html").as_uri())
    _wait(driver, lambda d: d.find_elements("css selector", ".card"), "cards rendered")


def _choose(driver: Any, sort: str | None = None, errors: bool | None = None) -> None:
    """Use the controls as a person would, then wait for the grid of that view."""
    if sort is not None:
        Select(driver.find_element("id", "sort")).select_by_value(sort)
    checkbox = driver.find_element("id", "errors-only")
    if errors is not None and checkbox.is_selected() != errors:
        checkbox.click()
    view = driver.execute_script("return viewName() + '/' + state.page")
    _wait(
        driver,
        lambda d: d.execute_script("return shown === pages.get(arguments[0]) && !!shown", view),
        f"view {view} shown",
    )


def _image_loaded(driver: Any, img: Any) -> bool:
    return bool(
        driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", img)
    )


def _assert_thumbnails_load(driver: Any) -> int:
    """Scroll every ok card's thumbnails into view (they are lazy) and wait for each."""
    images = driver.find_elements("css selector", ".card.ok img.thumb")
    for img in images:
        assert img.get_attribute("loading") == "lazy"
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", img)
        _wait(driver, lambda d, img=img: _image_loaded(d, img), f"{img.get_attribute('src')}")
    assert not driver.find_elements("css selector", ".card.error img")  # no broken images
    return len(images)


def _severe(driver: Any) -> list[dict[str, Any]]:
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def test_page_pager_and_hostile_error_text(handmade, browser) -> None:
    """The hand-made archive: two pages, the pager, an error message that looks like HTML."""
    dest, rows = handmade
    write_gallery(str(dest))
    _open(browser, dest)
    assert (
        _severe(browser) == []
    )  # its JS (pipeline/review/gallery_files/gallery.js) parsed and ran
    assert len(_cards(browser)) == PAGE_SIZE
    assert browser.find_element("id", "page-info").text == "page 1 of 2"
    assert not browser.find_element("id", "prev").is_enabled()
    hostile = browser.find_element("css selector", '.card[data-id="a/0004.jpg"] .errbox')
    assert hostile.get_attribute("textContent") == HOSTILE_ERROR  # shown as text, not markup
    assert browser.title == "Review gallery"

    browser.find_element("id", "next").click()
    _wait(browser, lambda d: len(_cards(d)) == len(rows) - PAGE_SIZE, "page 2")
    assert browser.find_element("id", "page-info").text == "page 2 of 2"
    assert not browser.find_element("id", "next").is_enabled()
    assert [c["id"] for c in _cards(browser)] == [r["id"] for r in rows[PAGE_SIZE:]]
    assert _assert_thumbnails_load(browser) == 2 * sum(
        r["status"] == "ok" for r in rows[PAGE_SIZE:]
    )

    browser.back()  # the view lives in the URL hash: back is the previous page
    _wait(browser, lambda d: len(_cards(d)) == PAGE_SIZE, "back to page 1")
    _choose(browser, errors=True)
    assert [c["id"] for c in _cards(browser)] == [r["id"] for r in rows if r["status"] == "error"]
    assert browser.find_element("id", "page-info").text == "page 1 of 1"
    assert _severe(browser) == []


def _output_rows(dest: Path) -> list[dict[str, Any]]:
    """The light columns of every output shard, in input order (shard name, row position)."""
    rows = []
    for path in sorted(dest.glob("*.parquet")):
        table = pq.read_table(path, columns=LIGHT)
        rows += [{**r, "shard": path.stem, "index": i} for i, r in enumerate(table.to_pylist())]
    return rows


def _save_screenshot(driver: Any, path: Path) -> None:
    """A screenshot kept small: if the true-colour PNG is too big, a 256-colour one, dithered
    so that the photos and gradients do not band. `ARCHIVE_COLORIZE_DOCS_SCREENSHOT=1` also
    refreshes docs/gallery.png (a test run never touches tracked files otherwise)."""
    image = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
    buf = io.BytesIO()
    image.save(buf, "PNG", optimize=True)
    if buf.tell() > SCREENSHOT_MAX_BYTES:
        palette = image.quantize(256, method=Image.Quantize.MEDIANCUT)
        buf = io.BytesIO()
        dithered = image.quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG)
        dithered.save(buf, "PNG", optimize=True)
    assert buf.tell() <= SCREENSHOT_MAX_BYTES
    path.write_bytes(buf.getvalue())
    if os.environ.get("ARCHIVE_COLORIZE_DOCS_SCREENSHOT") == "1":
        SCREENSHOT.write_bytes(buf.getvalue())


def test_gallery_of_a_real_run_in_chromium(tmp_path: Path, ray_local, browser) -> None:  # noqa: F811
    make_image_folder(tmp_path / "photos", bad=True)
    dest = tmp_path / "out"
    result = colorize_archive(str(tmp_path / "photos"), str(dest), actors=1, shard_size=4)
    assert result["gallery"] == str(dest / "gallery" / "index.html")
    assert "(gallery/index.html)" in (dest / "report.md").read_text()
    rows = _output_rows(dest)
    ok = [r for r in rows if r["status"] == "ok"]
    errors = [r for r in rows if r["status"] == "error"]
    assert len(rows) == result["images"] == 9 and len(errors) == result["errors"] == 3
    assert all(r["uncertainty"] is not None for r in ok)

    _open(browser, dest)
    header = [browser.find_element("id", f"n-{k}").text for k in ("images", "ok", "errors")]
    assert header == [str(result["images"]), str(result["ok"]), str(result["errors"])]
    # one model: its line names it with its counts, and the shards are counted once
    model_line = browser.find_element("id", "model").text
    assert model_line.startswith("model default.safetensors@") and model_line.count("shards") == 1
    assert [c["id"] for c in _cards(browser)] == [r["id"] for r in rows]  # one card per row
    assert _assert_thumbnails_load(browser) == 2 * len(ok)
    for row in errors:  # error rows show their message, and no image
        text = browser.find_element("css selector", f'.card[data-id="{row["id"]}"] .errbox').text
        assert text == row["error"]

    _choose(browser, sort="uncertain")
    expected = sorted(ok, key=lambda r: -r["uncertainty"]) + errors
    assert [c["id"] for c in _cards(browser)] == [r["id"] for r in expected]
    shown = [r["uncertainty"] for r in expected[: len(ok)]]
    assert shown == sorted(shown, reverse=True)

    _choose(browser, errors=True)
    assert [c["id"] for c in _cards(browser)] == [r["id"] for r in errors]
    error_card = browser.find_element("css selector", ".card.error")
    error_card.click()
    _wait(browser, lambda d: d.find_element("id", "overlay").is_displayed(), "error overlay")
    assert browser.find_element("id", "ov-error").text == errors[0]["error"]
    assert not browser.find_element("id", "ov-views").is_displayed()
    browser.find_element("id", "overlay").click()  # a click closes it
    _wait(browser, lambda d: not d.find_element("id", "overlay").is_displayed(), "closed")

    _choose(browser, sort="input", errors=False)
    first = ok[0]
    browser.find_element("css selector", f'.card[data-id="{first["id"]}"]').click()
    _wait(browser, lambda d: d.find_element("id", "overlay").is_displayed(), "overlay")
    views = [browser.find_element("id", f"ov-{side}") for side in ("in", "out")]
    for img in views:
        _wait(browser, lambda d, img=img: _image_loaded(d, img), "overlay view loaded")
    prefix = f"view/{first['shard']}/{first['index']:06d}"
    assert [img.get_attribute("src").split("/gallery/")[1] for img in views] == [
        f"{prefix}-in.jpg",
        f"{prefix}-out.jpg",
    ]
    widths = [browser.execute_script("return arguments[0].naturalWidth", v) for v in views]
    assert widths[0] == widths[1] > 0
    assert first["id"] in browser.find_element("id", "ov-title").text
    fields = browser.find_element("id", "ov-fields").text
    assert f"{first['uncertainty']:.3f}" in fields

    browser.find_element("tag name", "body").send_keys(Keys.ESCAPE)
    _wait(browser, lambda d: not d.find_element("id", "overlay").is_displayed(), "Esc closes")

    _choose(browser, sort="uncertain")  # the docs' picture: the photos to review first
    browser.execute_script("document.activeElement.blur(); window.scrollTo(0, 0)")
    ActionChains(browser).move_to_element(browser.find_element("tag name", "h1")).perform()
    _save_screenshot(browser, tmp_path / "gallery.png")
    assert _severe(browser) == []
