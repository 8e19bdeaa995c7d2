"""The model artifact: a fitted Bundle as named arrays and a JSON manifest, with a format version.

Nothing in it names a Python module or class, so moving code never breaks loading a registered
champion or rollback target: each component is stored under its kind ("als", "itemknn", ...) and
rebuilt by the registry of component kinds (nightrec.modeling.candidates.COMPONENTS).

A folder holds
    manifest.json   {"format": "nightrec-model", "format_version": 1, "catalog_items": N,
                     "recipe": {...}, "weights": {name: w},
                     "components": {name: {"kind": ..., "description": {...}, "arrays": [...]}},
                     "rules": {"max_per_category": k, "arrays": [...]},
                     "arrays": {array name: {"dtype": ..., "shape": [...]}}}
    arrays.npz      every array by name: item_ids, <component>.<array>, rules.<array>
(numpy's npz: a zip of .npy files, read with pickles refused). No per-user state is stored: users
are folded in from their history when they are scored.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from nightrec.errors import PermanentError
from nightrec.modeling.candidates import COMPONENTS
from nightrec.modeling.scoring import Bundle, Rules

FORMAT = "nightrec-model"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ARRAYS = "arrays.npz"


class UnsupportedArtifact(PermanentError):
    """A model folder this nightrec cannot read: another format, a newer version, or a pickle."""


def save_bundle(bundle: Bundle, folder: Path) -> Path:
    """Write the bundle into folder (created); returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {"item_ids": np.asarray(bundle.item_ids)}
    components = {}
    for name, component in bundle.components.items():
        own = component.arrays()
        arrays |= {f"{name}.{key}": np.asarray(value) for key, value in own.items()}
        components[name] = {"kind": component.kind, "description": component.describe(), "arrays": sorted(own)}
    rule_arrays = {key: value for key, value in (("unavailable", bundle.rules.unavailable),
                                                 ("categories", bundle.rules.categories)) if value is not None}
    arrays |= {f"rules.{key}": value for key, value in rule_arrays.items()}
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "catalog_items": int(len(bundle.item_ids)),
                "recipe": bundle.params, "weights": bundle.weights, "components": components,
                "rules": {"max_per_category": bundle.rules.max_per_category, "arrays": sorted(rule_arrays)},
                "arrays": {key: {"dtype": value.dtype.str, "shape": list(value.shape)}
                           for key, value in arrays.items()}}
    with open(folder / ARRAYS, "wb") as handle:
        np.savez(handle, **arrays)
    # insertion order kept: the blend adds components in the order of `weights` (float sums depend on it)
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return folder


def read_manifest(folder: Path) -> dict:
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise UnsupportedArtifact(f"{folder} holds no {MANIFEST}: not a nightrec model")
    try:
        manifest = json.loads(path.read_text())
    except ValueError as error:
        raise UnsupportedArtifact(f"{path} is not JSON: {error}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise UnsupportedArtifact(f"{path}: not a {FORMAT} manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise UnsupportedArtifact(f"{path}: format version {manifest.get('format_version')!r}, this nightrec reads "
                                  f"version {FORMAT_VERSION}; install the nightrec that wrote it, or retrain")
    return manifest


def load_bundle(folder: Path) -> Bundle:
    folder = Path(folder)
    manifest = read_manifest(folder)
    with np.load(folder / ARRAYS, allow_pickle=False) as stored:
        arrays = {key: stored[key] for key in stored.files}
    missing = sorted(set(manifest["arrays"]) - set(arrays))
    if missing:
        raise UnsupportedArtifact(f"{folder / ARRAYS} lacks arrays the manifest lists: {missing}")
    components = {}
    for name, entry in manifest["components"].items():
        if entry["kind"] not in COMPONENTS:
            raise UnsupportedArtifact(f"{folder}: component {name!r} is of unknown kind {entry['kind']!r}; "
                                      f"known kinds: {sorted(COMPONENTS)}")
        own = {key: arrays[f"{name}.{key}"] for key in entry["arrays"]}
        components[name] = COMPONENTS[entry["kind"]].restore(entry["description"], own)
    rules = manifest["rules"]
    return Bundle(arrays["item_ids"], components, {k: float(w) for k, w in manifest["weights"].items()},
                  Rules(unavailable=arrays.get("rules.unavailable"), categories=arrays.get("rules.categories"),
                        max_per_category=rules["max_per_category"]), manifest["recipe"])
