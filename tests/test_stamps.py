"""Photographic stamps: the selection rule, the licence record, pasting onto crops."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image, ImageDraw
from skimage import data

from pipeline.training.config import TrainConfig
from pipeline.training.stamps import STAMPS_DIR, is_photographic, paste_stamp, select_stamps
from pipeline.training.stream import make_crop


def photo_cutout() -> np.ndarray:
    """A real photo (scikit-image's cat) cut out by an elliptic alpha, as the stamps are."""
    rgb = data.chelsea()[:200, 100:300]
    alpha = Image.new("L", (200, 200), 0)
    ImageDraw.Draw(alpha).ellipse((20, 10, 180, 190), fill=255)
    return np.dstack([rgb, np.asarray(alpha)])


def clip_art() -> np.ndarray:
    """Flat fills and a black outline, as clip art is drawn."""
    image = Image.new("RGBA", (200, 200), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    draw.ellipse((20, 10, 180, 190), fill=(250, 220, 40, 255), outline=(0, 0, 0, 255), width=4)
    draw.rectangle((70, 80, 130, 120), fill=(230, 90, 20, 255))
    return np.asarray(image)


def test_the_rule_keeps_photographs_and_drops_clip_art_and_symbol_folders():
    assert is_photographic("animals/mammals/cat.png", photo_cutout())
    assert not is_photographic("animals/mammals/cat.png", clip_art())
    assert not is_photographic("animals/birds/cartoon/cat.png", photo_cutout())  # by folder
    assert not is_photographic("symbols/alphabets/a.png", photo_cutout())
    tiny = photo_cutout()
    tiny[..., 3] = 0
    tiny[:30, :30, 3] = 255  # 900 opaque pixels: too few to teach colour
    assert not is_photographic("animals/mammals/cat.png", tiny)


def test_select_writes_the_photographs_and_their_licence_record(tmp_path):
    root = tmp_path / "root"
    for rel, rgba in (("animals/mammals/cat.png", photo_cutout()),
                      ("animals/mammals/toon.png", clip_art()),
                      ("cartoon/cat.png", photo_cutout())):  # fmt: skip
        path = root / STAMPS_DIR / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgba, "RGBA").save(path)
    rows = select_stamps(root, tmp_path / "out")
    assert [r["path"] for r in rows] == [f"/{STAMPS_DIR}/animals/mammals/cat.png"]
    written = Image.open(tmp_path / "out" / "animals__mammals__cat.png")
    assert written.mode == "RGBA" and written.size == (200, 200)
    with open(tmp_path / "out" / "stamps.tsv") as fh:
        record = list(csv.DictReader(fh, delimiter="\t"))
    assert record[0]["license"] == "GPL-2.0" and record[0]["package"] == "tuxpaint-stamps-default"
    with pytest.raises(FileNotFoundError, match="unpack"):
        select_stamps(tmp_path / "nowhere", tmp_path / "out2")


def test_pasting_changes_the_crop_only_under_the_stamp():
    crop = np.full((128, 128, 3), 90, np.uint8)
    stamp = photo_cutout()
    out = paste_stamp(crop, stamp, np.random.default_rng(0))
    changed = (out != crop).any(axis=-1)
    assert 0.05 < changed.mean() < 0.5  # a stamp 30-70 % of the side, not a veil
    np.testing.assert_array_equal(out, paste_stamp(crop, stamp, np.random.default_rng(0)))
    ys, xs = np.nonzero(changed)
    box = out[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    assert box.shape[0] < 128 * 0.75 and box.shape[1] < 128 * 0.75
    top, bottom, left, right = ys.min(), ys.max(), xs.min(), xs.max()
    corners = out[[top, top, bottom, bottom], [left, right, left, right]]
    assert (corners == 90).all()  # the alpha-0 corners of the ellipse's box keep the crop


def _crops(photos, config, stamps, seed=5):
    # each crop's random numbers come from its own generator (its data position in training)
    return [make_crop(p, config, np.random.default_rng([seed, i]), stamps)
            for i, p in enumerate(photos)]  # fmt: skip


def test_training_crops_paste_the_share_asked_and_stay_seeded():
    photos = [np.full((72, 72, 3), v, np.uint8) for v in (40, 90, 140, 200)] * 4
    stamps = [photo_cutout()]
    base = TrainConfig(crop=64, prepared=72, batch_size=8, scale_min=1.0)
    plain = _crops(photos, base, stamps)  # paste 0: none
    assert all(len(np.unique(c)) == 1 for c in plain)
    config = TrainConfig(crop=64, prepared=72, batch_size=8, scale_min=1.0, paste=0.5,
                         stamps="unused-here")  # fmt: skip
    batch = _crops(photos, config, stamps)
    pasted = sum(len(np.unique(c)) > 1 for c in batch)
    assert 0 < pasted < 16
    np.testing.assert_array_equal(np.stack(batch), np.stack(_crops(photos, config, stamps)))
    with pytest.raises(ValueError, match="--stamps"):
        TrainConfig(paste=0.5).validate()
