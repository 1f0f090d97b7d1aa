"""Shared fixtures. Environment for Ray and Prefect is private to the test session."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator

_SESSION_DIR = tempfile.mkdtemp(prefix="archive-colorize-tests-")
os.environ.setdefault("PREFECT_HOME", os.path.join(_SESSION_DIR, "prefect"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")  # as flows/
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# Ray's socket paths must stay under 107 bytes: a short private dir
os.environ.setdefault("ARCHIVE_COLORIZE_RAY_TEMP", tempfile.mkdtemp(prefix="acr", dir="/tmp"))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Dummy credentials for the loopback S3 server; set before Ray starts so actors inherit them.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")

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


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A real S3 server (moto's standalone `moto_server`) on loopback; yields its URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    exe = os.path.join(os.path.dirname(sys.executable), "moto_server")
    proc = subprocess.Popen(
        [exe, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1)
            break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        raise RuntimeError("moto_server did not start")
    yield url
    proc.terminate()
    proc.wait(timeout=10)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Prefect stops its temporary API server at interpreter exit and logs it, with the
    "prefect" logger, to a stream pytest has closed by then: logging prints a traceback after a
    passing run. The session's output is complete here, so that last line is not wanted."""
    import logging

    logging.getLogger("prefect").disabled = True
