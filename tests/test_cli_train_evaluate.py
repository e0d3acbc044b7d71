"""`aigvqa train` and `aigvqa evaluate` on a small synthetic cache."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from aigvqa.cache import FeatureCache, GroupData, merge_shards, write_shard
from aigvqa.pipeline.cli import main
from aigvqa.pipeline.model.bundle import load_bundle
from aigvqa.pipeline.training_data import (
    TrainingDataError,
    featureset_from_cache,
    load_training_data,
)

N_PROMPTS, GENERATORS = 10, ("g1", "g2", "g3", "g4")
PROV_A = {"extractor": "a", "config": {"size": 32}, "view": None, "weights": None}
PROV_B = {"extractor": "b", "config": {"arch": "tiny"}, "view": None, "weights": "RANDOM-INIT"}
PROV_TEXT = {"extractor": "text", "config": {}, "view": None, "weights": "RANDOM-INIT"}


def make_cache(path: Path, seed: int = 0, prov_a=PROV_A) -> Path:
    """40 videos (10 prompts x 4 generators); mos depends on feature a, alignment on b."""
    rng = np.random.default_rng(seed)
    ids, a, b, videos = [], [], [], []
    for p in range(N_PROMPTS):
        for g in GENERATORS:
            vid = f"p{p}-{g}"
            fa = rng.normal(size=(int(rng.integers(3, 8)), 4))
            fb = rng.normal(size=(2, 6))
            ids.append(vid)
            a.append(fa)
            b.append(fb)
            videos.append(
                {
                    "video_id": vid,
                    "path": f"{vid}.mp4",
                    "prompt": f"prompt {p}",
                    "prompt_id": f"p{p}",
                    "labels": {
                        "mos": float(3 + fa[:, 0].mean() + 0.1 * rng.normal()),
                        "alignment": float(3 + fb[:, 0].mean()),
                    },
                    "groups": {"prompt": f"p{p}", "generator": g},
                }
            )
    text = GroupData(
        "text",
        "prompt",
        [f"p{p}" for p in range(N_PROMPTS)],
        [rng.normal(size=(5, 3)) for _ in range(N_PROMPTS)],
        {
            "pooled": [rng.normal(size=3) for _ in range(N_PROMPTS)],
            "mask": [np.ones(5, bool) for _ in range(N_PROMPTS)],
        },
        PROV_TEXT,
    )
    shard = write_shard(
        path.with_suffix(".shard.h5"),
        [
            GroupData("a", "video", ids, a, {}, prov_a),
            GroupData("b", "video", ids, b, {}, PROV_B),
            text,
        ],
        videos=videos,
        dtype="float32",
    )
    merge_shards(path, [shard], remove_shards=True)
    return path


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return make_cache(tmp_path_factory.mktemp("cli") / "feats.h5")


def test_featureset_names_groups_and_float_extras(cache):
    data = FeatureCache(cache).read(["a", "text"])
    X = featureset_from_cache(data)
    assert X.names == ["a", "text", "text-pooled"]  # the bool mask is not a feature
    assert X.arrays["text-pooled"].shape == (40, 1, 3)
    np.testing.assert_array_equal(X.lengths["a"], data.lengths["a"])


def test_column_ranges_recorded_in_the_provenance_become_features(cache):
    store = FeatureCache(cache)
    data = store.read(["a", "b"])
    width = data.arrays["a"].shape[-1]
    provenance = {
        "a": {**store.group_info("a").provenance, "columns": {"head": [0, 1], "rest": [1, width]}}
    }
    X = featureset_from_cache(data, provenance)
    assert X.names == ["a", "a-head", "a-rest", "b"]
    np.testing.assert_array_equal(X.arrays["a-head"], data.arrays["a"][..., :1])
    np.testing.assert_array_equal(X.arrays["a-rest"], data.arrays["a"][..., 1:])
    np.testing.assert_array_equal(X.lengths["a-rest"], data.lengths["a"])
    with pytest.raises(TrainingDataError, match=r"'head' = \[0, 99\)"):
        featureset_from_cache(data, {"a": {"columns": {"head": [0, 99]}}})


def test_train_writes_a_bundle_that_predicts_like_the_fitted_head(cache, tmp_path, capsys):
    from aigvqa.heads.classical import SVRHead

    out = tmp_path / "model"
    assert (
        main(
            [
                "train",
                str(cache),
                "--head",
                "svr",
                "--features",
                "a",
                "--labels",
                "mos",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "trained svr on 40 videos" in capsys.readouterr().out
    bundle = load_bundle(out)
    assert (
        bundle.head_name == "svr"
        and bundle.label_names == ["mos"]
        and bundle.feature_names == ["a"]
    )
    assert bundle.provenance == {"a": PROV_A}
    data = load_training_data(cache, "a", "mos")
    direct = SVRHead().fit(data.X, data.y[:, 0])
    np.testing.assert_allclose(bundle.predict(data.X)[:, 0], direct.predict(data.X))


def test_train_takes_hyper_parameters_from_a_toml_config(cache, tmp_path):
    config = tmp_path / "head.toml"
    config.write_text('head = "mlp"\nepochs = 3\nhidden = 8\nfeatures = ["a", "b"]\n')
    out = tmp_path / "model"
    assert (
        main(["train", str(cache), "--config", str(config), "--features", "a,b", "--out", str(out)])
        == 0
    )
    bundle = load_bundle(out)
    assert (
        bundle.head_name == "mlp" and bundle.params["epochs"] == 3 and bundle.params["hidden"] == 8
    )
    assert bundle.label_names == ["alignment", "mos"]  # every label of the cache by default
    assert bundle.predict(load_training_data(cache, "a,b").X).shape == (40, 2)
    config.write_text('head = "svr"\n')
    assert (
        main(
            ["train", str(cache), "--head", "lightgbm", "--config", str(config), "--out", str(out)]
        )
        == 2
    )


def test_evaluate_prints_per_dimension_tables_and_writes_csv_and_plots(cache, tmp_path, capsys):
    out, plots = tmp_path / "results.csv", tmp_path / "plots"
    code = main(
        [
            "evaluate",
            str(cache),
            "--head",
            "svr",
            "--features",
            "a,b",
            "--split",
            "prompt-disjoint",
            "--trials",
            "3",
            "--out",
            str(out),
            "--plots",
            str(plots),
            "--quiet",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "split `prompt-disjoint` · 3 trials" in printed
    assert "| alignment |" in printed and "| mos |" in printed and "model SRCC" in printed
    with open(out) as fh:
        rows = list(csv.DictReader(fh))
    assert [r["dimension"] for r in rows] == ["alignment", "mos"]
    assert float(rows[1]["srcc_median"]) > 0.5  # mos is a function of feature a
    assert sorted(p.name for p in plots.glob("*.png")) == [
        "scatter-svr-alignment.png",
        "scatter-svr-mos.png",
        "srcc-plcc.png",
    ]


def test_evaluate_leave_one_generator_out(cache, tmp_path, capsys):
    out = tmp_path / "r.csv"
    config = tmp_path / "enet.toml"
    config.write_text("search = { alpha = [0.001, 0.1] }\n")
    assert (
        main(
            [
                "evaluate",
                str(cache),
                "--head",
                "elasticnet",
                "--features",
                "a",
                "--labels",
                "mos",
                "--config",
                str(config),
                "--split",
                "leave-one-generator-out",
                "--out",
                str(out),
                "--per-trial",
                "--quiet",
            ]
        )
        == 0
    )
    with open(out) as fh:  # the summary stays in --out ...
        assert [r["dimension"] for r in csv.DictReader(fh)] == ["mos"]
    with open(tmp_path / "r.trials.csv") as fh:  # ... and the trials go beside it
        rows = list(csv.DictReader(fh))
    assert [r["trial"] for r in rows] == [f"generator={g}" for g in GENERATORS]
    assert all(
        "alpha" in json.loads(r["best_params"]) for r in rows
    )  # each trial's chosen hyper-parameters
    printed = capsys.readouterr().out
    assert (
        "Model level, mos, pooled over folds (4 generators)" in printed
        and "r.trials.csv" in printed
    )


def test_evaluate_cross_dataset_checks_feature_provenance(cache, tmp_path, capsys):
    other = make_cache(tmp_path / "other.h5", seed=1)
    assert (
        main(
            [
                "evaluate",
                str(cache),
                "--head",
                "svr",
                "--features",
                "a",
                "--labels",
                "mos",
                "--test-cache",
                str(other),
                "--quiet",
            ]
        )
        == 0
    )
    assert "cross-dataset feats->other" in capsys.readouterr().out
    foreign = make_cache(tmp_path / "foreign.h5", seed=1, prov_a={**PROV_A, "config": {"size": 64}})
    assert (
        main(
            [
                "evaluate",
                str(cache),
                "--head",
                "svr",
                "--features",
                "a",
                "--labels",
                "mos",
                "--test-cache",
                str(foreign),
                "--quiet",
            ]
        )
        == 2
    )
    assert "config.size: 32 vs 64" in capsys.readouterr().err


def test_unknown_features_labels_and_heads_are_user_errors(cache, tmp_path, capsys):
    assert (
        main(
            [
                "train",
                str(cache),
                "--head",
                "svr",
                "--features",
                "nope",
                "--out",
                str(tmp_path / "m"),
            ]
        )
        == 2
    )
    assert "no group(s) nope" in capsys.readouterr().err
    assert (
        main(
            [
                "train",
                str(cache),
                "--head",
                "svr",
                "--labels",
                "quality",
                "--out",
                str(tmp_path / "m"),
            ]
        )
        == 2
    )
    assert "no label(s) quality" in capsys.readouterr().err
    assert main(["evaluate", str(cache), "--head", "nosuchhead"]) == 2
    assert "unknown head 'nosuchhead'" in capsys.readouterr().err


def test_deep_heads_train_with_epoch_progress_and_evaluate_trials_together_or_not(
    cache, tmp_path, capsys
):
    config = tmp_path / "mlp.toml"
    config.write_text('head = "mlp"\nhidden = 8\nepochs = 3\nval_fraction = 0.25\n')
    out = tmp_path / "mlp-model"
    assert (
        main(
            [
                "train",
                str(cache),
                "--config",
                str(config),
                "--features",
                "a",
                "--labels",
                "mos",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "3/3" in err and "val_loss" in err  # issue 14: epochs with the validation metric
    assert load_bundle(out).head.verbose is False
    assert (
        main(
            [
                "train",
                str(cache),
                "--config",
                str(config),
                "--features",
                "a",
                "--labels",
                "mos",
                "--out",
                str(tmp_path / "quiet"),
                "--quiet",
            ]
        )
        == 0
    )
    assert "val_loss" not in capsys.readouterr().err

    srcc = []
    for flag in ([], ["--no-batch-trials"]):
        csv_path = tmp_path / f"eval{len(srcc)}.csv"
        assert (
            main(
                [
                    "evaluate",
                    str(cache),
                    "--config",
                    str(config),
                    "--features",
                    "a",
                    "--labels",
                    "mos",
                    "--trials",
                    "2",
                    "--quiet",
                    "--out",
                    str(csv_path),
                    "--per-trial",
                    *flag,
                ]
            )
            == 0
        )
        assert "mlp" in capsys.readouterr().out
        with open(csv_path.with_name(csv_path.stem + ".trials.csv")) as fh:  # --per-trial rows
            srcc.append([float(row["srcc"]) for row in csv.DictReader(fh)])
    np.testing.assert_allclose(srcc[0], srcc[1], atol=1e-6)


def _error_line(err: str, verb: str = "evaluate") -> str:
    """The line of stderr holding the CLI's error (it must start the line)."""
    lines = [line for line in err.splitlines() if f"aigvqa {verb}: error:" in line]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"aigvqa {verb}: error:"), lines[0]  # not after a progress bar
    return lines[0]


@pytest.mark.parametrize(
    "body, words",
    [
        ('search = "standrd"', "search='standrd'"),
        ("[search]\nCc = [1, 2]", "unknown parameters ['Cc']"),
        ("Cc = 2.0", "has no parameter(s) Cc"),
    ],
)
def test_config_mistakes_are_found_before_any_trial_and_name_the_file(
    cache, tmp_path, capsys, body, words
):
    config = tmp_path / "t.toml"
    config.write_text(f'head = "svr"\n{body}\n')
    assert main(["evaluate", str(cache), "--config", str(config), "--trials", "2"]) == 2
    err = capsys.readouterr().err
    line = _error_line(err)
    assert line.startswith(f"aigvqa evaluate: error: {config}: ") and words in line
    assert "evaluate svr" not in err  # no trial (and no progress bar) started
    assert "__init__" not in line


def test_deep_head_roles_are_explained_in_cli_words_before_any_trial(cache, capsys):
    assert main(["evaluate", str(cache), "--head", "branchsum", "--trials", "2"]) == 2
    err = capsys.readouterr().err
    line = _error_line(err)
    assert "[features] table" in line and "examples/ugvq.toml" in line
    assert "features={role: name}" not in line and "evaluate branchsum" not in err


def test_an_error_raised_under_an_open_progress_bar_starts_its_own_line(monkeypatch, capsys):
    import sys

    from tqdm import tqdm

    from aigvqa.errors import AigvqaError
    from aigvqa.pipeline.cli.commands import info

    def run(args):
        bar = tqdm(total=3, desc="working", file=sys.stderr)
        bar.update()
        raise AigvqaError("something the user can fix")

    monkeypatch.setattr(info, "run", run)
    assert main(["info", "whatever.h5"]) == 2
    _error_line(capsys.readouterr().err, "info")


def test_a_stack_without_a_config_points_at_the_shipped_stack_config(cache, capsys):
    assert main(["evaluate", str(cache), "--head", "stack", "--trials", "2"]) == 2
    line = _error_line(capsys.readouterr().err)
    assert "--config examples/videval-stack.toml" in line
    assert (Path(__file__).parents[1] / "examples" / "videval-stack.toml").is_file()


def test_deep_trials_fit_one_by_one_show_their_epochs_and_validation_loss(cache, tmp_path, capsys):
    config = tmp_path / "mlp.toml"
    config.write_text('head = "mlp"\nhidden = 8\nepochs = 3\nval_fraction = 0.25\n')
    command = ["evaluate", str(cache), "--config", str(config), "--features", "a"]
    assert main([*command, "--labels", "mos", "--trials", "2", "--no-batch-trials"]) == 0
    err = capsys.readouterr().err
    assert "trial 1/2, epoch 1/3" in err and "trial 2/2, epoch 3/3, val_loss" in err


def test_a_protocol_under_test_cache_says_what_of_it_applies(cache, tmp_path, capsys):
    other = make_cache(tmp_path / "other.h5", seed=1)
    command = ["evaluate", str(cache), "--protocol", "videval", "--test-cache", str(other)]
    assert main([*command, "--features", "a", "--labels", "mos", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "protocol videval:" in out and "svr searches standard" in out
    assert "its splits do not" in out
