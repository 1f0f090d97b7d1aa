"""The one-pass CPU decoding agrees with `models.decode` (the definition, used on GPUs)."""

import pytest
import torch

import models
from models.decode import annealed_mean_from_logits, uncertainty
from pipeline.imaging.decode_cpu import decode


@pytest.mark.parametrize("scale", [0.1, 3.0, 30.0])
@pytest.mark.parametrize("temperature", [0.38, 1.0, 0.05])
def test_decode_matches_models_decode(scale: float, temperature: float) -> None:
    centers = models.build("small").centers
    logits = torch.randn(3, centers.shape[0], 9, 7, generator=torch.Generator().manual_seed(0))
    logits = logits * scale
    lightness = torch.rand(3, 1, 36, 28, generator=torch.Generator().manual_seed(1)) * 100
    for layout in (torch.contiguous_format, torch.channels_last):
        ab, doubt = decode(logits.contiguous(memory_format=layout), centers, temperature, lightness)
        assert ab.shape == (3, 2, 9, 7) and doubt.shape == (3,)
        expected = annealed_mean_from_logits(logits, centers, temperature)
        torch.testing.assert_close(ab, expected, atol=1e-2, rtol=0)
        reference = uncertainty(logits, lightness, centers, temperature)
        torch.testing.assert_close(doubt, reference, atol=1e-4, rtol=0)


def test_the_shipped_model_decodes_the_same_on_the_cpu_path() -> None:
    model = models.load(models.DEFAULT_MODEL)
    with torch.inference_mode():
        lightness = torch.rand(2, 1, 128, 128) * 100
        logits = model.logits(lightness)
        ab, doubt = decode(logits, model.centers, model.temperature, lightness)
        ref_ab, ref_doubt = model.decode(logits, lightness)
    torch.testing.assert_close(ab, ref_ab, atol=1e-2, rtol=0)
    torch.testing.assert_close(doubt, ref_doubt, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="temperature"):
        decode(logits, model.centers, 0.0, lightness)
