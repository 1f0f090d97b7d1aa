"""Per-shard statistics that merge: counts, error kinds and metric summaries.

A shard's stats are a small JSON document (its commit marker); the run report merges them,
so no pass over the output images is ever needed for the report.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Fixed histogram edges per metric, so that histograms from different shards add up.
METRIC_RANGES: dict[str, tuple[float, float]] = {
    "colorfulness": (0.0, 150.0),
    "colorfulness_delta": (-100.0, 100.0),
    "psnr": (0.0, 50.0),
    "ssim": (0.0, 1.0),
    "auc": (0.0, 1.0),
    "auc_rebalanced": (0.0, 1.0),
    "uncertainty": (0.0, 1.0),
}
HIST_BINS = 50


def hist_edges(metric: str) -> np.ndarray:
    lo, hi = METRIC_RANGES[metric]
    return np.linspace(lo, hi, HIST_BINS + 1)


@dataclass
class MetricSummary:
    """count, sum, sum of squares, min, max and a fixed-edge histogram of one metric."""

    count: int = 0
    total: float = 0.0
    total_sq: float = 0.0
    min: float = math.inf
    max: float = -math.inf
    hist: list[int] = field(default_factory=lambda: [0] * HIST_BINS)

    def add(self, metric: str, value: float) -> None:
        if not math.isfinite(value):
            return  # e.g. PSNR of an exact match; counted nowhere rather than poisoning the mean
        self.count += 1
        self.total += value
        self.total_sq += value * value
        self.min = min(self.min, value)
        self.max = max(self.max, value)
        lo, hi = METRIC_RANGES[metric]
        i = int((min(max(value, lo), hi) - lo) / (hi - lo) * HIST_BINS)
        self.hist[min(i, HIST_BINS - 1)] += 1

    def merge(self, other: MetricSummary) -> None:
        self.count += other.count
        self.total += other.total
        self.total_sq += other.total_sq
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)
        self.hist = [a + b for a, b in zip(self.hist, other.hist, strict=True)]

    @property
    def mean(self) -> float | None:
        return self.total / self.count if self.count else None

    @property
    def std(self) -> float | None:
        if not self.count:
            return None
        return math.sqrt(max(0.0, self.total_sq / self.count - (self.total / self.count) ** 2))

    def to_json(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "sum": self.total,
            "sum_sq": self.total_sq,
            "min": self.min if self.count else None,
            "max": self.max if self.count else None,
            "hist": self.hist,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MetricSummary:
        return cls(
            count=data["count"],
            total=data["sum"],
            total_sq=data["sum_sq"],
            min=math.inf if data["min"] is None else data["min"],
            max=-math.inf if data["max"] is None else data["max"],
            hist=list(data["hist"]),
        )


@dataclass
class ShardStats:
    """What one shard did. Serialised as DEST/_stats/<shard>.json, written last (commit marker)."""

    shard: str
    source: str
    output: str
    rows: int = 0
    ok: int = 0
    errors: int = 0
    errors_by_kind: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    model: str = ""
    metrics: dict[str, MetricSummary] = field(default_factory=dict)
    sample: str | None = None  # URI of a small gray|colour strip for the contact sheet
    attempt: int = 1
    peak_rss_mb: float = 0.0  # of the worker process, when the shard was committed
    node: str = ""  # which Ray node processed it: "<ip> <node id prefix>"
    device: str = ""  # and on what: "cpu", "cuda:0", ...
    precision: str = ""  # in what number type the network ran there (`auto` resolved)
    # ok images whose metadata of a kind (exif, iptc, xmp, icc, dpi) was damaged and dropped
    metadata_dropped: dict[str, int] = field(default_factory=dict)
    settings: str = ""  # the hash of the DEST manifest's settings it was made with (manifest.py)
    hinted: int = 0  # rows colorized with colour hints (archive/hint_record.py)

    def add_ok(self, metrics: dict[str, float], metadata_dropped: Iterable[str] = ()) -> None:
        self.rows += 1
        self.ok += 1
        for name, value in metrics.items():
            self.metrics.setdefault(name, MetricSummary()).add(name, value)
        for kind in sorted(set(metadata_dropped)):  # an image counts once per kind
            self.metadata_dropped[kind] = self.metadata_dropped.get(kind, 0) + 1

    def add_error(self, kind: str) -> None:
        self.rows += 1
        self.errors += 1
        self.errors_by_kind[kind] = self.errors_by_kind.get(kind, 0) + 1

    def to_json(self) -> dict[str, Any]:
        return {
            "shard": self.shard,
            "source": self.source,
            "output": self.output,
            "rows": self.rows,
            "ok": self.ok,
            "errors": self.errors,
            "errors_by_kind": self.errors_by_kind,
            "seconds": round(self.seconds, 3),
            "model": self.model,
            "metrics": {k: v.to_json() for k, v in sorted(self.metrics.items())},
            "sample": self.sample,
            "attempt": self.attempt,
            "peak_rss_mb": round(self.peak_rss_mb, 1),
            "node": self.node,
            "device": self.device,
            "precision": self.precision,
            "metadata_dropped": dict(sorted(self.metadata_dropped.items())),
            "settings": self.settings,
            "hinted": self.hinted,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ShardStats:
        return cls(
            shard=data["shard"],
            source=data["source"],
            output=data["output"],
            rows=data["rows"],
            ok=data["ok"],
            errors=data["errors"],
            errors_by_kind=dict(data["errors_by_kind"]),
            seconds=data["seconds"],
            model=data["model"],
            metrics={k: MetricSummary.from_json(v) for k, v in data["metrics"].items()},
            sample=data.get("sample"),
            attempt=data.get("attempt", 1),
            peak_rss_mb=data.get("peak_rss_mb", 0.0),
            node=data.get("node", ""),
            device=data.get("device", ""),
            precision=data.get("precision", ""),
            metadata_dropped=dict(data.get("metadata_dropped", {})),
            settings=data.get("settings", ""),
            hinted=data.get("hinted", 0),
        )
