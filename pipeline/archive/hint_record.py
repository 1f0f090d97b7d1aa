"""DEST/_hints.json: the colour hints in effect in DEST, kept with its manifest so that any
later run (plain, `--hints`, `--recolorize`) colorizes each hinted id with them again.

The record holds the points as the hints files gave them (`{"<row id>": [{"x", "y", "rgb",
"r"?}, ...]}`, checked by `pipeline.colorize.hints` before they get here). A new file's ids
replace those ids' hints; an id given an empty list has its hints dropped.

A shard holding hinted ids is made with DEST's settings *and* those ids' hints: its stats
file records `shard_settings_hash` of both, so a shard is current only with the hints in
effect now (a second identical `--hints` run finds every shard current and writes nothing; a
stopped one resumes), while a shard without hints records the manifest's hash as ever.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable
from typing import Any

from pipeline.archive import storage
from pipeline.archive.manifest import settings_hash

HINTS = "_hints.json"

Points = list[dict[str, Any]]


def record_uri(dest: str) -> str:
    return storage.join(dest, HINTS)


def read(dest: str) -> dict[str, Points]:
    """The hints in effect in DEST, by row id ({} when it has none)."""
    document = storage.read_json(record_uri(dest))
    return dict(document["hints"]) if document else {}


def merged(in_effect: dict[str, Points], new: dict[str, Points]) -> dict[str, Points]:
    """The hints in effect after a hints file: its ids' points replace theirs, [] drops them."""
    out = {**in_effect, **new}
    return {row_id: points for row_id, points in sorted(out.items()) if points}


def write(dest: str, hints: dict[str, Points]) -> None:
    """Atomically (a rename locally, one PUT on S3)."""
    document = {"hints": hints, "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    storage.write_bytes(record_uri(dest), (json.dumps(document, indent=1) + "\n").encode())


def of_ids(hints: dict[str, Points], ids: Iterable[str]) -> dict[str, Points]:
    """The hints of these ids (those that have any)."""
    return {row_id: hints[row_id] for row_id in ids if row_id in hints}


def shard_settings_hash(
    settings: dict[str, Any], manifest_hash: str, shard_hints: dict[str, Points]
) -> str:
    """What a shard's stats record: the manifest's hash when none of its ids has hints, else
    the hash of DEST's settings and its ids' hints together."""
    if not shard_hints:
        return manifest_hash
    text = json.dumps(shard_hints, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    return settings_hash({**settings, "hints": digest})
