"""Training: preparation (reused, resumed), prior, streaming with a data position, train
step, resumable Ray Train runs (2 CPU workers), validation in the loop, evaluation, flows."""

from __future__ import annotations

import io
import itertools
import json
import math
import os
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
from flows.colorize import ConfigError
from flows.train import train_model
from models.bins import nearest_bin
from pipeline.archive import storage
from pipeline.imaging.metrics import image_metrics
from pipeline.training.config import TrainConfig
from pipeline.training.evaluate import gray_baseline
from pipeline.training.loop import (
    init_net,
    load_state,
    make_optimizer,
    prepare_settings,
    save_state,
    train_step,
)
from pipeline.training.prepared import PrepareSettings, ab_targets, prepare, prepare_shard, split_of
from pipeline.training.stream import Loader, Position, make_crop, samples
from tests.test_archive import ray_local  # noqa: F401 - the shared local Ray fixture

pytestmark = pytest.mark.slow
TINY = {"crop": 64, "batch_size": 4, "checkpoint_every": 3, "val_fraction": 0.25}
MARKERS = [1111.0, 2222.0, 3333.0, 4444.0]  # no loss of a real run: proof of a loaded history


def _perturbed_copy(
    run: Path, resumed: Path, step: int, change: Callable[[dict], None] | None = None
) -> bytes:
    """Put a modified copy of RUN's checkpoint at STEP (its history replaced by markers, then
    `change` applied) into RESUMED's checkpoints, as a crashed run would have left it."""
    name = f"step-{step:07d}.pt"
    state = load_state(str(run / "checkpoints" / name))
    assert len(state["history"]) == step and not set(state["history"]) & set(MARKERS)
    state["history"] = MARKERS[:step]
    if change is not None:
        change(state)
    save_state(str(resumed / "checkpoints" / name), state)
    return (resumed / "checkpoints" / name).read_bytes()


def _best_at(run: Path, step: int) -> dict:
    """RUN's best.pt as it stood once step STEP was done: the best validation up to then, its
    weights the moving average its checkpoint (one per validation) kept."""
    curve = load_state(str(run / "checkpoints" / f"step-{step:07d}.pt"))["validation"]
    point = max(curve, key=lambda p: p["auc_rebalanced"])
    at = load_state(str(run / "checkpoints" / f"step-{int(point['step']):07d}.pt"))
    metrics = {k: v for k, v in point.items() if k != "step"}
    return {"net": at["ema"], "step": point["step"], "score": point["auc_rebalanced"],
            "metrics": metrics}  # fmt: skip


def _jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=92)
    return buf.getvalue()


def tiny_archive(
    root: Path, n: int = 16, shards: int = 1, id_column: str = "id", image_column: str = "image"
) -> Path:
    """n real photo crops (96 px) from scikit-image's bundled photos, in `shards` Parquet
    shards (ids photo-000 ...)."""
    rng = np.random.default_rng(0)
    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    ids, blobs = [], []
    for i in range(n):
        p = photos[i % len(photos)]
        y, x = rng.integers(0, p.shape[0] - 96), rng.integers(0, p.shape[1] - 96)
        ids.append(f"photo-{i:03d}")
        blobs.append(_jpeg(p[y : y + 96, x : x + 96]))
    root.mkdir(parents=True, exist_ok=True)
    for k in range(shards):
        part = slice(k * n // shards, (k + 1) * n // shards)
        table = pa.table({id_column: ids[part], image_column: blobs[part]})
        pq.write_table(table, root / f"part-{k:05d}.parquet")
    return root


def photo_folder(root: Path, sizes: dict[str, int], seed: int = 0) -> Path:
    """A folder of JPEG photo crops (96 px) in one subfolder per source: {folder: photos}."""
    rng = np.random.default_rng(seed)
    photos = [data.astronaut(), data.coffee(), data.chelsea()]
    for folder, n in sizes.items():
        (root / folder).mkdir(parents=True)
        for i in range(n):
            p = photos[i % len(photos)]
            y, x = rng.integers(0, p.shape[0] - 96), rng.integers(0, p.shape[1] - 96)
            (root / folder / f"{i}.jpg").write_bytes(_jpeg(p[y : y + 96, x : x + 96]))
    return root


def test_split_is_deterministic_and_near_the_fraction():
    ids = [f"img-{i}" for i in range(2000)]
    val = [i for i in ids if split_of(i, 0.1) == "val"]
    assert 150 < len(val) < 250
    # the same on every run and machine: fixed folds for fixed ids (a salted hash() would
    # agree with itself within one process, never with these)
    folds = [next(f for f in range(5) if split_of(f"img-{i}", 0.2, f) == "val") for i in range(12)]
    assert folds == [0, 1, 1, 2, 3, 2, 4, 0, 1, 1, 3, 2]
    assert [i for i in ids[:12] if split_of(i, 0.1) == "val"] == ["img-7"]


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
    png.append(b"\x89PNG broken")  # unreadable: skipped and counted
    pq.write_table(pa.table({"id": list("abcdef"), "image": png}), root / "p.parquet")
    config = TrainConfig(crop=64, prepared=72, val_fraction=0.0)
    uris = [str(root / "p.parquet")]
    prepared = prepare(str(root), uris, str(tmp_path / "prep"), prepare_settings(config))
    counts = prepared.counts
    assert prepared.images == {"train": 4, "val": 0}
    assert prepared.skipped == {"gray": 1, "unreadable": 1}
    centers = models.gamut_bin_centers()
    _, ab_red = ab_targets(torch.from_numpy(red[None, :8, :8]))
    _, ab_blue = ab_targets(torch.from_numpy(blue[None, :8, :8]))
    i_red, i_blue = nearest_bin(ab_red, centers)[0, 0, 0], nearest_bin(ab_blue, centers)[0, 0, 0]
    per_image = (72 // 4) ** 2
    assert counts[i_red] == 3 * per_image and counts[i_blue] == per_image
    assert counts.sum() == 4 * per_image
    from pipeline.training.loop import prior_of

    prior = prior_of(counts, config)
    assert prior[i_red] > prior[i_blue] > 0 and prior.sum().item() == pytest.approx(1.0)


def _tree(root: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(root.rglob("*")) if p.is_file()}  # fmt: skip


def test_preparation_is_kept_reused_without_decoding_and_resumes(tmp_path, ray_local):  # noqa: F811
    src = tiny_archive(tmp_path / "src", n=24, shards=3)
    uris = sorted(str(p) for p in src.glob("*.parquet"))
    settings = PrepareSettings(prepared=72, val_fraction=0.25, fold=0)
    base = tmp_path / "prepared"
    first = prepare(str(src), uris, str(base), settings)
    assert first.prepared_now == 3 and first.shards == 3
    assert first.images["train"] + first.images["val"] == 24
    root = Path(first.root)
    assert root.parent == base and len(root.name) == 16  # a folder per settings digest
    before = _tree(root)

    # the same corpus and settings: nothing is read from the source, nothing is written.
    # Proof: the sources are overwritten with garbage of the same size and modification
    # time (their identity), so any decode would fail or change the prepared data.
    saved = {u: (Path(u).read_bytes(), Path(u).stat()) for u in uris}
    for uri, (blob, st) in saved.items():
        Path(uri).write_bytes(b"\0" * len(blob))
        os.utime(uri, ns=(st.st_atime_ns, st.st_mtime_ns))
    again = prepare(str(src), uris, str(base), settings)
    assert again.prepared_now == 0 and again.root == first.root
    torch.testing.assert_close(again.counts, first.counts)
    assert _tree(root) == before
    for uri, (blob, st) in saved.items():
        Path(uri).write_bytes(blob)
        os.utime(uri, ns=(st.st_atime_ns, st.st_mtime_ns))

    # an interrupted preparation: shard 1's marker never written, a temp file left behind
    (root / "_done" / "shard-00001.json").unlink()
    (root / "_tmp").mkdir(exist_ok=True)
    (root / "_tmp" / ".shard-00001.parquet.dead.tmp").write_bytes(b"partial")
    resumed = prepare(str(src), uris, str(base), settings)
    assert resumed.prepared_now == 1
    torch.testing.assert_close(resumed.counts, first.counts)
    after = _tree(root)
    for name in ("_done/shard-00000.json", "_done/shard-00002.json", "train/shard-00000.parquet"):
        assert after[name] == before[name], name  # committed shards are not prepared again
    assert after["_done/shard-00001.json"][1] == before["_done/shard-00001.json"][1]

    # other preparation settings (here the split) prepare afresh, beside the first
    other = prepare(str(src), uris, str(base), PrepareSettings(72, 0.25, fold=1))
    assert other.prepared_now == 3 and other.root != first.root
    assert sorted(p.name for p in base.iterdir()) == sorted([root.name, Path(other.root).name])


def _local_prepared(tmp_path: Path, n: int = 40, rows: int = 4) -> list:
    src = tiny_archive(tmp_path / "src", n=n)
    settings = PrepareSettings(prepared=72, val_fraction=0.0, fold=0, rows_per_group=rows)
    root = str(tmp_path / "prep")
    prepare_shard(str(src / "part-00000.parquet"), root, "shard-00000", settings)
    from pipeline.training.prepared import load

    return load(root, ["shard-00000"], "test").blocks["train"]


def test_the_stream_covers_each_epoch_and_resumes_at_its_position(tmp_path):
    blocks = _local_prepared(tmp_path)
    assert len(blocks) == 10 and all(b.rows == 4 for b in blocks)
    # an epoch: every block once, split among the ranks
    per_rank = [list(itertools.islice(samples(blocks, 0, r, 2, 2, Position()), 20)) for r in (0, 1)]
    images = [s.image for r in per_rank for s in r]
    assert len(set(images)) == 40
    assert per_rank[0][-1].after == Position(0, 3, 0)  # 5 blocks in windows of 2, 2, 1
    # the next epoch is another order
    nxt = list(itertools.islice(samples(blocks, 0, 0, 2, 2, Position(1, 0, 0)), 20))
    assert [s.image for s in nxt] != [s.image for s in per_rank[0]]
    # restarted at any position, the stream goes on exactly as the uninterrupted one
    run = list(itertools.islice(samples(blocks, 0, 0, 2, 2, Position()), 45))
    for k in (0, 3, 7, 19, 30):
        rest = list(itertools.islice(samples(blocks, 0, 0, 2, 2, run[k].after), 45 - k - 1))
        assert [(s.image, s.key) for s in rest] == [(s.image, s.key) for s in run[k + 1 :]]


def test_the_loader_resumes_exactly_and_a_wrong_position_differs(tmp_path):
    blocks = _local_prepared(tmp_path)
    config = TrainConfig(crop=64, prepared=72, batch_size=6, steps=8, shuffle_blocks=2,
                         degrade=0.5, scale_min=0.5, loader_threads=2)  # fmt: skip
    full = Loader(blocks, config, rank=0, world=1, start_step=0, position=Position())
    batches = [full.next() for _ in range(8)]
    with pytest.raises(StopIteration):
        full.next()
    full.close()
    resumed = Loader(blocks, config, 0, 1, start_step=3, position=batches[2].position)
    for want in batches[3:]:
        got = resumed.next()
        assert got.step == want.step and got.position == want.position
        torch.testing.assert_close(got.lightness, want.lightness, rtol=0, atol=0)
        torch.testing.assert_close(got.ab, want.ab, rtol=0, atol=0)
    resumed.close()
    wrong = Loader(blocks, config, 0, 1, start_step=3, position=batches[1].position)
    assert not torch.equal(wrong.next().lightness, batches[3].lightness)
    wrong.close()
    one_thread = Loader(blocks, TrainConfig(**{**config.__dict__, "loader_threads": 1}), 0, 1,
                        start_step=0, position=Position())  # fmt: skip
    torch.testing.assert_close(one_thread.next().ab, batches[0].ab, rtol=0, atol=0)
    one_thread.close()


def test_train_step_decreases_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    config = TrainConfig(crop=64, prepared=72, batch_size=4, lr=1e-3)
    colorizer = models.build("small")
    photos = [data.astronaut()[i * 72 : i * 72 + 72, :72] for i in range(4)]
    crops = [make_crop(p, config, np.random.default_rng([0, i])) for i, p in enumerate(photos)]
    assert crops[0].shape == (64, 64, 3)
    np.testing.assert_array_equal(
        crops[1], make_crop(photos[1], config, np.random.default_rng([0, 1]))
    )
    lightness, ab = ab_targets(torch.from_numpy(np.stack(crops)))
    optimizer = make_optimizer(colorizer.net, config)
    weights = torch.ones(colorizer.num_bins)
    # on a CPU the step computes the paper's loss in fp32 exactly as before the GPU path
    # (autocast, channels-last, non-blocking copies apply on CUDA only)
    from models.targets import rebalanced_cross_entropy

    torch.manual_seed(1)  # the same dropout draws for both
    with torch.no_grad():
        x = (lightness - colorizer.l_center) / colorizer.l_scale
        want = rebalanced_cross_entropy(colorizer.net(x), ab, colorizer.centers, weights)
    torch.manual_seed(1)
    losses = [
        train_step(colorizer.net, colorizer, optimizer, lightness, ab, weights, config)
        for _ in range(25)
    ]
    assert losses[0] == float(want)
    assert losses[-1] < 0.8 * losses[0]


def test_perfect_and_gray_predictors_score_as_expected(photos):
    rgb = photos["coffee"] / 255.0
    from pipeline.imaging.color import rgb_to_lab

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
    shared = str(tmp_path / "prepared")  # --prepared-data: both runs use it
    options = {**TINY, "steps": 6, "workers": 2, "val_every": 2, "checkpoint_every": 2,
               "prepared_data": shared}  # fmt: skip
    full = train_model(str(src), str(tmp_path / "a"), **options)
    assert full["prepared"]["prepared_now"] == 1
    a_dir = tmp_path / "a"
    assert (a_dir / "model.safetensors").is_file() and (a_dir / "loss.png").is_file()
    assert sorted(p.name for p in (a_dir / "checkpoints").iterdir()) == [
        "best.pt", "step-0000002.pt", "step-0000004.pt", "step-0000006.pt"
    ]  # fmt: skip
    card = models.read_card(a_dir / "model.safetensors")
    assert card["training"]["steps"] == 6 and card["training"]["images"] > 0
    assert set(card["metrics"]["metrics"]["auc"]) == {"model", "gray"}
    assert full["metrics"] == card["metrics"]["metrics"]
    # best.pt was chosen on the validation photos the card's evaluation scores: it says so
    assert card["metrics"]["selected_on_evaluated_photos"] is True
    assert "flatter" in card["metrics"]["selection"]
    assert "**Selection:**" in (a_dir / "evaluation" / "evaluation.md").read_text()

    # validation at steps 2, 4, 6; the best one is the checkpoint kept and the model shipped
    a = load_state(str(a_dir / "checkpoints/step-0000006.pt"))
    curve = a["validation"]
    assert [p["step"] for p in curve] == [2, 4, 6] and full["validation"] == curve
    assert {"auc", "auc_rebalanced", "psnr", "ssim"} <= set(curve[0])
    best = load_state(str(a_dir / "checkpoints/best.pt"))
    want = max(curve, key=lambda p: p["auc_rebalanced"])
    assert best["step"] == want["step"] == a["best"]["step"] == card["training"]["best_step"]
    shipped = models.load(a_dir / "model.safetensors").net.state_dict()
    for key, value in best["net"].items():
        torch.testing.assert_close(shipped[key], value, msg=key)
    assert len(a["data"]) == 2  # each rank's data position
    assert a["prepared"] == {"digest": card["training"]["prepared_data"], "blocks": 1}

    # a run that "crashed" after its step-4 checkpoint (best.pt as it stood then), resumed by
    # re-running the same command; training is deterministic in (seed, step, rank), so a run
    # that ignored the checkpoint would reach the same state: the copy's loss history carries
    # markers, which only a run that loaded it can pass on, and it must end as the
    # uninterrupted run's, shipping the same model
    b_dir = tmp_path / "b"
    step4 = load_state(str(a_dir / "checkpoints/step-0000004.pt"))
    assert step4["step"] == 4 and len(step4["data"]) == 2
    assert [p["step"] for p in step4["validation"]] == [2, 4]
    step4_bytes = _perturbed_copy(a_dir, b_dir, step=4)
    save_state(str(b_dir / "checkpoints" / "best.pt"), _best_at(a_dir, 4))
    again = train_model(str(src), str(b_dir), **options)
    assert (b_dir / "checkpoints" / "step-0000004.pt").read_bytes() == step4_bytes  # kept
    assert again["prepared"] == {**full["prepared"], "prepared_now": 0}  # nothing prepared again
    b = load_state(str(b_dir / "checkpoints/step-0000006.pt"))
    assert b["history"][:4] == MARKERS  # carried over: steps 1-4 not recomputed
    assert a["history"][4:] == pytest.approx(b["history"][4:], rel=1e-4)
    assert b["data"] == a["data"] and b["best"]["step"] == a["best"]["step"]
    for p, q in zip(a["validation"], b["validation"], strict=True):
        assert p == pytest.approx(q, rel=1e-4)
    for key in a["net"]:
        torch.testing.assert_close(a["net"][key], b["net"][key], rtol=1e-4, atol=1e-5)
    resumed = models.load(b_dir / "model.safetensors").net.state_dict()
    for key, value in shipped.items():
        torch.testing.assert_close(resumed[key], value, rtol=1e-4, atol=1e-5, msg=key)
    assert models.read_card(b_dir / "model.safetensors")["training"]["best_step"] == want["step"]

    # the same checkpoint on other prepared data (the source changed since): its positions
    # index blocks that are not these, so it is refused before any step
    c_dir = tmp_path / "c"
    _perturbed_copy(a_dir, c_dir, step=4)
    other = tiny_archive(tmp_path / "other", n=20)
    with pytest.raises(ConfigError, match="was trained on other prepared data"):
        train_model(str(other), str(c_dir), **options)
    assert sorted(p.name for p in (c_dir / "checkpoints").iterdir()) == ["step-0000004.pt"]

    # `archive-colorize evaluate` on the validation split reproduces the card's figures
    with pytest.raises(SystemExit) as exit_code:
        cli.main(["evaluate", str(src), "--model", str(a_dir / "model.safetensors"),
                  "--out", str(tmp_path / "eval"), "--val-fraction", "0.25"])  # fmt: skip
    assert exit_code.value.code == 0
    again_eval = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert again_eval["metrics"] == card["metrics"]["metrics"]
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

    step3 = _perturbed_copy(tmp_path / "a", b_dir, step=3, change=perturb)
    train_model(str(src), str(b_dir), **options)
    assert (b_dir / "checkpoints" / "step-0000003.pt").read_bytes() == step3
    a, b = (load_state(str(d / "checkpoints/step-0000006.pt")) for d in (tmp_path / "a", b_dir))
    assert b["history"][:3] == MARKERS[:3]
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
        prepared_data=f"s3://{bucket}/prepared", val_every=1, patience=1,
        s3_endpoint_url=s3_server, **TINY,
    )  # fmt: skip
    assert result["model"] == f"s3://{bucket}/runs/r1/model.safetensors"
    root = result["prepared"]["root"]
    assert root.startswith(f"s3://{bucket}/prepared/") and result["prepared"]["prepared_now"] == 1
    for key in ("settings.json", "_done/shard-00000.json", "train/shard-00000.parquet",
                "val/shard-00000.parquet"):  # fmt: skip
        assert storage.exists(f"{root}/{key}"), key
    # validation every step, stopped after one without gain (or all 3 steps improving)
    scores = [p["auc_rebalanced"] for p in result["validation"]]
    last = len(scores)
    assert [p["step"] for p in result["validation"]] == list(range(1, last + 1))
    card = json.loads(storage.read_bytes(f"s3://{bucket}/runs/r1/model.json"))
    for i in range(1, last - 1):
        assert scores[i] > max(scores[:i])  # no stop before the last validation
    missed = last > 1 and scores[-1] <= max(scores[:-1])
    assert ("stopped_early_at" in card["training"]) == missed
    assert last == 3 or missed
    assert card["training"]["best_step"] == int(np.argmax(scores)) + 1
    for key in ("model.safetensors", "model.json", "loss.png", f"checkpoints/step-{last:07d}.pt",
                "checkpoints/best.pt", "evaluation/evaluation.json"):  # fmt: skip
        assert storage.exists(f"s3://{bucket}/runs/r1/{key}"), key
    assert card["training"]["source"] == f"s3://{bucket}/photos"
    storage.configure(None)


def test_dropout_and_weight_decay_options_reach_the_net_and_the_optimizer():
    config = TrainConfig(arch="lite0-plain", dropout=0.3, weight_decay=0.05)
    colorizer = models.build(config.arch)
    init_net(colorizer, config)
    rates = [m.p for m in colorizer.net.modules() if isinstance(m, torch.nn.Dropout2d)]
    assert rates == [0.3]
    optimizer = make_optimizer(colorizer.net, config)
    assert {group["weight_decay"] for group in optimizer.param_groups} == {0.05}
    for bad, fix in (({"dropout": 1.0}, "--dropout must be in"), ({"weight_decay": -1}, ">= 0")):
        with pytest.raises(ValueError, match=fix):
            TrainConfig(**bad).validate()  # type: ignore[arg-type]


def test_a_run_folder_holds_one_recipe(tmp_path):
    from flows.colorize import ConfigError
    from flows.train import RECIPE, claim_run

    out = tmp_path / "run"
    first = TrainConfig(arch="small", steps=6, degrade=0.5)
    claim_run(str(out), first)
    assert json.loads((out / RECIPE).read_text())["degrade"] == 0.5
    # how a run goes may change when it resumes; what it trains may not
    claim_run(str(out), TrainConfig(arch="small", steps=6, degrade=0.5, checkpoint_every=7))
    with pytest.raises(ConfigError, match=r"\(degrade 0\.5 -> 0\.0, steps 6 -> 9\): re-run with"):
        claim_run(str(out), TrainConfig(arch="small", steps=9, degrade=0.0))


# the hyperparameters a card recorded before --dropout existed (the code of 56e4aa5^): its
# lite0 net trained with the fixed Dropout2d(0.1) of the time, and weight decay 1e-3
BEFORE_DROPOUT = {
    "arch": "lite0", "crop": 176, "prepared": 256, "scale_min": 0.3, "batch_size": 16,
    "steps": 300, "lr": 0.001, "lr_schedule": "cosine", "warmup_steps": 50,
    "weight_decay": 0.001, "betas": [0.9, 0.99], "soft_k": 5, "soft_sigma": 5.0,
    "prior_sigma": 5.0, "rebalance_lambda": 0.5, "trainable_stages": 0, "unfreeze_at": 0,
    "encoder_lr_scale": 0.1, "ema_decay": 0.999, "degrade": 0.6, "stamps": "", "paste": 0.0,
    "val_fraction": 0.1, "fold": 0, "seed": 0, "checkpoint_every": 200, "log_every": 10,
    "val_every": 0, "val_max_photos": 64, "patience": 0, "shuffle_blocks": 8,
    "loader_threads": 1, "workers": 1, "threads_per_worker": 1, "image_column": "image",
    "id_column": "id", "extra": {},
}  # fmt: skip


def _older_run(root: Path, hyperparameters: dict) -> Path:
    """A run folder from before recipe.json: its card's hyperparameters stand for it."""
    root.mkdir()
    card = {"training": {"hyperparameters": hyperparameters}}
    (root / "model.json").write_text(json.dumps(card))
    return root


def test_a_setting_an_older_record_lacks_counts_at_its_value_of_the_time(tmp_path):
    from flows.colorize import ConfigError
    from flows.train import RECIPE, claim_run

    older = _older_run(tmp_path / "older", BEFORE_DROPOUT)
    same = {"arch": "lite0", "steps": 300, "weight_decay": 1e-3}
    # today's default dropout (0.3) is not what that run trained with (0.1): refused
    with pytest.raises(ConfigError, match=r"\(dropout 0\.1 -> 0\.3\)"):
        claim_run(str(older), TrainConfig(**same))
    assert not (older / RECIPE).exists()
    with pytest.raises(ConfigError, match="arch 'lite0' -> 'small'"):
        claim_run(str(older), TrainConfig(**{**same, "arch": "small"}))
    claim_run(str(older), TrainConfig(**same, dropout=0.1))  # a tuple equals its list, too
    assert (older / RECIPE).exists()

    # a setting whose value before it existed is not known is not guessed: refused
    unknown = _older_run(tmp_path / "unknown", {k: v for k, v in BEFORE_DROPOUT.items()
                                                 if k != "shuffle_blocks"})  # fmt: skip
    with pytest.raises(ConfigError, match=r"shuffle_blocks '<not recorded>' -> 8"):
        claim_run(str(unknown), TrainConfig(**same, dropout=0.1))

    # small/eccv16 never applied a dropout: a record that named one trained without it
    small = {**BEFORE_DROPOUT, "arch": "small", "weight_decay": 0.01, "dropout": 0.3}
    claim_run(str(_older_run(tmp_path / "small", small)), TrainConfig(arch="small", steps=300))


def test_dropout_is_the_architectures_and_small_nets_refuse_one():
    assert TrainConfig().dropout == 0.3 and TrainConfig(arch="lite0").dropout == 0.3
    assert TrainConfig(arch="small").dropout == 0.0 == TrainConfig(arch="eccv16").dropout
    TrainConfig(arch="small").validate()
    TrainConfig(arch="lite2-slim", dropout=0.0).validate()
    with pytest.raises(ValueError, match=r"--dropout applies to the lite\* architectures only"):
        TrainConfig(arch="small", dropout=0.3).validate()
    # what a lite net trains with reaches its layer; the small net has none to set
    config = TrainConfig(arch="lite0-plain")
    colorizer = models.build(config.arch)
    init_net(colorizer, config)
    assert [m.p for m in colorizer.net.modules() if isinstance(m, torch.nn.Dropout2d)] == [0.3]
    assert not any(isinstance(m, torch.nn.Dropout2d) for m in models.build("small").net.modules())


def test_a_run_refused_for_a_bad_option_writes_nothing_and_the_corrected_run_trains(
    tmp_path,
    ray_local,  # noqa: F811
    capsys,
):
    src = photo_folder(tmp_path / "photos", {"library": 4, "museum": 6})
    (src / "scans").mkdir()  # a source of gray scans: no colour photo to validate on
    Image.fromarray(np.full((96, 96), 90, np.uint8)).save(src / "scans" / "0.png")
    out = tmp_path / "run"
    argv = ["train", str(src), str(out), "--arch", "small", "--steps", "2", "--crop", "64",
            "--batch-size", "4", "--checkpoint-every", "2", "--holdout", "museum"]  # fmt: skip
    for bad, says in (
        (["--image-column", "jpeg"], "no column 'jpeg' (columns: id, image"),
        (["--holdout", "musuem"], "matches no top folder of the ids (the folders: 'library', "
                                  "'museum', 'scans')"),  # a typo would hold out nothing
        (["--dropout", "0.3"], "--dropout applies to the lite* architectures only"),
    ):  # fmt: skip
        with pytest.raises(SystemExit) as exit_code:
            cli.main([*argv, *bad])
        assert exit_code.value.code == 2
        assert says in capsys.readouterr().err
        assert not out.exists()  # no recipe claimed, nothing packed
    # a fault only the prepared data shows: refused before any recipe is claimed either
    with pytest.raises(SystemExit) as exit_code:
        cli.main([*argv, "--holdout", "scans", "--val-every", "1"])
    assert exit_code.value.code == 2
    assert "--val-every: no colour photos in the validation split" in capsys.readouterr().err
    assert not (out / "recipe.json").exists()
    with pytest.raises(SystemExit) as exit_code:
        cli.main(argv)  # the corrected run is not refused by the failed ones
    assert exit_code.value.code == 0
    card = json.loads((out / "model.json").read_text())
    hyper = card["training"]["hyperparameters"]
    assert (hyper["holdout"], hyper["image_column"], hyper["dropout"]) == ("museum", "image", 0.0)
    assert card["training"]["images"] == 4 and card["metrics"]["images"] == 6
    assert card["metrics"]["selected_on_evaluated_photos"] is False  # no checkpoint was chosen
