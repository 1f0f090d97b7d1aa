"""Colour hints in the model and its training (issue 30): the planes a hint makes on the
network's output grid, their pooling to the decoder's scales, a hint-aware net that starts as
the automatic net it is initialised from, the simulated hints training sees, the recipe's
checks, and a real fine-tune that adds hints to an automatic model (real Ray and Prefect)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import models
from flows.train import train_model
from models.hints import AB_SCALE, Hint, hint_planes, propagate, simulated_planes
from pipeline.colorize.hints import HintsError, loads, rgb_to_ab
from pipeline.training.config import TrainConfig
from pipeline.training.loop import init_net, load_state
from tests.test_archive import ray_local  # noqa: F401 - the shared local Ray fixture
from tests.test_finetune import saved_model
from tests.test_training import TINY, tiny_archive


def test_a_hint_marks_its_own_cell_and_the_cells_within_its_radius() -> None:
    planes = hint_planes([Hint(0.5, 0.25, 40.0, -20.0)], 64, 32)  # x of the width, y of the height
    assert planes.shape == (3, 64, 32)
    hinted = torch.nonzero(planes[2]).tolist()
    assert hinted == [[16, 16]]  # y 0.25 of 64 rows, x 0.5 of 32 columns
    assert planes[0, 16, 16] == pytest.approx(40.0 / AB_SCALE)
    assert planes[1, 16, 16] == pytest.approx(-20.0 / AB_SCALE)
    wide = hint_planes([Hint(1.0, 1.0, 10.0, 10.0, r=0.1)], 64, 64)  # the corner: still inside
    assert wide[2, 63, 63] == 1
    cells = int(wide[2].sum())
    assert 25 <= cells <= 40  # a quarter of a disc of 6.4 cells' radius (about 32)
    assert wide[2, 50, 63] == 0 and wide[2, 58, 63] == 1


def test_a_hint_spreads_by_distance_and_stops_at_an_edge() -> None:
    """`propagate`: the hint's colour over the grid, confident near it on its own side of an
    edge of L and not across it; two hints share the cells between them by closeness."""
    lightness = torch.full((1, 1, 64, 64), -0.3)  # centred L: dark left half, light right
    lightness[..., 32:] = 0.3
    planes = hint_planes([Hint(0.4, 0.5, 40.0, 20.0)], 16, 16)[None]
    dense = propagate(planes, lightness)
    confidence = dense[0, 2]
    assert confidence[8, 6] == pytest.approx(1.0)  # its own cell
    assert confidence[8, 4] > 0.3  # near (two cells), same side
    assert confidence[8, 9] < 1e-3  # as near, across the edge
    assert confidence[8, 0] > confidence[8, 9]
    torch.testing.assert_close(dense[0, :2, 8, 4] * AB_SCALE, torch.tensor([40.0, 20.0]))
    two = hint_planes([Hint(0.05, 0.5, 40.0, 0.0), Hint(0.4, 0.5, -40.0, 0.0)], 16, 16)[None]
    field = propagate(two, lightness)[0, 0] * AB_SCALE
    assert field[8, 1] > 30 and field[8, 6] < -30  # each near its own
    assert not propagate(torch.zeros(1, 3, 16, 16), lightness).any()  # no hints: zeros


def test_a_hint_aware_net_starts_as_its_automatic_net_and_then_listens_to_hints() -> None:
    torch.manual_seed(0)
    automatic = models.build("lite0-plain").eval()
    hinted = models.build("lite0-plain-hints").eval()
    result = hinted.load_state_dict(automatic.state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert all(k.startswith("net.hint_") for k in result.missing_keys)
    lightness = torch.rand(2, 1, 64, 64) * 100
    planes = torch.stack([hint_planes([Hint(0.5, 0.5, 50.0, 50.0, r=0.2)], 16, 16)] * 2)
    with torch.no_grad():
        want = automatic.logits(lightness)
        torch.testing.assert_close(hinted.logits(lightness), want)
        torch.testing.assert_close(hinted.logits(lightness, planes), want)  # zero-started
        hinted.net.hint_gain.fill_(1.0)  # as if trained: the gain alone
        with_gain = hinted.logits(lightness, planes)
        for branch in hinted.net.hint_branches:
            torch.nn.init.normal_(branch[2].weight, std=0.1)  # and the branches
        moved = (hinted.logits(lightness, planes) - hinted.logits(lightness)).abs()
    assert moved.amax() > 1e-3  # the hints change the prediction
    # the gain puts a confident cell's mass near its hint's colour: at the hint's own cell
    probs = torch.softmax(with_gain[:, :, 8, 8], 1)
    expected_ab = probs @ hinted.centers
    plain_ab = torch.softmax(want[:, :, 8, 8], 1) @ hinted.centers
    target = torch.tensor([50.0, 50.0])
    assert ((expected_ab - target).norm(dim=1) < (plain_ab - target).norm(dim=1)).all()
    assert hinted.takes_hints and not automatic.takes_hints
    with pytest.raises(ValueError, match="takes no colour hints: use a hint-aware model"):
        automatic.logits(lightness, planes)


def test_simulated_hints_are_patches_of_the_true_colour_on_a_share_of_the_crops() -> None:
    ab = torch.zeros(200, 2, 16, 16)
    ab[:, 0], ab[:, 1] = 30.0, -45.0  # one colour: every patch's mean is it
    rng = np.random.default_rng(0)
    planes = simulated_planes(ab, rng, share=0.5, mean_points=4)
    with_hints = planes[:, 2].flatten(1).amax(1) > 0
    assert 70 <= int(with_hints.sum()) <= 130  # about half the crops
    mask = planes[:, 2] > 0
    assert torch.allclose(planes[:, 0][mask], torch.tensor(30.0 / AB_SCALE))
    assert torch.allclose(planes[:, 1][mask], torch.tensor(-45.0 / AB_SCALE))
    assert (planes[:, :2][~mask[:, None].expand(-1, 2, -1, -1)] == 0).all()
    none = simulated_planes(ab, np.random.default_rng(0), share=0.0)
    assert not none.any()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"arch": "lite2-plain", "hints": 0.5}, "--hints needs a hint-aware architecture: --arch "
         "lite2-plain-hints"),
        ({"arch": "small", "hints": 0.5}, "--hints needs a hint-aware lite\\* architecture"),
        ({"arch": "lite2-plain-hints"}, "in \\(0, 1\\) for a -hints architecture"),
        ({"arch": "lite2-plain-hints", "hints": 1.0}, "in \\(0, 1\\)"),
        ({"arch": "lite2-plain-hints", "hints": 0.5, "hint_points": 0}, "--hint-points"),
    ],
)  # fmt: skip
def test_the_recipe_refuses_hints_it_cannot_train(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainConfig(**options).validate()


def test_an_automatic_init_fills_everything_but_the_hint_branches() -> None:
    torch.manual_seed(3)
    automatic = models.build("lite0-plain")
    hinted = models.build("lite0-plain-hints")
    config = TrainConfig(arch="lite0-plain-hints", hints=0.5)
    init_net(hinted, config, automatic.net.state_dict())
    for name, value in automatic.net.state_dict().items():
        torch.testing.assert_close(hinted.net.state_dict()[name], value, msg=name)
    broken = {k: v for k, v in automatic.net.state_dict().items() if not k.startswith("up4.")}
    with pytest.raises(ValueError, match="do not fit lite0-plain-hints"):
        init_net(models.build("lite0-plain-hints"), config, broken)


def test_the_hints_file_names_the_id_and_point_of_each_problem() -> None:
    good = loads('{"a/b.tif": [{"x": 0.42, "y": 0.31, "rgb": "#8a2a1e"}, '
                 '{"x": 1, "y": 0, "rgb": "#2F5D2A", "r": 0.05}], "c.jpg": []}')  # fmt: skip
    assert [h.x for h in good["a/b.tif"]] == [0.42, 1.0] and good["c.jpg"] == []
    assert good["a/b.tif"][1].r == 0.05
    a, b = rgb_to_ab("#8a2a1e")
    assert (good["a/b.tif"][0].a, good["a/b.tif"][0].b) == (a, b)
    assert a > 30 and b > 20  # a brick red: red and yellow
    for text, message in [
        ("[1]", "expected an object"),
        ("{}", "names no id"),
        ("not json", "not JSON"),
        ('{"x.jpg": {"x": 0.1}}', "id 'x.jpg': expected a list of points"),
        ('{"x.jpg": [{"x": 1.5, "y": 0, "rgb": "#000000"}]}', "id 'x.jpg', point 0: x must"),
        ('{"x.jpg": [{"x": 0, "y": -0.1, "rgb": "#000000"}]}', "point 0: y must .* outside"),
        ('{"x.jpg": [{"x": 0, "y": 0, "rgb": "#00000"}]}', "rgb must be an sRGB colour"),
        ('{"x.jpg": [{"x": 0, "y": 0, "rgb": "#000000", "r": 0}]}', "r must be a share"),
        ('{"x.jpg": [{"x": 0, "y": 0, "rgb": "#000000", "z": 1}]}', "unknown keys \\['z'\\]"),
        ('{"x.jpg": [{"x": true, "y": 0, "rgb": "#000000"}]}', "x must be a number"),
    ]:
        with pytest.raises(HintsError, match=message):
            loads(text)


@pytest.mark.slow
def test_a_fine_tune_adds_hints_to_an_automatic_model(tmp_path, ray_local) -> None:  # noqa: F811
    src = tiny_archive(tmp_path / "src")
    path = tmp_path / "automatic.safetensors"
    init = saved_model(path, "lite0-plain", seed=5)
    out = tmp_path / "run"
    options = {**TINY, "steps": 2, "checkpoint_every": 2}
    train_model(str(src), str(out), arch="lite0-plain-hints", hints=0.9, init=str(path), **options)
    state = load_state(str(out / "checkpoints" / "step-0000002.pt"))["net"]
    branches = [k for k in state if k.startswith("hint_branches.") and k.endswith("2.weight")]
    assert len(branches) == 4
    assert any(state[k].abs().amax() > 0 for k in branches)  # the hint branches learned
    assert state["hint_gain"] != 0  # and the gain
    trained = models.load(out / "model.safetensors")
    assert trained.arch == "lite0-plain-hints" and trained.takes_hints
    torch.testing.assert_close(trained.prior, init.prior)  # the init's prior, as any fine-tune


def test_the_hint_branches_learn_without_decay_at_their_own_rate() -> None:
    """Adam's L2 decay would hold zero-started branches at zero (a hint's gradient is small:
    it touches few pixels); they learn at `hint_lr_scale` times the rate."""
    from pipeline.training.loop import make_optimizer, set_learning_rates

    net = models.build("lite0-plain-hints").net
    config = TrainConfig(arch="lite0-plain-hints", hints=0.5, weight_decay=1e-2)
    optimizer = make_optimizer(net, config)
    set_learning_rates(optimizer, config, step=100)
    groups = {g["name"]: g for g in optimizer.param_groups}
    hint_ids = {id(p) for p in [*net.hint_branches.parameters(), net.hint_gain]}
    assert {id(p) for p in groups["hints"]["params"]} == hint_ids
    assert not hint_ids & {id(p) for p in groups["decoder"]["params"]}
    assert groups["hints"]["weight_decay"] == 0 and groups["decoder"]["weight_decay"] == 1e-2
    assert groups["hints"]["lr"] == pytest.approx(config.hint_lr_scale * groups["decoder"]["lr"])


def test_no_hints_costs_one_branch_reading_per_size_and_weights() -> None:
    """Inference with no hints reads each branch's answer to 'no hints' from a cache (the same
    for every image); it equals the branch run on zeros, and follows the weights when they
    change (a fine-tune, a load)."""
    torch.manual_seed(4)
    model = models.build("lite0-plain-hints").eval()
    for branch in model.net.hint_branches:
        torch.nn.init.normal_(branch[2].weight, std=0.1)
        torch.nn.init.normal_(branch[2].bias, std=0.1)
    lightness = torch.rand(2, 1, 64, 64) * 100
    with torch.enable_grad():  # the uncached path: every branch run on zero planes
        want = model.logits(lightness).detach()
    with torch.inference_mode():
        torch.testing.assert_close(model.logits(lightness), want)
        assert len(model.net._nothing) == 4
        torch.testing.assert_close(model.logits(lightness), want)  # from the cache
    with torch.no_grad():
        model.net.hint_branches[3][2].bias.add_(1.0)
    with torch.enable_grad():
        changed = model.logits(lightness).detach()
    with torch.no_grad():
        torch.testing.assert_close(model.logits(lightness), changed)
    assert not torch.allclose(changed, want)


def test_away_from_its_hints_an_image_keeps_its_automatic_colours() -> None:
    """The shipped default, one saturated blue hint on skimage's coffee cup: the hint's cell
    takes its colour, and the output moves from the automatic one only as far as the hint
    reaches (`hints.reach`: by distance and likeness of L); a picture in the same batch
    without hints is untouched."""
    from skimage import data

    from models.hints import reach
    from pipeline.colorize.predict import working_batch
    from pipeline.imaging.images import decode_image
    from tests.archive_helpers import jpeg

    model = models.load(models.DEFAULT_MODEL).eval()
    size = model.working_size
    grid = size // 4
    scans = [
        decode_image(jpeg(image, size)).lightness for image in (data.coffee(), data.astronaut())
    ]
    lightness = working_batch(scans, size, model.device)  # as the flow gives the network
    blue = Hint(0.45, 0.3, -10.0, -60.0)
    planes = torch.stack([hint_planes([blue], grid, grid), hint_planes([], grid, grid)])
    with torch.inference_mode():
        automatic, _ = model.predict(lightness, 0.2)
        hinted = model.with_hints(model.predict(lightness, 0.2, planes)[0], planes, lightness)
        near = reach(planes, (lightness - model.l_center) / model.l_scale)[:, 0]
    torch.testing.assert_close(hinted[1], automatic[1])  # no hints: as it was
    cell = (int(0.3 * grid), int(0.45 * grid))
    assert (hinted[0, :, cell[0], cell[1]] - torch.tensor([-10.0, -60.0])).norm() < 3
    change = (hinted[0] - automatic[0]).norm(dim=0)
    # an ab moves at most by its reach times the widest move there is (ab spans about 220)
    assert (change <= 220 * near[0] + 0.5).all()
    far = near[0] < 0.02
    assert far.float().mean() > 0.03  # where the hint hardly reaches...
    assert change[far].amax() < 5  # ...the colours stay (the net alone moves them by ~55)
    assert change[near[0] > 0.5].median() > 10  # and near it the colours follow the hint


def test_the_decoding_pulls_a_hints_region_to_its_colour_and_stops_at_an_edge() -> None:
    """`honoured`: on flat L the hint's colour is taken well beyond its own cell (10 cells
    away, most of the way: the pull the folds chose), and not across a strong edge of L."""
    from models.hints import honoured

    lightness = torch.full((1, 1, 64, 64), -0.25)  # centred L: dark left, light right
    lightness[..., 40:] = 0.25
    planes = hint_planes([Hint(20 / 64, 0.5, 40.0, -40.0)], 64, 64)[None]
    pulled = honoured(torch.zeros(1, 2, 64, 64), planes, lightness)
    share = pulled[0, 0] / 40.0  # how much of the hint's a each cell took
    assert share[32, 20] == pytest.approx(1.0)  # the hint's own cell
    assert share[32, 30] > 0.6  # ten cells away on the same side
    assert share[32, 45].abs() < 0.05  # across the edge of 50 L


def test_two_hints_of_different_colours_each_keep_their_own_on_their_cells() -> None:
    """Two hints close together on the same gray: each one's cell shows its own colour, not
    a mix of the two (the pull's spread reaches both)."""
    from models.hints import honoured

    lightness = torch.zeros(1, 1, 64, 64)
    red, green = Hint(30 / 64, 0.5, 60.0, 40.0), Hint(36 / 64, 0.5, -50.0, 40.0)
    planes = hint_planes([red, green], 64, 64)[None]
    pulled = honoured(torch.zeros(1, 2, 64, 64), planes, lightness)[0]
    torch.testing.assert_close(pulled[:, 32, 30], torch.tensor([60.0, 40.0]))
    torch.testing.assert_close(pulled[:, 32, 36], torch.tensor([-50.0, 40.0]))
    assert -50.0 < pulled[0, 32, 33] < 60.0  # between them, a mix
