"""`aigvqa import-features`: .mat / .npy / .csv feature matrices into a cache group, with ids,
labels and a provenance naming the source file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io

from aigvqa.cache import FeatureCache
from aigvqa.errors import ProvenanceMismatchError
from aigvqa.pipeline.cli import main
from aigvqa.pipeline.import_features import (
    ImportFeaturesError,
    file_sha256,
    import_features,
    parse_rows,
)

N, D = 7, 5


@pytest.fixture
def feats():
    rng = np.random.default_rng(0)
    return rng.normal(size=(N, D)), [f"vid{i}" for i in range(N)], rng.uniform(1, 5, N)


def _metadata(path: Path, ids, mos) -> Path:
    lines = ["name,mos,width"] + [f"{i},{float(m)!r},960" for i, m in zip(ids, mos)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _mat_and_metadata(
    folder: Path, name: str, values, ids, mos, variable="feats_mat"
) -> tuple[Path, Path]:
    """``<name>.mat`` holding ``values`` as ``variable`` and ``<name>.csv`` naming its rows:
    the pair a VIDEVAL-style import reads."""
    mat = folder / f"{name}.mat"
    scipy.io.savemat(mat, {variable: values})
    return mat, _metadata(folder / f"{name}.csv", ids, mos)


def _check(cache: Path, group: str, values, ids, mos, source: Path):
    store = FeatureCache(cache)
    data = store.read(group, ids=ids)
    np.testing.assert_allclose(data.arrays[group][:, 0, :], values, rtol=1e-6)
    np.testing.assert_allclose(data.labels["mos"], mos)
    prov = store.group_info(group).provenance
    assert prov["extractor"] == "imported" and prov["sha256"] == file_sha256(source)
    assert source.name in prov["weights"] and "sha256" in prov["weights"]


def test_mat_with_ids_from_metadata_via_cli(feats, tmp_path, capsys):
    values, ids, mos = feats
    mat, meta = _mat_and_metadata(tmp_path, "FEATS", values, ids, mos)
    cache = tmp_path / "c.h5"
    code = main(
        [
            "import-features",
            str(mat),
            "--cache",
            str(cache),
            "--group",
            "videval",
            "--ids-from",
            str(meta),
            "--id-column",
            "name",
            "--label-columns",
            "mos",
        ]
    )
    assert code == 0
    assert f"imported {N} videos" in capsys.readouterr().out
    _check(cache, "videval", values, ids, mos, mat)


def test_npy_and_a_second_group_keep_the_labels(feats, tmp_path):
    values, ids, mos = feats
    meta = _metadata(tmp_path / "meta.csv", ids, mos)
    cache = tmp_path / "c.h5"
    npy = tmp_path / "a.npy"
    np.save(npy, values)
    import_features(npy, cache, "a", ids_from=meta, id_column="name", label_columns=["mos"])
    seq = tmp_path / "b.npy"  # [N, T, D] sequences are accepted too
    np.save(seq, np.repeat(values[:, None, :], 3, axis=1))
    import_features(seq, cache, "b", ids_from=meta, id_column="name")  # no labels this time
    _check(cache, "a", values, ids, mos, npy)
    data = FeatureCache(cache).read(["a", "b"], ids=ids)
    assert data.arrays["b"].shape == (N, 3, D)
    np.testing.assert_allclose(data.labels["mos"], mos)  # still there after importing b


def test_csv_with_id_and_label_columns_in_the_file(feats, tmp_path):
    values, ids, mos = feats
    path = tmp_path / "f.csv"
    header = "video," + ",".join(f"f{j}" for j in range(D)) + ",mos"
    rows = [
        f"{i}," + ",".join(repr(float(x)) for x in row) + f",{float(m)!r}"
        for i, row, m in zip(ids, values, mos)
    ]
    path.write_text("\n".join([header, *rows]) + "\n")
    cache = tmp_path / "c.h5"
    report = import_features(path, cache, "csvfeats", id_column="video", label_columns=["mos"])
    assert (report.rows, report.dim) == (N, D)  # the label column is not a feature
    _check(cache, "csvfeats", values, ids, mos, path)


def test_nan_values_are_replaced_and_counted_or_refused(feats, tmp_path):
    values, ids, mos = feats
    values = values.copy()
    values[2, 1] = np.nan
    values[4, 0] = np.inf
    npy = tmp_path / "nan.npy"
    np.save(npy, values)
    meta = _metadata(tmp_path / "meta.csv", ids, mos)
    with pytest.raises(ImportFeaturesError, match="2 NaN/Inf values in rows \\[2, 4\\]"):
        import_features(npy, tmp_path / "c.h5", "g", ids_from=meta, nan="error")
    report = import_features(npy, tmp_path / "c.h5", "g", ids_from=meta)
    assert report.replaced_nonfinite == 2 and "2 NaN/Inf values replaced by 0" in report.summary()
    stored = FeatureCache(tmp_path / "c.h5").read("g", ids=ids).arrays["g"][:, 0, :]
    assert stored[2, 1] == 0 and stored[4, 0] == 0


def test_user_errors_name_the_file_and_the_fix(feats, tmp_path):
    values, ids, mos = feats
    npy = tmp_path / "a.npy"
    np.save(npy, values)
    with pytest.raises(ImportFeaturesError, match="--ids-from"):
        import_features(npy, tmp_path / "c.h5", "g")
    short = _metadata(tmp_path / "short.csv", ids[:-1], mos[:-1])
    with pytest.raises(ImportFeaturesError, match=f"has {N - 1} rows but .* has {N}"):
        import_features(npy, tmp_path / "c.h5", "g", ids_from=short)
    mat = tmp_path / "two.mat"
    scipy.io.savemat(mat, {"x": values, "y": values})
    with pytest.raises(ImportFeaturesError, match="--variable"):
        import_features(
            mat, tmp_path / "c.h5", "g", ids_from=_metadata(tmp_path / "m.csv", ids, mos)
        )
    with pytest.raises(ImportFeaturesError, match="column 'mos2'"):
        import_features(
            npy, tmp_path / "c.h5", "g", ids_from=tmp_path / "m.csv", label_columns=["mos2"]
        )


def test_a_different_file_into_the_same_group_is_refused(feats, tmp_path):
    values, ids, mos = feats
    meta = _metadata(tmp_path / "meta.csv", ids, mos)
    first, second = tmp_path / "a.npy", tmp_path / "b.npy"
    np.save(first, values)
    np.save(second, values + 1)
    import_features(first, tmp_path / "c.h5", "g", ids_from=meta)
    import_features(first, tmp_path / "c.h5", "g", ids_from=meta)  # the same file again: a no-op
    with pytest.raises(ProvenanceMismatchError, match="sha256"):
        import_features(second, tmp_path / "c.h5", "g", ids_from=meta)


def test_cross_dataset_evaluation_between_two_imported_files_is_not_refused(tmp_path):
    """KoNViD-1k -> LIVE-VQC with VIDEVAL features: two files, one feature definition. The
    file a matrix came from is information; a different variable is still refused."""
    from aigvqa.pipeline.evaluation.evaluate import evaluate_cache

    rng = np.random.default_rng(3)
    caches = []
    for name, n in (("KONVID_feats", 40), ("LIVEVQC_feats", 30)):
        values = rng.normal(size=(n, D))
        ids = [f"{name}-{i}" for i in range(n)]
        mat, meta = _mat_and_metadata(tmp_path, name, values, ids, values[:, 0] * 2 + 3)
        caches.append(tmp_path / f"{name}.h5")
        import_features(mat, caches[-1], "videval", ids_from=meta, label_columns=["mos"])
    result = evaluate_cache(caches[0], "elasticnet", test_cache=caches[1], progress=False)
    assert result.median("srcc", "mos") > 0.9  # mos follows feature 0 in both datasets
    other, meta = _mat_and_metadata(
        tmp_path,
        "other",
        rng.normal(size=(30, D)),
        [f"o{i}" for i in range(30)],
        rng.uniform(1, 5, 30),
        variable="other_name",
    )
    import_features(other, tmp_path / "other.h5", "videval", ids_from=meta, label_columns=["mos"])
    with pytest.raises(
        ProvenanceMismatchError, match="config.variable: 'feats_mat' vs 'other_name'"
    ):
        evaluate_cache(caches[0], "elasticnet", test_cache=tmp_path / "other.h5", progress=False)


def test_videval_konvid_features(tmp_path):
    data = (
        Path(__file__).resolve().parents[1].parent / "shared" / "data" / "videval_ugc" / "features"
    )
    if not data.is_dir():
        pytest.skip(f"{data} is absent (shared real data)")
    cache = tmp_path / "konvid.h5"
    report = import_features(
        data / "KONVID_1K_VIDEVAL_feats.mat",
        cache,
        "videval",
        ids_from=data / "KONVID_1K_metadata.csv",
        id_column="flickr_id",
        label_columns=["mos"],
    )
    assert (report.rows, report.dim, report.replaced_nonfinite) == (1200, 60, 2)
    loaded = FeatureCache(cache).read("videval")
    assert len(loaded.ids) == 1200 and np.isfinite(loaded.arrays["videval"]).all()
    assert loaded.labels["mos"].min() >= 1 and loaded.labels["mos"].max() <= 5


# -- subsets, renamed labels, source order (issues 14 and 17) ---------------------------------


def _unsorted(feats):
    """The feats with ids whose sorted order differs from the file's row order."""
    values, _, mos = feats
    ids = [f"v{(5 * i) % N}" for i in range(N)]  # v0 v5 v3 v1 v6 v4 v2
    return values, ids, mos


def test_the_file_row_order_is_kept_as_source_order(feats, tmp_path):
    values, ids, mos = _unsorted(feats)
    npy = tmp_path / "f.npy"
    np.save(npy, values)
    cache = tmp_path / "c.h5"
    import_features(
        npy, cache, "g", ids_from=_metadata(tmp_path / "m.csv", ids, mos), label_columns=["mos"]
    )
    orders = {v["video_id"]: v["source_order"] for v in FeatureCache(cache).videos()}
    assert orders == {vid: row for row, vid in enumerate(ids)}
    assert FeatureCache(cache).read("g").ids != ids  # the cache itself reads in id order


def test_keep_and_drop_lists_import_a_subset_and_keep_file_rows(feats, tmp_path, capsys):
    values, ids, mos = feats
    mat, meta = _mat_and_metadata(tmp_path, "f", values, ids, mos)
    drop = tmp_path / "drop.txt"
    drop.write_text("# grayscale\nvid1\n\nvid4  # another\n")
    cache = tmp_path / "c.h5"
    assert (
        main(
            [
                "import-features",
                str(mat),
                "--cache",
                str(cache),
                "--group",
                "g",
                "--ids-from",
                str(meta),
                "--id-column",
                "name",
                "--labels",
                "mos",
                "--drop-ids",
                str(drop),
                "--drop-rows",
                "1,7",
            ]
        )
        == 0
    )
    assert "4 rows left out by the keep/drop lists" in capsys.readouterr().out  # 2 ids + 2 rows
    store = FeatureCache(cache)
    kept = ["vid2", "vid3", "vid5"]
    assert sorted(store.read("g").ids) == kept
    np.testing.assert_allclose(
        store.read("g", ids=kept).arrays["g"][:, 0, :], values[[2, 3, 5]], rtol=1e-6
    )
    assert {v["video_id"]: v["source_order"] for v in store.videos()} == {
        "vid2": 2,
        "vid3": 3,
        "vid5": 5,
    }
    report = import_features(
        mat,
        tmp_path / "k.h5",
        "g",
        ids_from=meta,
        id_column="name",
        keep_ids=["vid0", "vid6", "vid3"],
        keep_rows=[1, 5, 6, 7],
    )
    assert report.rows == 2 and report.dropped == 5 and "5 rows left out" in report.summary()
    rows_file = tmp_path / "rows.txt"
    rows_file.write_text("2 3\n4,5\n")
    assert (
        main(
            [
                "import-features",
                str(mat),
                "--cache",
                str(tmp_path / "r.h5"),
                "--group",
                "g",
                "--ids-from",
                str(meta),
                "--id-column",
                "name",
                "--keep-rows",
                str(rows_file),
            ]
        )
        == 0
    )
    assert sorted(FeatureCache(tmp_path / "r.h5").read("g").ids) == ["vid1", "vid2", "vid3", "vid4"]


def test_subset_lists_that_do_not_fit_the_file_are_errors(feats, tmp_path, capsys):
    values, ids, mos = feats
    npy = tmp_path / "f.npy"
    np.save(npy, values)
    meta = _metadata(tmp_path / "m.csv", ids, mos)
    with pytest.raises(ImportFeaturesError, match="not in the file"):
        import_features(npy, tmp_path / "c.h5", "g", ids_from=meta, drop_ids=["vid1", "other"])
    with pytest.raises(ImportFeaturesError, match="outside 1..7"):
        import_features(npy, tmp_path / "c.h5", "g", ids_from=meta, drop_rows=[0, 3])
    with pytest.raises(ImportFeaturesError, match="leave no row"):
        import_features(npy, tmp_path / "c.h5", "g", ids_from=meta, keep_rows=[1], drop_rows=[1])
    assert (
        main(
            [
                "import-features",
                str(npy),
                "--cache",
                str(tmp_path / "c.h5"),
                "--group",
                "g",
                "--ids-from",
                str(meta),
                "--drop-rows",
                "3,x",
            ]
        )
        == 2
    )
    assert "'x' is not a 1-based row number" in capsys.readouterr().err


def test_a_bad_row_list_file_is_named_by_its_path_and_line(tmp_path):
    rows = tmp_path / "drop.txt"
    rows.write_text("1\n0\n5000  # a comment\nabc\n")
    with pytest.raises(ImportFeaturesError) as err:
        parse_rows(str(rows), "--drop-rows")
    message = str(err.value)
    assert f"--drop-rows {rows}, line 4: 'abc' is not a 1-based row number" in message
    assert "5000" not in message  # the file's name and line, not its contents
    rows.write_text("3,6 # the first two\n10\n")
    assert parse_rows(str(rows), "--drop-rows") == [3, 6, 10]


def test_labels_can_be_renamed_on_import(feats, tmp_path):
    values, ids, mos = feats
    npy = tmp_path / "f.npy"
    np.save(npy, values)
    meta = tmp_path / "m.csv"
    meta.write_text(
        "name,MOSFull,tq\n"
        + "".join(f"{i},{float(m)!r},{float(m) / 2!r}\n" for i, m in zip(ids, mos))
    )
    cache = tmp_path / "c.h5"
    assert (
        main(
            [
                "import-features",
                str(npy),
                "--cache",
                str(cache),
                "--group",
                "g",
                "--ids-from",
                str(meta),
                "--labels",
                "MOSFull=mos, tq",
            ]
        )
        == 0
    )
    labels = FeatureCache(cache).read("g", ids=ids).labels
    assert sorted(labels) == ["mos", "tq"]
    np.testing.assert_allclose(labels["mos"], mos)
    with pytest.raises(ImportFeaturesError, match="repeat"):
        import_features(
            npy,
            tmp_path / "d.h5",
            "g",
            ids_from=meta,
            label_columns={"MOSFull": "mos", "tq": "mos"},
        )


def test_extract_labels_option_names_and_renames_manifest_columns(tmp_path, monkeypatch):
    from aigvqa.pipeline import extract as extract_module

    seen = {}

    def fake_extract(records, spec, cache, **kwargs):
        seen["labels"] = [r.labels for r in records]
        raise SystemExit(0)

    monkeypatch.setattr(extract_module, "extract", fake_extract)
    video = tmp_path / "a.mp4"
    video.write_bytes(b"")
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"video_id,path,Overall,tq,other\na,{video},4.5,3.0,1\n")
    with pytest.raises(SystemExit):
        main(
            [
                "extract",
                str(manifest),
                "--extractors",
                "handcrafted",
                "--cache",
                str(tmp_path / "c.h5"),
                "--labels",
                "Overall=mos,tq",
            ]
        )
    assert seen["labels"] == [{"mos": 4.5, "tq": 3.0}]
