"""Prefect flows: thin outer layers over `pipeline`."""

import os

# Set before prefect is imported (it reads its settings then). The embedded default starts
# Prefect's ephemeral API in a subprocess and gives it 20 s; on a busy 2-core machine it has
# taken 20 s, so a run waits longer rather than failing before it starts.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
