"""Each image copies every file its code reads at run time (no daemon here to build them): the repo
folders the code names (a path literal like "models/x.toml", or a join like home / "dags") must be in
the image's COPY list, and every COPY source must exist. Path settings (the defaults in settings.py
and the values in conf/*.toml) are read by pipeline stages only: they count for the pipeline image.
var/ is where a run writes (a volume), never copied."""

import re
from pathlib import Path

import pytest

from helpers import PACKAGE, package_modules, reached_from

REPO = PACKAGE.parents[1]
DOCKER = REPO / "docker"
BUILD_ONLY = {"pyproject.toml", "constraints.txt", "README.md", "src"}  # what pip install needs, not the code
SPARK_SUBMIT = {"jobs"}  # read by spark-submit, not by the package: docs/deploy.md
WRITTEN = {"var"}


def copied(dockerfile: Path) -> set[str]:
    sources = set()
    for line in dockerfile.read_text().splitlines():
        if line.startswith("COPY "):
            parts = line.split()[1:]
            sources |= {p.rstrip("/").removeprefix("./") for p in parts[:-1] if not p.startswith("--")}
    return sources


def folders_named(text: str, literals: bool = True) -> set[str]:
    """Top-level repo entries a text refers to as paths (joins only, without literals)."""
    top = {p.name for p in REPO.iterdir() if not p.name.startswith(".")} - WRITTEN
    literal = {m.split("/")[0] for m in re.findall(r"[\"']([\w.-]+/[\w./-]+)[\"']", text)} if literals else set()
    joined = set(re.findall(r"/\s*[\"']([\w.-]+)[\"']", text))
    return (literal | joined) & top


def read_at_run_time(modules: set[str], path_settings: bool) -> set[str]:
    paths = package_modules()
    needed = set().union(*(folders_named(paths[m].read_text(), path_settings or m != "nightrec.settings")
                           for m in modules))
    if path_settings:
        needed |= set().union(*(folders_named(f.read_text()) for f in (REPO / "conf").glob("*.toml")))
    return needed


def test_the_scan_finds_what_the_code_is_known_to_read():
    assert read_at_run_time(set(package_modules()), path_settings=True) == {"conf", "models", "dags"}


@pytest.mark.parametrize("image, entry", [("pipeline", None), ("lookup", "nightrec.serving")])
def test_an_image_copies_everything_its_code_reads(image, entry):
    dockerfile = DOCKER / f"{image}.Dockerfile"
    modules = set(package_modules())
    if entry:  # what that image runs: the wing's closure, and the command line's own module
        modules = reached_from([m for m in modules if m.startswith(entry)]) | {"nightrec.cli"}
    pipeline = image == "pipeline"
    needed = read_at_run_time(modules, path_settings=pipeline) | (SPARK_SUBMIT if pipeline else set())
    sources = copied(dockerfile)
    assert needed <= sources, f"{dockerfile.name} does not copy {sorted(needed - sources)}"
    assert sources - BUILD_ONLY <= needed, (f"{dockerfile.name} copies what nothing reads: "
                                            f"{sources - BUILD_ONLY - needed}")
    missing = [s for s in sources if not (REPO / s).exists()]
    assert not missing, f"{dockerfile.name} copies {missing}, which the repo lacks"


def test_the_lookup_image_installs_the_serve_extra_alone():
    text = (DOCKER / "lookup.Dockerfile").read_text()
    assert '".[serve]"' in text and "pipeline" not in text.split("RUN pip install")[1].split("\n")[0]
    assert "openjdk" not in text
