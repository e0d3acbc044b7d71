"""A run prints what it is doing and nothing the user did not cause: no Dask port or
shutdown chatter, no deprecation warnings of libraries, no per-trial warnings in the
middle of a progress bar, the RANDOM-INIT banner once per extractor."""

from __future__ import annotations

import errno
import os
import re
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from aigvqa.extractors.decode import write_video
from aigvqa.extractors.synthetic import moving_pattern

REPO = Path(__file__).resolve().parents[1]


def test_a_numerically_constant_prediction_has_no_plcc_and_no_warning():
    from aigvqa.pipeline.evaluation.metrics import MappingFitWarning, all_metrics, plcc

    y = np.arange(10.0)
    noise_level = 3.0 + np.arange(10) * 1e-15  # one value up to rounding noise
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scipy's NearConstantInputWarning would raise here
        warnings.simplefilter("ignore", MappingFitWarning)  # ours: counted by evaluate
        assert np.isnan(plcc(y, noise_level))
        assert np.isnan(all_metrics(y, noise_level)["plcc"])
        assert plcc(y, y + np.sin(y)) > 0.9  # a real spread is untouched


def test_evaluate_counts_fallen_back_fits_instead_of_warning_per_trial():
    from sklearn.dummy import DummyRegressor

    from aigvqa.heads.featureset import FeatureSet
    from aigvqa.pipeline.evaluation.evaluate import evaluate

    class Constant(DummyRegressor):  # predicts the training mean: every mapping fit fails
        def fit(self, X, y):
            return super().fit(np.zeros((len(y), 1)), y)

        def predict(self, X):
            return super().predict(np.zeros((len(X.ids), 1)))

    n = 20
    X = FeatureSet(
        {"f": np.ones((n, 1, 2), np.float32)},
        {"f": np.ones(n, np.int64)},
        [f"v{i}" for i in range(n)],
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = evaluate(Constant(), X, np.arange(n, dtype=float), trials=3, progress=False)
    assert [str(w.message) for w in caught] == []
    assert result.fallbacks()["logistic_fallback"] == 3  # counted, and said once under the table
    assert "mapping fits fell back to raw predictions in 3 (logistic)" in result.table()


@pytest.fixture
def dashboard_port_taken():
    """Hold port 8787 (Dask's default dashboard port) during the test, as another cluster
    would; if something else holds it already, so much the better."""
    sock = socket.socket()
    try:
        sock.bind(("", 8787))
        sock.listen()
    except OSError as err:
        if err.errno != errno.EADDRINUSE:
            raise
    yield
    sock.close()


NOISE = [
    re.compile(r"Port \d+ is already in use"),
    re.compile(r"still alive"),
    re.compile(r"Warning\b"),  # FutureWarning, UserWarning, MappingFitWarning, ...
    re.compile(r"\bWARNING\b"),  # a logger's warnings (distributed's, or ours twice)
    re.compile(r"Traceback"),
]


@pytest.mark.slow  # a CLI extract with its own 2-worker cluster and SlowFast, then evaluate: ~15 s
@pytest.mark.usefixtures("dashboard_port_taken")
def test_cli_extract_and_evaluate_print_no_noise(tmp_path):
    rows = ["video_id,path,prompt,mos"]
    for i in range(12):
        write_video(tmp_path / f"v{i}.mp4", moving_pattern(8, 32, 48, seed=i), 8)
        rows.append(f"v{i},v{i}.mp4,prompt {i % 4},{(i * 7) % 5 + 1}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    # slowfast: pytorchvideo imports fvcore, which used to print torch's jit.script
    # FutureWarning in every worker
    (tmp_path / "ex.toml").write_text(
        "[slowfast]\nclip_len = 8\nsize = 32\n[handcrafted]\nsize = 32\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    cli = [sys.executable, "-m", "aigvqa.pipeline.cli"]

    extract = subprocess.run(
        cli
        + [
            "extract",
            "m.csv",
            "--config",
            "ex.toml",
            "--cache",
            "c.h5",
            "--random-init",
            "--workers",
            "2",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert extract.returncode == 0, extract.stderr[-3000:]
    evaluate = subprocess.run(
        cli + ["evaluate", "c.h5", "--head", "svr", "--features", "handcrafted", "--trials", "3"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]

    for run in (extract, evaluate):
        lines = run.stderr.replace("\r", "\n").splitlines()
        noisy = [line for line in lines if any(p.search(line) for p in NOISE)]
        assert noisy == [], "\n".join(noisy)
    err = extract.stderr
    assert (
        err.count("RANDOM-INIT: extractor 'slowfast'") == 1
    )  # once, by the client, not per worker
    assert "--random-init" in err  # in the CLI's words
    assert err.count("Dask dashboard: http") == 1
    assert "loading 2 model(s) (slowfast, handcrafted) on 2 worker(s)" in err
    assert "merging" in err
    # the seconds before the first model loads and after the last merge say what they are
    assert "starting a local Dask cluster of 2 worker process(es)" in err
    assert err.index("starting a local Dask cluster") < err.index("loading 2 model(s)")
    assert "stopping the local Dask cluster" in err
