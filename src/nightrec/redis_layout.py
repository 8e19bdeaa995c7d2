"""Redis layout v1 (docs/redis-layout.md): key names and the packed value codec.

Pure functions, no server: the loader and the lookup service both use this module, and the
tests pin it byte for byte.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

import numpy as np

CODEC_VERSION = 1
_HEADER = struct.Struct("<BH")  # codec version, item count
_IDS = np.dtype("<i4")
_SCORES = np.dtype("<f2")
_VERSION_ID = re.compile(r"^[0-9A-Za-z._-]{1,64}$")

FALLBACK_GLOBAL = "global"


@dataclass(frozen=True)
class Keys:
    """Every key of the layout under one prefix (default "nightrec")."""

    prefix: str = "nightrec"

    # Control keys share the hash tag {prefix}, so the flip script may touch them together
    # on a Redis Cluster (one slot); data keys carry no tag and spread over the cluster.
    @property
    def live(self) -> str:
        """String: the version id readers use. Flipped by one atomic script after a verified load."""
        return f"{{{self.prefix}}}:live"

    @property
    def previous(self) -> str:
        """String: the version that was live before the last flip (kept readable for rollback)."""
        return f"{{{self.prefix}}}:previous"

    @property
    def versions(self) -> str:
        """Sorted set: every version id whose load started, scored by start time (unix seconds)."""
        return f"{{{self.prefix}}}:versions"

    def meta(self, version: str) -> str:
        """Hash: what a version holds (ds, model_version, users, codec, published_at)."""
        return f"{self.prefix}:v:{check_version(version)}:meta"

    def user(self, version: str, user_id: int) -> str:
        """Packed recommendations of one user."""
        return f"{self.prefix}:v:{check_version(version)}:u:{int(user_id)}"

    def fallback(self, version: str, segment: str = FALLBACK_GLOBAL) -> str:
        """Packed list for users without personal recommendations (unknown / new users)."""
        return f"{self.prefix}:v:{check_version(version)}:fb:{segment}"

    def version_pattern(self, version: str) -> str:
        """SCAN pattern matching every key of one version (used to delete old versions)."""
        return f"{self.prefix}:v:{check_version(version)}:*"


def check_version(version: str) -> str:
    if not _VERSION_ID.match(version):
        raise ValueError(f"invalid version id {version!r}: use 1-64 of [0-9A-Za-z._-]")
    return version


def encode(item_ids, scores) -> bytes:
    """Header (codec version u8, count u16) + int32 item ids + float16 scores, little-endian."""
    ids = np.asarray(item_ids, dtype=np.int64)
    values = np.asarray(scores, dtype=np.float64)
    if ids.shape != values.shape or ids.ndim != 1:
        raise ValueError(f"item_ids and scores must be flat and equally long, got {ids.shape} and {values.shape}")
    if len(ids) > 0xFFFF:
        raise ValueError(f"at most 65535 items per value, got {len(ids)}")
    if len(ids) and (ids.min() < 1 or ids.max() > np.iinfo(_IDS).max):
        raise ValueError("item ids must be integers in 1..2^31-1")
    return _HEADER.pack(CODEC_VERSION, len(ids)) + ids.astype(_IDS).tobytes() + values.astype(_SCORES).tobytes()


def decode(value: bytes) -> tuple[list[int], list[float]]:
    if len(value) < _HEADER.size:
        raise ValueError("value too short for a nightrec header")
    codec, count = _HEADER.unpack_from(value)
    if codec != CODEC_VERSION:
        raise ValueError(f"unknown codec version {codec}")
    expected = _HEADER.size + count * (_IDS.itemsize + _SCORES.itemsize)
    if len(value) != expected:
        raise ValueError(f"value holds {len(value)} bytes, codec v1 with {count} items needs {expected}")
    ids = np.frombuffer(value, dtype=_IDS, count=count, offset=_HEADER.size)
    scores = np.frombuffer(value, dtype=_SCORES, count=count, offset=_HEADER.size + count * _IDS.itemsize)
    return ids.tolist(), scores.astype(np.float32).tolist()
