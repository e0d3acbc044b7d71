"""`aigvqa evaluate --protocol videval`, row order for VIDEVAL's splits, stacks configured in
TOML, per-trial rows, meta weights and counted ConvergenceWarnings, on small imported caches."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from sklearn.model_selection import train_test_split

from aigvqa.pipeline.cli import main
from aigvqa.pipeline.evaluation import evaluate as evaluate_module
from aigvqa.pipeline.import_features import import_features

N = 60


def _imported(tmp_path, n=N, seed=0):
    """An .npy of n videos x 6 features imported with a metadata CSV whose ids are not sorted;
    returns (cache, metadata path, ids in file order)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6))
    mos = 3 + np.tanh(x[:, 0]) + 0.5 * x[:, 1] + rng.normal(0, 0.2, n)
    ids = [f"v{(37 * i) % n:03d}" for i in range(n)]  # a permutation of v000..v059
    np.save(tmp_path / "feats.npy", x)
    meta = tmp_path / "metadata.csv"
    with open(meta, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["width", "name", "mos"])
        writer.writerows([[960, vid, float(m)] for vid, m in zip(ids, mos)])
    cache = tmp_path / "c.h5"
    import_features(
        tmp_path / "feats.npy",
        cache,
        "feats",
        ids_from=meta,
        id_column="name",
        label_columns=["mos"],
    )
    return cache, meta, ids


@pytest.fixture
def trials_seen(monkeypatch):
    """(head, train ids, test ids, seed) of every trial evaluate runs (in-process, --jobs 1)."""
    seen = []
    real = evaluate_module._run_trial

    def spy(head, X, Y, split, *args, **kwargs):
        seen.append(
            (head, [X.ids[i] for i in split.train], [X.ids[i] for i in split.test], split.seed)
        )
        return real(head, X, Y, split, *args, **kwargs)

    monkeypatch.setattr(evaluate_module, "_run_trial", spy)
    return seen


def _videval_ids(ids, i):
    train, test = train_test_split(range(len(ids)), test_size=0.2, random_state=math.ceil(8.8 * i))
    return [ids[r] for r in train], [ids[r] for r in test]


def test_videval_protocol_splits_the_metadata_rows_with_videvals_seeds_and_rule(
    tmp_path, trials_seen, capsys
):
    cache, _, ids = _imported(tmp_path)
    assert main(["evaluate", str(cache), "--protocol", "videval", "--trials", "3", "--quiet"]) == 0
    assert len(trials_seen) == 3
    for i, (head, train, test, seed) in enumerate(trials_seen, start=1):
        assert (train, test) == _videval_ids(ids, i)
        assert seed == math.ceil(6.6 * i)  # the head's inner split seed, as VIDEVAL's
        params = head.get_params()
        assert (
            params["scaler"],
            params["search"],
            params["inner_split"],
            params["search_scoring"],
        ) == ("minmax", "standard", 0.2, "logistic-rmse")
    printed = capsys.readouterr().out
    assert "**svr** · split `videval` · 3 trials" in printed
    assert "imported file's row order" in printed and "ranked by logistic-rmse" in printed


def test_plain_videval_split_uses_the_source_order_and_config_wins_over_the_protocol(
    tmp_path, trials_seen
):
    cache, _, ids = _imported(tmp_path)
    config = tmp_path / "svr.toml"
    config.write_text('head = "svr"\nsearch_scoring = "rmse"\nsearch = { C = [1.0, 4.0] }\n')
    assert (
        main(
            [
                "evaluate",
                str(cache),
                "--protocol",
                "videval",
                "--config",
                str(config),
                "--trials",
                "2",
                "--quiet",
            ]
        )
        == 0
    )
    head = trials_seen[0][0]
    assert (
        head.search_scoring == "rmse"
        and head.search == {"C": [1.0, 4.0]}
        and head.scaler == "minmax"
    )
    trials_seen.clear()
    assert (
        main(
            [
                "evaluate",
                str(cache),
                "--head",
                "elasticnet",
                "--split",
                "videval",
                "--trials",
                "2",
                "--quiet",
            ]
        )
        == 0
    )
    assert [(tr, te) for _, tr, te, _ in trials_seen] == [
        _videval_ids(ids, 1),
        _videval_ids(ids, 2),
    ]
    assert trials_seen[0][0].search is None  # no protocol: the head as configured


def test_order_from_a_csv_and_the_fallback_without_a_source_order(tmp_path, trials_seen, capsys):
    cache, meta, ids = _imported(tmp_path)
    reordered = tmp_path / "other-order.csv"
    new_order = ids[::-1]
    reordered.write_text("id\n" + "\n".join(new_order) + "\n")
    assert (
        main(
            [
                "evaluate",
                str(cache),
                "--head",
                "elasticnet",
                "--split",
                "videval",
                "--trials",
                "1",
                "--order-from",
                str(reordered),
                "--quiet",
            ]
        )
        == 0
    )
    assert (trials_seen[0][1], trials_seen[0][2]) == _videval_ids(new_order, 1)
    assert "rows in the row order of other-order.csv" in capsys.readouterr().out
    # the metadata's id column is found by its values (it is not the first column)
    trials_seen.clear()
    assert (
        main(
            [
                "evaluate",
                str(cache),
                "--head",
                "elasticnet",
                "--split",
                "videval",
                "--trials",
                "1",
                "--order-from",
                str(meta),
                "--quiet",
            ]
        )
        == 0
    )
    assert (trials_seen[0][1], trials_seen[0][2]) == _videval_ids(ids, 1)
    short = tmp_path / "short.csv"
    short.write_text("name\n" + "\n".join(ids[:-3]) + "\n")
    assert (
        main(
            [
                "evaluate",
                str(cache),
                "--head",
                "elasticnet",
                "--split",
                "videval",
                "--order-from",
                str(short),
                "--quiet",
            ]
        )
        == 2
    )
    assert "3 video(s)" in capsys.readouterr().err


def test_a_cache_without_source_order_says_its_splits_use_id_order(tmp_path, trials_seen, capsys):
    from aigvqa.cache import GroupData, merge_shards, write_shard

    rng = np.random.default_rng(1)
    ids = [f"v{i:02d}" for i in range(40)]
    group = GroupData(
        "f", "video", ids, list(rng.normal(size=(40, 1, 3))), provenance={"extractor": "f"}
    )
    videos = [{"video_id": v, "labels": {"mos": float(rng.normal())}} for v in ids]
    cache = tmp_path / "c.h5"
    merge_shards(cache, [write_shard(tmp_path / "s.h5", [group], [], videos)])
    assert (
        main(
            [
                "evaluate",
                str(cache),
                "--head",
                "elasticnet",
                "--split",
                "videval",
                "--trials",
                "1",
                "--quiet",
            ]
        )
        == 0
    )
    assert "rows in video-id order" in capsys.readouterr().out
    assert (trials_seen[0][1], trials_seen[0][2]) == _videval_ids(ids, 1)


STACK_TOML = """
head = "stack"
meta = "nnls"
cv = 3
svr__epsilon = 0.05

[estimators.svr]
search = { C = [1.0, 8.0], gamma = [0.1, 1.0] }

[estimators.enet]
head = "elasticnet"
search = "standard"
max_iter = 3
"""


def test_a_toml_stack_with_searched_bases_runs_from_the_cli(tmp_path, capsys):
    cache, _, _ = _imported(tmp_path)
    config = tmp_path / "stack.toml"
    config.write_text(STACK_TOML)
    out = tmp_path / "r.csv"
    assert (
        main(
            [
                "evaluate",
                str(cache),
                "--config",
                str(config),
                "--trials",
                "2",
                "--per-trial",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert (
        "**stack**" in captured.out and "meta weights, median over 2 trials: svr " in captured.out
    )
    # ElasticNet at max_iter=3 stops early in many fits: one line, not a warning per fit
    assert "stopped at max_iter before converging" in captured.out
    assert "ConvergenceWarning:" not in captured.err
    with open(tmp_path / "r.trials.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2
    for row in rows:
        assert set(json.loads(row["meta_weights"])) == {"svr", "enet"}
        chosen = json.loads(row["best_params"])
        assert chosen["svr"]["C"] in (1.0, 8.0) and "alpha" in chosen["enet"]
        assert row["meta_choice"] in ("blend", "svr", "enet")
    with open(out) as fh:
        summary = list(csv.DictReader(fh))
    assert set(json.loads(summary[0]["meta_weights_median"])) == {"svr", "enet"}
    assert int(summary[0]["n_convergence_warnings"]) > 0


@pytest.mark.parametrize(
    "text, message",
    [
        ('head = "stack"\n[estimators.svr]\nCee = 1.0\n', "does not take ['Cee']"),
        ('head = "stack"\nsvr__Cee = 1.0\n[estimators.svr]\n', "no parameter among ['Cee']"),
        ('head = "stack"\nmetta = "nnls"\n[estimators.svr]\n', "stack parameters"),
        ('head = "stack"\nmeta = "nnls"\n', "needs estimators"),
    ],
)
def test_bad_stack_configs_are_one_clear_message(tmp_path, capsys, text, message):
    cache, _, _ = _imported(tmp_path)
    config = tmp_path / "bad.toml"
    config.write_text(text)
    assert main(["evaluate", str(cache), "--config", str(config), "--trials", "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_protocol_defaults_reach_every_classical_base_of_a_stack_unless_set(tmp_path):
    from aigvqa.pipeline.evaluation.protocols import protocol_params

    params = protocol_params(
        "videval",
        "stack",
        {"estimators": [["svr", "svr"], ["boost", "lightgbm"]], "boost__search_scoring": "srcc"},
    )
    assert params["estimators"]["svr"] == {
        "head": "svr",
        "search": "standard",
        "inner_split": 0.2,
        "search_scoring": "logistic-rmse",
        "scaler": "minmax",
    }
    assert "search_scoring" not in params["estimators"]["boost"]  # its top-level key wins
    assert protocol_params("videval", "mlp", {"epochs": 3}) == {
        "epochs": 3
    }  # deep heads: untouched


def test_a_stacks_bases_get_the_trials_seed(tmp_path, trials_seen):
    from aigvqa.heads.blend import StackingHead
    from aigvqa.heads.classical import ElasticNetHead
    from aigvqa.pipeline.evaluation.evaluate import seeded

    stack = seeded(StackingHead([("svr", "svr"), ("en", ElasticNetHead(random_state=3))]), 14)
    bases = dict(stack.estimators)
    assert (
        stack.random_state == 14
        and bases["svr"].random_state == 14
        and bases["en"].random_state == 14
    )


def test_help_names_the_protocol_and_keeps_example_lines(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    text = capsys.readouterr().out
    assert "\n  videval  VIDEVAL's 100 80/20 splits" in text
    assert (
        "\n  aigvqa evaluate konvid.h5 --protocol videval "
        "--features videval --labels mos --jobs 2\n" in text
    )


def test_the_shipped_videval_configs_build_the_protocols_heads():
    from pathlib import Path

    from aigvqa.heads.blend import StackingHead
    from aigvqa.pipeline.evaluation.protocols import protocol_params
    from aigvqa.pipeline.training_data import build_head

    examples = Path(__file__).resolve().parents[1] / "examples"
    _, svr = build_head(None, examples / "videval-svr.toml")
    _, protocol_svr = build_head(
        "svr", defaults=lambda name, given: protocol_params("videval", name, given)
    )
    assert svr.get_params() == protocol_svr.get_params()  # the file spells the protocol's SVR out
    _, stack = build_head(None, examples / "videval-stack.toml")
    assert isinstance(stack, StackingHead) and stack.allow_best_base and stack.meta == "nnls"
    assert {name: base.search for name, base in stack.estimators} == {
        "svr": "standard",
        "lightgbm": "standard",
        "elasticnet": "standard",
    }
