"""Shared fixtures. Environment for Ray and Prefect is private to the test session."""

from __future__ import annotations

import os
import tempfile

_SESSION_DIR = tempfile.mkdtemp(prefix="archive-colorize-tests-")
os.environ.setdefault("PREFECT_HOME", os.path.join(_SESSION_DIR, "prefect"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("ARCHIVE_COLORIZE_RAY_TEMP", os.path.join("/tmp", "acray"))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from skimage import data  # noqa: E402


@pytest.fixture(scope="session")
def photos() -> dict[str, np.ndarray]:
    """Real colour photographs bundled with scikit-image, uint8 (H, W, 3)."""
    return {"astronaut": data.astronaut(), "coffee": data.coffee(), "chelsea": data.chelsea()}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
