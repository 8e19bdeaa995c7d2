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

from nightrec.errors import PermanentError

# request_id and position (optional) attribute an event to an answer of the lookup service
INTERACTION_COLUMNS = ("user_id", "item_id", "event_type", "value", "ts", "request_id", "position")
# Last in every table that has them, where tables written before them gained them: the lookup's
# request columns, then when the row's file reached the landing zone (bronze only).
ADDED_LATER = ("request_id", "position", "delivered_at")
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


# The landing files nightrec writes itself (the drained service streams; impressions come only from
# there), as globs under the landing zone.
MANAGED_PATTERNS = ("interactions/dt=*/stream-*.jsonl", "impressions/dt=*/*.jsonl")


def day_folder(landing: str, day: dt.date, kind: str = "interactions") -> Path:
    """Where a day's files of a kind go: interactions, or the service's impressions."""
    return Path(landing) / kind / f"dt={day.isoformat()}"


def stray_folders(landing: str) -> list[str]:
    """Entries under interactions/ that are not day folders: never read, reported."""
    root = Path(landing) / "interactions"
    if not root.is_dir():
        return []
    return sorted(str(p) for p in root.iterdir()
                  if not p.name.startswith((".", "_")) and not (p.is_dir() and DAY_FOLDER.match(p.name)))


def inspect_day(landing: str, day: dt.date, max_line_bytes: int) -> list[LandingFile] | None:
    """Every file of the day's folder, inspected; None when the folder does not exist."""
    folder = day_folder(landing, day)
    if not folder.is_dir():
        return None
    found = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith((".", "_")):
            continue  # hidden and marker files (_SUCCESS, .crc): not data
        if path.is_dir():
            found.append(LandingFile(str(path), day, 0, SKIPPED, "a folder inside a day folder: not read"))
            continue
        found.append(inspect_file(path, day, max_line_bytes))
    return found


def inspect_file(path: Path, day: dt.date, max_line_bytes: int) -> LandingFile:
    """What this file is and whether Spark can read it, from its header / footer and line lengths."""
    def verdict(status: str, reason: str = "", **more) -> LandingFile:
        return LandingFile(str(path), day, size, status, reason, **more)

    size = 0
    if IN_PROGRESS.search(path.name):
        return verdict(SKIPPED, "still being written (temporary name): read once renamed")
    try:
        size = path.stat().st_size
    except OSError as error:  # a dangling symlink, a file removed meanwhile
        return verdict(QUARANTINED, f"cannot be opened: {error.strerror}")
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        return verdict(QUARANTINED, f"unsupported file type {path.suffix or '(no extension)'!r}: "
                                    f"use one of {', '.join(sorted(FORMATS))}")
    if size == 0:
        return verdict(EMPTY, "0 bytes", fmt=fmt)
    try:
        if fmt == "parquet":
            return _inspect_parquet(path, verdict)
        return _inspect_text(path, fmt, max_line_bytes, verdict)
    except PermissionError:
        return verdict(QUARANTINED, "cannot be read: permission denied")
    except OSError as error:
        return verdict(QUARANTINED, f"cannot be read: {error.strerror or error}")


def _inspect_parquet(path: Path, verdict) -> LandingFile:
    try:
        metadata = pq.read_metadata(path)
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


def _inspect_text(path: Path, fmt: str, max_line_bytes: int, verdict) -> LandingFile:
    head, longest = _scan_lines(path, max_line_bytes, keep=JSON_LINES_LOOKED_AT + 1)
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


def _scan_lines(path: Path, max_line_bytes: int, keep: int) -> tuple[list[bytes], int]:
    """(first `keep` lines, longest line in bytes), reading the file in chunks; stops at the first
    line longer than max_line_bytes."""
    head: list[bytes] = []
    partial, longest = b"", 0
    with open(path, "rb") as handle:
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
    for suffix, fmt in FORMATS.items():
        path = Path(landing) / f"{name}{suffix}"
        if path.is_file():
            if fmt == "csv":
                return spark.read.option("header", True).csv(str(path))  # all text: "007" stays "007"
            if fmt == "json":
                return spark.read.option("primitivesAsString", True).json(str(path))
            return spark.read.parquet(str(path))
    return None
