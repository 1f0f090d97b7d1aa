"""models: pure torch. Networks, ab bins, targets and loss, decoding, checkpoints."""

from models.bins import gamut_bin_centers, nearest_bin
from models.checkpoint import DEFAULT_MODEL, file_sha256, load, read_card, save
from models.colorizer import Colorizer, build
from models.decode import DEFAULT_TEMPERATURE, annealed_mean, annealed_mean_from_logits

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_TEMPERATURE",
    "Colorizer",
    "annealed_mean",
    "annealed_mean_from_logits",
    "build",
    "file_sha256",
    "gamut_bin_centers",
    "load",
    "nearest_bin",
    "read_card",
    "save",
]
