"""One image never fails a run: `evaluate` and training's preparation count an unreadable
image and go on, and a photo whose IPTC holds an empty value is read (real Ray, Prefect)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from skimage import data

import models
from flows.evaluate import evaluate_model
from pipeline.training.loop import prepare_photo
from tests.archive_helpers import jpeg, jpeg_with_empty_iptc
from tests.test_archive import ray_local  # noqa: F401 - the shared local Ray fixture


def _folder(root: Path) -> Path:
    root.mkdir()
    (root / "coffee.jpg").write_bytes(jpeg(data.coffee(), 160))
    (root / "empty_iptc.jpg").write_bytes(jpeg_with_empty_iptc(data.astronaut()))
    whole = jpeg(data.chelsea(), 160)
    (root / "corrupt.jpg").write_bytes(whole[:200])  # cut inside its header
    (root / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    return root


def test_prepare_photo_skips_what_it_cannot_read(tmp_path: Path):
    assert prepare_photo(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, 32) is None
    assert prepare_photo(jpeg(data.chelsea(), 160)[:200], 32) is None
    photo = prepare_photo(jpeg_with_empty_iptc(data.astronaut()), 32)
    assert photo is not None and photo.shape == (32, 32, 3)


@pytest.mark.slow
def test_evaluate_counts_unreadable_images_and_completes(tmp_path: Path, ray_local):  # noqa: F811
    model = tmp_path / "small.safetensors"
    models.save(models.build("small"), model)
    photos = _folder(tmp_path / "photos")
    out = tmp_path / "evaluation"
    result = evaluate_model(str(photos), model=str(model), out=str(out), split="all")
    assert result["images"] == 2  # coffee and the photo with an empty IPTC value
    assert result["skipped"]["unreadable"] == 2
    assert json.loads((out / "evaluation.json").read_text())["images"] == 2
