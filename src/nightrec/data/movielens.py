"""MovieLens-100K into the landing format.

GroupLens does not allow redistribution, so the data is fetched at setup: it ships inside the
PyPI wheel recbole==1.2.1 (recbole/dataset_example/ml-100k/), downloaded without dependencies.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import subprocess
import sys
import zipfile
from collections import defaultdict
from pathlib import Path

WHEEL = "recbole==1.2.1"
MEMBER = "recbole/dataset_example/ml-100k/ml-100k.{}"


def fetch_wheel(cache_dir: Path) -> Path:
    cache_dir.mkdir(parents=True, exist_ok=True)
    found = sorted(cache_dir.glob("recbole-1.2.1-*.whl"))
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", WHEEL,
                        "--dest", str(cache_dir)], check=True)
        found = sorted(cache_dir.glob("recbole-1.2.1-*.whl"))
    if not found:
        raise FileNotFoundError(f"pip download {WHEEL} left no wheel in {cache_dir}")
    return found[0]


def _rows(wheel: zipfile.ZipFile, kind: str) -> list[list[str]]:
    text = wheel.read(MEMBER.format(kind)).decode("latin-1")
    return [line.split("\t") for line in text.splitlines()[1:] if line.strip()]


def convert(wheel_path: Path, landing: Path) -> dict[str, int]:
    """Write interactions/dt=YYYY-MM-DD/ratings.csv, items.csv and users.csv; returns counts."""
    with zipfile.ZipFile(wheel_path) as wheel:
        ratings, items, users = _rows(wheel, "inter"), _rows(wheel, "item"), _rows(wheel, "user")
    by_day: dict[str, list[tuple]] = defaultdict(list)
    for user_id, item_id, rating, stamp in ratings:
        ts = dt.datetime.fromtimestamp(int(float(stamp)), tz=dt.timezone.utc)
        by_day[ts.date().isoformat()].append((user_id, item_id, "rating", rating, ts.strftime("%Y-%m-%dT%H:%M:%SZ")))
    for day, rows in by_day.items():
        folder = landing / "interactions" / f"dt={day}"
        folder.mkdir(parents=True, exist_ok=True)
        _write_csv(folder / "ratings.csv", ("user_id", "item_id", "event_type", "value", "ts"), sorted(rows))
    _write_csv(landing / "items.csv", ("item_id", "title", "genres", "year"),
               [(i, title, "|".join(genres.split()), year) for i, title, year, genres in _padded(items, 4)])
    _write_csv(landing / "users.csv", ("user_id", "age", "gender", "occupation"),
               [(u, age, gender, occupation) for u, age, gender, occupation, _zip in _padded(users, 5)])
    return {"interactions": len(ratings), "days": len(by_day), "items": len(items), "users": len(users),
            "first_day": min(by_day), "last_day": max(by_day)}


def _padded(rows: list[list[str]], width: int) -> list[list[str]]:
    return [row + [""] * (width - len(row)) for row in rows]


def _write_csv(path: Path, header: tuple[str, ...], rows) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    path.write_text(buffer.getvalue(), encoding="utf-8")
