"""Fine-tuning a model on one's own collection (`train --init`): the run starts from the init
model's weights (not ImageNet's, not a seeded random net) and trains against its prior; an
init of another architecture is refused before anything is written; a fine-tune resumes
exactly from its checkpoints, the init applied on a fresh start only. Real Ray and Prefect."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import models
from flows import cli
from flows.colorize import ConfigError
from flows.train import train_config, train_model
from pipeline.colorize.worker import model_id
from pipeline.training.config import TrainConfig
from pipeline.training.loop import init_net, load_state
from tests.test_archive import ray_local  # noqa: F401 - the shared local Ray fixture
from tests.test_training import MARKERS, TINY, _perturbed_copy, tiny_archive

pytestmark = pytest.mark.slow
STILL = {**TINY, "steps": 1, "checkpoint_every": 1, "lr": 1e-9}  # one step that moves nothing


def saved_model(path: Path, arch: str, seed: int) -> models.Colorizer:
    """A model at PATH unlike any start a run makes by itself: every weight and BatchNorm
    statistic drawn from SEED and moved off its usual value (no zero bias, no unit scale, no
    ImageNet encoder), and a prior of its own (not the training photos')."""
    torch.manual_seed(seed)
    model = models.build(arch, prior=torch.softmax(3 * torch.randn(261), 0))
    with torch.no_grad():
        for name, value in model.net.state_dict().items():
            if value.is_floating_point():
                noise = torch.rand_like(value) if "running_var" in name else torch.randn_like(value)
                value.add_(0.1 * noise)
    models.save(model, path)
    return model


def run_start(arch: str) -> dict[str, torch.Tensor]:
    """The net a run of ARCH starts from without --init (seed 0; ImageNet's encoder)."""
    torch.manual_seed(0)
    colorizer = models.build(arch)
    init_net(colorizer, TrainConfig(arch=arch))
    return colorizer.net.state_dict()


def assert_same(got: dict, want: dict, keys, **tolerance) -> None:
    for key in keys:
        torch.testing.assert_close(got[key], want[key], msg=key, **tolerance)


def assert_differ(got: dict, want: dict, keys) -> None:
    """Every tensor KEYS names differs (beyond assert_same's tolerance) between the two."""
    for key in keys:
        assert not torch.allclose(got[key], want[key], rtol=1e-4, atol=1e-5), key


def test_init_starts_from_the_models_weights_and_keeps_its_prior(tmp_path, ray_local):  # noqa: F811
    src = tiny_archive(tmp_path / "src")
    path = tmp_path / "mine.safetensors"
    init = saved_model(path, "small", seed=123)
    weights = init.net.state_dict()
    params = [name for name, _ in init.net.named_parameters()]
    assert_differ(weights, run_start("small"), params)  # the test can tell them apart
    out = tmp_path / "run"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in STILL.items()]
    with pytest.raises(SystemExit) as exit_code:
        cli.main(["train", str(src), str(out), "--arch", "small", "--init", str(path), *flags])
    assert exit_code.value.code == 0
    # one step at a rate of 1e-11 moves no weight: the net is the init model's (BatchNorm's
    # running statistics do follow the batch: parameters only)
    step1 = load_state(str(out / "checkpoints" / "step-0000001.pt"))
    assert_same(step1["net"], weights, params, rtol=1e-6, atol=1e-7)
    shipped = models.load(out / "model.safetensors")
    assert_same(shipped.net.state_dict(), weights, params, rtol=1e-6, atol=1e-7)
    # its prior is the init model's, not the training photos'; the card says so
    torch.testing.assert_close(shipped.prior, init.prior, rtol=0, atol=0)
    card = json.loads((out / "model.json").read_text())
    ident = model_id(str(path))
    assert ident.startswith("mine.safetensors@")
    assert card["training"]["init"] == {"model": str(path), "id": ident}
    assert card["training"]["prior_from"].startswith(f"the init model {ident}")
    hyper = card["training"]["hyperparameters"]
    assert (hyper["init"], hyper["init_id"]) == (str(path), ident)
    recipe = json.loads((out / "recipe.json").read_text())
    assert (recipe["init"], recipe["init_id"]) == (str(path), ident)


def test_a_lite_init_replaces_imagenet_too(tmp_path, ray_local):  # noqa: F811
    src = tiny_archive(tmp_path / "src")
    path = tmp_path / "lite.safetensors"
    init = saved_model(path, "lite0-plain", seed=7)
    weights = init.net.state_dict()
    params = [name for name, _ in init.net.named_parameters()]
    # the frozen encoder's BatchNorm keeps its statistics: the init's, not ImageNet's
    encoder = [k for k in weights if k.startswith("encoder.") and weights[k].is_floating_point()]
    assert_differ(weights, run_start("lite0-plain"), [*params, *encoder])
    out = tmp_path / "run"
    train_model(str(src), str(out), arch="lite0-plain", init=str(path), **STILL)
    step1 = load_state(str(out / "checkpoints" / "step-0000001.pt"))
    assert_same(step1["net"], weights, [*params, *encoder], rtol=1e-6, atol=1e-7)
    assert_same(step1["ema"], weights, [*params, *encoder], rtol=1e-6, atol=1e-7)


def test_an_init_of_another_architecture_is_refused_before_anything_is_written(
    tmp_path,
    ray_local,  # noqa: F811
    capsys,
):
    src = tiny_archive(tmp_path / "src")
    out = tmp_path / "run"
    small = tmp_path / "small.safetensors"
    saved_model(small, "small", seed=1)
    other_bins = tmp_path / "bins.safetensors"  # e.g. the converted ECCV16 release's 313
    models.save(models.build("small", centers=40 * torch.randn(313, 2)), other_bins)
    tiny = ["--crop", "64", "--batch-size", "4", "--steps", "1"]
    for flags, says in (
        (["--init", str(small)],  # --arch at its default, lite2-plain
         f"--init '{small}' is a small model and --arch is lite2-plain: a fine-tune keeps the "
         f"init model's architecture; pass --arch small (the init model's) or drop --init"),
        (["--init", "default", "--arch", "small"],  # the shipped model is resolved and read
         "--init 'default' is a lite2-plain-hints model and --arch is small"),
        (["--init", str(tmp_path / "missing.safetensors")], "no model to fine-tune there"),
        (["--init", str(other_bins), "--arch", "small"], "313 colour bins that are not the 261"),
    ):  # fmt: skip
        with pytest.raises(SystemExit) as exit_code:
            cli.main(["train", str(src), str(out), *tiny, *flags])
        assert exit_code.value.code == 2, flags
        assert says in capsys.readouterr().err, flags
        assert not out.exists(), flags
    # "default" is the shipped model, by the id colorize records for it
    config = train_config({"init": "default", "arch": "lite2-plain-hints", "hints": 0.5})
    assert config.init_id == model_id(str(models.DEFAULT_MODEL))
    assert config.init_id.startswith("default.safetensors@")


def test_a_fine_tune_resumes_exactly_from_its_checkpoint(tmp_path, ray_local):  # noqa: F811
    src = tiny_archive(tmp_path / "src")
    path = tmp_path / "mine.safetensors"
    init = saved_model(path, "small", seed=5)
    options = {**TINY, "arch": "small", "init": str(path), "steps": 4, "checkpoint_every": 2,
               "lr": 0.05}  # fmt: skip
    train_model(str(src), str(tmp_path / "a"), **options)
    a = load_state(str(tmp_path / "a" / "checkpoints" / "step-0000004.pt"))
    step2 = load_state(str(tmp_path / "a" / "checkpoints" / "step-0000002.pt"))
    params = [name for name, _ in init.net.named_parameters()]
    # the step-2 weights are not the init's: a resume that started from the init again
    # (over its checkpoint) would end elsewhere
    assert_differ(step2["net"], init.net.state_dict(), params)

    # a run interrupted after its step-2 checkpoint, resumed by the same command: the copy's
    # loss history carries markers only a run that loaded it passes on (training is
    # deterministic in (seed, step, rank): a run that ignored the checkpoint would reach the
    # same weights), and it ends with the uninterrupted run's weights and model
    b_dir = tmp_path / "b"
    kept = _perturbed_copy(tmp_path / "a", b_dir, step=2)
    train_model(str(src), str(b_dir), **options)
    assert (b_dir / "checkpoints" / "step-0000002.pt").read_bytes() == kept
    b = load_state(str(b_dir / "checkpoints" / "step-0000004.pt"))
    assert b["history"][:2] == MARKERS[:2]
    assert b["history"][2:] == pytest.approx(a["history"][2:], rel=1e-4)
    for part in ("net", "ema"):
        assert_same(b[part], a[part], a[part], rtol=1e-4, atol=1e-5)
    shipped = [models.load(d / "model.safetensors") for d in (tmp_path / "a", b_dir)]
    assert_same(shipped[1].state_dict(), shipped[0].state_dict(), shipped[0].state_dict(),
                rtol=1e-4, atol=1e-5)  # fmt: skip

    # the init is part of the recipe by its id: other weights under the same name are refused
    saved_model(path, "small", seed=6)
    with pytest.raises(ConfigError, match=r"init_id 'mine\.safetensors@[0-9a-f]{12}' -> "):
        train_model(str(src), str(b_dir), **options)
