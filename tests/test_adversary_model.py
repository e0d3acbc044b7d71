"""Issue 11, tried as an adversary would, model side: tampered bundles, bad videos, stale and
mismatched caches, NaN features and scores, concurrent runs on one output, exit statuses; and
scoring bare videos without a manifest (issue 14).

Each test here failed on the code before these fixes (crashing, exiting 2, stalling, loading
what it should refuse, or writing a wrong score)."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from _score_helpers import EXTRACTORS, in_process_client, trained_model

from aigvqa.errors import ProvenanceMismatchError
from aigvqa.extractors.base import Extractor
from aigvqa.heads.classical import LightGBMHead, SVRHead
from aigvqa.heads.featureset import FeatureSet
from aigvqa.heads.mlp import PooledMLPHead
from aigvqa.pipeline.extract import extract
from aigvqa.pipeline.model import score as score_module
from aigvqa.pipeline.model.bundle import (
    BUNDLE_JSON,
    Bundle,
    BundleError,
    load_bundle,
    meta_digest,
    save_bundle,
)
from aigvqa.pipeline.model.score import ScoreError, score, score_videos
from aigvqa.pipeline.model.train import train

PROVENANCE = {
    "handcrafted": {
        "extractor": "handcrafted",
        "config": {"max_frames": 32},
        "view": None,
        "weights": None,
    }
}


# -- bundles --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X = FeatureSet(
        {"handcrafted": rng.normal(size=(40, 5, 4)).astype(np.float32)},
        None,
        [f"v{i}" for i in range(40)],
    )
    return X, X.arrays["handcrafted"][:, 0, :2].sum(1) + rng.normal(scale=0.1, size=40)


def reseal(path: Path) -> None:
    """What an adversary who also edits bundle.json does: record the new files' sha256."""
    meta = json.loads((path / BUNDLE_JSON).read_text())
    meta["files"] = {
        f.name: hashlib.sha256(f.read_bytes()).hexdigest()
        for f in path.iterdir()
        if f.name != BUNDLE_JSON
    }
    meta["digest"] = meta_digest(meta)
    (path / BUNDLE_JSON).write_text(json.dumps(meta))


@pytest.fixture
def never_parse_lightgbm(monkeypatch):
    """LightGBM's parser crashed the process on edited model texts (SIGSEGV / SIGABRT): a
    call to it here is a test failure, not a crash."""
    import lightgbm

    def refuse(*args, **kwargs):
        raise AssertionError("lightgbm.Booster parsed a file the bundle should have refused")

    monkeypatch.setattr(lightgbm, "Booster", refuse)


def test_an_edited_lightgbm_model_is_refused_before_lightgbm_parses_it(
    data, tmp_path, never_parse_lightgbm
):
    X, y = data
    path = save_bundle(
        LightGBMHead(n_estimators=5).fit(X, y), tmp_path / "m", PROVENANCE, X.names, ["mos"]
    )
    text = (path / "lightgbm-0.txt").read_text()
    # the edit that made LightGBM read out of bounds: a child index far past the tree
    edited = text.replace("left_child=", "left_child=99999 ", 1)
    assert edited != text
    (path / "lightgbm-0.txt").write_text(edited)
    with pytest.raises(BundleError, match=r"lightgbm-0\.txt: sha256 .* does not match"):
        load_bundle(path)


def test_links_in_a_bundle_are_refused_even_with_matching_hashes(
    data, tmp_path, never_parse_lightgbm
):
    X, y = data
    path = save_bundle(
        LightGBMHead(n_estimators=5).fit(X, y), tmp_path / "m", PROVENANCE, X.names, ["mos"]
    )
    (path / "lightgbm-0.txt").unlink()
    (path / "lightgbm-0.txt").symlink_to("/etc/passwd")
    reseal(path)
    with pytest.raises(BundleError, match=r"lightgbm-0\.txt: is a symbolic link"):
        load_bundle(path)

    # weights elsewhere, linked in: the link is refused, not followed
    mlp = save_bundle(
        PooledMLPHead(epochs=1, hidden=8).fit(X, y), tmp_path / "mlp", PROVENANCE, X.names, ["mos"]
    )
    other = save_bundle(
        PooledMLPHead(epochs=1, hidden=8, seed=1).fit(X, y),
        tmp_path / "other",
        PROVENANCE,
        X.names,
        ["mos"],
    )
    (mlp / "weights.safetensors").unlink()
    (mlp / "weights.safetensors").symlink_to(other / "weights.safetensors")
    reseal(mlp)
    with pytest.raises(BundleError, match="symbolic link"):
        load_bundle(mlp)


def test_the_bundle_folder_itself_may_be_a_link(data, tmp_path):
    X, y = data
    path = save_bundle(SVRHead().fit(X, y), tmp_path / "v3", PROVENANCE, X.names, ["mos"])
    (tmp_path / "current").symlink_to(path)
    np.testing.assert_array_equal(
        load_bundle(tmp_path / "current").predict(X), load_bundle(path).predict(X)
    )


def test_a_missing_or_an_extra_file_is_named(data, tmp_path):
    X, y = data
    path = save_bundle(
        LightGBMHead(n_estimators=5).fit(X, y), tmp_path / "m", PROVENANCE, X.names, ["mos"]
    )
    (path / "notes.txt").write_text("hello")
    with pytest.raises(BundleError, match="notes.txt.*does not list"):
        load_bundle(path)
    (path / "notes.txt").unlink()
    (path / "lightgbm-0.txt").unlink()
    with pytest.raises(BundleError, match=r"lightgbm-0\.txt: bundle file is missing"):
        load_bundle(path)


def test_skops_types_are_trusted_by_exact_name_not_by_module_prefix(data, tmp_path):
    """``aigvqa.heads.classical.Parallel`` is joblib's Parallel, imported by that module: a
    prefix rule trusted it."""
    import skops.io

    X, y = data
    path = save_bundle(SVRHead().fit(X, y), tmp_path / "m", PROVENANCE, X.names, ["mos"])
    crafted = tmp_path / "crafted.skops"
    skops.io.dump({"head": Decoy()}, crafted)
    with zipfile.ZipFile(crafted) as zin:
        members = {n: zin.read(n) for n in zin.namelist()}
    schema = json.loads(members["schema.json"])
    node = schema["content"]["head"]
    assert node["__class__"] == "Decoy"
    node["__module__"], node["__class__"] = (
        "aigvqa.heads.classical",
        "Parallel",
    )  # joblib's, by that name
    members["schema.json"] = json.dumps(schema).encode()
    with zipfile.ZipFile(path / "model.skops", "w") as zout:
        for name, blob in members.items():
            zout.writestr(name, blob)
    assert "aigvqa.heads.classical.Parallel" in skops.io.get_untrusted_types(
        file=path / "model.skops"
    )
    reseal(path)
    with pytest.raises(BundleError, match=r"not trusted: aigvqa\.heads\.classical\.Parallel"):
        load_bundle(path)


class Decoy:
    """A plain object for skops to write; the test renames its class in the archive."""


def _mutate(meta: dict, key: str, value) -> None:
    target = meta
    *parents, last = key.split(".")
    for p in parents:
        target = target[p]
    target[last] = value


@pytest.mark.parametrize(
    "key, value, says",
    [
        ("feature_names", "handcrafted", "'feature_names' must be a non-empty list of strings"),
        ("label_names", [1, 2], "'label_names' must be a non-empty list of strings"),
        ("provenance", ["handcrafted"], "'provenance' must be an object"),
        ("state", "skops", "'state' must be an object"),
        ("state.file", None, "'state.file' must be a file name"),
        ("state.parts", {"0": "x"}, "'state.parts' must be a list"),
        ("files", ["model.skops"], "'files' must be an object"),
        ("format_version", "2", "'format_version' must be an integer"),
        ("format_version", 1, "format 1 was written before bundles recorded the sha256"),
    ],
)
def test_wrong_types_in_bundle_json_are_clear_errors(data, tmp_path, key, value, says):
    X, y = data
    path = save_bundle(SVRHead().fit(X, y), tmp_path / "m", PROVENANCE, X.names, ["mos"])
    meta = json.loads((path / BUNDLE_JSON).read_text())
    _mutate(meta, key, value)
    (path / BUNDLE_JSON).write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=f"bundle.json: .*{_escape(says)}"):
        load_bundle(path)


def _escape(text: str) -> str:
    import re

    return re.escape(text)


def test_a_pickle_in_place_of_safetensors_is_a_clear_error(data, tmp_path):
    import pickle

    X, y = data
    path = save_bundle(
        PooledMLPHead(epochs=1, hidden=8).fit(X, y), tmp_path / "m", PROVENANCE, X.names, ["mos"]
    )
    (path / "weights.safetensors").write_bytes(pickle.dumps({"module.w": [1.0, 2.0]}))
    with pytest.raises(BundleError, match="sha256"):  # caught by the hash first
        load_bundle(path)
    reseal(path)
    with pytest.raises(BundleError, match=r"weights\.safetensors: not a safetensors file"):
        load_bundle(path)


def test_saving_into_a_folder_with_other_files_is_refused(data, tmp_path):
    X, y = data
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "README.md").write_text("my model")
    with pytest.raises(BundleError, match="README.md.*not bundle files"):
        save_bundle(SVRHead().fit(X, y), tmp_path / "m", PROVENANCE, X.names, ["mos"])
    # re-saving over a bundle replaces its files, and the result loads
    path = save_bundle(
        LightGBMHead(n_estimators=5).fit(X, y), tmp_path / "n", PROVENANCE, X.names, ["mos"]
    )
    save_bundle(SVRHead().fit(X, y), path, PROVENANCE, X.names, ["mos"])
    assert sorted(p.name for p in path.iterdir()) == [BUNDLE_JSON, "model.skops"]
    assert isinstance(load_bundle(path).head, SVRHead)


def test_bundle_json_keeps_no_absolute_paths_and_identity_is_the_weights_sha256(data, tmp_path):
    X, y = data
    sha = "sha256:" + "ab" * 32
    trained = {
        "clip-frames": {
            "extractor": "clip-frames",
            "view": {"n": 8},
            "weights": sha,
            "config": {"arch": "ViT-B-32", "weights": "/home/alice/ckpts/ViT-B-32.pt"},
        }
    }
    Xc = FeatureSet({"clip-frames": X.arrays["handcrafted"]}, None, X.ids)
    path = save_bundle(SVRHead().fit(Xc, y), tmp_path / "m", trained, Xc.names, ["mos"])
    assert "/home/alice" not in (path / BUNDLE_JSON).read_text()
    bundle = load_bundle(path)
    assert bundle.provenance["clip-frames"]["config"]["weights"] == "ViT-B-32.pt"  # information

    elsewhere = json.loads(json.dumps(trained))
    elsewhere["clip-frames"]["config"]["weights"] = (
        "/mnt/shared/models/ViT-B-32.pt"  # same file, another mount
    )
    bundle.check_provenance(elsewhere)
    other = json.loads(json.dumps(elsewhere))
    other["clip-frames"]["weights"] = "sha256:" + "cd" * 32
    with pytest.raises(ProvenanceMismatchError, match="weights"):
        bundle.check_provenance(other)


def test_scoring_finds_the_recorded_checkpoint_by_name_and_never_by_the_trainers_path(
    data, tmp_path, monkeypatch
):
    X, y = data
    trained = {
        "clip-frames": {
            "extractor": "clip-frames",
            "view": None,
            "weights": "sha256:" + "ab" * 32,
            "config": {"arch": "ViT-B-32", "weights": "/home/alice/ViT-B-32.pt"},
        }
    }
    Xc = FeatureSet({"clip-frames": X.arrays["handcrafted"]}, None, X.ids)
    bundle = load_bundle(
        save_bundle(SVRHead().fit(Xc, y), tmp_path / "m", trained, Xc.names, ["mos"])
    )
    configs, impossible = score_module._extractor_configs(bundle)
    assert configs == {"clip-frames": {"arch": "ViT-B-32"}} and not impossible
    monkeypatch.setenv("AIGVQA_WEIGHTS", str(tmp_path / "weights"))
    assert (
        score_module._weights_option(bundle, configs, None) is None
    )  # not there: the extractor searches
    (tmp_path / "weights" / "clip-frames").mkdir(parents=True)
    (tmp_path / "weights" / "clip-frames" / "ViT-B-32.pt").write_bytes(b"x")
    assert score_module._weights_option(bundle, configs, None) == {
        "clip-frames": str(tmp_path / "weights" / "clip-frames" / "ViT-B-32.pt")
    }
    assert score_module._weights_option(bundle, configs, "/given.pt") == "/given.pt"


# -- scoring ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client():
    with in_process_client() as c:
        yield c


@pytest.fixture(scope="module")
def setup(tmp_path_factory, client):
    """An SVR bundle trained on six demo videos (and their cache); six other videos."""
    return trained_model(tmp_path_factory.mktemp("adversary"), client)


def _rows(path: Path) -> dict[str, dict]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len({r["video_id"] for r in rows}) == len(rows), "duplicated rows"
    return {r["video_id"]: r for r in rows}


def test_a_zero_byte_video_then_a_good_one_with_batch_size_1(setup, client, tmp_path, monkeypatch):
    _, model, _, _, new = setup
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    records = [replace(new[0], video_id="empty", path=empty), new[1]]
    out = tmp_path / "s.csv"
    report = score(records, model, out, batch_size=1, client=client, progress=False)
    rows = _rows(out)
    assert list(rows) == ["empty", new[1].video_id]
    assert (
        rows["empty"]["status"] == "failed"
        and rows["empty"]["error"]
        and rows["empty"]["overall"] == ""
    )
    assert rows[new[1].video_id]["status"] == "ok" and float(rows[new[1].video_id]["overall"])
    assert report.failed == 1 and report.scored == 1 and report.any_failed

    calls = []
    monkeypatch.setattr(score_module, "extract", lambda *a, **k: calls.append(a))
    again = score(
        records, model, out, batch_size=1, client=client, progress=False
    )  # no loop, no redo
    assert calls == [] and again.already_done == 2 and again.failed_before == 1 and again.any_failed
    assert len(_rows(out)) == 2


def test_a_single_corrupt_video_at_the_default_batch_size_is_a_failed_row(setup, client, tmp_path):
    _, model, _, _, new = setup
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(new[0].path.read_bytes()[:300])  # a header and nothing playable
    out = tmp_path / "s.csv"
    report = score(
        [replace(new[0], video_id="corrupt", path=corrupt)],
        model,
        out,
        client=client,
        progress=False,
    )
    assert report.failed == 1 and _rows(out)["corrupt"]["status"] == "failed"


def test_a_cached_id_for_another_file_does_not_give_that_files_score(setup, client, tmp_path):
    _, model, train_cache, train_records, new = setup
    # "demo000" is cached for train/.../demo000.mp4; this manifest means another file by it
    impostor = replace(train_records[0], path=new[3].path)
    reference = replace(new[3], video_id="reference")
    out = tmp_path / "s.csv"
    report = score(
        [impostor, reference, train_records[1]],
        model,
        out,
        cache=train_cache,
        client=client,
        progress=False,
    )
    rows = _rows(out)
    assert rows["demo000"]["overall"] == rows["reference"]["overall"]  # the file's own score
    assert report.not_from_cache == 1 and report.from_cache == 1
    cached = _rows(
        score(
            [train_records[0]],
            model,
            tmp_path / "c.csv",
            cache=train_cache,
            client=client,
            progress=False,
        ).out
    )
    assert cached["demo000"]["overall"] != rows["demo000"]["overall"]


def test_deleting_the_output_does_not_reuse_a_stale_work_cache(setup, client, tmp_path):
    _, model, _, _, new = setup
    a, b = tmp_path / "a.mp4", tmp_path / "b.mp4"
    shutil.copyfile(new[0].path, a)
    shutil.copyfile(new[1].path, b)
    records = [replace(new[0], video_id="a", path=a), replace(new[1], video_id="b", path=b)]
    out = tmp_path / "s.csv"
    score(records, model, out, client=client, progress=False)
    first = _rows(out)
    assert first["a"]["overall"] != first["b"]["overall"]

    mtime = a.stat().st_mtime_ns
    shutil.copyfile(b, a)  # a.mp4 is now another video
    os.utime(a, ns=(mtime + 2_000_000_000, mtime + 2_000_000_000))
    out.unlink()  # what the "another model" message advises
    score(records, model, out, client=client, progress=False)
    second = _rows(out)
    assert second["a"]["overall"] == second["b"]["overall"] == first["b"]["overall"]


def test_a_second_run_on_the_same_output_fails_clearly_instead_of_duplicating_rows(
    setup, client, tmp_path
):
    _, model, train_cache, train_records, _ = setup
    out = tmp_path / "s.csv"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys\n"
            "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "os.write(fd, b'pid %d on a test' % os.getpid())\n"
            "print('locked', flush=True)\n"
            "sys.stdin.read()\n",
            str(out.with_name(out.name + ".lock")),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ScoreError, match=f"being written by another .*pid {holder.pid}"):
            score(train_records, model, out, cache=train_cache, client=client, progress=False)
        assert not out.exists()
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    report = score(train_records, model, out, cache=train_cache, client=client, progress=False)
    assert report.scored == len(train_records) and len(_rows(out)) == len(train_records)


def test_nan_features_become_failed_rows_and_the_others_are_scored(setup, client, tmp_path):
    import h5py

    _, model, train_cache, train_records, _ = setup
    cache = tmp_path / "nan.h5"
    shutil.copyfile(train_cache, cache)
    with h5py.File(cache, "r+") as f:
        ids = [s.decode() if isinstance(s, bytes) else s for s in f["handcrafted/ids"][()]]
        f["handcrafted/values"][ids.index("demo002"), 0, 0] = np.nan
    out = tmp_path / "s.csv"
    report = score(train_records, model, out, cache=cache, client=client, progress=False)
    rows = _rows(out)
    assert rows["demo002"]["status"] == "failed" and "NaN or inf" in rows["demo002"]["error"]
    assert rows["demo002"]["overall"] == ""
    assert report.scored == len(train_records) - 1
    assert all(np.isfinite(float(r["overall"])) for v, r in rows.items() if v != "demo002")


def test_a_non_finite_prediction_is_never_written_ok(setup, client, tmp_path, monkeypatch):
    _, model, train_cache, train_records, _ = setup
    real = Bundle.predict

    def damaged(bundle, X):
        pred = real(bundle, X)
        pred[list(X.ids).index("demo001"), 1] = np.inf
        pred[list(X.ids).index("demo004"), 0] = np.nan
        return pred

    monkeypatch.setattr(Bundle, "predict", damaged)
    out = tmp_path / "s.csv"
    report = score(train_records, model, out, cache=train_cache, client=client, progress=False)
    rows = _rows(out)
    for vid in ("demo001", "demo004"):
        assert rows[vid]["status"] == "failed" and "non-finite" in rows[vid]["error"]
        assert rows[vid]["overall"] == rows[vid]["alignment"] == ""
    assert report.failed == 2 and all(
        np.isfinite([float(r["overall"]), float(r["alignment"])]).all()
        for r in rows.values()
        if r["status"] == "ok"
    )


# -- exit statuses --------------------------------------------------------------------------
def test_score_exit_status_says_whether_anything_failed(setup, client, tmp_path, capsys):
    from aigvqa.pipeline.cli import main

    root, model, _, _, new = setup
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"video_id,path\ngood,{new[0].path}\nbroken,{broken}\n")
    out = tmp_path / "s.csv"
    argv = [
        "score",
        str(manifest),
        "--model",
        str(model),
        "--out",
        str(out),
        "--scheduler",
        client.scheduler.address,
        "--no-progress",
    ]
    assert main(argv) == 1
    assert "1 video(s) failed" in capsys.readouterr().err
    assert main(argv) == 1  # the failed row is still there: a re-run does not say 0
    assert (
        main(["score", str(manifest), "--model", str(tmp_path / "nothing"), "--out", str(out)]) == 2
    )
    good = tmp_path / "good.csv"
    good.write_text(f"video_id,path\ngood,{new[0].path}\n")
    assert (
        main(
            [
                "score",
                str(good),
                "--model",
                str(model),
                "--out",
                str(tmp_path / "g.csv"),
                "--scheduler",
                client.scheduler.address,
                "--no-progress",
            ]
        )
        == 0
    )


def test_extract_exits_1_when_every_video_failed(client, tmp_path, capsys):
    from aigvqa.pipeline.cli import main

    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"video_id,path\nempty,{empty}\n")
    code = main(
        [
            "extract",
            str(manifest),
            "--extractors",
            "handcrafted",
            "--cache",
            str(tmp_path / "c.h5"),
            "--scheduler",
            client.scheduler.address,
            "--no-progress",
        ]
    )
    assert code == 1 and "0 succeeded, 1 failed" in capsys.readouterr().out


# -- bare videos (issue 14) -------------------------------------------------------------------
def test_score_a_bare_video_prints_its_scores(setup, client, capsys):
    from aigvqa.pipeline.cli import main

    _, model, _, _, new = setup
    code = main(
        [
            "score",
            str(new[0].path),
            "--model",
            str(model),
            "--scheduler",
            client.scheduler.address,
            "--no-progress",
        ]
    )
    printed = capsys.readouterr()
    assert code == 0, printed.err
    rows = list(csv.DictReader(printed.out.splitlines()))
    assert [r["video_id"] for r in rows] == [new[0].path.stem] and rows[0]["status"] == "ok"
    assert np.isfinite(float(rows[0]["overall"])) and "1 scored" in printed.err


def test_score_videos_of_a_folder_from_python(setup, client, tmp_path):
    _, model, _, _, new = setup
    folder = tmp_path / "clips"
    folder.mkdir()
    for r in new[:3]:
        shutil.copyfile(r.path, folder / r.path.name)
    (folder / "notes.txt").write_text("not a video: not picked up from a folder")
    rows = score_videos(folder, model, prompt="a red ball", client=client, progress=False)
    assert [r["video_id"] for r in rows] == sorted(r.path.stem for r in new[:3])
    assert all(r["status"] == "ok" and isinstance(r["overall"], float) for r in rows)
    out = tmp_path / "s.csv"
    again = score_videos(folder, model, out=out, client=client, progress=False)
    assert [r["overall"] for r in again] == [r["overall"] for r in rows] and len(_rows(out)) == 3


def test_a_model_that_reads_prompts_asks_for_one(data, tmp_path, monkeypatch, capsys):
    from aigvqa.extractors import registry
    from aigvqa.pipeline.cli import main

    monkeypatch.setitem(registry._REGISTRY, "prompt-words", PromptWords)
    X, y = data
    Xp = FeatureSet({"prompt-words": X.arrays["handcrafted"]}, None, X.ids)
    prov = {
        "prompt-words": {"extractor": "prompt-words", "config": {}, "view": None, "weights": "none"}
    }
    model = save_bundle(SVRHead().fit(Xp, y), tmp_path / "m", prov, Xp.names, ["mos"])
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"")
    with pytest.raises(ScoreError, match="reads prompt features .*prompt-words.* prompt="):
        score_videos(clip, model)
    assert main(["score", str(clip), "--model", str(model)]) == 2
    assert '--prompt "the text"' in capsys.readouterr().err


class PromptWords(Extractor):
    """A text extractor for the tests: pooled = [characters, words] of the prompt."""

    name = "prompt-words"
    modality = "text"

    def output_dims(self):
        return {"pooled": 2, "tokens": 2}

    def load(self, device="cpu"):
        self.weights_identity = "none"

    def encode_text(self, prompts):
        pooled = np.array([[len(p), len(p.split())] for p in prompts], dtype=np.float32)
        return {
            "pooled": pooled,
            "tokens": pooled[:, None, :].copy(),
            "mask": np.ones((len(prompts), 1), dtype=bool),
        }


def test_prompt_features_follow_the_prompt_text_not_its_id(setup, client, tmp_path, monkeypatch):
    from aigvqa.extractors import registry

    monkeypatch.setitem(registry._REGISTRY, "prompt-words", PromptWords)
    root, _, _, train_records, _ = setup
    cache = tmp_path / "train.h5"
    extract(train_records, {**EXTRACTORS, "prompt-words": {}}, cache, client=client, progress=False)
    model, _ = train(cache, "svr", tmp_path / "model", labels="alignment")

    original = train_records[0]
    assert original.groups.get("prompt")  # the manifest names the prompt by an id
    reworded = replace(original, prompt=original.prompt + " at dusk, filmed from far away")
    fresh = replace(reworded, video_id="fresh", groups={})
    report = score(
        [reworded, fresh], model, tmp_path / "a.csv", cache=cache, client=client, progress=False
    )
    rows = _rows(tmp_path / "a.csv")
    assert rows[original.video_id]["alignment"] == rows["fresh"]["alignment"]
    assert report.not_from_cache == 1  # the cache holds demo000 with its old prompt
    before = _rows(
        score([original], model, tmp_path / "b.csv", cache=cache, client=client, progress=False).out
    )
    assert before[original.video_id]["alignment"] != rows[original.video_id]["alignment"]

    # the work cache: same prompt id, new text -> new text features
    out = tmp_path / "w.csv"
    score([original], model, out, client=client, progress=False)
    assert _rows(out)[original.video_id]["alignment"] == before[original.video_id]["alignment"]
    out.unlink()
    score([reworded], model, out, client=client, progress=False)
    assert _rows(out)[original.video_id]["alignment"] == rows["fresh"]["alignment"]
