"""Redis layout v2 (docs/redis-layout.md): key names and value codecs.

Pure functions, no server: the loader, the lookup service and the CLI all use this module, and the
tests pin it byte for byte.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

import numpy as np

from nightrec.constants import GLOBAL_SEGMENT, MAX_ID

RANKED = 1       # value codec: ranked item ids + scores
SEGMENT_REF = 2  # value codec: "use the list of this segment" (users known only from the user file)
ID_SET = 3       # value codec: sorted item ids (category members, unavailable items)
ITEM_STATS = 4   # value codec: item ids with impression and click counts (exploration)
_RANKED_HEADER = struct.Struct("<BH")  # codec, item count
_SET_HEADER = struct.Struct("<BI")     # codec, id count
_IDS = np.dtype("<i4")
_SCORES = np.dtype("<f2")
_SCORE_LIMIT = float(np.finfo(np.float16).max)  # 65504: larger scores (e.g. popularity counts) are stored as this
_VERSION_ID = re.compile(r"^[0-9A-Za-z._-]{1,64}$")
_PREFIX = re.compile(r"^[0-9A-Za-z._-]{1,32}$")
_NAME = re.compile(r"^[^{}*?\[\]\s\x00-\x1f][^{}*?\[\]\x00-\x1f]{0,99}$")  # segments, categories
_VARIANT = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
MAX_CONSUMED = 1000  # newest consumed items kept per user
LAYOUT = 2  # v2 adds experiments: variant lists, the running experiment, impressions (v1 readers ignore them)


@dataclass(frozen=True)
class Keys:
    """Every key of the layout under one prefix (default "nightrec").

    Control keys share the hash tag {prefix}, so the flip script may touch them together on a Redis
    Cluster (one slot); data keys carry no tag and spread over the cluster's nodes.
    """

    prefix: str = "nightrec"

    def __post_init__(self):
        if not _PREFIX.match(self.prefix):
            raise ValueError(f"invalid key prefix {self.prefix!r}: use 1-32 of [0-9A-Za-z._-]")

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

    @property
    def sequence(self) -> str:
        """Counter: INCR gives each load a short unique number (part of its version id)."""
        return f"{{{self.prefix}}}:seq"

    @property
    def events(self) -> str:
        """Stream: interaction events posted to the service, drained nightly into the landing zone."""
        return f"{{{self.prefix}}}:events"

    @property
    def events_drained(self) -> str:
        """String: the last stream id already written to the landing zone."""
        return f"{{{self.prefix}}}:events:drained"

    @property
    def experiment(self) -> str:
        """String: the running experiment as JSON (nightrec.serving.experiments); absent when none runs."""
        return f"{{{self.prefix}}}:experiment"

    @property
    def night(self) -> str:
        """String: the last night's record as JSON (state, stage seconds, rows, metrics), written by its
        report: what /healthz and /metrics say about the nights."""
        return f"{{{self.prefix}}}:night"

    @property
    def explore(self) -> str:
        """Item stats (codec 4): the items exploration may show, with their impressions and clicks."""
        return f"{{{self.prefix}}}:explore"

    @property
    def impressions(self) -> str:
        """Stream: what the service answered (request id, user, variant, items), drained nightly."""
        return f"{{{self.prefix}}}:impressions"

    @property
    def impressions_drained(self) -> str:
        """String: the last impression stream id already written to the landing zone."""
        return f"{{{self.prefix}}}:impressions:drained"

    @property
    def api_keys(self) -> str:
        """Hash: API key id -> its record as JSON (name, scope, salt, salted SHA-256 of the secret, times)."""
        return f"{{{self.prefix}}}:keys"

    def rate(self, key_id: str) -> str:
        """Hash: an API key's token bucket (tokens left, when), shared by every worker."""
        return f"{{{self.prefix}}}:rate:{key_id}"

    @property
    def audit(self) -> str:
        """Stream: admin actions (keys, opt-outs, erasures, rollbacks, experiments), drained nightly."""
        return f"{{{self.prefix}}}:audit"

    @property
    def privacy(self) -> str:
        """Stream: opt-out and erasure requests, drained nightly into the privacy/requests table."""
        return f"{{{self.prefix}}}:privacy"

    @property
    def privacy_drained(self) -> str:
        """String: the last request stream id already in the privacy/requests table."""
        return f"{self.privacy}:drained"

    def opted_out(self, user_id: int) -> str:
        """String `<kind>:<request id>` of the user's latest opt-out or erasure: the user gets no
        personal list and their events are dropped. Shares the user's hash tag: the lookup reads it
        in its one MGET. Gone once an erasure is done (unless the user had opted out before)."""
        return f"{self.prefix}:optout:{{{int(user_id)}}}"

    def consumed(self, user_id: int) -> str:
        """String of int32 item ids the user took lately (posted events): filtered out until published.
        Shares the user's hash tag with the user's list, so one MGET reads both, on a cluster too."""
        return f"{self.prefix}:consumed:{{{int(user_id)}}}"

    def meta(self, version: str) -> str:
        """Hash: what a version holds (ds, model_version, counts, categories, published_at)."""
        return f"{self.prefix}:v:{check_version(version)}:meta"

    def user(self, version: str, user_id: int) -> str:
        """A user's ranked list, or a reference to a segment list. Hash tag: the user id."""
        return f"{self.user_prefix(version)}{{{int(user_id)}}}"

    def user_prefix(self, version: str) -> str:
        """What every user key of a version starts with."""
        return f"{self.prefix}:v:{check_version(version)}:u:"

    def users(self, version: str, user_ids: list[int]) -> list[str]:
        """user() of many ids at once (bulk loads)."""
        prefix = self.user_prefix(version)
        return [f"{prefix}{{{u}}}" for u in user_ids]

    def variant_user(self, version: str, variant: str, user_id: int) -> str:
        """A user's list as an experiment's variant serves it (only users assigned to that variant).
        Same hash tag as the user's own list: one MGET reads both."""
        return f"{self.variant_prefix(version, variant)}{{{int(user_id)}}}"

    def variant_prefix(self, version: str, variant: str) -> str:
        return f"{self.prefix}:v:{check_version(version)}:x:{check_variant(variant)}:u:"

    def variant_users(self, version: str, variant: str, user_ids: list[int]) -> list[str]:
        prefix = self.variant_prefix(version, variant)
        return [f"{prefix}{{{u}}}" for u in user_ids]

    def fallback(self, version: str, segment: str = GLOBAL_SEGMENT) -> str:
        """Ranked list for users without personal recommendations: global trending, or a segment's."""
        return f"{self.prefix}:v:{check_version(version)}:fb:{check_name(segment, 'segment')}"

    def similar(self, version: str, item_id: int) -> str:
        """Ranked list of an item's nearest neighbours."""
        return f"{self.similar_prefix(version)}{int(item_id)}"

    def similar_prefix(self, version: str) -> str:
        return f"{self.prefix}:v:{check_version(version)}:sim:"

    def similars(self, version: str, item_ids: list[int]) -> list[str]:
        prefix = self.similar_prefix(version)
        return [f"{prefix}{i}" for i in item_ids]

    def category(self, version: str, name: str) -> str:
        """Id set: the items of one category."""
        return f"{self.prefix}:v:{check_version(version)}:cat:{check_name(name, 'category')}"

    def unavailable(self, version: str) -> str:
        """Id set: items that must not be recommended (out of stock, withdrawn)."""
        return f"{self.prefix}:v:{check_version(version)}:unavailable"

    def version_pattern(self, version: str) -> str:
        """SCAN pattern matching every key of one version (used to delete old versions)."""
        return f"{self.prefix}:v:{check_version(version)}:*"


def check_version(version: str) -> str:
    if not _VERSION_ID.match(version):
        raise ValueError(f"invalid version id {version!r}: use 1-64 of [0-9A-Za-z._-]")
    return version


def check_variant(name: str) -> str:
    if not _VARIANT.match(name):
        raise ValueError(f"invalid name {name!r}: 1-32 of a-z 0-9 _ -, starting with a letter or digit")
    return name


def check_name(name: str, what: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"invalid {what} name {name!r}: 1-100 characters, no braces, glob characters, "
                         "control characters or leading space")
    return name


def _check_ids(ids: np.ndarray) -> None:
    if len(ids) and (ids.min() < 1 or ids.max() > MAX_ID):
        raise ValueError("item ids must be integers in 1..2^31-1")


def encode(item_ids, scores) -> bytes:
    """Codec 1: header (codec u8, count u16) + int32 item ids + float16 scores, little-endian."""
    ids = np.asarray(item_ids, dtype=np.int64)
    values = np.asarray(scores, dtype=np.float64)
    if ids.shape != values.shape or ids.ndim != 1:
        raise ValueError(f"item_ids and scores must be flat and equally long, got {ids.shape} and {values.shape}")
    if len(ids) > 0xFFFF:
        raise ValueError(f"at most 65535 items per value, got {len(ids)}")
    _check_ids(ids)
    return _RANKED_HEADER.pack(RANKED, len(ids)) + ids.astype(_IDS).tobytes() + _half(values).tobytes()


def encode_many(offsets: np.ndarray, item_ids: np.ndarray, scores: np.ndarray) -> list[bytes]:
    """encode() of many lists at once, given as Arrow-style offsets into flat ids and scores."""
    offsets = np.asarray(offsets, dtype=np.int64)
    ids = np.asarray(item_ids, dtype=np.int64)
    if len(ids) != len(scores) or offsets[-1] != len(ids):
        raise ValueError("offsets, item_ids and scores do not describe the same lists")
    counts = np.diff(offsets)
    if len(counts) and counts.max() > 0xFFFF:
        raise ValueError(f"at most 65535 items per value, got {counts.max()}")
    _check_ids(ids)
    if len(counts) and (counts == counts[0]).all():  # the usual case, every list k long: one numpy pass
        n, count = len(counts), int(counts[0])
        width = _RANKED_HEADER.size + count * (_IDS.itemsize + _SCORES.itemsize)
        values = np.empty((n, width), dtype=np.uint8)
        values[:, :_RANKED_HEADER.size] = np.frombuffer(_RANKED_HEADER.pack(RANKED, count), dtype=np.uint8)
        values[:, _RANKED_HEADER.size:_RANKED_HEADER.size + 4 * count] = \
            ids.astype(_IDS).reshape(n, count).view(np.uint8)
        values[:, _RANKED_HEADER.size + 4 * count:] = \
            _half(scores).reshape(n, count).view(np.uint8)
        packed = values.tobytes()
        return [packed[i:i + width] for i in range(0, n * width, width)]
    id_bytes = ids.astype(_IDS).tobytes()
    score_bytes = _half(scores).tobytes()
    pack = _RANKED_HEADER.pack
    return [pack(RANKED, e - s) + id_bytes[4 * s:4 * e] + score_bytes[2 * s:2 * e]
            for s, e in zip(offsets[:-1].tolist(), offsets[1:].tolist())]


def _half(scores) -> np.ndarray:
    """Scores as float16, clipped to its finite range (inf would reach clients as JSON null)."""
    return np.clip(np.asarray(scores, dtype=np.float32), -_SCORE_LIMIT, _SCORE_LIMIT).astype(_SCORES)


def decode(value: bytes, limit: int | None = None) -> tuple[list[int], list[float]]:
    """Codec 1 -> (item ids, scores); only the first `limit` entries when given (the value is still
    checked whole)."""
    if len(value) < _RANKED_HEADER.size:
        raise ValueError("value too short for a nightrec header")
    codec, count = _RANKED_HEADER.unpack_from(value)
    if codec != RANKED:
        raise ValueError(f"expected a ranked list (codec {RANKED}), found codec {codec}")
    expected = _RANKED_HEADER.size + count * (_IDS.itemsize + _SCORES.itemsize)
    if len(value) != expected:
        raise ValueError(f"value holds {len(value)} bytes, codec 1 with {count} items needs {expected}")
    wanted = count if limit is None else min(count, limit)
    ids = np.frombuffer(value, dtype=_IDS, count=wanted, offset=_RANKED_HEADER.size)
    scores = np.frombuffer(value, dtype=_SCORES, count=wanted, offset=_RANKED_HEADER.size + count * _IDS.itemsize)
    return ids.tolist(), scores.astype(np.float32).tolist()


def encode_segment_ref(segment: str) -> bytes:
    """Codec 2: the user has no personal list; read the segment's fallback list instead."""
    return bytes([SEGMENT_REF]) + check_name(segment, "segment").encode()


def decode_user(value: bytes, limit: int | None = None) -> tuple[list[int], list[float]] | str:
    """A user key's value: (item ids, scores), or the name of the segment whose list applies."""
    if value[:1] == bytes([SEGMENT_REF]):
        try:
            return check_name(value[1:].decode(), "segment")
        except (UnicodeDecodeError, ValueError):
            raise ValueError("segment reference holds no valid segment name") from None
    return decode(value, limit)


def encode_id_set(item_ids) -> bytes:
    """Codec 3: header (codec u8, count u32) + sorted distinct int32 item ids."""
    ids = np.unique(np.asarray(item_ids, dtype=np.int64))
    _check_ids(ids)
    return _SET_HEADER.pack(ID_SET, len(ids)) + ids.astype(_IDS).tobytes()


def decode_id_set(value: bytes) -> frozenset[int]:
    if len(value) < _SET_HEADER.size:
        raise ValueError("value too short for an id set header")
    codec, count = _SET_HEADER.unpack_from(value)
    if codec != ID_SET or len(value) != _SET_HEADER.size + count * _IDS.itemsize:
        raise ValueError(f"not a codec {ID_SET} id set of {count} ids")
    return frozenset(np.frombuffer(value, dtype=_IDS, count=count, offset=_SET_HEADER.size).tolist())


def encode_consumed(item_id: int) -> bytes:
    """One consumed item as appended to a user's consumed key: int32, little-endian, no header."""
    _check_ids(np.asarray([item_id], dtype=np.int64))
    return _IDS.type(item_id).tobytes()


def decode_consumed(value: bytes | None) -> set[int]:
    if not value:
        return set()
    return set(np.frombuffer(value, dtype=_IDS, count=len(value) // _IDS.itemsize).tolist())


def encode_item_stats(item_ids, impressions, clicks) -> bytes:
    """Codec 4: header (codec u8, count u32) + int32 item ids + uint32 impressions + uint32 clicks."""
    ids = np.asarray(item_ids, dtype=np.int64)
    shown, clicked = np.asarray(impressions, dtype=np.int64), np.asarray(clicks, dtype=np.int64)
    if not ids.shape == shown.shape == clicked.shape or ids.ndim != 1:
        raise ValueError("item_ids, impressions and clicks must be flat and equally long")
    _check_ids(ids)
    if len(ids) and (clicked.min() < 0 or (clicked > shown).any() or shown.max() > 0xFFFFFFFF):
        raise ValueError("need 0 <= clicks <= impressions < 2^32")
    return (_SET_HEADER.pack(ITEM_STATS, len(ids)) + ids.astype(_IDS).tobytes() + shown.astype("<u4").tobytes()
            + clicked.astype("<u4").tobytes())


def decode_item_stats(value: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if len(value) < _SET_HEADER.size:
        raise ValueError("value too short for an item stats header")
    codec, count = _SET_HEADER.unpack_from(value)
    if codec != ITEM_STATS or len(value) != _SET_HEADER.size + 12 * count:
        raise ValueError(f"not a codec {ITEM_STATS} value of {count} items")
    offset = _SET_HEADER.size
    ids = np.frombuffer(value, dtype=_IDS, count=count, offset=offset)
    shown = np.frombuffer(value, dtype="<u4", count=count, offset=offset + 4 * count)
    clicked = np.frombuffer(value, dtype="<u4", count=count, offset=offset + 8 * count)
    return ids.astype(np.int64), shown.astype(np.int64), clicked.astype(np.int64)
