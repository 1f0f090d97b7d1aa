"""Peak memory of the training worker against the corpus size (issue 21's acceptance).

    python bench/bench_train_memory.py WORKDIR 1000 8000

For each size N: N synthetic 320x240 colour JPEG photos in Parquet shards of 256, then
`train_model(SRC, OUT, steps=5)` (the `train` command's defaults otherwise) in a fresh process
with its own local Ray; a watcher reads VmHWM (the peak resident set) of every Ray Train
worker process that descends from that process. Prints the peak per size and the ratio of the
largest corpus's to the smallest's (goal <= 1.15: the worker's memory does not depend on the
corpus size).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image


def synthetic_photo(rng: np.random.Generator) -> bytes:
    """A colourful 320x240 JPEG: a smooth random colour field with fine noise."""
    coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    field = np.asarray(Image.fromarray(coarse).resize((320, 240), Image.Resampling.BICUBIC))
    noisy = np.clip(field.astype(np.int16) + rng.integers(-12, 13, field.shape), 0, 255)
    buf = io.BytesIO()
    Image.fromarray(noisy.astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def make_archive(root: Path, n: int, shard: int = 256) -> None:
    if (root / "_complete").exists():
        return
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(n)
    for k, start in enumerate(range(0, n, shard)):
        ids = [f"photo-{i:06d}" for i in range(start, min(n, start + shard))]
        blobs = [synthetic_photo(rng) for _ in ids]
        pq.write_table(pa.table({"id": ids, "image": blobs}), root / f"part-{k:05d}.parquet")
    (root / "_complete").write_text(str(n))


def descends_from(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return False


def train_workers(ancestor: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"RayTrainWorker" in cmd and descends_from(int(entry.name), ancestor):
            out.append(int(entry.name))
    return out


def vm_hwm_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def measure(workdir: Path, n: int) -> dict[str, float]:
    src = workdir / f"photos-{n}"
    make_archive(src, n)
    out = workdir / f"run-{n}"
    code = (
        "import sys, json; from flows.train import train_model; "
        f"r = train_model({str(src)!r}, {str(out)!r}, steps=5); "
        "print(json.dumps({'train_images': r['train_images'], 'seconds': r['seconds']}))"
    )
    env = {**os.environ, "PREFECT_HOME": str(workdir / "prefect"),
           "ARCHIVE_COLORIZE_RAY_TEMP": tempfile.mkdtemp(prefix="acm", dir="/tmp")}  # fmt: skip
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env
    )
    peaks: dict[int, int] = {}
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.5):
            for pid in train_workers(proc.pid):
                peaks[pid] = max(peaks.get(pid, 0), vm_hwm_kb(pid))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    stdout, _ = proc.communicate()
    done.set()
    watcher.join()
    if proc.returncode:
        raise SystemExit(f"train failed for {n} photos")
    result = json.loads(stdout.strip().splitlines()[-1])
    return {
        "photos": n,
        "train_images": result["train_images"],
        "worker_peak_rss_mb": max(peaks.values(), default=0) / 1024,
        "workers_seen": len(peaks),
        "training_seconds": result["seconds"],
        "total_seconds": time.perf_counter() - started,
    }


def main() -> None:
    workdir = Path(sys.argv[1])
    sizes = [int(a) for a in sys.argv[2:]] or [1000, 8000]
    rows = [measure(workdir, n) for n in sizes]
    for row in rows:
        print(json.dumps(row))
    if len(rows) > 1 and rows[0]["worker_peak_rss_mb"]:
        ratio = rows[-1]["worker_peak_rss_mb"] / rows[0]["worker_peak_rss_mb"]
        print(f"worker peak RSS at {sizes[-1]} / at {sizes[0]} photos: {ratio:.3f} (goal <= 1.15)")


if __name__ == "__main__":
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    main()
