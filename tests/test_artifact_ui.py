"""The run report as the Prefect UI shows it: a real `prefect server start`, a colorize run
reporting to it, and the `colorize-report` artifact's page in headless Chromium, where every
figure must have loaded."""

from __future__ import annotations

import io
import json
import os
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from pipeline.review.artifact import artifact_markdown, data_uri
from tests.test_deploy import BIN, background, base_env, free_port, run, wait_http
from tests.test_gallery import browser  # noqa: F401 - the shared headless Chromium fixture

SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "prefect-artifact.png"


def _png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGBA", (width, height), (200, 40, 40, 255)).save(buf, "PNG")
    return buf.getvalue()


def test_artifact_markdown_embeds_known_figures_and_says_where_the_files_are():
    markdown = "# Run\n\n![metrics](metrics.png)\n\n![other](elsewhere.png)\n"
    out = artifact_markdown(markdown, {"metrics.png": _png(2000, 500)},
                            {"full report": "s3://bucket/run/report.md"})  # fmt: skip
    assert out.startswith("- full report: `s3://bucket/run/report.md`")
    assert "![metrics](data:image/jpeg;base64," in out and "![other](elsewhere.png)" in out
    small = Image.open(io.BytesIO(__import__("base64").b64decode(data_uri(_png(2000, 500))[23:])))
    assert small.format == "JPEG" and small.size == (720, 180)


@pytest.mark.slow
def test_report_artifact_shows_its_figures_in_the_prefect_ui(tmp_path, browser):  # noqa: F811
    from tests.archive_helpers import make_image_folder

    make_image_folder(tmp_path / "photos")
    port = free_port()
    env = base_env(tmp_path)
    env["PREFECT_API_URL"] = f"http://127.0.0.1:{port}/api"
    env["PREFECT_UI_API_URL"] = f"http://127.0.0.1:{port}/api"  # the UI calls this API
    server = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    with background(server, env, tmp_path / "server.log"):
        wait_http(f"http://127.0.0.1:{port}/api/health", 90)
        run([str(BIN / "archive-colorize"), "colorize", str(tmp_path / "photos"),
             str(tmp_path / "out"), "--shard-size", "4"], env, timeout=400)  # fmt: skip
        query = json.dumps({"artifacts": {"key": {"any_": ["colorize-report"]}}}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/artifacts/filter", data=query,
            headers={"Content-Type": "application/json"}, method="POST",
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=30) as response:
            artifacts = json.loads(response.read())
        assert len(artifacts) == 1
        size = len(artifacts[0]["data"])
        assert size < 400_000, f"the artifact is {size} bytes"
        assert f"`{tmp_path / 'out' / 'report.md'}`" in artifacts[0]["data"]
        browser.get(f"http://127.0.0.1:{port}/artifacts/artifact/{artifacts[0]['id']}")
        script = """return Array.from(document.images)
            .filter(i => i.src.startsWith('data:image/jpeg'))
            .map(i => [i.complete, i.naturalWidth])"""
        deadline, images = time.time() + 90, []
        while time.time() < deadline:
            images = browser.execute_script(script)
            if len(images) == 2 and all(done and width > 0 for done, width in images):
                break
            time.sleep(0.5)
        assert len(images) == 2 and all(w > 0 for _, w in images), images  # both figures shown
        text = browser.find_element("tag name", "body").text
        assert "review gallery" in text and str(tmp_path / "out" / "report.md") in text
        browser.execute_script(  # the picture for the docs: the figures, as the UI shows them
            "Array.from(document.images).find(i => i.src.startsWith('data:image'))"
            ".scrollIntoView({block: 'start'})"
        )
        time.sleep(0.5)
        shot = browser.get_screenshot_as_png()
        (tmp_path / "artifact.png").write_bytes(shot)
        if os.environ.get("ARCHIVE_COLORIZE_DOCS_SCREENSHOT") == "1":
            image = Image.open(io.BytesIO(shot)).convert("RGB")
            image.quantize(256, dither=Image.Dither.FLOYDSTEINBERG).save(SCREENSHOT, optimize=True)
    print(f"verified: 2 figures loaded in the Prefect UI; artifact {size} bytes")
