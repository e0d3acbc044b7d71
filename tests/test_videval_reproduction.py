"""Real data: VIDEVAL's protocol on its KoNViD-1k features, from the command line, with the
commands docs/protocols.md shows.

Published (vztu/VIDEVAL README): median SRCC 0.7832 / PLCC 0.7803 over 100 random 80/20
splits. Protocol: MinMax scaling, RBF SVR, C in 2^1..2^10 x gamma in 2^-8..2^1 chosen on an
inner 80/20 split of each training set (random_state=ceil(6.6*i)) by the RMSE of the
predictions after the 4-parameter logistic fit; outer splits
train_test_split(range(n), test_size=0.2, random_state=ceil(8.8*i)) over the rows of the
metadata file; PLCC after the 4-parameter logistic, SRCC raw.

docs/protocols.md's import-features and `evaluate --protocol videval` commands run as written
(paths substituted), on the first 8 splits by default: one split costs about 9 CPU-seconds
(100 SVR fits through shared kernels, plus the logistic fits), about 40 s on 2 free cores.
AIGVQA_VIDEVAL_SPLITS=100 runs all 100 and checks the published medians (about 8 minutes
on 2 free cores). The 8-split medians are checked against the same splits of the recorded
100-split run.

AIGVQA_SHARED_DATA points at the shared data folder when it is not ../shared/data.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from scipy.optimize import curve_fit
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import MinMaxScaler
from sklearn.svm import SVR

from aigvqa.pipeline.cli import main
from aigvqa.pipeline.evaluation import evaluate as evaluate_module

pytestmark = pytest.mark.slow  # about a minute on 2 free cores (8 splits + 2 direct grid searches)

ROOT = Path(__file__).resolve().parents[1]
PROTOCOLS_DOC = ROOT / "docs" / "protocols.md"
SHARED = Path(os.environ.get("AIGVQA_SHARED_DATA", ROOT.parent / "shared" / "data"))
DATA = SHARED / "videval_ugc" / "features"
PUBLISHED_SRCC, PUBLISHED_PLCC = 0.7832, 0.7803
# Recorded: `aigvqa evaluate konvid.h5 --protocol videval` over all 100 splits, and the
# medians of the same run's splits 1..8.
RECORDED_100 = {"srcc": 0.7833, "plcc_logistic": 0.7804}
RECORDED_FIRST_8 = {"srcc": 0.7948, "plcc_logistic": 0.7803}


def readme_command(prefix: str) -> list[str]:
    """docs/protocols.md's shell command starting with ``prefix`` (backslash continuations joined,
    comments dropped), as argv without the leading ``aigvqa``."""
    lines = PROTOCOLS_DOC.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith(prefix):
            text = line
            while text.rstrip().endswith("\\"):
                i += 1
                text = text.rstrip()[:-1] + " " + lines[i].strip()
            return shlex.split(text.split("  #")[0], comments=True)[1:]
    raise AssertionError(f"{PROTOCOLS_DOC} has no command starting with {prefix!r}")


@pytest.fixture(scope="module")
def konvid_cache(tmp_path_factory):
    mat, meta = DATA / "KONVID_1K_VIDEVAL_feats.mat", DATA / "KONVID_1K_metadata.csv"
    if not (mat.exists() and meta.exists()):
        pytest.skip(
            f"VIDEVAL KoNViD-1k features not found in {DATA} (the shared data folder is absent)"
        )
    folder = tmp_path_factory.mktemp("konvid")
    argv = readme_command("aigvqa import-features $VIDEVAL/KONVID_1K")
    argv = [
        a.replace("$VIDEVAL", str(DATA)).replace("konvid.h5", str(folder / "konvid.h5"))
        for a in argv
    ]
    assert main(argv) == 0
    with open(meta, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return (
        folder / "konvid.h5",
        [r["flickr_id"] for r in rows],
        np.array([float(r["mos"]) for r in rows]),
    )


@pytest.fixture(scope="module")
def readme_run(konvid_cache, tmp_path_factory):
    """The documented evaluate command on the first N splits: (result, row ids, printed text)."""
    cache, _, _ = konvid_cache
    splits = int(os.environ.get("AIGVQA_VIDEVAL_SPLITS", "8"))
    out = tmp_path_factory.mktemp("konvid-run") / "videval.csv"
    argv = readme_command("aigvqa evaluate konvid.h5 --protocol videval")
    argv = [str(cache) if a == "konvid.h5" else a for a in argv]
    seen = {}
    real = evaluate_module.evaluate

    def keep(head, X, y, *args, **kwargs):  # the rows as evaluate got them, and its result
        seen["ids"] = list(X.ids)
        seen["result"] = real(head, X, y, *args, **kwargs)
        return seen["result"]

    mp = pytest.MonkeyPatch()  # module scope: the fixtures monkeypatch / capsys are per test
    mp.setattr(evaluate_module, "evaluate", keep)
    stdout, stderr = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = main(
                [*argv, "--trials", str(splits), "--per-trial", "--out", str(out), "--quiet"]
            )
    finally:
        mp.undo()
    assert code == 0, stderr.getvalue()
    return seen["result"], seen["ids"], stdout.getvalue(), stderr.getvalue(), out


def test_readme_command_splits_the_metadata_rows_as_videval(konvid_cache, readme_run):
    _, metadata_ids, _ = konvid_cache
    result, ids, printed, errors, _ = readme_run
    assert ids == metadata_ids  # rows in the metadata file's order, not the cache's id order
    for i, trial in enumerate(result.trials, start=1):
        train, test = train_test_split(
            range(len(metadata_ids)), test_size=0.2, random_state=math.ceil(8.8 * i)
        )
        assert [ids[r] for r in trial.train] == [metadata_ids[r] for r in train]
        assert [ids[r] for r in trial.test] == [metadata_ids[r] for r in test]
        assert trial.seed == math.ceil(6.6 * i)
    assert "imported file's row order" in printed and "ranked by logistic-rmse" in printed
    assert result.fallbacks() == {"logistic_fallback": 0, "poly3_fallback": 0}
    # one table, a few notes and the columns' legend: no flood
    table, legend = printed.split("What the columns mean:")
    assert (
        "Warning" not in errors and len(table.splitlines()) < 20 and len(legend.splitlines()) < 12
    )


def test_readme_command_reproduces_the_recorded_and_published_medians(readme_run):
    result, _, printed, _, _ = readme_run
    srcc, plcc = result.median("srcc"), result.median("plcc_logistic")
    print(
        f"\nVIDEVAL KoNViD-1k, {len(result.trials)} splits: SRCC {srcc:.4f} PLCC {plcc:.4f} "
        f"(published {PUBLISHED_SRCC} / {PUBLISHED_PLCC})"
    )
    assert f"{srcc:.4f} ± " in printed
    if len(result.trials) == 100:
        assert srcc == pytest.approx(RECORDED_100["srcc"], abs=2e-3)
        assert plcc == pytest.approx(RECORDED_100["plcc_logistic"], abs=2e-3)
        assert srcc == pytest.approx(PUBLISHED_SRCC, abs=0.01) and plcc == pytest.approx(
            PUBLISHED_PLCC, abs=0.01
        )
    elif len(result.trials) == 8:
        assert srcc == pytest.approx(RECORDED_FIRST_8["srcc"], abs=2e-3)
        assert plcc == pytest.approx(RECORDED_FIRST_8["plcc_logistic"], abs=2e-3)
    else:
        pytest.skip(f"recorded medians exist for 8 and 100 splits, not {len(result.trials)}")


def _videval_logistic(x, b1, b2, b3, b4):
    # VIDEVAL's logistic_func: b2 + (b1 - b2) / (1 + exp(-(x - b3) / |b4|))
    return b2 + (b1 - b2) / (1 + np.exp(np.negative(np.divide(x - b3, np.abs(b4)))))


def _videval_choice(X, y, i):
    """VIDEVAL's grid search of split i, written from its description: inner 80/20 split of
    the training rows (random_state=ceil(6.6*i)), MinMax fit on the inner training part, one
    RBF SVR per (C, gamma) in C-major order, the 4-parameter logistic from the validation
    predictions to the validation MOS (initial guess [max(y), min(y), mean(pred), 0.5]),
    the RMSE of the mapped predictions; the first (C, gamma) with the lowest RMSE."""
    train, _ = train_test_split(range(len(y)), test_size=0.2, random_state=math.ceil(8.8 * i))
    X_train, y_train = X[train], y[train]
    X_fit, X_val, y_fit, y_val = train_test_split(
        X_train, y_train, test_size=0.2, random_state=math.ceil(6.6 * i)
    )
    scaler = MinMaxScaler().fit(X_fit)
    X_fit, X_val = scaler.transform(X_fit), scaler.transform(X_val)
    best, best_rmse = None, np.inf
    for C in np.logspace(1, 10, 10, base=2):
        for gamma in np.logspace(-8, 1, 10, base=2):
            pred = SVR(kernel="rbf", C=C, gamma=gamma).fit(X_fit, y_fit).predict(X_val)
            popt, _ = curve_fit(
                _videval_logistic,
                pred,
                y_val,
                p0=[np.max(y_val), np.min(y_val), np.mean(pred), 0.5],
                maxfev=100000,
            )
            rmse = np.sqrt(np.mean((y_val - _videval_logistic(pred, *popt)) ** 2))
            if rmse < best_rmse:
                best, best_rmse = (C, gamma), rmse
    return best


def test_logistic_rmse_selection_picks_videvals_pair(konvid_cache, readme_run):
    """Two splits (about 15 CPU-seconds each for the direct loop)."""
    import scipy.io

    _, _, mos = konvid_cache
    X = scipy.io.loadmat(DATA / "KONVID_1K_VIDEVAL_feats.mat")["feats_mat"].astype(np.float64)
    X[~np.isfinite(X)] = 0.0  # as VIDEVAL (and import-features' default)
    _, _, _, _, out = readme_run
    with open(out.with_name("videval.trials.csv")) as fh:
        chosen = [json.loads(r["best_params"]) for r in csv.DictReader(fh)]
    for i in (1, 2):
        C, gamma = _videval_choice(X, mos, i)
        assert (chosen[i - 1]["C"], chosen[i - 1]["gamma"]) == pytest.approx((C, gamma))


def test_documented_numbers_are_the_recorded_run():
    """docs/protocols.md shows what the recorded 100-split run printed."""
    readme = PROTOCOLS_DOC.read_text()
    medians = re.findall(
        r"\| mos \| (0\.\d{4}) ± [0-9.]+ \| [0-9.]+ ± [0-9.]+ \| [0-9.]+ ± [0-9.]+ \| "
        r"(0\.\d{4}) ± ",
        readme,
    )
    assert (f"{RECORDED_100['srcc']:.4f}", f"{RECORDED_100['plcc_logistic']:.4f}") in medians
