"""Prefect flow: export a colorized archive as image files (pipeline/archive/export.py), one
Ray task per committed shard; re-runs skip the shards already exported and unchanged."""

from __future__ import annotations

from typing import Any

import ray
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.colorize import ConfigError
from pipeline.archive import manifest, storage
from pipeline.archive.export import ERRORS_CSV, check_destination, errors_csv, export_shard
from pipeline.colorize.runner import ensure_ray
from pipeline.review.report import load_committed_stats, models_present


def run_sources(dest: str) -> list[str]:
    """Every SOURCE DEST was made from: its manifest's, else (an older DEST) its report's."""
    recorded = manifest.read(dest) or {}
    if recorded.get("sources"):
        return [entry["uri"] for entry in recorded["sources"]]
    report = storage.read_json(storage.join(dest, "report.json")) or {}
    return [report["source"]] if report.get("source") else []


@task(cache_policy=NO_CACHE)
def export_shards(
    dest: str, out: str, quality: int, s3_endpoint_url: str | None
) -> list[dict[str, Any]]:
    shards = sorted(s.shard for s in load_committed_stats(dest))
    if not shards:
        raise ConfigError(f"nothing to export: no committed shard in {dest} (run colorize first)")
    remote: Any = ray.remote(num_cpus=1, max_retries=2)(export_shard)
    documents: list[dict[str, Any]] = ray.get(
        [remote.remote(dest, name, out, quality, s3_endpoint_url) for name in shards]
    )
    return documents


@flow(name="export-archive")
def export_archive(
    dest: str,
    out: str,
    quality: int = 95,
    ray_address: str | None = None,
    s3_endpoint_url: str | None = None,
) -> dict[str, Any]:
    """Write every ok row of the colorized archive DEST as an image file under OUT (local or
    s3://), at the input's relative path and in its container; OUT/_errors.csv lists the rest."""
    if not 1 <= quality <= 100:
        raise ConfigError(f"--quality must be in 1..100, got {quality}")
    storage.configure(s3_endpoint_url)
    try:
        check_destination(out, dest, None)
        for source in run_sources(dest):
            check_destination(out, dest, source)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    ensure_ray(ray_address)
    documents = export_shards(dest, out, quality, s3_endpoint_url)
    storage.write_bytes(storage.join(out, ERRORS_CSV), errors_csv(documents))
    summary = {
        "out": out,
        "shards": len(documents),
        "shards_skipped": sum(d["skipped"] for d in documents),
        "exported": sum(d["exported"] for d in documents if not d["skipped"]),
        "files": sum(d["exported"] for d in documents),
        "errors": sum(len(d["errors"]) for d in documents),
        "errors_csv": storage.join(out, ERRORS_CSV),
        "models": models_present(load_committed_stats(dest)),  # who made what was exported
    }
    get_run_logger().info("export: %s", summary)
    return summary
