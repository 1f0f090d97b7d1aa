"""The review gallery places colour hints (issue 30): in a real headless Chromium (Debian's) over
file://, on real committed shards (the hand-made output folder of tests/test_gallery.py, whose
outputs are known colour ramps), an archivist clicks points on an image, chooses colours (the
picker, or taken from an output, this image's or another's), sees and removes hints, and
downloads hints.json, which `pipeline.colorize.hints.loads` must accept.

`hints_file` is the whole gesture as one helper (open the gallery, place hints on a row, download
the file, return its path), for an end-to-end test that runs `colorize --hints` with it."""

from __future__ import annotations

import base64
import io
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from selenium.webdriver.common.actions.action_builder import ActionBuilder
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait
from skimage import color as skimage_color

from flows.colorize import colorize_archive
from pipeline.colorize import hints
from pipeline.colorize.previews import fit
from pipeline.review.gallery import GRID, colour_grid, write_gallery
from tests import test_archive, test_gallery
from tests.archive_helpers import make_image_folder
from tests.test_gallery import _call, _choose, _open, _save_screenshot, _severe, _wait

pytestmark = pytest.mark.slow
browser = test_gallery.browser  # the shared fixtures: headless Chromium, a hand-made DEST
handmade = test_gallery.handmade
ray_local = test_archive.ray_local

EXP_SCREENSHOT = Path("/work/exp/gallery-hints.png")
RGB_TOLERANCE = 12  # JPEG previews and the grid's averaging, per 8-bit channel


# --- helpers: what an archivist does, as a person would ---------------------------------------
def open_row(driver: Any, row_id: str) -> dict[str, Any]:
    """Open the overlay of `row_id` from the grid (paging forward until its card is shown);
    returns the row's gallery item."""
    selector = f'.card[data-id="{row_id}"]'
    while not driver.find_elements("css selector", selector):
        assert driver.find_element("id", "next").is_enabled(), f"{row_id} is on no page"
        page = driver.execute_script("return state.page")
        driver.find_element("id", "next").click()
        _wait(driver, lambda d, p=page: d.execute_script("return state.page") == p + 1, "paged")
        _wait(driver, lambda d: d.find_elements("css selector", ".card"), "cards rendered")
    card = driver.find_element("css selector", selector)
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", card)
    card.click()
    return _wait_opened(driver, row_id)


def _wait_opened(driver: Any, row_id: str) -> dict[str, Any]:
    _wait(
        driver,
        lambda d: d.execute_script("const i = openedItem(); return i && i.id") == row_id,
        f"overlay of {row_id}",
    )
    for side in ("in", "out"):
        _wait(
            driver,
            lambda d, s=side: d.execute_script(
                "const img = document.getElementById('ov-' + arguments[0]);"
                "return img.complete && img.naturalWidth > 0",
                s,
            ),
            f"{side} view loaded",
        )
    item: dict[str, Any] = driver.execute_script("return openedItem()")
    return item


def stage_box(driver: Any, side: str = "out") -> dict[str, float]:
    box: dict[str, float] = driver.execute_script(
        "const r = document.getElementById('stage-' + arguments[0]).getBoundingClientRect();"
        "return {left: r.left, top: r.top, width: r.width, height: r.height}",
        side,
    )
    return box


def click_image(driver: Any, x: float, y: float, side: str = "out") -> tuple[float, float]:
    """A click on the shown image at the page pixel nearest (x, y), shares of its width and
    height; returns where it landed, as shares (a mouse lands on whole pixels)."""
    box = stage_box(driver, side)
    px, py = round(box["left"] + x * box["width"]), round(box["top"] + y * box["height"])
    builder = ActionBuilder(driver)
    builder.pointer_action.move_to_location(px, py).click()
    builder.perform()
    return (px - box["left"]) / box["width"], (py - box["top"]) / box["height"]


def set_picker(driver: Any, rgb: str) -> None:
    """Choose a colour in the <input type=color> (what its dialog does: a value and an input
    event; headless Chromium shows no dialog to click in)."""
    driver.execute_script(
        "const input = document.getElementById('hint-colour'); input.value = arguments[0];"
        "input.dispatchEvent(new Event('input', {bubbles: true}))",
        rgb,
    )


def picker(driver: Any) -> str:
    value: str = driver.find_element("id", "hint-colour").get_attribute("value")
    return value


def take_colour(driver: Any, x: float, y: float, side: str = "out") -> str:
    """`take from output`, then a click at (x, y): the picker's new colour."""
    _wait_colours(driver)
    driver.find_element("id", "hint-take").click()
    assert driver.find_element("id", "hint-take").get_attribute("aria-pressed") == "true"
    click_image(driver, x, y, side)
    assert driver.find_element("id", "hint-take").get_attribute("aria-pressed") == "false"
    return picker(driver)


def _wait_colours(driver: Any) -> None:
    _wait(driver, lambda d: d.find_element("id", "hint-take").is_enabled(), "colour grid loaded")


def set_radius(driver: Any, value: str) -> None:
    driver.execute_script(
        "const s = document.getElementById('hint-radius'); s.value = arguments[0];"
        "s.dispatchEvent(new Event('change', {bubbles: true}))",
        value,
    )


def listed(driver: Any) -> list[dict[str, Any]]:
    """The hints the overlay lists for its image: position, colour, the swatch's colour, text."""
    rows: list[dict[str, Any]] = driver.execute_script(
        "return [...document.querySelectorAll('#hint-list li[data-rgb]')].map(li => ({"
        "x: +li.dataset.x, y: +li.dataset.y, rgb: li.dataset.rgb, text: li.textContent,"
        "swatch: getComputedStyle(li.querySelector('.swatch')).backgroundColor}))"
    )
    return rows


def marks(driver: Any, side: str = "out") -> list[dict[str, Any]]:
    """The marks drawn on an image: their centres as shares of it, and their colours."""
    found: list[dict[str, Any]] = driver.execute_script(
        "const stage = document.getElementById('stage-' + arguments[0]);"
        "const box = stage.getBoundingClientRect();"
        "return [...stage.querySelectorAll('.mark')].map(m => {"
        "  const r = m.getBoundingClientRect();"
        "  return {x: (r.left + r.width / 2 - box.left) / box.width,"
        "          y: (r.top + r.height / 2 - box.top) / box.height,"
        "          colour: getComputedStyle(m).backgroundColor,"
        "          label: m.textContent}; })",
        side,
    )
    return found


def remove_hint(driver: Any, number: int) -> None:
    driver.find_element(
        "css selector", f'#hint-list button[aria-label="remove hint {number}"]'
    ).click()


def close_overlay(driver: Any) -> None:
    driver.find_element("tag name", "body").send_keys(Keys.ESCAPE)
    _wait(driver, lambda d: not d.find_element("id", "overlay").is_displayed(), "closed")


def download_hints(driver: Any, folder: Path) -> Path:
    """Click `hints.json` with Chromium's downloads going to `folder` (a new one: a second
    file of the same name would be renamed); returns the downloaded file once complete."""
    folder.mkdir(parents=True, exist_ok=False)
    driver.execute_cdp_cmd(
        "Browser.setDownloadBehavior",
        {"behavior": "allow", "downloadPath": str(folder), "eventsEnabled": False},
    )
    driver.find_element("id", "hints-download").click()
    path = folder / "hints.json"
    deadline = time.monotonic() + 30
    while not (path.is_file() and not list(folder.glob("*.crdownload"))):
        assert time.monotonic() < deadline, f"no download in {folder}: {list(folder.iterdir())}"
        time.sleep(0.1)
    assert sorted(p.name for p in folder.iterdir()) == ["hints.json"]
    return path


def hints_file(
    driver: Any, dest: Path, row_id: str, points: list[dict[str, Any]], folder: Path
) -> Path:
    """The archivist's whole gesture on DEST's gallery: open `row_id`, place `points` on its
    output (each {"x", "y", and "rgb": "#rrggbb" from the picker, or "take": (x, y) to take the
    output's colour there}, and "r" optionally), download hints.json into `folder`; returns its
    path. For the end-to-end test of `colorize --hints`."""
    _open(driver, dest)
    open_row(driver, row_id)
    for point in points:
        if "take" in point:
            take_colour(driver, *point["take"])
        else:
            set_picker(driver, point["rgb"])
        set_radius(driver, str(point.get("r", "")))
        click_image(driver, point["x"], point["y"])
    _wait(driver, lambda d: len(listed(d)) == len(points), "hints listed")
    close_overlay(driver)
    return download_hints(driver, folder)


# --- what the page must show ------------------------------------------------------------------
def _photo_rgb(row: int, x: float, y: float) -> np.ndarray:
    """The hand-made output of row `row` (tests.test_gallery._photo: a hue ramp) at (x, y)."""
    phase = (row % 12) / 12
    return np.clip([x * (1 - phase) + phase * y, y, 1 - x], 0, 1) * 255


def _rgb(hex_colour: str) -> np.ndarray:
    return np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)], float)


def _css(hex_colour: str) -> str:
    r, g, b = (int(v) for v in _rgb(hex_colour))
    return f"rgb({r}, {g}, {b})"


def _near(a: np.ndarray, b: np.ndarray, tolerance: float = RGB_TOLERANCE) -> bool:
    return bool(np.abs(a - b).max() <= tolerance)


def _assert_at(
    actual: dict[str, Any], x: float, y: float, box: dict[str, float], width: int
) -> None:
    """Within one shown pixel of where the click landed, and so within a pixel's share of the
    image."""
    for key, want, extent in (("x", x, box["width"]), ("y", y, box["height"])):
        assert abs(actual[key] - want) <= 1.0 / extent, (key, actual, want)
        assert abs(actual[key] - want) <= 1.0 / width


def test_place_list_remove_and_download_hints(handmade, browser, tmp_path: Path) -> None:
    """Two hints on one image (the picker's colour; a colour taken from the output), listed and
    marked at their places, one removed and placed again; the downloaded hints.json is exactly
    the file `colorize --hints` reads."""
    dest, _rows = handmade
    write_gallery(str(dest))
    _open(browser, dest)
    row_id, row = "a/0002.jpg", 2
    item = open_row(browser, row_id)
    assert (item["width"], item["height"]) == (96, 64)
    box = stage_box(browser)
    assert box["width"] / box["height"] == pytest.approx(96 / 64, rel=0.01)  # the image's aspect
    assert box["width"] > 400  # large enough to aim at
    assert listed(browser) == [] and browser.find_element("id", "hints-total").text == "no hints"
    assert not browser.find_element("id", "hints-download").is_enabled()

    # 1: the picker's colour, placed on the output
    set_picker(browser, "#8a2a1e")
    first = click_image(browser, 0.42, 0.31)
    # 2: a colour taken from the output at one point, placed at another, larger
    taken = take_colour(browser, 0.7, 0.8)
    assert _near(_rgb(taken), _photo_rgb(row, 0.7, 0.8)), taken
    assert not _near(_rgb(taken), _photo_rgb(row, 0.8, 0.7))  # not the transposed point
    set_radius(browser, "0.05")
    second = click_image(browser, 0.25, 0.75)

    placed = [(*first, "#8a2a1e", None), (*second, taken, 0.05)]
    shown = listed(browser)
    assert [(h["rgb"], h["swatch"]) for h in shown] == [(c, _css(c)) for _, _, c, _ in placed]
    for hint, (x, y, _, _) in zip(shown, placed, strict=True):
        _assert_at(hint, x, y, box, 96)
    assert shown[0]["text"] == f"1#8a2a1ex {first[0]:.1%}, y {first[1]:.1%}\u00d7"
    assert "r 5.0%" in shown[1]["text"]
    for side in ("in", "out"):  # marks on both images, at the hints' places, in their colours
        drawn = marks(browser, side)
        assert [(m["label"], m["colour"]) for m in drawn] == [
            ("1", _css(placed[0][2])),
            ("2", _css(taken)),
        ]
        for mark, (x, y, _, _) in zip(drawn, placed, strict=True):
            assert (
                abs(mark["x"] - x) <= 1.5 / box["width"]
                and abs(mark["y"] - y) <= 1.5 / box["height"]
            )
    assert browser.find_element("id", "hints-total").text == "2 hints on 1 image"

    # remove the first, then place it again: the list (and the file) in the new order
    remove_hint(browser, 1)
    assert [h["rgb"] for h in listed(browser)] == [taken]
    assert [m["label"] for m in marks(browser)] == ["1"]
    set_picker(browser, "#8a2a1e")
    set_radius(browser, "")
    again = click_image(browser, 0.42, 0.31)
    placed = [placed[1], (*again, "#8a2a1e", None)]
    assert [h["rgb"] for h in listed(browser)] == [taken, "#8a2a1e"]
    assert browser.find_element("id", "overlay").is_displayed()  # placing does not close it

    browser.execute_script("document.activeElement.blur()")
    screenshot = tmp_path / "gallery-hints.png"
    _save_screenshot(browser, screenshot)
    print(f"\nscreenshot of the gallery with hints placed: {screenshot}")
    if EXP_SCREENSHOT.parent.is_dir():
        shutil.copyfile(screenshot, EXP_SCREENSHOT)
        print(f"copied to {EXP_SCREENSHOT}")

    close_overlay(browser)
    badge = browser.find_element("css selector", f'.card[data-id="{row_id}"] .pill.hinted')
    assert badge.is_displayed() and badge.text.lower() == "2 hints"
    shown_badges = browser.find_elements("css selector", ".card .pill.hinted")
    assert [b for b in shown_badges if b.is_displayed()] == [badge]  # none on the others
    assert browser.find_element("id", "hints-total").text == "2 hints on 1 image"
    browser.execute_script("document.activeElement.blur(); window.scrollTo(0, 0)")
    _save_screenshot(browser, tmp_path / "gallery-hints-grid.png")  # the bar and the badge
    print(f"the grid with its hints badge: {tmp_path / 'gallery-hints-grid.png'}")
    if EXP_SCREENSHOT.parent.is_dir():
        shutil.copyfile(
            tmp_path / "gallery-hints-grid.png", EXP_SCREENSHOT.with_name("gallery-hints-grid.png")
        )

    path = download_hints(browser, tmp_path / "downloads")
    text = path.read_text()
    parsed = hints.loads(text)  # the parser of `colorize --hints` accepts it
    document = json.loads(text)
    assert list(document) == list(parsed) == [row_id]
    points = document[row_id]
    assert [sorted(p) for p in points] == [["r", "rgb", "x", "y"], ["rgb", "x", "y"]]
    for point, hint, (x, y, rgb, r) in zip(points, parsed[row_id], placed, strict=True):
        _assert_at(point, x, y, box, 96)
        assert point["rgb"] == rgb and point.get("r") == r
        assert (hint.x, hint.y) == (point["x"], point["y"])
        assert (hint.a, hint.b) == pytest.approx(hints.rgb_to_ab(rgb))
    assert _severe(browser) == []


def test_hints_survive_paging_and_reload_and_take_another_images_colour(
    handmade, browser, tmp_path: Path
) -> None:
    """A colour taken from one image's output and placed on an image of the next page; the hint
    is still there after paging and a reload, and belongs to this DEST only."""
    dest, _rows = handmade
    write_gallery(str(dest))
    _open(browser, dest)
    open_row(browser, "a/0005.jpg")
    _wait_colours(browser)
    browser.find_element("id", "hint-take").click()  # armed, then to the neighbour's output
    browser.find_element("tag name", "body").send_keys(Keys.ARROW_RIGHT)
    _wait_opened(browser, "a/0006.jpg")
    _wait_colours(browser)
    click_image(browser, 0.2, 0.5, side="in")  # either image: the output's colour there
    taken = picker(browser)
    assert _near(_rgb(taken), _photo_rgb(6, 0.2, 0.5)), taken
    assert listed(browser) == []  # taking a colour places no hint
    close_overlay(browser)

    target, target_row = "a/0201.jpg", 201  # on page 2
    open_row(browser, target)
    assert browser.find_element("id", "page-info").text == "page 2 of 2"
    assert not _near(_rgb(taken), _photo_rgb(target_row, 0.2, 0.5))  # really another's colour
    at = click_image(browser, 0.6, 0.4)
    box = stage_box(browser)
    close_overlay(browser)

    browser.find_element("id", "prev").click()  # paging away and back
    _wait(browser, lambda d: d.find_elements("css selector", '.card[data-id="a/0000.jpg"]'), "p1")
    browser.refresh()  # and a reload (the page is kept in the URL)
    _wait(browser, lambda d: d.find_elements("css selector", ".card"), "reloaded")
    assert browser.find_element("id", "hints-total").text == "1 hint on 1 image"
    open_row(browser, target)
    (hint,) = listed(browser)
    assert hint["rgb"] == taken
    _assert_at(hint, *at, box, 96)
    close_overlay(browser)
    badge = browser.find_element("css selector", f'.card[data-id="{target}"] .pill.hinted')
    assert badge.is_displayed() and badge.text.lower() == "1 hint"

    # another DEST's gallery, in the same browser (file:// pages share one localStorage)
    other = tmp_path / "other"
    shutil.copytree(dest, other)
    write_gallery(str(other))
    _open(browser, other)
    assert browser.find_element("id", "hints-total").text == "no hints"
    assert not browser.find_element("id", "hints-download").is_enabled()

    _open(browser, dest)
    path = download_hints(browser, tmp_path / "downloads")
    document = json.loads(path.read_text())
    assert list(hints.loads(path.read_text())) == [target]
    assert document == {target: [{"x": hint["x"], "y": hint["y"], "rgb": taken}]}
    assert _severe(browser) == []


def test_colour_files_of_the_outputs(handmade) -> None:
    """Each committed shard's colour file: every ok row's output as a grid (<= GRID px on its
    long side) from its thumbnail, null for error rows; reused by a rebuild, replaced when the
    shard is redone, removed with the shard."""
    dest, rows = handmade
    write_gallery(str(dest))
    _, (meta,) = _call(dest / "gallery" / "data" / "meta.js")
    assert sorted(meta["colors"]) == ["a", "b"] and meta["grid"] == GRID
    grids: dict[str, list[Any]] = {}
    for shard, name in meta["colors"].items():
        callback, (file_arg, shard_grids) = _call(dest / "gallery" / name)
        assert (callback, file_arg) == ("galleryColors", name)
        grids[shard] = shard_grids
    for row in rows:
        grid = grids[row["shard"]][row["index"]]
        if row["status"] != "ok":
            assert grid is None
            continue
        thumb = dest / "gallery" / "thumbs" / row["shard"] / f"{row['index']:06d}-out.jpg"
        assert grid == colour_grid(thumb.read_bytes())
        assert max(grid[:2]) <= GRID and grid[:2] == [48, 32]  # 96 x 64 outputs

    # a rebuild reuses the files; a redone shard (a new stats file) gets a new one
    before = {
        name: (dest / "gallery" / name).stat().st_mtime_ns for name in meta["colors"].values()
    }
    write_gallery(str(dest))
    _, (again,) = _call(dest / "gallery" / "data" / "meta.js")
    assert again["colors"] == meta["colors"]
    assert {
        n: (dest / "gallery" / n).stat().st_mtime_ns for n in again["colors"].values()
    } == before
    stats = dest / "_stats" / "b.json"
    redone = json.loads(stats.read_text())
    redone["seconds"] = redone.get("seconds", 0) + 1
    stats.write_text(json.dumps(redone))
    (dest / "_stats" / "a.json").unlink()  # and a shard gone
    write_gallery(str(dest))
    _, (last,) = _call(dest / "gallery" / "data" / "meta.js")
    assert list(last["colors"]) == ["b"] and last["colors"]["b"] != meta["colors"]["b"]
    colours = dest / "gallery" / "data" / "colors"
    assert sorted(p.relative_to(dest / "gallery").as_posix() for p in colours.iterdir()) == [
        last["colors"]["b"]
    ]


def test_colour_grid_is_the_outputs_mean_colour() -> None:
    """A flat-coloured preview larger than the grid: every cell is that colour; a small one is
    kept at its size."""
    image = Image.new("RGB", (192, 100), (138, 42, 30))
    image.paste((47, 93, 42), (96, 0, 192, 100))
    buf = io.BytesIO()
    image.save(buf, "PNG")
    width, height, data = colour_grid(buf.getvalue())
    assert (width, height) == (48, 25)
    cells = np.frombuffer(base64.b64decode(data), np.uint8).reshape(height, width, 3)
    assert (cells[:, :24] == (138, 42, 30)).all() and (cells[:, 24:] == (47, 93, 42)).all()
    small = io.BytesIO()
    Image.new("RGB", (20, 10), (1, 2, 3)).save(small, "PNG")
    assert colour_grid(small.getvalue())[:2] == [20, 10]


TAKE = (0.51, 0.26)  # inside a grid cell (0.5 of 48 would be on the line between two)


def _output_image(dest: Path, row_id: str) -> np.ndarray:
    """A row's full-size output (8-bit RGB, as floats), from its shard."""
    for path in sorted(dest.glob("*.parquet")):
        for row in pq.read_table(path, columns=["id", "image"]).to_pylist():
            if row["id"] == row_id:
                return np.asarray(Image.open(io.BytesIO(row["image"])).convert("RGB"), float)
    raise AssertionError(f"{row_id} is in no shard of {dest}")


def _ab_at(rgb: np.ndarray, x: float, y: float) -> np.ndarray:
    """An 8-bit RGB image's (as floats) mean ab over 5x5 pixels at (x, y), shares of it."""
    height, width = rgb.shape[:2]
    cy, cx = int(y * height), int(x * width)
    patch = rgb[cy - 2 : cy + 3, cx - 2 : cx + 3] / 255.0
    return np.asarray(skimage_color.rgb2lab(patch)[..., 1:].reshape(-1, 2).mean(0))


def _colour_at_its_lightness(rgb: np.ndarray, x: float, y: float, a: float, b: float) -> str:
    """'#rrggbb' of (a, b) at the image's own L at (x, y): a colour an output that keeps the
    scan's L can show there."""
    height, width = rgb.shape[:2]
    pixel = rgb[int(y * height), int(x * width)][None, None] / 255.0
    lightness = skimage_color.rgb2lab(pixel)[0, 0, 0]
    out = skimage_color.lab2rgb(np.array([[[lightness, a, b]]]))[0, 0]
    return "#" + "".join(f"{round(float(c) * 255):02x}" for c in out)


def test_hints_file_of_a_real_run(tmp_path: Path, ray_local, browser) -> None:
    """The whole loop on a real run: its gallery places a picker colour and a colour taken
    from the real output (`hints_file`) and downloads a file `colorize --hints` accepts,
    naming the run's id; the taken colour is the output's own there (its full-size image, read
    from the shard). Then `colorize --hints` with that file: the output at the picker's point
    has the chosen colour (the shipped default is hint-aware), and the other photos' output
    files are untouched."""
    make_image_folder(tmp_path / "photos", bad=False)
    dest = tmp_path / "out"
    colorize_archive(str(tmp_path / "photos"), str(dest), actors=1, shard_size=4)
    row_id = "colour/astronaut.jpg"
    automatic = _output_image(dest, row_id)
    green = _colour_at_its_lightness(automatic, 0.45, 0.75, -30.0, 25.0)  # on the suit
    chosen = [
        {"x": 0.45, "y": 0.75, "rgb": green, "r": 0.02},
        {"x": 0.62, "y": 0.55, "take": TAKE},
    ]
    path = hints_file(browser, dest, row_id, chosen, tmp_path / "downloads")
    open_row(browser, row_id)
    box = stage_box(browser)
    browser.execute_script("document.activeElement.blur()")
    screenshot = tmp_path / "gallery-hints-real-run.png"
    _save_screenshot(browser, screenshot)
    print(f"\nhints.json of a real run: {path}\nscreenshot: {screenshot}")
    if EXP_SCREENSHOT.parent.is_dir():
        shutil.copyfile(screenshot, EXP_SCREENSHOT.with_name("gallery-hints-real-run.png"))
    parsed = hints.loads(path.read_text())
    (points,) = json.loads(path.read_text()).values()
    assert list(parsed) == [row_id] and len(points) == len(parsed[row_id]) == 2
    for point, want in zip(points, chosen, strict=True):
        for key, extent in (("x", box["width"]), ("y", box["height"])):
            assert abs(point[key] - want[key]) <= 1.0 / extent  # one shown pixel
    assert points[0]["rgb"] == green and points[0]["r"] == 0.02 and "r" not in points[1]

    # the taken colour: the output's mean over the grid cell at the point (from the shard)
    output = _output_image(dest, row_id)
    height, width = output.shape[:2]
    grid_w, grid_h = fit((width, height), GRID)
    col, row = int(TAKE[0] * grid_w), int(TAKE[1] * grid_h)
    sx, sy = width / grid_w, height / grid_h
    cell = output[
        int(row * sy) : int(np.ceil((row + 1) * sy)), int(col * sx) : int(np.ceil((col + 1) * sx))
    ]
    cell = cell.mean(axis=(0, 1))
    print(f"taken {points[1]['rgb']}, the output's cell {cell.round(1)}")
    assert _near(_rgb(points[1]["rgb"]), cell), (points[1]["rgb"], cell)
    assert _severe(browser) == []

    # the loop's last step: colorize again with the downloaded file
    others = {p.name: p.read_bytes() for p in dest.glob("*.parquet")}
    hinted_shard = next(
        p.name for p in dest.glob("*.parquet") if row_id in pq.read_table(p)["id"].to_pylist()
    )
    colorize_archive(str(tmp_path / "photos"), str(dest), actors=1, shard_size=4, hints=str(path))
    hinted = _output_image(dest, row_id)
    want = np.asarray(skimage_color.rgb2lab(_rgb(green)[None, None] / 255.0)[0, 0, 1:])
    before, after = _ab_at(automatic, 0.45, 0.75), _ab_at(hinted, 0.45, 0.75)
    print(f"ab at the picker's point: automatic {before.round(1)}, hinted {after.round(1)}, "
          f"chosen {want.round(1)}")  # fmt: skip
    assert np.linalg.norm(after - want) < 12, (after, want)
    assert np.linalg.norm(before - want) > 25, (before, want)  # the hint changed it
    taken = np.asarray(skimage_color.rgb2lab(_rgb(points[1]["rgb"])[None, None] / 255.0)[0, 0, 1:])
    assert np.linalg.norm(_ab_at(hinted, 0.62, 0.55) - taken) < 12
    changed = {n for n, blob in others.items() if (dest / n).read_bytes() != blob}
    assert changed == {hinted_shard}
    # the run's gallery labels the row colorized with hints, and no other
    assert_used_hints_shown(browser, dest, {row_id: 2}, tmp_path, "gallery-hinted-real-run")


# --- clear all hints; the rows colorized with hints -------------------------------------------
def _keep_screenshot(driver: Any, tmp_path: Path, name: str) -> None:
    """A screenshot of the page as it is (no focus ring), in tmp_path and /work/exp if present."""
    driver.execute_script("document.activeElement.blur()")
    path = tmp_path / f"{name}.png"
    _save_screenshot(driver, path)
    print(f"\nscreenshot: {path}")
    if EXP_SCREENSHOT.parent.is_dir():
        shutil.copyfile(path, EXP_SCREENSHOT.with_name(path.name))


def stored_hints(driver: Any, dest: str | None = None) -> Any:
    """The hints the page keeps in localStorage for `dest` (the open gallery's by default),
    parsed; None when nothing is stored."""
    text = driver.execute_script(
        "return localStorage.getItem('archive-colorize/hints/' + (arguments[0] || meta.dest))",
        dest,
    )
    return None if text is None else json.loads(text)


def shown_on_cards(driver: Any, selector: str) -> dict[str, str]:
    """{row id: text} of the grid cards' shown elements matching `selector`."""
    found: dict[str, str] = driver.execute_script(
        "return Object.fromEntries([...document.querySelectorAll('.card')].flatMap(c => {"
        "  const e = c.querySelector(arguments[0]);"
        "  return e && e.checkVisibility() ? [[c.dataset.id, e.textContent]] : []; }))",
        selector,
    )
    return found


def placed_badges(driver: Any) -> dict[str, str]:
    """{row id: text} of the grid's shown "N hints" badges (hints placed in the page)."""
    return shown_on_cards(driver, ".pill.hinted")


def used_labels(driver: Any) -> dict[str, str]:
    """{row id: text} of the grid's shown "colorized with N hints" labels (the hints column)."""
    return shown_on_cards(driver, ".used-hints")


def clear_all(driver: Any, accept: bool) -> str:
    """Click `clear hints` and answer its confirm(); returns the question asked."""
    driver.find_element("id", "hints-clear").click()
    alert = WebDriverWait(driver, 10).until(expected_conditions.alert_is_present())
    question: str = alert.text
    if accept:
        alert.accept()
    else:
        alert.dismiss()
    return question


def test_clear_all_hints_asks_then_empties_the_list_and_storage(
    handmade, browser, tmp_path: Path
) -> None:
    """Hints on two images (one on page 2); `clear hints` asks first: dismissed, every hint is
    kept (list, badges, storage); accepted, none is left in the page, its storage or after a
    reload, while another DEST's hints in the same browser are untouched."""
    dest, _rows = handmade
    write_gallery(str(dest))
    _open(browser, dest)
    assert not browser.find_element("id", "hints-clear").is_enabled()  # nothing to clear
    other = "s3://another/dest"
    other_hints = {"x.jpg": [{"x": 0.5, "y": 0.5, "rgb": "#123456"}]}
    browser.execute_script(
        "localStorage.setItem('archive-colorize/hints/' + arguments[0], arguments[1])",
        other,
        json.dumps(other_hints),
    )
    for row_id, points in (("a/0002.jpg", [(0.3, 0.4), (0.6, 0.7)]), ("a/0201.jpg", [(0.5, 0.5)])):
        open_row(browser, row_id)
        for x, y in points:
            click_image(browser, x, y)
        n = len(points)
        _wait(browser, lambda d, n=n: len(listed(d)) == n, "hints listed")
        close_overlay(browser)
    browser.find_element("id", "prev").click()
    _wait(browser, lambda d: "a/0002.jpg" in placed_badges(d), "page 1 and its badges")
    assert placed_badges(browser) == {"a/0002.jpg": "2 hints"}
    assert browser.find_element("id", "hints-total").text == "3 hints on 2 images"
    assert sorted(stored_hints(browser)) == ["a/0002.jpg", "a/0201.jpg"]
    browser.execute_script("window.scrollTo(0, 0)")
    _keep_screenshot(browser, tmp_path, "gallery-clear-grid-before")

    # dismissed: nothing is lost
    question = clear_all(browser, accept=False)
    assert "3 hints on 2 images" in question and str(dest) in question
    assert browser.find_element("id", "hints-total").text == "3 hints on 2 images"
    assert placed_badges(browser) == {"a/0002.jpg": "2 hints"}
    assert [len(v) for v in stored_hints(browser).values()] == [2, 1]
    open_row(browser, "a/0002.jpg")
    assert len(listed(browser)) == 2 and len(marks(browser)) == 2
    close_overlay(browser)

    # accepted: all gone, from the page and the browser's storage
    clear_all(browser, accept=True)
    assert browser.find_element("id", "hints-total").text == "no hints"
    assert not browser.find_element("id", "hints-clear").is_enabled()
    assert not browser.find_element("id", "hints-download").is_enabled()
    assert placed_badges(browser) == {}
    assert stored_hints(browser) is None
    assert stored_hints(browser, other) == other_hints  # another DEST's are not this page's
    _keep_screenshot(browser, tmp_path, "gallery-clear-grid-after")
    open_row(browser, "a/0002.jpg")
    assert listed(browser) == [] and marks(browser) == [] and marks(browser, "in") == []
    assert browser.find_element("css selector", "#hint-list li.empty").is_displayed()
    _keep_screenshot(browser, tmp_path, "gallery-clear-view-after")
    close_overlay(browser)

    browser.refresh()  # and they do not come back
    _wait(browser, lambda d: d.find_elements("css selector", ".card"), "reloaded")
    assert browser.find_element("id", "hints-total").text == "no hints"
    open_row(browser, "a/0201.jpg")
    assert listed(browser) == []
    assert _severe(browser) == []


def _set_hints_column(dest: Path, shard: str, counts: dict[int, int] | None) -> None:
    """Rewrite a hand-made shard's `hints` column: {row position: count} (others null), or
    drop the column (None: a shard of a run from before hints)."""
    path = dest / f"{shard}.parquet"
    table = pq.read_table(path)
    if counts is None:
        table = table.drop_columns(["hints"])
    else:
        column = pa.array([counts.get(i) for i in range(table.num_rows)], pa.int32())
        table = table.set_column(table.schema.get_field_index("hints"), "hints", column)
    pq.write_table(table, path)


def _card_ids(driver: Any) -> list[str]:
    return [c.get_attribute("data-id") for c in driver.find_elements("css selector", ".card")]


def assert_used_hints_shown(
    driver: Any, dest: Path, want: dict[str, int], tmp_path: Path, screenshots: str
) -> None:
    """DEST's gallery (as built) labels exactly the rows in `want` ({id: its hints column, in
    input order}) as colorized with their count, in the grid (all rows, then the `colorized with
    hints` filter) and in each one's large view, and not an unhinted row's; the grid and the
    first row's large view are kept as `screenshots`-{grid,view}.png."""

    def label(n: int) -> str:
        return f"colorized with {n} hint" + ("" if n == 1 else "s")

    _open(driver, dest)
    assert driver.find_element("id", "n-hinted").text == f"({len(want)})"
    labelled: dict[str, str] = {}
    while True:  # every page of the view of all rows
        labelled.update(used_labels(driver))
        if not driver.find_element("id", "next").is_enabled():
            break
        page = driver.execute_script("return state.page")
        driver.find_element("id", "next").click()
        _wait(driver, lambda d, p=page: d.execute_script("return state.page") == p + 1, "paged")
        _choose(driver)
    assert labelled == {row_id: label(n) for row_id, n in want.items()}

    driver.find_element("id", "hinted-only").click()  # the filter: exactly those rows
    _choose(driver)
    assert driver.execute_script("return location.hash").endswith("&hinted=1&page=1")
    assert _card_ids(driver) == list(want)
    assert used_labels(driver) == labelled
    driver.execute_script("window.scrollTo(0, 0)")
    _keep_screenshot(driver, tmp_path, f"{screenshots}-grid")
    for row_id, n in want.items():
        open_row(driver, row_id)
        used = driver.find_element("id", "ov-used")
        assert used.is_displayed() and used.text.lower() == label(n)
        assert f"colorized with\n{n} hint" in driver.find_element("id", "ov-fields").text
        if row_id == next(iter(want)):
            _keep_screenshot(driver, tmp_path, f"{screenshots}-view")
        close_overlay(driver)

    driver.find_element("id", "hinted-only").click()
    _choose(driver)
    unhinted = next(i for i in _card_ids(driver) if i not in want)
    open_row(driver, unhinted)
    assert not driver.find_element("id", "ov-used").is_displayed()
    assert "colorized with\n0 hints" in driver.find_element("id", "ov-fields").text
    close_overlay(driver)
    assert _severe(driver) == []


def test_rows_colorized_with_hints_are_labelled_and_filtered(
    handmade, browser, tmp_path: Path
) -> None:
    """The shards' `hints` column in the page: counts in the page data (null, and a shard of an
    older run with no such column, are 0), the `colorized with N hints` label on exactly those
    rows' cards and large views, the `colorized with hints` filter; a hint placed in the page
    keeps its own badge, beside the label."""
    dest, rows = handmade
    _set_hints_column(dest, "a", {2: 3, 7: 1, 201: 2})
    _set_hints_column(dest, "b", None)
    write_gallery(str(dest))
    _, (meta,) = _call(dest / "gallery" / "data" / "meta.js")
    assert meta["views"]["input-hinted"] == {"items": 3, "pages": 1}
    _, (_, _, hinted) = _call(dest / "gallery" / "data" / "input-hinted-00000.js")
    assert [(i["id"], i["hints"]) for i in hinted] == [
        ("a/0002.jpg", 3),
        ("a/0007.jpg", 1),
        ("a/0201.jpg", 2),
    ]
    counts: dict[str, int] = {}
    for page in range(meta["views"]["input-all"]["pages"]):
        _, (_, _, items) = _call(dest / "gallery" / "data" / f"input-all-{page:05d}.js")
        counts.update({i["id"]: i["hints"] for i in items})
    assert len(counts) == len(rows) and sum(counts.values()) == 6  # the others (b's too): 0
    assert counts["b/0000.jpg"] == 0 and counts["a/0000.jpg"] == 0

    _open(browser, dest)
    open_row(browser, "a/0002.jpg")  # a hint placed in the page: its badge, not the label
    click_image(browser, 0.5, 0.5)
    close_overlay(browser)
    assert placed_badges(browser) == {"a/0002.jpg": "1 hint"}
    assert_used_hints_shown(
        browser,
        dest,
        {"a/0002.jpg": 3, "a/0007.jpg": 1, "a/0201.jpg": 2},
        tmp_path,
        "gallery-hinted",
    )
    assert placed_badges(browser) == {"a/0002.jpg": "1 hint"}  # still, and only the badge
