"""Local paths and s3:// URIs behind one small interface.

Objects go through boto3 (retries with backoff, standard AWS configuration, an endpoint for
MinIO/Ceph/R2 from `configure(endpoint_url=...)` or AWS_ENDPOINT_URL); Parquet goes through
pyarrow's filesystem for the same location. Writes are atomic: locally a temporary name and a
rename; on S3 the object appears only when its upload is complete (S3 never shows a partial
object), so a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import json
import mimetypes
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

import pyarrow.fs as pafs

_config_lock = threading.Lock()
_endpoint_url: str | None = None


def configure(endpoint_url: str | None = None) -> None:
    """Point S3 access at a custom endpoint (MinIO, Ceph, R2, a test server). None: AWS default
    (or AWS_ENDPOINT_URL)."""
    global _endpoint_url
    with _config_lock:
        _endpoint_url = endpoint_url or None
        _s3_client.cache_clear()
        _s3_filesystem.cache_clear()


def endpoint_url() -> str | None:
    return _endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str


def parse_s3(uri: str) -> S3Location:
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"not an s3:// URI: {uri!r} (expected s3://bucket/prefix)")
    return S3Location(parsed.netloc, parsed.path.lstrip("/"))


def normalize(uri: str) -> str:
    """One spelling per place, to compare sources: an absolute local path (`~` expanded, `..`
    and trailing slashes resolved, symlinks kept), or the s3:// URI without trailing slashes."""
    if is_s3(uri):
        return uri.rstrip("/")
    return os.path.abspath(os.path.expanduser(uri))


def same_place(recorded: str, uri: str) -> bool:
    """Does `recorded` (as an older version wrote it: maybe relative to another working
    directory) name the normalised `uri`? A relative one matches a `uri` that ends with it."""
    if is_s3(recorded) or os.path.isabs(os.path.expanduser(recorded)):
        return normalize(recorded) == uri
    tail = os.path.normpath(recorded)
    return uri == tail or uri.endswith(os.sep + tail)


def join(base: str, *parts: str) -> str:
    if is_s3(base):
        return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(base, *parts))


def relative(base: str, uri: str) -> str:
    """`uri` relative to `base`, with forward slashes."""
    if is_s3(base):
        return uri[len(base.rstrip("/")) + 1 :]
    return Path(uri).relative_to(base).as_posix()


@lru_cache(maxsize=1)
def _s3_client() -> Any:
    import boto3
    from botocore.config import Config

    config = Config(retries={"max_attempts": 8, "mode": "adaptive"}, max_pool_connections=32)
    return boto3.client("s3", endpoint_url=endpoint_url(), config=config)


@lru_cache(maxsize=1)
def _s3_filesystem() -> pafs.S3FileSystem:
    import boto3

    session = boto3.session.Session()
    creds = session.get_credentials()
    kwargs: dict[str, Any] = {"region": session.region_name or "us-east-1"}
    if creds is not None:
        frozen = creds.get_frozen_credentials()
        kwargs.update(access_key=frozen.access_key, secret_key=frozen.secret_key)
        if frozen.token:
            kwargs["session_token"] = frozen.token
    url = endpoint_url()
    if url:
        parsed = urlparse(url)
        kwargs.update(endpoint_override=parsed.netloc, scheme=parsed.scheme or "https")
    retry = pafs.AwsStandardS3RetryStrategy(max_attempts=8)
    return pafs.S3FileSystem(retry_strategy=retry, **kwargs)


def arrow_fs(uri: str) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path inside it) for reading Parquet at `uri`."""
    if is_s3(uri):
        loc = parse_s3(uri)
        return _s3_filesystem(), f"{loc.bucket}/{loc.key}"
    return pafs.LocalFileSystem(), str(Path(uri).absolute())


# S3 answers a missing key with 404, or with 403 when the caller may not list the bucket
# (s3:ListBucket): it then does not tell a missing key from a forbidden one. Both read as
# absent, as a missing file does locally; a real lack of permission still fails loudly at the
# next listing or write, and a read names it (`read_bytes`).
_MISSING = ("404", "NoSuchKey", "NotFound")
_DENIED = ("403", "AccessDenied", "Forbidden")


def _error_code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def exists(uri: str) -> bool:
    if is_s3(uri):
        from botocore.exceptions import ClientError

        loc = parse_s3(uri)
        try:
            _s3_client().head_object(Bucket=loc.bucket, Key=loc.key)
            return True
        except ClientError as exc:
            if _error_code(exc) in (*_MISSING, *_DENIED):
                return False
            raise
    return Path(uri).exists()


def list_files(uri: str) -> Iterator[str]:
    """Every object/file under `uri` (recursively), in sorted order."""
    if is_s3(uri):
        loc = parse_s3(uri)
        prefix = loc.key.rstrip("/") + "/" if loc.key else ""
        pages = (
            _s3_client().get_paginator("list_objects_v2").paginate(Bucket=loc.bucket, Prefix=prefix)
        )
        keys = [obj["Key"] for page in pages for obj in page.get("Contents", [])]
        if not keys and loc.key and exists(uri):  # the URI names one object
            keys = [loc.key]
        yield from (f"s3://{loc.bucket}/{k}" for k in sorted(keys) if not k.endswith("/"))
        return
    root = Path(uri)
    if root.is_file():
        yield str(root)
        return
    yield from (str(p) for p in sorted(root.rglob("*")) if p.is_file())


def source_exists(uri: str) -> bool:
    """A folder/prefix with at least one file, or a file/object."""
    if is_s3(uri):
        return exists(uri) or next(list_files(uri), None) is not None
    return Path(uri).exists()


def read_bytes(uri: str) -> bytes:
    """The object's bytes; FileNotFoundError when there is none, on S3 as on a disk."""
    if is_s3(uri):
        from botocore.exceptions import ClientError

        loc = parse_s3(uri)
        try:
            body: bytes = _s3_client().get_object(Bucket=loc.bucket, Key=loc.key)["Body"].read()
        except ClientError as exc:
            code = _error_code(exc)
            if code in _MISSING:
                raise FileNotFoundError(uri) from exc
            if code in _DENIED:
                raise FileNotFoundError(
                    f"{uri}: S3 answered {code} (access denied): no such object, or no "
                    "permission to read it (s3:GetObject; without s3:ListBucket S3 answers "
                    "403 for a missing key)"
                ) from exc
            raise
        return body
    return Path(uri).read_bytes()


def read_json(uri: str) -> dict[str, Any] | None:
    """A JSON object written by us, or None where there is none."""
    try:
        data: dict[str, Any] = json.loads(read_bytes(uri))
    except FileNotFoundError:
        return None
    return data


def write_bytes(uri: str, data: bytes, *, atomic: bool = True) -> None:
    """Write a whole object. On S3 (a PUT is atomic) it gets the Content-Type of its name's
    extension, so that a static website serves the HTML, scripts and images written here as
    such. A local file is written under a temporary name and renamed, so that no reader sees
    part of it; `atomic=False` writes it in place, for files that a later commit marker covers
    (the gallery's previews: one rename less per file, about a quarter of their kernel time)."""
    if is_s3(uri):
        loc = parse_s3(uri)
        extra: dict[str, str] = {}
        content_type = mimetypes.guess_type(loc.key)[0]
        if content_type:
            extra["ContentType"] = content_type
        _s3_client().put_object(Bucket=loc.bucket, Key=loc.key, Body=data, **extra)
        return
    path = Path(uri)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    target = tmp if atomic else path
    try:
        target.write_bytes(data)
    except FileNotFoundError:  # the folder's first file: made then, not asked for every file
        path.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    if atomic:
        target.replace(path)


def put_file(local_path: str | Path, uri: str) -> None:
    """Move a finished local file to `uri` atomically (rename locally; S3 upload, multipart for
    big files, visible only when complete)."""
    if is_s3(uri):
        loc = parse_s3(uri)
        _s3_client().upload_file(str(local_path), loc.bucket, loc.key)
        Path(local_path).unlink(missing_ok=True)
        return
    path = Path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(local_path, path)
    except OSError:  # another filesystem: copy beside the target, then rename
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        shutil.copyfile(local_path, tmp)
        os.replace(tmp, path)
        Path(local_path).unlink(missing_ok=True)


def delete(uri: str) -> None:
    if is_s3(uri):
        loc = parse_s3(uri)
        _s3_client().delete_object(Bucket=loc.bucket, Key=loc.key)
        return
    Path(uri).unlink(missing_ok=True)


def local_staging_dir(dest: str) -> str:
    """Where to build a file before committing it to `dest`: beside it locally (same filesystem,
    so the commit is a rename), the system's temp folder for S3. Its files go with their
    commit or abort (`shards.ShardWriter`), so the folder is never removed (nor made: a
    folder per call for S3 was left behind by every shard)."""
    if is_s3(dest):
        return tempfile.gettempdir()
    staging = Path(dest, "_tmp")
    staging.mkdir(parents=True, exist_ok=True)
    return str(staging)


def clean_staging(dest: str, max_age_seconds: float = 3600.0) -> None:
    """Remove temp files a crashed run left in DEST/_tmp (older than `max_age_seconds`, so a
    concurrent writer's live files stay), and the folder once it is empty. Local only: S3
    staging is a temp dir of the writing process."""
    if is_s3(dest):
        return
    staging = Path(dest, "_tmp")
    if not staging.is_dir():
        return
    now = time.time()
    for path in staging.iterdir():
        if path.is_file() and now - path.stat().st_mtime > max_age_seconds:
            path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # not empty: a live writer
        staging.rmdir()


@contextlib.contextmanager
def local_copy(uri: str) -> Iterator[str]:
    """A local path for `uri` while the block runs. An S3 object is downloaded into a temp
    folder under its own file name, since the name is part of what identifies it (a model's id
    in rows and in DEST's manifest: a random name would make every run's model look new); the
    folder goes when the block ends, so no run leaves a copy behind."""
    if not is_s3(uri):
        yield uri
        return
    loc = parse_s3(uri)
    with tempfile.TemporaryDirectory(prefix="archive-colorize-") as folder:
        path = os.path.join(folder, PurePosixPath(loc.key).name)
        _s3_client().download_file(loc.bucket, loc.key, path)
        yield path
