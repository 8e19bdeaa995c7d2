"""Where files live. Every store (landing zone, lake, Data Docs, MLflow artifacts) is addressed by a
URI: a local folder (a plain path or file://...) or s3://bucket/prefix. This module is the only
place that tells them apart; everything else passes URIs along.

S3 is reached through boto3. Credentials come from the standard AWS chain (environment, profile,
instance role), never from settings; the endpoint, region and path-style addressing come from
`[storage]` settings the process loaded, else from the standard AWS environment (AWS_ENDPOINT_URL,
AWS_REGION).
Spark reaches the same objects through the s3a connector (nightrec.data.spark), with s3:// mapped
to it, so one URI names a file for every reader.
"""

from __future__ import annotations

import datetime as dt
import io
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO

from nightrec.settings import StorageSettings, loaded_storage

S3_SCHEMES = ("s3://", "s3a://")


def options() -> StorageSettings:
    """How S3 is reached: the storage settings this process loaded last."""
    return loaded_storage()


@dataclass(frozen=True)
class Entry:
    """A file or folder: its URI, name, and for files size, modification time and (S3) ETag."""

    uri: str
    name: str
    is_dir: bool = False
    size: int = 0
    modified: dt.datetime | None = None
    etag: str = ""


def is_s3(uri: str) -> bool:
    return uri.startswith(S3_SCHEMES)


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts if p)])


def name_of(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1]


def parent_of(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[0]


def local_path(uri: str) -> Path:
    if is_s3(uri):
        raise ValueError(f"{uri} is not on this machine's disk")
    return Path(uri.removeprefix("file://"))


def _split(uri: str) -> tuple[str, str]:
    """s3://bucket/key -> (bucket, key)."""
    rest = uri.split("://", 1)[1]
    bucket, _, key = rest.partition("/")
    return bucket, key


@lru_cache(maxsize=4)
def _client(endpoint: str, region: str, path_style: bool):
    import boto3
    from botocore.config import Config

    config = Config(s3={"addressing_style": "path" if path_style else "auto"},
                    retries={"max_attempts": 5, "mode": "standard"})
    return boto3.client("s3", endpoint_url=endpoint or None, region_name=region, config=config)


def s3_client():
    """The boto3 S3 client of the current storage settings (one per process and settings)."""
    o = options()
    return _client(o.endpoint(), o.region(), o.s3_path_style)


def delta_rs_options(uri: str) -> dict[str, str] | None:
    """delta-rs's storage options for a table at uri (None on local disk)."""
    if not is_s3(uri):
        return None
    o = options()
    found = {"AWS_REGION": o.region(),
             # one writer at a time (the night's tasks run in order): no lock service is needed
             "AWS_S3_ALLOW_UNSAFE_RENAME": "true"}
    if o.endpoint():
        found["AWS_ENDPOINT_URL"] = o.endpoint()
        found["AWS_ALLOW_HTTP"] = "true" if o.endpoint().startswith("http://") else "false"
    if o.s3_path_style:
        found["AWS_VIRTUAL_HOSTED_STYLE_REQUEST"] = "false"
    return found


# --- listing ---

def listdir(uri: str) -> list[Entry]:
    """The files and folders directly in a folder, sorted by name; [] when it does not exist."""
    if is_s3(uri):
        bucket, key = _split(uri)
        prefix = key.rstrip("/") + "/" if key.strip("/") else ""
        scheme = uri.split("://", 1)[0]
        entries = []
        for page in s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"):
            for common in page.get("CommonPrefixes", []):
                name = common["Prefix"][len(prefix):].rstrip("/")
                entries.append(Entry(f"{scheme}://{bucket}/{common['Prefix'].rstrip('/')}", name, is_dir=True))
            for obj in page.get("Contents", []):
                name = obj["Key"][len(prefix):]
                if name:  # a "folder marker" object named like the prefix itself is not a file
                    entries.append(_object_entry(scheme, bucket, obj))
        return sorted(entries, key=lambda e: e.name)
    folder = local_path(uri)
    if not folder.is_dir():
        return []
    return sorted((_path_entry(p) for p in folder.iterdir()), key=lambda e: e.name)


def walk(uri: str) -> list[Entry]:
    """Every file below a folder (any depth), sorted by URI; [] when it does not exist."""
    if is_s3(uri):
        bucket, key = _split(uri)
        prefix = key.rstrip("/") + "/" if key.strip("/") else ""
        scheme = uri.split("://", 1)[0]
        return sorted((_object_entry(scheme, bucket, obj)
                       for page in s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
                       for obj in page.get("Contents", []) if not obj["Key"].endswith("/")), key=lambda e: e.uri)
    folder = local_path(uri)
    if not folder.is_dir():
        return []
    return sorted((_path_entry(p) for p in folder.rglob("*") if p.is_file()), key=lambda e: e.uri)


def stat(uri: str) -> Entry | None:
    """A file's entry; None when there is no such file."""
    if is_s3(uri):
        from botocore.exceptions import ClientError

        bucket, key = _split(uri)
        try:
            head = s3_client().head_object(Bucket=bucket, Key=key)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return Entry(uri, name_of(uri), size=head["ContentLength"], modified=head["LastModified"],
                     etag=head["ETag"].strip('"'))
    path = local_path(uri)
    return _path_entry(path) if path.is_file() else None


def _object_entry(scheme: str, bucket: str, obj: dict) -> Entry:
    return Entry(f"{scheme}://{bucket}/{obj['Key']}", name_of(obj["Key"]), size=obj["Size"],
                 modified=obj["LastModified"], etag=obj.get("ETag", "").strip('"'))


def _path_entry(path: Path) -> Entry:
    if path.is_dir():
        return Entry(str(path), path.name, is_dir=True)
    try:
        info = path.stat()
    except OSError:  # a dangling symlink, or removed meanwhile: reported by whoever opens it
        return Entry(str(path), path.name)
    return Entry(str(path), path.name, size=info.st_size,
                 modified=dt.datetime.fromtimestamp(info.st_mtime, dt.timezone.utc))


# --- reading and writing ---

def open_read(uri: str) -> BinaryIO:
    """A seekable binary reader (S3: ranged GETs, so reading a Parquet footer fetches the footer)."""
    if is_s3(uri):
        return io.BufferedReader(_RangeReader(uri), buffer_size=1 << 20)
    return open(local_path(uri), "rb")


def read_bytes(uri: str) -> bytes:
    if is_s3(uri):
        bucket, key = _split(uri)
        return s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
    return local_path(uri).read_bytes()


def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole file at once: readers see the old file or the new one, never a part (locally a
    hidden temporary file renamed into place; on S3 a PUT is atomic)."""
    if is_s3(uri):
        bucket, key = _split(uri)
        s3_client().put_object(Bucket=bucket, Key=key, Body=data)
        return
    path = local_path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")  # hidden: readers skip dot files
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())  # on disk before it takes the name
    temporary.replace(path)


def delete(uri: str) -> None:
    if is_s3(uri):
        bucket, key = _split(uri)
        s3_client().delete_object(Bucket=bucket, Key=key)
        return
    local_path(uri).unlink(missing_ok=True)


def upload_folder(folder: Path, uri: str) -> None:
    """Copy a local folder's files to uri (kept as they are when uri is the folder itself)."""
    if not is_s3(uri):
        target = local_path(uri)
        if target.resolve() != folder.resolve():
            shutil.copytree(folder, target, dirs_exist_ok=True)
        return
    bucket, key = _split(uri)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        s3_client().upload_file(str(path), bucket, join(key, str(path.relative_to(folder))))


def scratch_folder(prefix: str) -> Path:
    """A local temporary folder, for what is built on disk before it is copied to a store."""
    return Path(tempfile.mkdtemp(prefix=prefix))


class _RangeReader(io.RawIOBase):
    """A read-only, seekable view of an S3 object through ranged GETs."""

    def __init__(self, uri: str):
        self._bucket, self._key = _split(uri)
        self._size = s3_client().head_object(Bucket=self._bucket, Key=self._key)["ContentLength"]
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        self._position = max(0, base + offset)
        return self._position

    def readinto(self, buffer) -> int:
        if self._position >= self._size or not len(buffer):
            return 0
        end = min(self._position + len(buffer), self._size) - 1
        data = s3_client().get_object(Bucket=self._bucket, Key=self._key,
                                      Range=f"bytes={self._position}-{end}")["Body"].read()
        buffer[:len(data)] = data
        self._position += len(data)
        return len(data)
