"""Training: prior, train step, resumable Ray Train runs (2 CPU workers), evaluation, flows."""

from __future__ import annotations

import io
import json
import math
import uuid
from collections.abc import Callable
from pathlib import Path

import boto3
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from skimage import data

import models
from flows import cli
from flows.train import train_model
from models.bins import nearest_bin
from pipeline import storage
from pipeline.evaluate import gray_baseline
from pipeline.metrics import image_metrics
from pipeline.training import (
    TrainConfig,
    ab_targets,
    empirical_prior,
    load_state,
    make_optimizer,
    read_split,
    sample_batch,
    save_state,
    split_of,
    train_step,
)
from tests.test_archive import ray_local  # noqa: F401 - the shared local Ray fixture

pytestmark = pytest.mark.slow
TINY = {"crop": 64, "batch_size": 4, "checkpoint_every": 3, "val_fraction": 0.25}
MARKERS = [1111.0, 2222.0, 3333.0]  # no loss of a real run: proof of a loaded history


def _perturbed_copy(
    run: Path, resumed: Path, history: list[float], change: Callable[[dict], None] | None = None
) -> bytes:
    """Put a modified copy of RUN's step-3 checkpoint (its history replaced by `history`, then
    `change` applied) into RESUMED's checkpoints, as a crashed run would have left it."""
    state = load_state(str(run / "checkpoints" / "step-0000003.pt"))
    assert len(state["history"]) == 3 and not set(state["history"]) & set(history)
    state["history"] = list(history)
    if change is not None:
        change(state)
    save_state(str(resumed / "checkpoints" / "step-0000003.pt"), state)
    return (resumed / "checkpoints" / "step-0000003.pt").read_bytes()


def _jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=92)
    return buf.getvalue()


def tiny_archive(root: Path, n: int = 16) -> Path:
    """n real photo crops (96 px) from scikit-image's bundled photos, one Parquet shard."""
    rng = np.random.default_rng(0)
    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    ids, blobs = [], []
    for i in range(n):
        p = photos[i % len(photos)]
        y, x = rng.integers(0, p.shape[0] - 96), rng.integers(0, p.shape[1] - 96)
        ids.append(f"photo-{i:03d}")
        blobs.append(_jpeg(p[y : y + 96, x : x + 96]))
    root.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": ids, "image": blobs}), root / "part-00000.parquet")
    return root


def test_split_is_deterministic_and_near_the_fraction():
    ids = [f"img-{i}" for i in range(2000)]
    val = [i for i in ids if split_of(i, 0.1) == "val"]
    assert 150 < len(val) < 250
    assert val == [i for i in ids if split_of(i, 0.1) == "val"]


def test_prior_from_a_known_tiny_set(tmp_path, ray_local):  # noqa: F811
    red = np.zeros((80, 80, 3), np.uint8)
    red[..., 0] = 255
    blue = np.zeros((80, 80, 3), np.uint8)
    blue[..., 2] = 255
    gray = np.full((80, 80, 3), 128, np.uint8)  # no colour: excluded from the training set
    root = tmp_path / "src"
    root.mkdir()
    png = []
    for arr in (red, red, red, blue, gray):
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, "PNG")
        png.append(buf.getvalue())
    pq.write_table(pa.table({"id": list("abcde"), "image": png}), root / "p.parquet")
    config = TrainConfig(crop=64, prepared=72, val_fraction=0.0)
    ds = read_split([str(root / "p.parquet")], config, "train")
    counts, prior, images = empirical_prior(ds, config)
    assert images == 4
    centers = models.gamut_bin_centers()
    _, ab_red = ab_targets(torch.from_numpy(red[None, :8, :8]))
    _, ab_blue = ab_targets(torch.from_numpy(blue[None, :8, :8]))
    i_red, i_blue = nearest_bin(ab_red, centers)[0, 0, 0], nearest_bin(ab_blue, centers)[0, 0, 0]
    per_image = (72 // 4) ** 2
    assert counts[i_red] == 3 * per_image and counts[i_blue] == per_image
    assert counts.sum() == 4 * per_image
    assert prior[i_red] > prior[i_blue] > 0 and prior.sum().item() == pytest.approx(1.0)


def test_train_step_decreases_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    config = TrainConfig(crop=64, prepared=72, batch_size=4, lr=1e-3)
    colorizer = models.build("small")
    photos = np.stack([data.astronaut()[i * 72 : i * 72 + 72, :72] for i in range(4)])
    batch = sample_batch(photos, config, step=0, rank=0)
    assert batch.shape == (4, 64, 64, 3)
    torch.testing.assert_close(batch, sample_batch(photos, config, step=0, rank=0))  # seeded
    optimizer = make_optimizer(colorizer.net, config)
    weights = torch.ones(colorizer.num_bins)
    losses = [
        train_step(colorizer.net, colorizer, optimizer, batch, weights, config) for _ in range(25)
    ]
    assert losses[-1] < 0.8 * losses[0]


def test_perfect_and_gray_predictors_score_as_expected(photos):
    rgb = photos["coffee"] / 255.0
    from pipeline.color import rgb_to_lab

    lab = rgb_to_lab(torch.from_numpy(rgb).permute(2, 0, 1).float()).numpy()
    centers, prior = models.gamut_bin_centers(), torch.full((261,), 1 / 261)
    perfect = image_metrics(rgb, lab[1:], rgb, lab[1:], centers, prior)
    assert perfect["auc"] == 1.0 and perfect["auc_rebalanced"] == 1.0
    assert perfect["ssim"] == pytest.approx(1.0) and perfect["colorfulness_delta"] == 0.0
    gray_rgb, gray_ab = gray_baseline(lab[0])
    gray = image_metrics(gray_rgb, gray_ab, rgb, lab[1:], centers, prior)
    assert 0 < gray["auc"] < 1 and gray["colorfulness"] < 1.0 and gray["colorfulness_delta"] < 0
    # on an image with no colour, the gray baseline is perfect
    flat = np.repeat(rgb.mean(axis=2, keepdims=True), 3, axis=2)
    flat_lab = rgb_to_lab(torch.from_numpy(flat).permute(2, 0, 1).float()).numpy()
    g_rgb, g_ab = gray_baseline(flat_lab[0])
    # (its true ab is ~1e-5, not exactly 0: only the t = 0 threshold can miss)
    assert image_metrics(g_rgb, g_ab, flat, flat_lab[1:], centers, prior)["auc"] >= 150 / 151


def test_train_flow_resumes_to_the_same_state_and_evaluation_reproduces_the_card(
    tmp_path,
    ray_local,  # noqa: F811
):
    src = tiny_archive(tmp_path / "src")
    full = train_model(str(src), str(tmp_path / "a"), steps=6, workers=2, **TINY)
    a_dir = tmp_path / "a"
    assert (a_dir / "model.safetensors").is_file() and (a_dir / "loss.png").is_file()
    assert sorted(p.name for p in (a_dir / "checkpoints").iterdir()) == [
        "step-0000003.pt", "step-0000006.pt"
    ]  # fmt: skip
    card = models.read_card(a_dir / "model.safetensors")
    assert card["training"]["steps"] == 6 and card["training"]["images"] > 0
    assert set(card["metrics"]["metrics"]["auc"]) == {"model", "gray"}
    assert full["metrics"] == card["metrics"]["metrics"]

    # a run that "crashed" after its step-3 checkpoint, resumed by re-running the same command.
    # Training is deterministic in (seed, step, rank): a run that ignored the checkpoint would
    # reach the same state. So the copy's loss history carries markers, which only a run that
    # loaded it can pass on (the history plays no part in the training itself).
    b_dir = tmp_path / "b"
    step3 = _perturbed_copy(a_dir, b_dir, history=MARKERS)
    train_model(str(src), str(b_dir), steps=6, workers=2, **TINY)
    assert (b_dir / "checkpoints" / "step-0000003.pt").read_bytes() == step3  # not rewritten
    a, b = (
        load_state(str(a_dir / "checkpoints/step-0000006.pt")),
        load_state(str(b_dir / "checkpoints/step-0000006.pt")),
    )
    assert b["history"][:3] == MARKERS  # carried over bit for bit: steps 1-3 not recomputed
    assert b["history"][3:] == pytest.approx(a["history"][3:], rel=1e-4)
    for key in a["net"]:
        torch.testing.assert_close(a["net"][key], b["net"][key], rtol=1e-4, atol=1e-5)

    # `archive-colorize evaluate` on the validation split reproduces the card's figures
    with pytest.raises(SystemExit) as exit_code:
        cli.main(["evaluate", str(src), "--model", str(a_dir / "model.safetensors"),
                  "--out", str(tmp_path / "eval"), "--val-fraction", "0.25"])  # fmt: skip
    assert exit_code.value.code == 0
    again = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert again["metrics"] == card["metrics"]["metrics"]
    assert (tmp_path / "eval" / "contact_sheet.png").is_file()
    assert "gray baseline" in (tmp_path / "eval" / "evaluation.md").read_text()


def test_lite0_from_imagenet_trains_and_resumes_exactly(tmp_path, ray_local):  # noqa: F811
    from models.imagenet import imagenet_state

    src = tiny_archive(tmp_path / "src")
    options = {**TINY, "arch": "lite0", "steps": 6, "workers": 1, "trainable_stages": 1,
               "unfreeze_at": 3, "ema_decay": 0.9, "scale_min": 0.5}  # fmt: skip
    train_model(str(src), str(tmp_path / "a"), **options)
    # resumed from a perturbed step-3 checkpoint: markers in its history, and one weight of its
    # moving average moved by DELTA. The average plays no part in the training, so the net and
    # the losses of steps 4-6 must be the clean run's, while the moved weight must end DELTA *
    # d3 * d4 * d5 away from the clean run's (each step keeps a share d = (1 + s) / (10 + s),
    # below --ema-decay here, of the average; update_ema). Only a run that loaded all of the
    # checkpoint (net, optimizer, average, history) passes.
    b_dir = tmp_path / "b"
    moved, delta = "up4.0.weight", 1.0
    kept = math.prod((1.0 + s) / (10.0 + s) for s in (3, 4, 5))

    def perturb(state: dict) -> None:
        state["ema"][moved] = state["ema"][moved] + delta

    step3 = _perturbed_copy(tmp_path / "a", b_dir, history=MARKERS, change=perturb)
    train_model(str(src), str(b_dir), **options)
    assert (b_dir / "checkpoints" / "step-0000003.pt").read_bytes() == step3
    a, b = (load_state(str(d / "checkpoints/step-0000006.pt")) for d in (tmp_path / "a", b_dir))
    assert b["history"][:3] == MARKERS
    assert b["history"][3:] == pytest.approx(a["history"][3:], rel=1e-4)
    for key in a["net"]:
        torch.testing.assert_close(a["net"][key], b["net"][key], rtol=1e-4, atol=1e-5)
    for key in a["ema"]:
        expected = a["ema"][key] + delta * kept if key == moved else a["ema"][key]
        torch.testing.assert_close(b["ema"][key], expected, rtol=1e-4, atol=1e-5, msg=key)

    imagenet = imagenet_state("lite0")
    step3 = load_state(str(tmp_path / "a" / "checkpoints/step-0000003.pt"))["net"]
    for key, value in imagenet.items():
        if key.startswith("fc."):
            continue
        torch.testing.assert_close(step3["encoder." + key], value, msg=key)  # before unfreezing
        if "running_" in key or not key.startswith(("stages.6.", "head.")):
            # frozen stages, and every BatchNorm statistic, keep their ImageNet values
            torch.testing.assert_close(a["net"]["encoder." + key], value, msg=key)
    moved = [k for k in imagenet if k.startswith("stages.6.") and k.endswith("weight")
             and not torch.equal(a["net"]["encoder." + k], imagenet[k])]  # fmt: skip
    assert moved
    model = models.load(tmp_path / "a" / "model.safetensors")
    assert model.arch == "lite0"
    torch.testing.assert_close(model.net.state_dict()["up4.0.weight"], a["ema"]["up4.0.weight"])


def test_train_flow_on_s3(tmp_path, s3_server, ray_local):  # noqa: F811
    bucket = f"train-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=bucket)
    storage.configure(s3_server)
    src = tiny_archive(tmp_path / "src")
    storage.write_bytes(
        f"s3://{bucket}/photos/part-00000.parquet", (src / "part-00000.parquet").read_bytes()
    )
    result = train_model(
        f"s3://{bucket}/photos", f"s3://{bucket}/runs/r1", steps=3, workers=2,
        s3_endpoint_url=s3_server, **TINY,
    )  # fmt: skip
    assert result["model"] == f"s3://{bucket}/runs/r1/model.safetensors"
    for key in ("model.safetensors", "model.json", "loss.png", "checkpoints/step-0000003.pt",
                "evaluation/evaluation.json"):  # fmt: skip
        assert storage.exists(f"s3://{bucket}/runs/r1/{key}"), key
    card = json.loads(storage.read_bytes(f"s3://{bucket}/runs/r1/model.json"))
    assert card["training"]["source"] == f"s3://{bucket}/photos"
    storage.configure(None)
