import math
from pathlib import Path

import pytest
import torch

import models
from models import annealed_mean, build, gamut_bin_centers
from models.bins import nearest_bin
from models.convert import from_release_state_dict
from models.lab import rgb_to_lab
from models.nets import ECCV16Net
from models.targets import (
    bin_histogram,
    colourful_images,
    rebalance_weights,
    rebalanced_cross_entropy,
    smoothed_prior,
    soft_encode,
)


def _conv(c_in: int, c_out: int, k: int = 3) -> int:
    return c_in * c_out * k * k + c_out


def test_eccv16_parameter_count_and_output_shape():
    # Counted by hand from the paper's table / the release prototxt, with the release's Q = 313:
    # convs with bias, BN affine (2 per channel) after blocks 1-7, a 4x4 transposed conv in 8.
    bn = 2
    expected = (
        _conv(1, 64)
        + _conv(64, 64)
        + bn * 64
        + _conv(64, 128)
        + _conv(128, 128)
        + bn * 128
        + _conv(128, 256)
        + 2 * _conv(256, 256)
        + bn * 256
        + _conv(256, 512)
        + 2 * _conv(512, 512)
        + bn * 512
        + 3 * (3 * _conv(512, 512) + bn * 512)
        + (512 * 256 * 16 + 256)
        + 2 * _conv(256, 256)
        + _conv(256, 313, 1)
    )
    assert sum(p.numel() for p in ECCV16Net(313).parameters()) == expected == 32_235_385
    model = build("eccv16")
    out = model.eval()(torch.rand(2, 1, 256, 256) * 100)
    assert out.shape == (2, model.num_bins, 64, 64)
    torch.testing.assert_close(out.sum(dim=1), torch.ones(2, 64, 64))


def test_small_net_size_and_shape():
    model = build("small")
    n_params = sum(p.numel() for p in model.net.parameters())
    assert 1_000_000 < n_params < 4_000_000
    assert model(torch.rand(1, 1, 128, 192) * 100).shape == (1, model.num_bins, 32, 48)


def test_no_batchnorm_in_block_8():
    net = build("eccv16").net
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.model8)
    for block in (
        net.model1,
        net.model2,
        net.model3,
        net.model4,
        net.model5,
        net.model6,
        net.model7,
    ):
        assert isinstance(block[-1], torch.nn.BatchNorm2d)


def test_gamut_bins_are_deterministic_and_cover_srgb():
    centers = gamut_bin_centers()
    assert centers.shape == (261, 2)  # documented in docs/method.md
    assert torch.equal(centers, gamut_bin_centers())
    assert torch.all(centers % 10 == 0)
    # every sRGB primary/secondary lands within half a cell (L-inf) of some centre
    prim = torch.tensor(
        [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 1, 1], [1, 0, 1], [0.5, 0.5, 0.5]]
    )
    ab = rgb_to_lab(prim.T[:, :, None].double())[1:, :, 0].T.float()
    dist = (ab[:, None, :] - centers[None]).abs().amax(dim=2).amin(dim=1)
    assert torch.all(dist <= 5.0 + 1e-4)
    assert (centers == 0).all(dim=1).any()  # gray


def test_soft_encode_sums_to_one_and_peaks_at_nearest():
    centers = gamut_bin_centers()
    ab = torch.tensor([[[[3.0]], [[-12.0]]]])  # (1, 2, 1, 1)
    target = soft_encode(ab, centers, k=5, sigma=5.0)
    assert target.shape == (1, centers.shape[0], 1, 1)
    assert math.isclose(target.sum().item(), 1.0, rel_tol=1e-5)
    assert (target > 0).sum() == 5
    nearest = nearest_bin(ab, centers).item()
    assert target[0, :, 0, 0].argmax().item() == nearest
    assert centers[nearest].tolist() == [0.0, -10.0]
    # Gaussian ratio between nearest (0,-10) and (0,-20): d2 = 9+4=13 vs 9+64=73
    i20 = ((centers - torch.tensor([0.0, -20.0])).abs().sum(1) == 0).nonzero().item()
    ratio = target[0, nearest, 0, 0] / target[0, i20, 0, 0]
    assert math.isclose(ratio.item(), math.exp((73 - 13) / 50), rel_tol=1e-4)
    assert (soft_encode(ab, centers, k=10) > 0).sum() == 10


def test_prior_and_rebalancing_weights_from_a_known_set():
    centers = torch.tensor([[0.0, 0.0], [100.0, 0.0], [0.0, 100.0], [-100.0, 0.0]])
    # 6 pixels in bin 0, 2 in bin 1, 0 in bin 2, 0 in bin 3 (far apart: smoothing keeps them)
    ab = torch.tensor(
        [[0, 0], [1, 1], [0, 2], [2, 0], [-1, 0], [0, -1], [99, 0], [101, 3]], dtype=torch.float32
    )
    counts = bin_histogram(ab.T[None, :, :, None], centers)
    assert counts.tolist() == [6, 2, 0, 0]
    prior = smoothed_prior(counts, centers, sigma=5.0)
    torch.testing.assert_close(prior, torch.tensor([0.75, 0.25, 0.0, 0.0]), atol=1e-6, rtol=0)
    w = rebalance_weights(prior, lam=0.5)
    expected = 1.0 / (0.5 * torch.tensor([0.75, 0.25, 0.0, 0.0]) + 0.5 / 4)
    expected = expected / (torch.tensor([0.75, 0.25, 0.0, 0.0]) * expected).sum()
    torch.testing.assert_close(w, expected)
    assert math.isclose((prior * w).sum().item(), 1.0, rel_tol=1e-5)
    # lambda = 1 gives uniform weights of 1
    torch.testing.assert_close(rebalance_weights(prior, lam=1.0), torch.ones(4))


def test_smoothing_spreads_mass_between_neighbouring_bins():
    centers = torch.tensor([[0.0, 0.0], [10.0, 0.0], [20.0, 0.0]])
    prior = smoothed_prior(torch.tensor([0.0, 1.0, 0.0]), centers, sigma=5.0)
    assert prior[1] > prior[0] > 0 and math.isclose(prior[0].item(), prior[2].item(), rel_tol=1e-6)
    assert math.isclose(prior.sum().item(), 1.0, rel_tol=1e-6)


def test_loss_weights_and_gray_images():
    centers = gamut_bin_centers()
    q = centers.shape[0]
    logits = torch.randn(2, q, 4, 4)
    ab = torch.zeros(2, 2, 4, 4)
    ab[0, 0] = 40.0  # image 0 is colourful, image 1 is gray
    assert colourful_images(ab).tolist() == [True, False]
    w = torch.ones(q)
    loss = rebalanced_cross_entropy(logits, ab, centers, w)
    target = soft_encode(ab[:1], centers)
    manual = -(target * torch.log_softmax(logits[:1], 1)).sum(1).sum() / (2 * 16)
    torch.testing.assert_close(loss, manual)
    # the weight is taken at the nearest bin: doubling only that bin's weight doubles the loss
    w2 = w.clone()
    w2[nearest_bin(ab[:1], centers)[0, 0, 0]] = 2.0
    torch.testing.assert_close(rebalanced_cross_entropy(logits, ab, centers, w2), 2 * manual)


def test_annealed_mean_limits():
    centers = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 50.0]])
    probs = torch.tensor([0.5, 0.3, 0.2]).view(1, 3, 1, 1).expand(2, 3, 2, 2).contiguous()
    mean = annealed_mean(probs, centers, temperature=1.0)
    torch.testing.assert_close(mean[0, :, 0, 0], torch.tensor([3.0, 10.0]))
    mode = annealed_mean(probs, centers, temperature=0.01)
    torch.testing.assert_close(mode[0, :, 0, 0], torch.tensor([0.0, 0.0]), atol=1e-6, rtol=0)
    # T = 0.5: f_T(z) proportional to z^2
    z2 = torch.tensor([0.25, 0.09, 0.04]) / 0.38
    torch.testing.assert_close(annealed_mean(probs, centers, 0.5)[0, :, 1, 1], z2 @ centers)
    assert annealed_mean(probs, centers).shape == (2, 2, 2, 2)


def test_annealed_mean_is_stable_at_small_temperature_with_tiny_probs():
    centers = gamut_bin_centers()
    logits = torch.randn(1, centers.shape[0], 8, 8) * 30
    probs = torch.softmax(logits, 1)  # many underflow to ~0
    out = annealed_mean(probs, centers, 0.01)
    assert torch.isfinite(out).all()
    mode = centers[probs.argmax(1)].permute(0, 3, 1, 2)
    torch.testing.assert_close(out, mode, atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match="temperature"):
        annealed_mean(probs, centers, 0.0)


def test_colorizer_applies_its_own_input_scaling():
    model = build("small").eval()
    lightness = torch.rand(1, 1, 64, 64) * 100
    torch.testing.assert_close(
        model(lightness), torch.softmax(model.net((lightness - 50) / 100), 1)
    )
    ab = model.predict_ab(lightness)
    torch.testing.assert_close(
        ab, annealed_mean(model(lightness), model.centers, 0.38), atol=1e-4, rtol=1e-4
    )


def test_checkpoint_round_trip(tmp_path: Path):
    model = build("small", temperature=0.3, card={"training": {"images": 3}}).eval()
    model.prior.copy_(torch.rand(model.num_bins).softmax(0))
    path = models.save(model, tmp_path / "m.safetensors")
    assert (tmp_path / "m.json").is_file()
    loaded = models.load(path)
    assert loaded.temperature == 0.3 and loaded.card["training"] == {"images": 3}
    torch.testing.assert_close(loaded.prior, model.prior)
    x = torch.rand(1, 1, 64, 64) * 100
    torch.testing.assert_close(loaded(x), model(x))
    card = models.read_card(path)
    assert card["config"]["arch"] == "small" and len(card["centers"]) == model.num_bins
    with pytest.raises(FileNotFoundError, match="no model checkpoint"):
        models.load(tmp_path / "missing.safetensors")


def test_converter_matches_our_network_with_the_same_weights(tmp_path: Path):
    ref = ECCV16Net(313)
    for m in ref.modules():  # random BN statistics too, so eval mode is exercised
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    ref.eval()
    centers313 = (torch.rand(313, 2) - 0.5) * 200
    state = {k: v.clone() for k, v in ref.state_dict().items()}
    state["model_out.weight"] = (centers313.T / 110.0)[:, :, None, None]
    # the release file is saved with torch.save; loading must stay weights_only
    torch.save(state, tmp_path / "release.pth")
    from models.convert import load_release

    colorizer = load_release(tmp_path / "release.pth")
    assert colorizer.num_bins == 313 and colorizer.temperature == 0.38
    torch.testing.assert_close(colorizer.centers, centers313)
    lightness = torch.rand(1, 1, 64, 64) * 100
    with torch.no_grad():
        expected_logits = ref((lightness - 50) / 100)
        torch.testing.assert_close(colorizer.logits(lightness), expected_logits)
        # the release head: softmax(2.606 * logits) -> 1x1 conv with model_out -> x110
        head = (
            torch.nn.functional.conv2d(
                torch.softmax(expected_logits / 0.38, 1), state["model_out.weight"]
            )
            * 110
        )
        torch.testing.assert_close(colorizer.predict_ab(lightness), head, atol=1e-4, rtol=1e-4)
    models.save(colorizer, tmp_path / "converted.safetensors")
    again = models.load(tmp_path / "converted.safetensors")
    torch.testing.assert_close(again.centers, centers313)
    with pytest.raises(KeyError, match="model_out"):
        from_release_state_dict({})


@pytest.mark.parametrize("scale", [20.0, 80.0, 150.0])
def test_nearest_bin_fast_path_matches_brute_force(scale):
    from models.bins import squared_distances

    centers = gamut_bin_centers()
    ab = torch.randn(2, 2, 40, 50) * scale
    dist = squared_distances(ab, centers)
    got = torch.gather(dist, 1, nearest_bin(ab, centers)[:, None])
    torch.testing.assert_close(got[:, 0], dist.min(dim=1).values)  # ties may pick either
    off_grid = (torch.rand(313, 2) - 0.5) * 200  # a release-like set not on our grid
    assert torch.equal(nearest_bin(ab, off_grid), squared_distances(ab, off_grid).argmin(1))


def test_the_shipped_default_model_loads_with_its_card():
    model = models.load("default")
    card = models.read_card(models.DEFAULT_MODEL)
    assert model.arch == "lite2-plain-hints" and model.num_bins == 261 and model.takes_hints
    # what hints are worth, by the grouped source folds (docs/training.md)
    figures = card["hints"]["figures"]
    assert figures["PSNR (dB): 10 hints - automatic default"]["folds"] == 5
    assert not model.flip_average  # tried, not worth twice the forward (docs/training.md)
    # it decodes as its folds chose: the candidates' figures and the rule are on the card
    decoding = card["crossval"]["decoding"]
    assert (model.temperature, model.chroma_gain) == (decoding["temperature"],
                                                      decoding["chroma_gain"])  # fmt: skip
    assert decoding["chosen"] in decoding["candidates"] and "0.38" in decoding["candidates"]
    chosen = decoding["candidates"][decoding["chosen"]]
    assert chosen["colourfulness (% of the truth)"]["mean"] >= 70  # the floor
    # its uncertainty ranks the errors on sources its fold models never saw
    assert chosen["uncertainty vs error (Spearman)"]["mean"] > 0.3
    hyper = card["training"]["hyperparameters"]
    assert card["training"]["images"] == 629 and hyper["soft_k"] == 5 and hyper["degrade"] > 0
    assert hyper["val_fraction"] == 0.0  # trained on every photo: the folds measured the recipe
    # its card carries the recipe's figures on 5 groups of held-out sources: it beats gray,
    # clean and on old prints, by more than the spread over folds
    crossval = card["crossval"]
    assert crossval["folds"] == 5
    for inputs in ("clean", "old_print"):
        gain = crossval[inputs]["rebalanced AuC - gray (points)"]
        assert gain["folds"] == 5 and gain["mean"] > 2 * gain["std"] > 0
    assert abs(model.prior.sum().item() - 1.0) < 1e-4 and model.prior.max() < 0.5
    x = torch.rand(1, 1, 64, 64) * 100
    assert model(x).shape == (1, 261, 16, 16)


@pytest.mark.parametrize(("variant", "params"), [("lite0", 4.65e6), ("lite2", 6.09e6)])
def test_imagenet_weights_convert_and_classify_a_bundled_photo(variant, params):
    from skimage import data

    from models.efficientnet import EfficientNetLite, normalise
    from models.imagenet import imagenet_state

    net = EfficientNetLite(variant)
    net.load_state_dict(imagenet_state(variant), strict=True)  # every key renamed, none left
    assert sum(p.numel() for p in net.parameters()) == pytest.approx(params, rel=0.01)
    cat = torch.from_numpy(data.chelsea()).permute(2, 0, 1).float()[None] / 255.0
    cat = torch.nn.functional.interpolate(cat, size=(224, 224), mode="bilinear", antialias=True)
    with torch.no_grad():
        top3 = net.eval().classify(normalise(cat)).topk(3).indices[0].tolist()
    # ImageNet 281 tabby, 282 tiger cat, 285 Egyptian cat
    assert top3[0] in (281, 282, 285) and set(top3) <= {281, 282, 283, 285, 287}


def test_lite0_colorizer_contract_and_frozen_encoder():
    from models.nets import LiteColorNet

    model = build("lite0")
    assert isinstance(model.net, LiteColorNet)
    probs = model(torch.rand(2, 1, 96, 128) * 100)
    assert probs.shape == (2, model.num_bins, 24, 32)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(2, 24, 32))
    net = model.net
    assert not net.encoder_parameters()  # frozen by default: only the decoder trains
    net.set_trainable_stages(2)
    trainable = {n for n, p in net.encoder.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("stages.5.", "stages.6.", "head.")) for n in trainable)
    net.train()
    assert not net.encoder.training and net.up4.training  # ImageNet BN statistics stay put


def test_the_shipped_default_beats_gray_on_bundled_photos(photos):
    """Photos it never saw (scikit-image's), colorized through the archive job's code path."""
    from PIL import Image

    from pipeline.colorize.predict import colorize_lightness
    from pipeline.imaging.images import decode_pil
    from pipeline.imaging.metrics import image_metrics
    from pipeline.training.evaluate import gray_baseline

    model = models.load("default")
    decoded = [decode_pil(Image.fromarray(p)) for p in photos.values()]
    results = colorize_lightness(model, [d.lightness for d in decoded])
    gains, colour = [], []
    for dec, (rgb, ab) in zip(decoded, results, strict=True):
        gray_rgb, gray_ab = gray_baseline(dec.lightness)
        args = (dec.rgb, dec.ab, model.centers, model.prior)
        ours, gray = image_metrics(rgb, ab, *args), image_metrics(gray_rgb, gray_ab, *args)
        gains.append(ours["auc_rebalanced"] - gray["auc_rebalanced"])
        colour.append(ours["colorfulness"] / (ours["colorfulness"] - ours["colorfulness_delta"]))
    assert sum(gains) / len(gains) > 0.0
    assert 0.3 < sum(colour) / len(colour) < 2.0  # neither gray nor garish


def test_uncertainty_is_the_colour_at_stake_where_the_lightness_allows_colour():
    from models.decode import uncertainty

    centers = gamut_bin_centers()
    chroma = torch.linalg.vector_norm(centers, dim=1)
    gray, vivid = int(chroma.argmin()), int(chroma.argmax())

    def sure_of(bin_index: int) -> torch.Tensor:
        logits = torch.full((1, centers.shape[0], 4, 4), -1e4)
        logits[:, bin_index] = 0.0
        return logits

    mid_gray, black = torch.full((1, 1, 16, 16), 50.0), torch.zeros(1, 1, 16, 16)
    sure_gray = uncertainty(sure_of(gray), mid_gray, centers)
    sure_vivid = uncertainty(sure_of(vivid), mid_gray, centers)
    # sure of the most colourful bin at mid gray: all the colour there is, at stake
    torch.testing.assert_close(sure_vivid, torch.tensor([1.0]))
    assert sure_gray < 0.05  # sure of (near) no colour: nothing at stake
    # black (or white) allows no colour: nothing at stake, whatever the distribution says
    torch.testing.assert_close(uncertainty(sure_of(vivid), black, centers), torch.tensor([0.0]))
    uniform = torch.zeros(1, centers.shape[0], 4, 4)
    assert sure_gray < uncertainty(uniform, mid_gray, centers) < sure_vivid
    # the tent is taken of the lightness averaged over each logit's cell: black and white
    # stripes finer than a cell are a mid gray there (the net sees them as such)
    stripes = torch.zeros(1, 1, 16, 16)
    stripes[..., ::2] = 100.0
    torch.testing.assert_close(uncertainty(sure_of(vivid), stripes, centers), torch.tensor([1.0]))
    model = build("small").eval()
    lightness = torch.rand(2, 1, 64, 64) * 100
    ab, doubt = model.predict(lightness)
    torch.testing.assert_close(ab, model.predict_ab(lightness))  # the same forward
    assert doubt.shape == (2,) and ((doubt > 0) & (doubt < 1)).all()


@pytest.mark.parametrize(
    ("arch", "up4_in", "classify_in", "decoder_params"),
    [  # counted once and written down (docs/training.md: 2.1 M, 0.98 M, 0.42 M trained)
        ("lite0-plain", 104, 64, 922_117),  # 80 + Lite0's 24 channels at stride 4
        ("lite2", 104, 48, 2_114_805),
        ("lite2-plain", 104, 64, 982_021),
        ("lite2-slim", 64, 32, 419_141),  # 40 + 24
    ],
)
def test_every_lite_architecture_keeps_the_contract(arch, up4_in, classify_in, decoder_params):
    model = build(arch)
    assert model.net.encoder.variant == arch.split("-")[0]
    assert model.net.up4[0].in_channels == up4_in
    assert model.net.classify[1].in_channels == classify_in
    assert sum(p.numel() for p in model.net.decoder_parameters()) == decoder_params
    assert (model.net.context is None) == ("-" in arch)
    probs = model(torch.rand(2, 1, 64, 96) * 100)
    assert probs.shape == (2, model.num_bins, 16, 24)
    assert not model.net.encoder_parameters()


def test_the_recipe_names_every_architecture_and_only_those():
    """pipeline.training.config keeps the names torch-free for the command line."""
    from models.nets import ARCHITECTURES
    from pipeline.training.config import ARCHITECTURES as NAMES

    assert NAMES == ARCHITECTURES
    for arch in NAMES:
        build(arch)


def test_flip_averaging_is_the_mean_of_the_image_and_its_mirror_and_is_saved(tmp_path):
    torch.manual_seed(0)
    model = build("small").eval()
    x = torch.rand(2, 1, 64, 96) * 100
    with torch.no_grad():
        plain, mirrored = model.logits(x), model.logits(x.flip(3)).flip(3)
        model.flip_average = True
        averaged = model.logits(x)
        torch.testing.assert_close(averaged, (plain + mirrored) / 2)
        torch.testing.assert_close(model.logits(x.flip(3)).flip(3), averaged)  # mirror-true
    assert not torch.allclose(plain, mirrored)  # the net alone is not
    path = models.save(model, tmp_path / "m.safetensors")
    assert models.load(path).flip_average and not build("small").flip_average


def test_the_chroma_gain_scales_the_decoded_ab_on_every_path_and_is_saved(tmp_path):
    from pipeline.colorize.predict import predict_working

    torch.manual_seed(0)
    model = build("small").eval()
    x = torch.rand(2, 1, 64, 64) * 100
    with torch.no_grad():
        plain, doubt = model.predict(x)
        cpu_plain, _ = predict_working(model, x)  # the product's CPU decoding (numba)
        model.chroma_gain = 1.5
        gained, same_doubt = model.predict(x)
        cpu_gained, _ = predict_working(model, x)
    assert plain.abs().max() > 1  # a decoding with colour to scale
    torch.testing.assert_close(gained, plain * 1.5)
    torch.testing.assert_close(same_doubt, doubt)  # the distributions are not changed
    torch.testing.assert_close(cpu_gained, cpu_plain * 1.5)
    torch.testing.assert_close(model.predict_ab(x), gained)
    path = models.save(model, tmp_path / "m.safetensors")
    assert models.load(path).chroma_gain == 1.5 and build("small").chroma_gain == 1.0
