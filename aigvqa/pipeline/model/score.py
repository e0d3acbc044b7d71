"""``aigvqa score``: predict quality scores of videos with a model bundle.

Input: a manifest (``score``), or bare video files and folders of videos with an optional
prompt (``score_videos``; ids are the files' stems). For each batch of videos not yet in
the output (a CSV, JSONL or Parquet file, by ``out``'s suffix; ``score_output`` says how
each is written and resumed):

1. features come from ``cache`` (``--cache``) for the videos it holds *for the same file*
   -- after checking that its groups were made by the extractors and weights the model was
   trained on -- and are extracted for the others into a *work cache* (default
   ``<out>.features.h5``) with the extractor configs recorded in the bundle (``extract`` on
   Dask, itself resumable);
2. the model predicts every video that has all its features, all of them finite;
3. one row per video is appended to the output and flushed: ``video_id, path, status,
   <one column per predicted label>, error`` (a Parquet output's rows go to its journal,
   ``<out>.partial.jsonl``, and become the Parquet file when the run ends); ``status`` is
   ``ok`` (every score a finite number) or ``failed`` (scores empty, the reason in
   ``error``: decode failure, an extractor failure, features missing or not finite, a
   non-finite prediction).

A bad video never stops the run: it becomes a ``failed`` row and the others are scored.
Errors that concern the whole run (a damaged bundle, a cache of other features, the output
of another model, another run writing the same output, an output suffix of no known
format) stop it before any row is written.

Content identity. A video's features are reused only for the same *content*, not just the
same id. Its identity is (resolved path, size, mtime_ns): cheap to read for 39,000 videos,
unlike a hash of their bytes. In the work cache, rows are stored under
``<video_id>@<16 hex digits of that identity>`` and prompt features under a hash of the
prompt text, so a changed file, another file under a known id, or a changed prompt gets
new features, and deleting the output reuses only what still matches. A ``--cache``
records each video's path and, since ``extract`` records it, its ``file_identity`` (size
and mtime_ns when it was decoded), so a video is taken from it only if the cache's path
for its id is the same file, the file (when present here) has the recorded identity --
in caches written before, was not modified after the cache was last written -- and the
manifest's prompt, if it gives one, is the cache's; otherwise it is extracted afresh.
Rows of imported features have no path: their id is all the identity they have. A file
modified twice within one mtime tick with the same size is not detected.

Resuming: videos already in the output (or a Parquet output's journal) are not extracted
or predicted again, so an interrupted run continues where it stopped; ``retry_failed=True``
first drops the ``failed`` rows so those videos are tried again.

Concurrency: a run holds an exclusive ``flock`` on ``<out>.lock`` from reading the output
to its last row. A second run on the same output fails at once with ``ScoreError`` naming
the holder, instead of waiting: waiting would look like a hang and then find nothing left
to do. (flock is advisory and local: two hosts writing one file over NFS are not covered.)
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from aigvqa.errors import WeightsNotFoundError
from aigvqa.pipeline.extract import extract

# The pieces live in score_output (the output, its lock, the report), score_features (what the
# model needs, content identity, predicting) and score_inputs (manifests, bare videos); their
# names stay importable from here, where the API has always had them.
from aigvqa.pipeline.model.score_features import (  # noqa: F401  (re-exported)
    IMPORTED,
    _cached_ids,
    _check_cache,
    _extractor_configs,
    _failure_text,
    _GivenCache,
    _nonfinite_features,
    _predict_rows,
    _recorded_weights,
    _weights_advice,
    _weights_option,
    file_identity,
    prompt_groups,
    work_record,
)
from aigvqa.pipeline.model.score_inputs import (  # noqa: F401  (re-exported)
    MANIFEST_SUFFIXES,
    VIDEO_SUFFIXES,
    _records,
    check_prompts,
    is_manifest,
    video_records,
)
from aigvqa.pipeline.model.score_output import (  # noqa: F401  (re-exported)
    STATUS_FAILED,
    STATUS_OK,
    ScoreError,
    ScoreReport,
    _Appender,
    _row,
    drop_torn_tail,
    finish_output,
    open_appender,
    output_columns,
    output_format,
    output_lock,
    read_rows,
    read_scored,
)
from aigvqa.pipeline.records import VideoRecord


# -- scoring ------------------------------------------------------------------------------
def score(
    manifest: str | os.PathLike | Iterable[VideoRecord],
    model,
    out: str | os.PathLike,
    *,
    cache: str | os.PathLike | None = None,
    work_cache: str | os.PathLike | None = None,
    batch_size: int = 256,
    retry_failed: bool = False,
    weights: str | os.PathLike | Mapping[str, str | os.PathLike] | None = None,
    scheduler: str | None = None,
    gpus: bool = False,
    n_workers: int | None = None,
    torch_threads: int = 1,
    client=None,
    progress: bool = True,
    cluster=None,
    encoding: str = "utf-8",
) -> ScoreReport:
    """Score every video of ``manifest`` with the bundle ``model`` (a folder, or a loaded
    ``Bundle``) into ``out``: a .csv, .jsonl or .parquet file (Parquet needs pyarrow).

    See the module docstring. ``weights``: the checkpoint(s) of the model's extractors when
    features must be extracted (a path, or {extractor: path}); by default the extractors'
    own search, after ``$AIGVQA_WEIGHTS/<extractor>/<file name the bundle recorded>``.
    Cluster: ``cluster=ClusterSpec(...)`` as ``extract`` takes it, or the flat keywords
    ``scheduler``, ``gpus``, ``n_workers``, ``torch_threads``; a Dask cluster is started
    only if some features must be extracted (and only once for the whole run).
    ``encoding``: the manifest file's text encoding (``read_manifest``'s).
    """
    from aigvqa.pipeline.extract.cluster import as_cluster_spec
    from aigvqa.pipeline.model.bundle import Bundle, load_bundle

    cluster = as_cluster_spec(
        cluster, scheduler=scheduler, gpus=gpus, n_workers=n_workers, torch_threads=torch_threads
    )

    started = time.perf_counter()
    if batch_size < 1:
        raise ScoreError(f"batch_size must be at least 1, got {batch_size}")
    out = Path(out)
    output_format(out)  # a bad suffix, or Parquet without pyarrow: refused before any work
    bundle = model if isinstance(model, Bundle) else load_bundle(model)
    cache = Path(cache) if cache is not None else None
    work = Path(work_cache) if work_cache is not None else out.with_name(out.name + ".features.h5")
    records = _records(manifest, encoding)
    with output_lock(out):
        if cache is not None:
            _check_cache(bundle, cache)
        columns = output_columns(bundle.label_names)
        done = read_scored(out, columns, retry_failed)
        pending = [r for r in records if r.video_id not in done]
        report = ScoreReport(
            out=out,
            already_done=len(records) - len(pending),
            failed_before=sum(done.get(r.video_id) == STATUS_FAILED for r in records),
            cache_given=cache is not None,
        )
        if pending:
            _score_pending(
                bundle,
                pending,
                out,
                columns,
                cache,
                work,
                batch_size,
                report,
                weights,
                cluster,
                client,
                progress,
            )
        # only a run that wrote every row gets here: an interrupted one leaves its rows in
        # a Parquet output's journal, for the next run to continue from
        finish_output(out, columns)
    report.seconds = time.perf_counter() - started
    return report


def _score_pending(
    bundle,
    pending,
    out,
    columns,
    cache,
    work,
    batch_size,
    report,
    weights,
    cluster,
    client,
    progress,
):
    from tqdm.auto import tqdm

    from aigvqa.pipeline.extract.cluster import open_cluster

    given = _GivenCache(cache, bundle.groups) if cache is not None and cache.exists() else None
    configs, impossible = _extractor_configs(bundle)
    weights = _weights_option(bundle, configs, weights) if configs and not impossible else None
    appender = open_appender(out, columns)
    bar = tqdm(total=len(pending), desc="scoring", unit="video", disable=not progress)
    own_cluster = None
    try:
        for start in range(0, len(pending), batch_size):
            batch = pending[start : start + batch_size]
            rows: dict[str, dict[str, Any]] = {}
            cached: list[VideoRecord] = []
            to_extract: list[VideoRecord] = []
            not_cached_why: dict[str, str] = {}
            for r in batch:
                why = given.mismatch(r) if given is not None else ""
                if why is None:
                    cached.append(r)
                    continue
                to_extract.append(r)
                if why:
                    not_cached_why[r.video_id] = why
                    report.not_from_cache += 1
            sources: list[tuple[Path, list[tuple[VideoRecord, str]]]] = []
            if cached:
                sources.append((cache, [(r, r.video_id) for r in cached]))
                report.from_cache += len(cached)
            if to_extract and impossible:
                for r in to_extract:
                    reasons = [not_cached_why[r.video_id]] if r.video_id in not_cached_why else []
                    rows[r.video_id] = _row(
                        r, STATUS_FAILED, error=" | ".join([*reasons, *impossible.values()])
                    )
            elif to_extract:
                if client is None and own_cluster is None:
                    own_cluster = open_cluster(
                        cluster,
                        say=(lambda line: bar.write(line, file=sys.stderr)) if progress else None,
                    )
                    client = own_cluster.__enter__()
                keyed = [(r, work_record(r)) for r in to_extract]
                # the bar stands still while the batch's features are extracted: say so, and
                # take the bar off its line so that extract's own lines (a RANDOM-INIT
                # banner) do not land in it; its next update draws it again
                if progress:
                    bar.write(
                        f"extracting the model's features of {len(to_extract)} video(s) ...",
                        file=sys.stderr,
                    )
                    bar.clear()
                try:
                    done = extract(
                        [w for _, w in keyed],
                        configs,
                        work,
                        client=client,
                        cluster=cluster,
                        progress=False,
                        weights=weights,
                    )
                except WeightsNotFoundError as err:
                    raise ScoreError(_weights_advice(bundle, err)) from err
                # what this run computed (or tried to): the work cache may hold the rest
                report.extracted += done.succeeded + done.failed
                report.reused_work += done.skipped + done.resumed
                _check_cache(bundle, work, missing_ok=True)
                extracted = []
                for r, w in keyed:
                    if work_record(r).video_id != w.video_id:
                        rows[r.video_id] = _row(
                            r,
                            STATUS_FAILED,
                            error=(
                                f"{r.path} changed while it was being scored; re-run to score its "
                                "new content"
                            ),
                        )
                    else:
                        extracted.append((r, w.video_id))
                sources.append((work, extracted))
            for source, pairs in sources:
                ready = _cached_ids(source, bundle.groups)
                present = [(r, key) for r, key in pairs if key in ready]
                for r, key in pairs:
                    if key not in ready:
                        rows[r.video_id] = _row(
                            r, STATUS_FAILED, error=_failure_text(source, key, bundle.groups)
                        )
                if present:
                    rows.update(_predict_rows(bundle, source, present))
            ordered = [rows[r.video_id] for r in batch]
            appender.write(ordered)
            for row in ordered:
                if row["status"] == STATUS_OK:
                    report.scored += 1
                else:
                    report.failed += 1
                    report.failures.append((row["video_id"], row["error"]))
            bar.update(len(batch))
    finally:
        bar.close()
        appender.close()
        if own_cluster is not None:
            if cluster.scheduler:  # a shared cluster: leave no models loaded on it
                from aigvqa.pipeline.extract.worker import release_models

                with contextlib.suppress(OSError, RuntimeError):
                    client.run(release_models)
            own_cluster.__exit__(None, None, None)


def score_videos(
    videos: str | os.PathLike | Iterable[str | os.PathLike],
    model,
    *,
    prompt: str | None = None,
    out: str | os.PathLike | None = None,
    **options: Any,
) -> list[dict[str, Any]]:
    """Score video files and folders of videos without a manifest (what
    ``aigvqa score clip.mp4 --model m/`` does); returns one row per video:
    ``{"video_id", "path", "status", <label>: float or None, "error"}``.

    Ids are the files' stems; ``prompt`` is every video's prompt (required when the model
    reads prompt features). Without ``out`` the output CSV and the work cache live in a
    temporary folder that is removed afterwards; with it, scoring resumes like ``score``.
    ``options`` are ``score``'s keyword arguments (``cache``, ``client``, ``weights``, ...).
    """
    from aigvqa.pipeline.model.bundle import Bundle, load_bundle

    bundle = model if isinstance(model, Bundle) else load_bundle(model)
    records = video_records(videos, prompt)
    check_prompts(bundle, records, "prompt=")
    return score_to_rows(records, bundle, out=out, **options)[1]


def score_to_rows(
    manifest, model, *, out: str | os.PathLike | None = None, **options: Any
) -> tuple[ScoreReport, list[dict[str, Any]]]:
    """``score`` into ``out`` -- or into a temporary folder, removed afterwards, when ``out``
    is None -- and the rows of the input's videos as ``read_rows`` gives them."""
    from aigvqa.pipeline.model.bundle import Bundle, load_bundle

    bundle = model if isinstance(model, Bundle) else load_bundle(model)
    records = _records(manifest, options.pop("encoding", "utf-8"))
    ids = [r.video_id for r in records]
    if out is not None:
        report = score(records, bundle, out, **options)
        return report, read_rows(out, bundle.label_names, ids)
    with tempfile.TemporaryDirectory(prefix="aigvqa-score-") as tmp:
        report = score(records, bundle, Path(tmp) / "scores.csv", **options)
        return report, read_rows(Path(tmp) / "scores.csv", bundle.label_names, ids)
