"""The landing format (docs/landing-format.md): what users drop in, read into Spark as raw text.

Landing zones are written by other teams' systems, so each file is looked at on its own before
Spark reads anything (`inspect_file`, plain Python, cheap): a file that cannot be read at all is
set aside with its reason (quarantine/files) instead of stopping the day, an empty one is only
counted, and files are read in groups that share a format and header, each group on its own
terms. Row-level problems are left to validation.
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from nightrec.data import storage
from nightrec.errors import PermanentError

# request_id and position (optional) attribute an event to an answer of the lookup service
INTERACTION_COLUMNS = ("user_id", "item_id", "event_type", "value", "ts", "request_id", "position")
# Last in every table that has them, where tables written before them gained them: the lookup's
# request columns, then when the row's file reached the landing zone and its S3 ETag (bronze only).
ADDED_LATER = ("request_id", "position", "delivered_at", "source_etag")
REQUIRED_COLUMNS = ("user_id", "item_id", "event_type", "ts")
FORMATS = {".csv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
# Names writers give a file until it is complete: skipped tonight, read once renamed.
IN_PROGRESS = re.compile(r"(\.tmp|\.part|\.partial|\.inprogress|\._copying_|\.crdownload|\.filepart)$", re.I)
DAY_FOLDER = re.compile(r"^dt=\d{4}-\d{2}-\d{2}$")
JSON_LINES_LOOKED_AT = 20
CHUNK = 1 << 23

OK, EMPTY, QUARANTINED, SKIPPED = "ok", "empty", "quarantined", "skipped"
RAW_SCHEMA = ("user_id string, item_id string, event_type string, value string, ts string, request_id string, "
              "position string, source_file string, delivered_at timestamp, dt date")


class LandingError(PermanentError):
    pass


@dataclass(frozen=True)
class LandingFile:
    """One file of a day folder, as inspected before reading."""

    path: str
    day: dt.date
    size: int
    status: str                       # ok | empty | quarantined | skipped
    reason: str = ""                  # why, for every status but ok
    fmt: str = ""
    columns: dict[str, str] = field(default_factory=dict)  # interaction column -> its name in the file
    signature: tuple = ()             # files sharing it are read by Spark together
    modified: dt.datetime | None = None  # when it was delivered (last modified)
    etag: str = ""                    # the object's ETag on S3: a re-delivered object keeps it


# The landing files nightrec writes itself (the drained service streams; impressions come only from
# there): names in the day folders of each kind.
MANAGED = {"interactions": re.compile(r"^stream-.*\.jsonl$"), "impressions": re.compile(r"^[^._].*\.jsonl$")}


def day_folder(landing: str, day: dt.date, kind: str = "interactions") -> str:
    """Where a day's files of a kind go: interactions, or the service's impressions."""
    return storage.join(landing, kind, f"dt={day.isoformat()}")


def managed_files(landing: str) -> list[storage.Entry]:
    """The landing files nightrec wrote itself (drained streams), every day."""
    return [entry for kind in MANAGED for folder in storage.listdir(storage.join(landing, kind))
            if folder.is_dir and DAY_FOLDER.match(folder.name)
            for entry in storage.listdir(folder.uri) if not entry.is_dir and MANAGED[kind].match(entry.name)]


def stray_folders(landing: str) -> list[str]:
    """Entries under interactions/ that are not day folders: never read, reported."""
    return [e.uri for e in storage.listdir(storage.join(landing, "interactions"))
            if not e.name.startswith((".", "_")) and not (e.is_dir and DAY_FOLDER.match(e.name))]


def inspect_day(landing: str, day: dt.date, max_line_bytes: int) -> list[LandingFile] | None:
    """Every file of the day's folder, inspected; None when the folder holds nothing."""
    entries = storage.listdir(day_folder(landing, day))
    if not entries:
        return None
    found = []
    for entry in entries:
        if entry.name.startswith((".", "_")):
            continue  # hidden and marker files (_SUCCESS, .crc): not data
        if entry.is_dir:
            found.append(LandingFile(entry.uri, day, 0, SKIPPED, "a folder inside a day folder: not read"))
            continue
        found.append(inspect_file(entry, day, max_line_bytes))
    return found


def inspect_file(file: storage.Entry | str | Path, day: dt.date, max_line_bytes: int) -> LandingFile:
    """What this file is and whether Spark can read it, from its header / footer and line lengths."""
    entry = file if isinstance(file, storage.Entry) else storage.stat(str(file))
    uri = entry.uri if entry else str(file)

    def verdict(status: str, reason: str = "", **more) -> LandingFile:
        return LandingFile(uri, day, entry.size if entry else 0, status, reason,
                           modified=entry.modified if entry else None, etag=entry.etag if entry else "", **more)

    name = storage.name_of(uri)
    if IN_PROGRESS.search(name):
        return verdict(SKIPPED, "still being written (temporary name): read once renamed")
    if entry is None or entry.modified is None:  # a dangling symlink, a file removed meanwhile
        return verdict(QUARANTINED, "cannot be opened: no such file")
    suffix = Path(name).suffix
    fmt = FORMATS.get(suffix.lower())
    if fmt is None:
        return verdict(QUARANTINED, f"unsupported file type {suffix or '(no extension)'!r}: "
                                    f"use one of {', '.join(sorted(FORMATS))}")
    if entry.size == 0:
        return verdict(EMPTY, "0 bytes", fmt=fmt)
    try:
        if fmt == "parquet":
            return _inspect_parquet(uri, verdict)
        return _inspect_text(uri, fmt, max_line_bytes, verdict)
    except PermissionError:
        return verdict(QUARANTINED, "cannot be read: permission denied")
    except OSError as error:
        return verdict(QUARANTINED, f"cannot be read: {error.strerror or error}")


def _inspect_parquet(uri: str, verdict) -> LandingFile:
    try:
        with storage.open_read(uri) as handle:
            metadata = pq.read_metadata(handle)
        schema = metadata.schema.to_arrow_schema()  # the same footer: read once
    except Exception as error:  # pyarrow raises several types for a broken footer
        return verdict(QUARANTINED, f"not a readable Parquet file ({_first_line(error)})", fmt="parquet")
    columns, reason = _match_columns(schema.names)
    if reason:
        return verdict(QUARANTINED, reason, fmt="parquet")
    if metadata.num_rows == 0:
        return verdict(EMPTY, "no rows", fmt="parquet")
    signature = ("parquet", str(schema.remove_metadata()))
    return verdict(OK, fmt="parquet", columns=columns, signature=signature)


def _inspect_text(uri: str, fmt: str, max_line_bytes: int, verdict) -> LandingFile:
    head, longest = _scan_lines(uri, max_line_bytes, keep=JSON_LINES_LOOKED_AT + 1)
    if longest > max_line_bytes:
        return verdict(QUARANTINED, f"a line of over {max_line_bytes:,} bytes (validation.max_line_bytes): "
                                    "not line-delimited records", fmt=fmt)
    if head and (head[0].startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) or b"\x00" in head[0]):
        return verdict(QUARANTINED, "UTF-16 text: landing files must be UTF-8", fmt=fmt)
    content = [h for h in head if h.strip()]
    if fmt == "csv":
        return _inspect_csv(content, verdict)
    if not content:
        return verdict(EMPTY, "no records", fmt=fmt)
    return _inspect_json(content, verdict)


def _inspect_csv(content: list[bytes], verdict) -> LandingFile:
    if not content:
        return verdict(EMPTY, "no lines", fmt="csv")
    try:
        text = content[0].removeprefix(codecs.BOM_UTF8).decode("utf-8")
    except UnicodeDecodeError:
        return verdict(QUARANTINED, "the header line is not UTF-8 text", fmt="csv")
    header = next(csv.reader([text]), [])
    columns, reason = _match_columns(header)
    if reason:
        return verdict(QUARANTINED, reason, fmt="csv")
    if len(content) == 1:
        return verdict(EMPTY, "a header and no rows", fmt="csv")
    return verdict(OK, fmt="csv", columns=columns, signature=("csv", tuple(header)))  # Spark drops a BOM itself


def _inspect_json(content: list[bytes], verdict) -> LandingFile:
    keys: set[str] = set()
    objects = 0
    for line in content[:JSON_LINES_LOOKED_AT]:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            objects += 1
            keys.update(record)
    if not objects:
        return verdict(QUARANTINED, f"not JSON lines: none of its first {min(len(content), JSON_LINES_LOOKED_AT)} "
                                    "lines is a JSON object", fmt="json")
    columns, reason = _match_columns(sorted(keys))
    if reason:
        return verdict(QUARANTINED, reason, fmt="json")
    return verdict(OK, fmt="json", columns=columns, signature=("json", tuple(sorted(keys))))


def _scan_lines(uri: str, max_line_bytes: int, keep: int) -> tuple[list[bytes], int]:
    """(first `keep` lines, longest line in bytes), reading the file in chunks; stops at the first
    line longer than max_line_bytes."""
    head: list[bytes] = []
    partial, longest = b"", 0
    with storage.open_read(uri) as handle:
        while chunk := handle.read(CHUNK):
            pieces = chunk.split(b"\n")
            pieces[0] = partial + pieces[0]
            partial = pieces.pop()
            longest = max(longest, max(map(len, pieces), default=0))
            head.extend(piece.rstrip(b"\r") for piece in pieces[:keep - len(head)])
            if max(longest, len(partial)) > max_line_bytes:
                return head, max(longest, len(partial))
    if partial:
        longest = max(longest, len(partial))
        if len(head) < keep:
            head.append(partial.rstrip(b"\r"))
    return head, longest


def _match_columns(names: list[str]) -> tuple[dict[str, str], str]:
    """Interaction column -> the file's own name for it (blanks and case ignored), or a reason."""
    by_key = {}
    for name in names:
        by_key.setdefault(name.strip().lower(), name)
    columns = {c: by_key[c] for c in INTERACTION_COLUMNS if c in by_key}
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
        return {}, f"no column(s) {', '.join(missing)}; its columns are: {shown or '(none)'}"
    return columns, ""


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__


def read_interactions(spark: SparkSession, files: list[LandingFile]) -> DataFrame:
    """The readable files as raw text columns plus source_file, delivered_at (the file's last
    modification: when it reached the landing zone) and dt (its folder's day); groups of files
    sharing format and header are read together, each on its own terms."""
    groups: dict[tuple, list[LandingFile]] = {}
    for f in files:
        if f.status == OK:
            groups.setdefault(f.signature, []).append(f)
    frames = [_read_group(spark, group) for group in groups.values()]
    if not frames:
        return spark.createDataFrame([], RAW_SCHEMA)
    combined = frames[0]
    for frame in frames[1:]:
        combined = combined.unionByName(frame)
    day = F.regexp_extract(F.col("source_file"), r"/dt=(\d{4}-\d{2}-\d{2})/", 1)
    return combined.withColumn("dt", F.to_date(day))


def _read_group(spark: SparkSession, group: list[LandingFile]) -> DataFrame:
    first, paths = group[0], [f.path for f in group]
    if first.fmt == "csv":
        # multiLine: a quoted field may hold a newline; each file is then read whole by one task
        frame = (spark.read.option("header", True).option("inferSchema", False).option("multiLine", True)
                 .option("enforceSchema", False).csv(paths))
    elif first.fmt == "json":
        frame = spark.read.option("primitivesAsString", True).json(paths)
    else:
        frame = spark.read.parquet(*paths)
    columns = first.columns
    if first.fmt == "json":  # Spark saw every line: optional keys the first lines lack count too
        columns = _match_columns(frame.columns)[0] or columns
    return frame.select(*[_as_text(frame, columns.get(c), c) for c in INTERACTION_COLUMNS],
                        F.input_file_name().alias("source_file"), delivered_at())


def _as_text(frame: DataFrame, name: str | None, column: str) -> Column:
    if name is None or name not in frame.columns:  # `value`, `request_id` and `position` are optional
        return F.lit(None).cast("string").alias(column)
    field_type = frame.schema[name].dataType.typeName()
    source = F.col(f"`{name}`")
    if field_type in ("timestamp", "timestamp_ntz"):
        return F.date_format(source, "yyyy-MM-dd'T'HH:mm:ss.SSSSSSXXX").alias(column)
    return source.cast("string").alias(column)


def delivered_at() -> Column:
    """When a row's file reached us (its last modification time), of a frame read from files."""
    return F.col("_metadata.file_modification_time").alias("delivered_at")


def added_columns_last(frame: DataFrame) -> DataFrame:
    """The columns a table gained after its first version go last, in new tables as in old ones."""
    return frame.select(*[c for c in frame.columns if c not in ADDED_LATER],
                        *[c for c in ADDED_LATER if c in frame.columns])


def read_attributes(spark: SparkSession, landing: str, name: str) -> DataFrame | None:
    """Optional items.* / users.* attribute file of the landing zone."""
    present = {e.name: e.uri for e in storage.listdir(landing) if not e.is_dir}
    for suffix, fmt in FORMATS.items():
        uri = present.get(f"{name}{suffix}")
        if uri is None:
            continue
        if fmt == "csv":
            return spark.read.option("header", True).csv(uri)  # all text: "007" stays "007"
        if fmt == "json":
            return spark.read.option("primitivesAsString", True).json(uri)
        return spark.read.parquet(uri)
    return None
