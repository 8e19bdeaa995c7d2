"""The model artifact format: arrays and a JSON manifest, no pickles, no module paths; read back it
scores exactly as written, and a folder it cannot read fails with a message that says why."""

import json

import numpy as np
import pytest
import scipy.sparse as sp

from nightrec.modeling.artifact import ARRAYS, FORMAT_VERSION, MANIFEST, UnsupportedArtifact, load_bundle, save_bundle
from nightrec.modeling.candidates.als import AlsComponent
from nightrec.modeling.candidates.content import ContentComponent
from nightrec.modeling.candidates.itemknn import ItemKnnComponent
from nightrec.modeling.candidates.neighbours import NeighboursComponent
from nightrec.modeling.candidates.popularity import PopularityComponent
from nightrec.modeling.scoring import Bundle, Rules, UserBlock

N_ITEMS = 30


def every_kind(rng) -> Bundle:
    factors = rng.normal(size=(N_ITEMS, 4)).astype(np.float32)
    factors[7] = 0  # an item the fit never saw
    ease = rng.normal(size=(10, 10)).astype(np.float32)
    np.fill_diagonal(ease, 0)
    components = {
        "als": AlsComponent(factors, alpha=3.0, reg_param=0.1),
        "itemknn": ItemKnnComponent(np.arange(0, 20, 2), ease),
        "neighbours": NeighboursComponent(sp.random(N_ITEMS, N_ITEMS, 0.2, "csr", np.float32, rng)),
        "content": ContentComponent(sp.random(N_ITEMS, 12, 0.3, "csr", np.float32, rng)),
        "popularity": PopularityComponent(rng.random(N_ITEMS).astype(np.float32)),
    }
    rules = Rules(unavailable=np.arange(N_ITEMS) % 9 == 0, categories=(np.arange(N_ITEMS) % 4 - 1).astype(np.int32),
                  max_per_category=3)
    return Bundle(np.arange(100, 100 + N_ITEMS), components, {n: 0.2 for n in components}, rules,
                  {"candidate": "hybrid", "params": {}, "weights": {}})


def users(rng) -> UserBlock:
    history = sp.random(6, N_ITEMS, 0.2, "csr", np.float32, rng)
    return UserBlock(np.arange(1, 7, dtype=np.int32), history, history * 0.5)


def test_every_component_kind_reads_back_scoring_the_same(tmp_path):
    rng = np.random.default_rng(3)
    bundle = every_kind(rng)
    block = users(rng)
    loaded = load_bundle(save_bundle(bundle, tmp_path / "model"))
    np.testing.assert_array_equal(loaded.item_ids, bundle.item_ids)
    assert loaded.weights == bundle.weights and loaded.params == bundle.params
    np.testing.assert_array_equal(loaded.scores(block), bundle.scores(block))
    assert loaded.ranked(block, 5).to_pydict() == bundle.ranked(block, 5).to_pydict()  # rules included


def test_the_folder_holds_only_arrays_and_json_naming_no_module(tmp_path):
    folder = save_bundle(every_kind(np.random.default_rng(4)), tmp_path / "model")
    assert sorted(p.name for p in folder.iterdir()) == [ARRAYS, MANIFEST]
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["format_version"] == FORMAT_VERSION
    assert {c["kind"] for c in manifest["components"].values()} == {"als", "itemknn", "neighbours", "content",
                                                                    "popularity"}
    with np.load(folder / ARRAYS, allow_pickle=False) as stored:  # refuses object arrays (pickles)
        assert set(stored.files) == set(manifest["arrays"])
        assert all(stored[name].dtype != object for name in stored.files)
    for path in folder.iterdir():
        assert b"nightrec." not in path.read_bytes() and b"__main__" not in path.read_bytes()


def test_an_unknown_format_version_fails_naming_it(tmp_path):
    folder = save_bundle(every_kind(np.random.default_rng(5)), tmp_path / "model")
    manifest = json.loads((folder / MANIFEST).read_text())
    (folder / MANIFEST).write_text(json.dumps({**manifest, "format_version": 7}))
    with pytest.raises(UnsupportedArtifact, match="format version 7"):
        load_bundle(folder)


def test_an_unknown_component_kind_fails_naming_it(tmp_path):
    folder = save_bundle(every_kind(np.random.default_rng(6)), tmp_path / "model")
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["components"]["als"]["kind"] = "transformer"
    (folder / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(UnsupportedArtifact, match="unknown kind 'transformer'"):
        load_bundle(folder)


def test_a_folder_without_a_manifest_is_not_a_model(tmp_path):
    (tmp_path / "bundle.pkl").write_bytes(b"\x80\x05")
    with pytest.raises(UnsupportedArtifact, match="no manifest.json"):
        load_bundle(tmp_path)
