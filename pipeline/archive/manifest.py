"""DEST records what made it: DEST/_manifest.json, one archive, one model and one set of settings.

The first colorize run into DEST writes the manifest: the model's id (file name and content
hash, as every row's `model` column has it) and every setting that changes the output's pixels
or its metrics (temperature, format, JPEG quality, precision, the metrics' size), plus the code
version for information (never compared). A later run compares its own settings with it:
- the same: the run goes on; committed shards are skipped as ever;
- different: the run refuses before it writes anything (`SettingsChanged`, naming each setting
  old and new and the three ways out), unless it is asked to `--recolorize`: then the manifest
  takes the new settings at once and every shard is redone. A shard's stats file records the
  hash of the settings it was made with, and a shard counts as done only when that hash is the
  manifest's, so a recolorize that is stopped resumes like any run, and each shard's old output
  stays in place, whole, until its new one commits over it.

A DEST written before manifests existed has none: if its committed shards were all made by the
model of this run, the manifest is written from this run's settings and marked `adopted` (the
older stats files record only their model; they count as done while the manifest is adopted
and its model is theirs); else the run refuses as above.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from importlib import metadata
from typing import Any

from pipeline.archive import storage
from pipeline.archive.stats import ShardStats

MANIFEST = "_manifest.json"
# compared settings, in the order a message lists them, and the option that sets each
OPTIONS = {
    "model": "--model",
    "temperature": "--temperature",
    "format": "--format",
    "quality": "--quality",
    "precision": "--precision",
    "metrics_max_side": "--metrics-max-side",
}


class SettingsChanged(ValueError):
    """A run whose settings differ from those DEST was made with; the message says the way out."""


class SourceChanged(ValueError):
    """A run from a SOURCE that DEST was not made from; the message says the ways out."""


def output_settings(
    model: str,
    temperature: float,
    output_format: str,
    quality: int,
    precision: str,
    metrics_max_side: int,
) -> dict[str, Any]:
    """The settings that decide an output's pixels and metrics. `model` is the model's id;
    `temperature` the one in effect (the model's own when none is given); `quality` only
    matters to JPEG, so PNG output records none."""
    return {
        "model": model,
        "temperature": float(temperature),
        "format": output_format,
        "quality": quality if output_format == "jpeg" else None,
        "precision": precision,
        "metrics_max_side": metrics_max_side,
    }


def settings_hash(settings: dict[str, Any]) -> str:
    """What a shard's stats file records: 16 hex of the sha256 of the settings' JSON."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def code_version() -> str:
    try:
        return metadata.version("archive-colorize")
    except metadata.PackageNotFoundError:
        return "unknown"


def manifest_uri(dest: str) -> str:
    return storage.join(dest, MANIFEST)


def read(dest: str) -> dict[str, Any] | None:
    return storage.read_json(manifest_uri(dest))


def document(
    settings: dict[str, Any], *, adopted: bool = False, sources: list[dict[str, str]] | None = None
) -> dict[str, Any]:
    return {
        "settings": settings,
        "settings_hash": settings_hash(settings),
        "adopted": adopted,
        "sources": sources or [],  # [{"uri": normalised SOURCE, "namespace": its own in DEST}]
        "code_version": code_version(),  # for information: never compared
        "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write(dest: str, manifest: dict[str, Any]) -> None:
    """Atomically (a rename locally, one PUT on S3)."""
    storage.write_bytes(manifest_uri(dest), (json.dumps(manifest, indent=1) + "\n").encode())


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(setting, old, new) for each compared setting that differs."""
    return [(k, old.get(k), new.get(k)) for k in OPTIONS if old.get(k) != new.get(k)]


def _show(value: Any) -> str:
    return "none" if value is None else str(value)


def refusal(dest: str, changes: list[tuple[str, Any, Any]], new: dict[str, Any]) -> str:
    lines = [f"DEST {dest} was made with other settings than this run's ({MANIFEST}):"]
    lines += [f"  {OPTIONS[k]}: {_show(old)} (DEST) -> {_show(now)} (this run)"
              for k, old, now in changes]  # fmt: skip
    return "\n".join([*lines, *_ways_out(new)])


def _ways_out(new: dict[str, Any]) -> list[str]:
    return [
        "Nothing was written. Either:",
        "  - rerun with DEST's settings (above), to add to it as it is;",
        "  - or write to a new DEST;",
        f"  - or pass --recolorize to redo every shard of DEST with {new['model']} and this "
        "run's settings (each shard's old output stays until its new one commits; a stopped "
        "run resumes).",
    ]


def reconcile(
    dest: str, settings: dict[str, Any], committed: list[ShardStats], recolorize: bool
) -> tuple[dict[str, Any], bool]:
    """(the manifest this run works under, whether to write it) or SettingsChanged. Reads
    only: the caller writes the manifest once the rest of the request is known good."""
    existing = read(dest)
    if existing is not None:
        changes = differences(existing["settings"], settings)
        if not changes:
            return existing, False
        if recolorize:  # new settings, the same sources
            return document(settings, sources=existing.get("sources")), True
        raise SettingsChanged(refusal(dest, changes, settings))
    if not committed:
        return document(settings), True
    made_by: dict[str, int] = {}
    for stats in committed:
        made_by[stats.model or "unknown"] = made_by.get(stats.model or "unknown", 0) + stats.rows
    if set(made_by) == {settings["model"]}:
        return document(settings, adopted=True), True  # an older DEST: adopted as it is
    if recolorize:
        return document(settings), True
    found = ", ".join(f"{m} ({n} images)" for m, n in sorted(made_by.items()))
    raise SettingsChanged(
        "\n".join(
            [
                f"DEST {dest} has no {MANIFEST} (an older version wrote it) and its committed "
                f"shards were made by {found}:",
                f"  --model: {found} (DEST) -> {settings['model']} (this run)",
                *_ways_out(settings),
            ]
        )
    )


def is_current(stats: ShardStats, manifest: dict[str, Any]) -> bool:
    """Was this committed shard made with the manifest's settings (so a run skips it)?"""
    if stats.settings:
        return bool(stats.settings == manifest["settings_hash"])
    return bool(manifest.get("adopted")) and stats.model == manifest["settings"]["model"]


def namespace_of(source: str) -> str:
    """An added source's namespace in DEST: its last name, readable, and 8 hex of the hash of
    its normalised URI, so that two sources of one name differ (`photos-2-1a2b3c4d`)."""
    tail = re.sub(r"[^A-Za-z0-9._-]+", "-", source.rsplit("/", 1)[-1]).strip("-.")[:40]
    return f"{tail or 'source'}-{hashlib.sha256(source.encode()).hexdigest()[:8]}"


def admit_source(
    dest: str, manifest: dict[str, Any], source: str, add_source: bool
) -> tuple[dict[str, Any], str, bool]:
    """(the manifest with `source` in it, the source's namespace, whether the manifest changed),
    or SourceChanged. `source` is normalised. Reads and writes nothing."""
    sources: list[dict[str, str]] = manifest.get("sources") or []
    for known in sources:
        if known["uri"] == source:
            return manifest, known["namespace"], False
    if not sources:  # a new DEST, or a manifest older than sources: the run's is DEST's
        entry = {"uri": source, "namespace": ""}
    elif add_source:
        _check_apart(dest, [known["uri"] for known in sources], source)
        entry = {"uri": source, "namespace": namespace_of(source)}
    else:
        raise SourceChanged(_source_refusal(dest, [known["uri"] for known in sources], source))
    return {**manifest, "sources": [*sources, entry]}, entry["namespace"], True


def _source_refusal(dest: str, known: list[str], source: str) -> str:
    return "\n".join(
        [
            f"DEST {dest} was made from another SOURCE than this run's ({MANIFEST}):",
            *(f"  SOURCE of DEST: {uri}" for uri in known),
            f"  this run's SOURCE: {source}",
            "Nothing was written. Either:",
            "  - write this source to a new DEST;",
            "  - or pass --add-source to colorize it into DEST beside the other(s) on purpose: "
            f"its shards and ids are then named in a namespace of its own ({namespace_of(source)}/"
            "...), so that none collides with theirs.",
        ]
    )


def _check_apart(dest: str, known: list[str], source: str) -> None:
    """An added source inside another of DEST's (or around one) would colorize the same images
    twice, under two names."""
    for uri in known:
        if source.startswith(uri + "/") or uri.startswith(source + "/"):
            raise SourceChanged(
                f"--add-source: SOURCE {source} and {uri}, already DEST {dest}'s, hold the same "
                "images (one is inside the other): nothing was written. Colorize each image "
                "from one source only (or write to a new DEST)."
            )
