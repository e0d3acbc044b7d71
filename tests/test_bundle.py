"""Model bundles: round trips give identical predictions, loading never unpickles, and a
bundle refuses features of another origin."""

from __future__ import annotations

import json

import numpy as np
import pytest

from aigvqa.errors import ProvenanceMismatchError
from aigvqa.heads.classical import LightGBMHead, SVRHead
from aigvqa.heads.featureset import FeatureSet
from aigvqa.heads.mlp import PooledMLPHead
from aigvqa.pipeline.model.bundle import (
    BUNDLE_JSON,
    BundleError,
    load_bundle,
    meta_digest,
    save_bundle,
)

PROVENANCE = {
    "handcrafted": {
        "extractor": "handcrafted",
        "config": {"max_frames": 32, "device": "cpu"},
        "view": None,
        "weights": None,
    },
    "clip-frames": {
        "extractor": "clip-frames",
        "config": {"arch": "ViT-B-32", "device": "cpu"},
        "view": {"n": 8},
        "weights": "RANDOM-INIT",
    },
}
PICKLE_MAGIC = b"\x80"  # every pickle protocol >= 2 starts with PROTO 0x80


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X = FeatureSet(
        {
            "handcrafted": rng.normal(size=(48, 6, 5)).astype(np.float32),
            "clip-frames": rng.normal(size=(48, 4, 8)).astype(np.float32),
        },
        {"handcrafted": rng.integers(1, 7, 48), "clip-frames": np.full(48, 4)},
        [f"v{i}" for i in range(48)],
    )
    y = np.column_stack([X.arrays["handcrafted"][:, 0, :2].sum(1), rng.normal(size=48)])
    return X, y


def _reseal(path):
    """What an adversary who also edits bundle.json does: record the new files' sha256."""
    import hashlib

    meta = json.loads((path / BUNDLE_JSON).read_text())
    meta["files"] = {
        f.name: hashlib.sha256(f.read_bytes()).hexdigest()
        for f in path.iterdir()
        if f.name != BUNDLE_JSON
    }
    meta["digest"] = meta_digest(meta)
    (path / BUNDLE_JSON).write_text(json.dumps(meta))


def _round_trip(head, X, y, tmp_path):
    head.fit(X, y)
    labels = ["mos", "alignment"][: 1 if y.ndim == 1 else y.shape[1]]
    path = save_bundle(head, tmp_path / "model", PROVENANCE, X.names, labels)
    bundle = load_bundle(path)
    np.testing.assert_array_equal(bundle.predict(X), head.predict(X).reshape(len(X), -1))
    assert bundle.feature_names == X.names
    assert bundle.label_names == labels
    assert bundle.provenance == json.loads(json.dumps(PROVENANCE))
    for file in path.iterdir():  # no file of a bundle is a pickle
        assert not file.read_bytes().startswith(PICKLE_MAGIC), file
        assert file.suffix in (".json", ".safetensors", ".skops", ".txt"), file
    return path, bundle


def test_deep_head_round_trip_is_exact_and_stored_as_safetensors(data, tmp_path):
    X, y = data
    path, bundle = _round_trip(PooledMLPHead(epochs=3, hidden=16), X, y, tmp_path)
    assert sorted(p.name for p in path.iterdir()) == [BUNDLE_JSON, "weights.safetensors"]
    assert bundle.head_name == "mlp"
    assert json.loads((path / BUNDLE_JSON).read_text())["state"]["kind"] == "torch"


def test_svr_round_trip_is_exact_and_stored_with_skops(data, tmp_path):
    X, y = data
    path, bundle = _round_trip(SVRHead(C=4.0), X, y, tmp_path)
    assert sorted(p.name for p in path.iterdir()) == [BUNDLE_JSON, "model.skops"]
    assert bundle.params["C"] == 4.0


def test_lightgbm_boosters_are_stored_as_text_models(data, tmp_path):
    X, y = data
    path, _ = _round_trip(LightGBMHead(n_estimators=15), X, y, tmp_path)
    texts = sorted(path.glob("lightgbm-*.txt"))
    assert len(texts) == 2  # one booster per MOS column
    assert texts[0].read_text().startswith("tree")  # LightGBM's text model format
    import skops.io

    # the skops file no longer holds a booster: only the sklearn wrapper around it
    assert "lightgbm.basic.Booster" not in skops.io.get_untrusted_types(file=path / "model.skops")


def test_loading_refuses_untrusted_types_in_a_skops_file(data, tmp_path):
    import os

    import skops.io
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    X, y = data
    path = save_bundle(SVRHead().fit(X, y[:, 0]), tmp_path / "model", PROVENANCE, X.names, ["mos"])
    # A hostile bundle: the estimator would call os.system on predict.
    skops.io.dump(make_pipeline(FunctionTransformer(os.system)), path / "model.skops")
    _reseal(path)  # the checksums would refuse it first; here its author rewrote them too
    with pytest.raises(BundleError, match="not trusted.*system"):
        load_bundle(path)


def test_loading_refuses_classes_outside_the_heads_package(data, tmp_path):
    X, y = data
    path = save_bundle(
        PooledMLPHead(epochs=1, hidden=8).fit(X, y),
        tmp_path / "model",
        PROVENANCE,
        X.names,
        ["a", "b"],
    )
    meta = json.loads((path / BUNDLE_JSON).read_text())
    meta["state"]["class"] = "subprocess.Popen"
    meta["digest"] = meta_digest(meta)  # an author who also recomputes bundle.json's digest
    (path / BUNDLE_JSON).write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="subprocess.Popen.*trusted"):
        load_bundle(path)
    meta["state"]["class"] = "aigvqa.heads.mlp.PooledMLPHead"
    meta["state"]["file"] = "../weights.safetensors"
    meta["digest"] = meta_digest(meta)
    (path / BUNDLE_JSON).write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="outside the bundle"):
        load_bundle(path)


def test_missing_folder_says_how_to_make_one(tmp_path):
    with pytest.raises(BundleError, match="aigvqa train"):
        load_bundle(tmp_path / "nothing")


def test_provenance_mismatch_is_refused_naming_what_differs(data, tmp_path):
    X, y = data
    bundle = _round_trip(SVRHead(), X, y[:, 0], tmp_path)[1]
    same = json.loads(json.dumps(PROVENANCE))
    bundle.check_provenance(same)  # identical: accepted

    faster = json.loads(json.dumps(PROVENANCE))
    faster["clip-frames"]["config"]["batch_size"] = 64  # speed-only options do not matter
    bundle.check_provenance(faster)

    other = json.loads(json.dumps(PROVENANCE))
    other["clip-frames"]["weights"] = "sha256:0123abcd"
    other["clip-frames"]["config"]["arch"] = "ViT-L-14"
    with pytest.raises(ProvenanceMismatchError) as err:
        bundle.check_provenance(other)
    message = str(err.value)
    assert "clip-frames" in message and "weights" in message and "ViT-L-14" in message
    assert "handcrafted" not in message.split("|")[0].split(":")[0]

    with pytest.raises(ProvenanceMismatchError, match="'handcrafted' is missing"):
        bundle.check_provenance({"clip-frames": PROVENANCE["clip-frames"]})


def test_blend_of_deep_and_classical_heads_round_trips(data, tmp_path):
    from aigvqa.heads.registry import create_head

    X, y = data
    stack = create_head(
        "stack",
        estimators=[
            ("svr", "svr"),
            ("lgb", LightGBMHead(n_estimators=10)),
            ("mlp", PooledMLPHead(epochs=2, hidden=8)),
        ],
        cv=3,
    )
    path, _ = _round_trip(stack, X, y[:, 0], tmp_path)
    names = sorted(p.name for p in path.iterdir())
    assert any(
        n.startswith("part-") and n.endswith(".safetensors") for n in names
    )  # the fitted MLP
    assert any(n.startswith("lightgbm-") for n in names)


def test_bundle_records_the_versions_of_the_packages_that_shape_a_model(data, tmp_path):
    """One package_versions (cache.schema) serves caches and bundles; a bundle asks it for
    the model packages (scikit-learn, skops, ...), a cache for the feature ones."""
    import importlib.metadata

    from aigvqa.cache.schema import FEATURE_PACKAGES, MODEL_PACKAGES, package_versions

    X, y = data
    path = save_bundle(SVRHead().fit(X, y), tmp_path / "m", {}, X.names, ["mos"])
    versions = json.loads((path / BUNDLE_JSON).read_text())["versions"]
    assert versions == package_versions(MODEL_PACKAGES)
    assert versions["scikit-learn"] == importlib.metadata.version("scikit-learn")
    assert "h5py" in package_versions() and "h5py" in FEATURE_PACKAGES and "h5py" not in versions


# -- a named pipe in place of a bundle file (review of issue 11, defect C) ------------------
@pytest.mark.parametrize("member", ["state", BUNDLE_JSON])
def test_a_named_pipe_in_place_of_a_bundle_file_is_refused_without_blocking(data, tmp_path, member):
    import os
    import threading

    X, y = data
    path = save_bundle(SVRHead().fit(X, y[:, 0]), tmp_path / "model", PROVENANCE, X.names, ["mos"])
    if member == "state":
        member = json.loads((path / BUNDLE_JSON).read_text())["state"]["file"]
    (path / member).unlink()
    os.mkfifo(path / member)
    outcome = []

    def load():
        try:
            load_bundle(path)
        except BundleError as err:
            outcome.append(str(err))

    reader = threading.Thread(target=load, daemon=True)
    reader.start()
    reader.join(timeout=10)
    if reader.is_alive():  # the old code blocks in open(): give it an end of file, then fail
        os.close(os.open(path / member, os.O_WRONLY | os.O_NONBLOCK))
        reader.join(timeout=30)
        pytest.fail("load_bundle blocked on a named pipe")
    assert outcome and "is not a regular file" in outcome[0] and member in outcome[0]


# -- edited LightGBM texts with recomputed hashes (review of issue 11, defect F) ------------
def _resized(text: str) -> str:
    """What an adversary who also fixes tree_sizes does: each tree's byte count."""
    lines = text.split("\n")
    starts = [i for i, line in enumerate(lines) if line.startswith("Tree=")]
    end = lines.index("end of trees")
    sizes = [
        sum(len(line.encode()) + 1 for line in lines[a:b])
        for a, b in zip(starts, [*starts[1:], end])
    ]
    return "\n".join(
        "tree_sizes=" + " ".join(map(str, sizes)) if line.startswith("tree_sizes=") else line
        for line in lines
    )


@pytest.fixture(scope="module")
def lightgbm_bundle(data, tmp_path_factory):
    X, y = data
    head = LightGBMHead(n_estimators=4, num_leaves=6, min_child_samples=3).fit(X, y[:, 0])
    return save_bundle(head, tmp_path_factory.mktemp("lgb") / "m", PROVENANCE, X.names, ["mos"])


@pytest.fixture(scope="module")
def lightgbm_text(lightgbm_bundle):
    return (lightgbm_bundle / "lightgbm-0.txt").read_text()


def _edit_line(text: str, key: str, edit) -> str:
    lines = text.split("\n")
    i = next(i for i, line in enumerate(lines) if line.startswith(key + "=") and "  " not in line)
    lines[i] = edit(lines[i])
    return _resized("\n".join(lines))


@pytest.mark.parametrize(
    "key, edit, says",
    [
        (
            "num_leaves",
            lambda line: line + "0",
            r"leaf_value has \d+ values, num_leaves implies \d+0",
        ),
        (
            "left_child",
            lambda line: "left_child=99999 " + line.split("=")[1].split(" ", 1)[1],
            r"left_child\[0\]=99999 is out of range",
        ),
        (
            "right_child",
            lambda line: "right_child=0 " + line.split("=")[1].split(" ", 1)[1],
            r"right_child\[0\]=0 is out of range or reached twice",
        ),
        (
            "split_feature",
            lambda line: "split_feature=4000 " + line.split("=")[1].split(" ", 1)[1],
            r"split_feature\[0\]=4000 is out of range",
        ),
        ("num_cat", lambda line: "num_cat=1", "num_cat=1 is out of range"),
    ],
)
def test_an_edited_lightgbm_text_with_recomputed_hashes_is_refused_naming_the_line(
    lightgbm_bundle, tmp_path, key, edit, says, monkeypatch
):
    import shutil

    import lightgbm

    path = tmp_path / "model"
    shutil.copytree(lightgbm_bundle, path)
    text = (path / "lightgbm-0.txt").read_text()
    (path / "lightgbm-0.txt").write_text(_edit_line(text, key, edit))
    _reseal(path)

    def crash(*args, **kwargs):
        raise AssertionError("LightGBM parsed a text the check should have refused")

    monkeypatch.setattr(lightgbm, "Booster", crash)
    with pytest.raises(BundleError, match=rf"lightgbm-0\.txt, line \d+: {says}"):
        load_bundle(path)


def test_random_edits_that_pass_the_check_never_crash_lightgbm(lightgbm_text, tmp_path):
    import subprocess
    import sys

    from aigvqa.pipeline.model.lightgbm_text import check_model_text

    rng = np.random.default_rng(11)
    trees = lightgbm_text.index("Tree=0")
    end = lightgbm_text.index("end of trees")
    passed, refused = [], 0
    for _ in range(300):
        at = int(rng.integers(trees, end))
        new = str(rng.choice(list("0123456789-. =\n")))
        if rng.random() < 0.3:
            text = lightgbm_text[:at] + lightgbm_text[at + 1 :]
        else:
            text = lightgbm_text[:at] + new + lightgbm_text[at + 1 :]
        text = _resized(text) if "end of trees" in text and "\ntree_sizes=" in text else text
        try:
            check_model_text(text, tmp_path / "m.txt")
        except BundleError:
            refused += 1
        else:
            passed.append(text)
    assert refused > 100  # the edits did hit what LightGBM indexes by
    (tmp_path / "texts.json").write_text(json.dumps(passed))
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json, sys, numpy as np, lightgbm\n"
            "for text in json.load(open(sys.argv[1])):\n"
            "    try:\n"
            "        booster = lightgbm.Booster(model_str=text)\n"
            "    except lightgbm.basic.LightGBMError:\n"
            "        continue\n"
            "    x = np.random.default_rng(0).normal(size=(20, booster.num_feature()))\n"
            "    booster.predict(x)\n"
            "print('survived')\n",
            str(tmp_path / "texts.json"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0 and "survived" in run.stdout, (run.returncode, run.stderr[-2000:])


# -- bundle.json's own digest (review of issue 11, defect G) -------------------------------
def test_an_edited_bundle_json_is_refused(data, tmp_path):
    X, y = data
    path = save_bundle(SVRHead().fit(X, y), tmp_path / "m", PROVENANCE, X.names, ["a", "b"])
    meta = json.loads((path / BUNDLE_JSON).read_text())
    meta["label_names"] = ["b", "a"]  # scores would land under the wrong column
    (path / BUNDLE_JSON).write_text(json.dumps(meta, indent=2))
    with pytest.raises(BundleError, match="bundle.json was edited after it was saved"):
        load_bundle(path)
    meta["label_names"] = ["a", "b"]  # put back (another indentation): loads again
    (path / BUNDLE_JSON).write_text(json.dumps(meta))
    assert load_bundle(path).label_names == ["a", "b"]


def test_a_bundle_saved_before_digests_loads_with_a_warning(data, tmp_path):
    X, y = data
    path = save_bundle(SVRHead().fit(X, y[:, 0]), tmp_path / "m", PROVENANCE, X.names, ["mos"])
    meta = json.loads((path / BUNDLE_JSON).read_text())
    del meta["digest"]
    (path / BUNDLE_JSON).write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="edited after it was saved"):
        load_bundle(path)  # format 3 without its digest: someone removed it
    meta["format_version"] = 2  # what aigvqa wrote before digests
    (path / BUNDLE_JSON).write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match="without a digest of bundle.json.*retrain"):
        bundle = load_bundle(path)
    assert bundle.label_names == ["mos"]
