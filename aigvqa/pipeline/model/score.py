"""``aigvqa score``: predict quality scores of videos with a model bundle.

Input: a manifest (``score``), or bare video files and folders of videos with an optional
prompt (``score_videos``; ids are the files' stems). For each batch of videos not yet in
the output CSV:

1. features come from ``cache`` (``--cache``) for the videos it holds *for the same file*
   -- after checking that its groups were made by the extractors and weights the model was
   trained on -- and are extracted for the others into a *work cache* (default
   ``<out>.features.h5``) with the extractor configs recorded in the bundle (``extract`` on
   Dask, itself resumable);
2. the model predicts every video that has all its features, all of them finite;
3. one row per video is appended to the CSV and flushed: ``video_id, path, status, <one
   column per predicted label>, error``; ``status`` is ``ok`` (every score a finite
   number) or ``failed`` (scores empty, the reason in ``error``: decode failure, an
   extractor failure, features missing or not finite, a non-finite prediction).

A bad video never stops the run: it becomes a ``failed`` row and the others are scored.
Errors that concern the whole run (a damaged bundle, a cache of other features, the output
of another model, another run writing the same output) stop it before any row is written.

Content identity. A video's features are reused only for the same *content*, not just the
same id. Its identity is (resolved path, size, mtime_ns): cheap to read for 39,000 videos,
unlike a hash of their bytes. In the work cache, rows are stored under
``<video_id>@<16 hex digits of that identity>`` and prompt features under a hash of the
prompt text, so a changed file, another file under a known id, or a changed prompt gets
new features, and deleting the output CSV reuses only what still matches. A ``--cache``
stores each video's path but not its size or mtime, so a video is taken from it only if
the cache's path for its id is the same file, the file (when present here) was not
modified after the cache was last written, and the manifest's prompt, if it gives one, is
the cache's; otherwise it is extracted afresh. Rows of imported features have no path:
their id is all the identity they have. A file modified twice within one mtime tick with
the same size is not detected.

Resuming: videos already in the output CSV are not extracted or predicted again, so an
interrupted run continues where it stopped; ``retry_failed=True`` first drops the
``failed`` rows so those videos are tried again.

Concurrency: a run holds an exclusive ``flock`` on ``<out>.lock`` from reading the output
to its last row. A second run on the same output fails at once with ``ScoreError`` naming
the holder, instead of waiting: waiting would look like a hang and then find nothing left
to do. (flock is advisory and local: two hosts writing one file over NFS are not covered.)
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import io
import json
import os
import socket
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from aigvqa.errors import AigvqaError, WeightsNotFoundError
from aigvqa.pipeline.extract import extract
from aigvqa.pipeline.records import VideoRecord, prompt_key

STATUS_OK = "ok"
STATUS_FAILED = "failed"
IMPORTED = "imported"
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".gif", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv",
                  ".ts", ".3gp")
"""What counts as a video when a folder is given to ``score_videos`` (case-insensitive)."""
MANIFEST_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".ndjson", ".txt")
"""Inputs of ``aigvqa score`` read as a manifest rather than as a video."""


class ScoreError(AigvqaError, ValueError):
    """Scoring cannot start: the output CSV belongs to another model or is being written by
    another run, features cannot be made, a needed prompt is missing."""


@dataclass
class ScoreReport:
    out: Path
    scored: int = 0
    failed: int = 0
    already_done: int = 0
    failed_before: int = 0  # of already_done: rows that say failed (not retried)
    from_cache: int = 0
    not_from_cache: int = 0  # in --cache under their id, but for another file or prompt
    extracted: int = 0
    seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)

    @property
    def any_failed(self) -> bool:
        """Whether some video of the input has a ``failed`` row in the output (this run's or
        an earlier one's): what ``aigvqa score``'s exit status 1 says."""
        return bool(self.failed or self.failed_before)

    def summary(self) -> str:
        text = f"{self.scored + self.failed + self.already_done} videos: {self.scored} scored, {self.failed} failed"
        if self.already_done:
            text += (
                f", {self.already_done} already in {self.out} (not recomputed"
                + (f"; {self.failed_before} of them failed: --retry-failed tries them again" if self.failed_before else "")
                + ")"
            )
        text += f"; features: {self.from_cache} from the given cache, {self.extracted} extracted ({self.seconds:.1f} s)"
        if self.not_from_cache:
            text += (f"\n  {self.not_from_cache} video(s) were in the given cache under their id but for another "
                     "file, an older version of the file or another prompt: extracted afresh")
        for vid, error in self.failures[:10]:
            text += f"\n  failed {vid}: {error}"
        if len(self.failures) > 10:
            text += f"\n  ... {len(self.failures) - 10} more (status column of {self.out})"
        return text


def output_columns(label_names: Sequence[str]) -> list[str]:
    return ["video_id", "path", "status", *label_names, "error"]


# -- the output CSV -----------------------------------------------------------------------
@contextlib.contextmanager
def output_lock(out: Path) -> Iterator[Path]:
    """Hold ``<out>.lock`` exclusively (fcntl.flock, released by the OS if the process dies;
    the empty lock file stays). Raises ``ScoreError`` at once if another run holds it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = out.with_name(out.name + ".lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
            raise ScoreError(
                f"{out} is being written by another `aigvqa score` run ({holder}, lock {lock}); "
                "wait for it to finish and re-run (finished videos are kept), or give another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield lock
    finally:
        os.close(fd)


def read_scored(out: Path, columns: list[str], retry_failed: bool) -> dict[str, str]:
    """{video id: status} of the rows already in ``out``; checks it was written for the same
    labels. With ``retry_failed`` the failed rows are removed from the file (atomically) first."""
    if not out.exists() or out.stat().st_size == 0:
        return {}
    drop_torn_tail(out)
    with open(out, newline="") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        rows = list(reader)
    if header != columns:
        raise ScoreError(
            f"{out} has columns {header}, but this model writes {columns}: it was written by "
            "another model. Give another --out, or delete the file to rescore everything."
        )
    if retry_failed and any(r["status"] != STATUS_OK for r in rows):
        rows = [r for r in rows if r["status"] == STATUS_OK]
        tmp = out.with_name(f".{out.name}.tmp")
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, out)
    return {r["video_id"]: r["status"] for r in rows}


def drop_torn_tail(out: Path) -> bool:
    """Cut a last line that lacks its newline (a run killed in the middle of an append).

    Every row is written on one line (see ``_Appender``), so a tail without a newline is an
    incomplete row: dropping it means that video is scored again, and the next append starts
    on a fresh line instead of gluing onto the torn one. Returns whether anything was cut.
    """
    data = out.read_bytes()
    if not data or data.endswith(b"\n"):
        return False
    with open(out, "r+b") as fh:
        fh.truncate(data.rfind(b"\n") + 1)
    return True


class _Appender:
    """Appends rows to the output CSV, flushed and fsynced after every batch.

    Each row is one line (newlines in error texts are flattened), and a batch goes out in a
    single write, so an interruption leaves at most one torn last line, which
    ``drop_torn_tail`` removes on resume."""

    def __init__(self, out: Path, columns: list[str]):
        out.parent.mkdir(parents=True, exist_ok=True)
        new = not out.exists() or out.stat().st_size == 0
        self.fh = open(out, "a", newline="")
        self.writer = csv.DictWriter(self.fh, fieldnames=columns)
        if new:
            self.writer.writeheader()
            self.flush()

    def write(self, rows: Iterable[dict[str, Any]]) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.writer.fieldnames)
        for row in rows:
            writer.writerow({k: " | ".join(str(v).splitlines()) if isinstance(v, str) else v for k, v in row.items()})
        self.fh.write(buffer.getvalue())
        self.flush()

    def flush(self) -> None:
        self.fh.flush()
        os.fsync(self.fh.fileno())

    def close(self) -> None:
        self.fh.close()


# -- what the model needs -----------------------------------------------------------------
def _extractor_configs(bundle) -> tuple[dict[str, dict], dict[str, str]]:
    """{extractor name: config} to recreate the model's features, and {group: why not} for
    groups that cannot be recreated (imported ones). ``weights`` is left out of the configs:
    the bundle keeps only the checkpoint's file name (see ``_weights_option``)."""
    configs, impossible = {}, {}
    for group, prov in bundle.provenance.items():
        name = prov.get("extractor")
        if name == IMPORTED or name is None:
            impossible[group] = (
                f"features of group {group!r} were {prov.get('weights') or 'imported'}; they cannot be "
                "computed here: give --cache holding them for these videos"
            )
            continue
        if name != group:
            impossible[group] = f"group {group!r} was made by extractor {name!r} under another name"
            continue
        config = dict(prov.get("config") or {})
        config.pop("weights", None)
        configs[name] = config
    return configs, impossible


def _recorded_weights(bundle) -> dict[str, str]:
    """{extractor: checkpoint file name} the bundle's features were made with."""
    out = {}
    for group, prov in bundle.provenance.items():
        name = (prov.get("config") or {}).get("weights")
        if isinstance(name, str) and name:
            out[group] = name
    return out


def _weights_option(bundle, configs: Mapping[str, dict], weights) -> Any:
    """``weights=`` for ``extract``: the caller's if given; else, for each extractor whose
    checkpoint file name the bundle recorded, ``$AIGVQA_WEIGHTS/<extractor>/<that name>``
    when it exists; else None (the extractor's own search). The sha256 the bundle recorded
    is checked on the features either way."""
    if weights is not None:
        return weights
    from aigvqa.extractors.weights import weights_root

    root = weights_root()
    if root is None:
        return None
    found = {name: str(root / name / file) for name, file in _recorded_weights(bundle).items()
             if name in configs and (root / name / file).exists()}
    return found or None


def prompt_groups(bundle) -> list[str]:
    """The bundle's groups that encode the prompt (text extractors): they need a prompt."""
    from aigvqa.extractors.registry import get_extractor_class

    out = []
    for group, prov in bundle.provenance.items():
        name = prov.get("extractor")
        if name in (None, IMPORTED):
            continue
        if getattr(get_extractor_class(name), "modality", "video") == "text":
            out.append(group)
    return out


# -- content identity ---------------------------------------------------------------------
def file_identity(path: Path) -> tuple[str, int, int] | None:
    """(resolved path, size, mtime_ns), or None when the file cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return os.path.realpath(path), int(st.st_size), int(st.st_mtime_ns)


def work_record(record: VideoRecord) -> VideoRecord:
    """``record`` as it is stored in the work cache: its id carries the file's identity and
    its prompt id is a hash of the prompt text (see the module docstring)."""
    identity = file_identity(record.path) or (os.path.realpath(record.path), -1, -1)
    digest = hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:16]
    groups = dict(record.groups)
    groups.pop("prompt", None)
    if (record.prompt or "").strip():
        groups["prompt"] = prompt_key(record.prompt)
    return replace(record, video_id=f"{record.video_id}@{digest}", groups=groups)


class _GivenCache:
    """Which videos a ``--cache`` holds for the same content (module docstring)."""

    def __init__(self, cache: Path, groups: Sequence[str]):
        from aigvqa.cache import FeatureCache

        store = FeatureCache(cache)
        self.cache = cache
        self.ids = _cached_ids(cache, groups)
        self.videos = {v["video_id"]: v for v in store.videos()} if self.ids else {}
        self.written_ns = cache.stat().st_mtime_ns
        have = store.groups()
        self.by_prompt = any(store.group_info(g).keyed_by == "prompt" for g in groups if g in have)

    def mismatch(self, record: VideoRecord) -> str | None:
        """None when the cached features of ``record.video_id`` are those of this video; else
        why not (an empty string when the cache simply lacks the id)."""
        if record.video_id not in self.ids:
            return ""
        video = self.videos.get(record.video_id, {})
        stored = video.get("path") or ""
        if stored:
            if os.path.realpath(stored) != os.path.realpath(record.path):
                return f"{self.cache} holds {record.video_id!r} for {stored}, not for {record.path}"
            identity = file_identity(record.path)
            if identity is not None and identity[2] > self.written_ns:
                return f"{record.path} was modified after {self.cache} was written"
        if self.by_prompt and (record.prompt or "").strip() and (record.prompt or "").strip() != (video.get("prompt") or "").strip():
            return f"{self.cache} holds {record.video_id!r} with another prompt"
        return None


# -- reading features ---------------------------------------------------------------------
def _cached_ids(cache: Path | None, groups: Sequence[str]) -> set[str]:
    """Video ids that have every group in ``cache``."""
    from aigvqa.cache import FeatureCache

    if cache is None or not cache.exists():
        return set()
    store = FeatureCache(cache)
    have = store.groups()
    if any(g not in have for g in groups):
        return set()
    videos = {v["video_id"]: v for v in store.videos()}
    present = None
    for g in groups:
        info = store.group_info(g)
        stored = set(store.ids(g))
        if info.keyed_by == "prompt":
            stored = {vid for vid, v in videos.items() if v["prompt_id"] in stored}
        present = stored if present is None else present & stored
    return present or set()


def _check_cache(bundle, cache: Path, *, missing_ok: bool = False) -> None:
    """Refuse a cache whose groups were made otherwise than the model's. ``missing_ok``: a
    group the cache lacks is no error (the work cache after a batch whose videos all failed)."""
    from aigvqa.cache import FeatureCache

    if missing_ok and not cache.exists():
        return
    store = FeatureCache(cache)
    have = store.groups()
    provenance = {g: store.group_info(g).provenance for g in bundle.groups if g in have}
    bundle.check_provenance(provenance, source=str(cache), present_only=missing_ok)


def _failure_text(cache: Path | None, vid: str, groups: Sequence[str]) -> str:
    from aigvqa.cache import FeatureCache

    if cache is not None and cache.exists():
        errors = [f"[{f.extractor}] {f.error}" for f in FeatureCache(cache).failures()
                  if f.id == vid and (f.extractor in groups or f.extractor == "*")]
        if errors:
            return " | ".join(errors)
    return f"features missing for {', '.join(groups)}"


def _nonfinite_features(X, names: Sequence[str]) -> dict[int, list[str]]:
    """{row: feature names} of rows with NaN / inf in their valid time steps."""
    bad: dict[int, list[str]] = {}
    for name in names:
        values, lengths = X.arrays[name], X.lengths[name]
        valid = np.arange(values.shape[1])[None, :] < lengths[:, None]
        rows = np.flatnonzero((~np.isfinite(values) & valid[:, :, None]).any(axis=(1, 2)))
        for row in rows:
            bad.setdefault(int(row), []).append(name)
    return bad


def _predict_rows(bundle, source: Path, pairs: Sequence[tuple[VideoRecord, str]]) -> dict[str, dict[str, Any]]:
    """Rows for ``pairs`` of (record, its id in ``source``), every one present in ``source``.

    Videos whose features are not finite, and videos the model gives a non-finite score,
    become failed rows: a score is written ``ok`` only when every value is a finite number.
    """
    from aigvqa.cache import FeatureCache
    from aigvqa.pipeline.training_data import featureset_from_cache

    store = FeatureCache(source)
    data = store.read(bundle.groups, ids=[key for _, key in pairs])
    provenance = {g: store.group_info(g).provenance for g in bundle.groups}  # column ranges
    X = featureset_from_cache(data, provenance)
    X.ids = np.asarray([r.video_id for r, _ in pairs], dtype=object)  # the head names videos by their own ids
    rows: dict[str, dict[str, Any]] = {}
    bad = _nonfinite_features(X, bundle.feature_names)
    for i, names in bad.items():
        record = pairs[i][0]
        rows[record.video_id] = _row(record, STATUS_FAILED, error=(
            f"features {', '.join(names)} hold NaN or inf ({source}); the cache or the extractor output "
            "is damaged: re-extract this video"))
    keep = [i for i in range(len(pairs)) if i not in bad]
    if not keep:
        return rows
    pred = bundle.predict(X[np.asarray(keep)])
    for i, p in zip(keep, pred):
        record = pairs[i][0]
        if not np.isfinite(p).all():
            rows[record.video_id] = _row(record, STATUS_FAILED, error=(
                f"the model predicted a non-finite score ({', '.join(f'{n}={v}' for n, v in zip(bundle.label_names, p.tolist()))}); "
                "the model is damaged or was trained on non-finite features: retrain it"))
        else:
            rows[record.video_id] = _row(record, STATUS_OK, dict(zip(bundle.label_names, p.tolist())))
    return rows


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
) -> ScoreReport:
    """Score every video of ``manifest`` with the bundle ``model`` (a folder, or a loaded
    ``Bundle``) into the CSV ``out``.

    See the module docstring. ``weights``: the checkpoint(s) of the model's extractors when
    features must be extracted (a path, or {extractor: path}); by default the extractors'
    own search, after ``$AIGVQA_WEIGHTS/<extractor>/<file name the bundle recorded>``.
    Cluster: ``cluster=ClusterSpec(...)`` as ``extract`` takes it, or the flat keywords
    ``scheduler``, ``gpus``, ``n_workers``, ``torch_threads``; a Dask cluster is started
    only if some features must be extracted (and only once for the whole run).
    """
    from aigvqa.pipeline.extract.cluster import as_cluster_spec
    from aigvqa.pipeline.model.bundle import Bundle, load_bundle

    cluster = as_cluster_spec(cluster, scheduler=scheduler, gpus=gpus, n_workers=n_workers,
                              torch_threads=torch_threads)

    started = time.perf_counter()
    if batch_size < 1:
        raise ScoreError(f"batch_size must be at least 1, got {batch_size}")
    bundle = model if isinstance(model, Bundle) else load_bundle(model)
    out = Path(out)
    cache = Path(cache) if cache is not None else None
    work = Path(work_cache) if work_cache is not None else out.with_name(out.name + ".features.h5")
    records = _records(manifest)
    with output_lock(out):
        if cache is not None:
            _check_cache(bundle, cache)
        columns = output_columns(bundle.label_names)
        done = read_scored(out, columns, retry_failed)
        pending = [r for r in records if r.video_id not in done]
        report = ScoreReport(out=out, already_done=len(records) - len(pending),
                             failed_before=sum(done.get(r.video_id) == STATUS_FAILED for r in records))
        if pending:
            _score_pending(bundle, pending, out, columns, cache, work, batch_size, report, weights,
                           cluster, client, progress)
    report.seconds = time.perf_counter() - started
    return report


def _score_pending(bundle, pending, out, columns, cache, work, batch_size, report, weights, cluster, client, progress):
    from tqdm.auto import tqdm

    from aigvqa.pipeline.extract.cluster import open_cluster

    given = _GivenCache(cache, bundle.groups) if cache is not None and cache.exists() else None
    configs, impossible = _extractor_configs(bundle)
    weights = _weights_option(bundle, configs, weights) if configs and not impossible else None
    appender = _Appender(out, columns)
    bar = tqdm(total=len(pending), desc="scoring", unit="video", disable=not progress)
    own_cluster = None
    try:
        for start in range(0, len(pending), batch_size):
            batch = pending[start:start + batch_size]
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
                    rows[r.video_id] = _row(r, STATUS_FAILED, error=" | ".join([*reasons, *impossible.values()]))
            elif to_extract:
                if client is None and own_cluster is None:
                    own_cluster = open_cluster(cluster, say=(lambda line: bar.write(line, file=sys.stderr))
                                               if progress else None)
                    client = own_cluster.__enter__()
                keyed = [(r, work_record(r)) for r in to_extract]
                # the bar stands still while the batch's features are extracted: say so, and
                # take the bar off its line so that extract's own lines (a RANDOM-INIT
                # banner) do not land in it; its next update draws it again
                if progress:
                    bar.write(f"extracting the model's features of {len(to_extract)} video(s) ...",
                              file=sys.stderr)
                    bar.clear()
                try:
                    extract([w for _, w in keyed], configs, work, client=client, cluster=cluster,
                            progress=False, weights=weights)
                except WeightsNotFoundError as err:
                    raise ScoreError(_weights_advice(bundle, err)) from err
                report.extracted += len(to_extract)
                _check_cache(bundle, work, missing_ok=True)
                extracted = []
                for r, w in keyed:
                    if work_record(r).video_id != w.video_id:
                        rows[r.video_id] = _row(r, STATUS_FAILED, error=(
                            f"{r.path} changed while it was being scored; re-run to score its new content"))
                    else:
                        extracted.append((r, w.video_id))
                sources.append((work, extracted))
            for source, pairs in sources:
                ready = _cached_ids(source, bundle.groups)
                present = [(r, key) for r, key in pairs if key in ready]
                for r, key in pairs:
                    if key not in ready:
                        rows[r.video_id] = _row(r, STATUS_FAILED, error=_failure_text(source, key, bundle.groups))
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


def _weights_advice(bundle, err: Exception) -> str:
    recorded = _recorded_weights(bundle)
    text = str(err)
    if recorded:
        files = ", ".join(
            f"{name}: {file} ({bundle.provenance[name].get('weights')})" for name, file in recorded.items()
        )
        text += (f" | the model was trained with the checkpoint(s) {files}; give them with weights=<path> "
                 "(or put each at $AIGVQA_WEIGHTS/<extractor>/<file name>)")
    return text


def _row(record: VideoRecord, status: str, scores: dict[str, float] | None = None, error: str = "") -> dict[str, Any]:
    row: dict[str, Any] = {"video_id": record.video_id, "path": str(record.path), "status": status, "error": error}
    for name, value in (scores or {}).items():
        row[name] = repr(float(value))
    return row


def _records(manifest) -> list[VideoRecord]:
    if isinstance(manifest, str | os.PathLike):
        from aigvqa.pipeline.manifest import read_manifest

        # Missing files are not a reason to refuse the whole manifest here: they become
        # failed rows of the output, like any video that cannot be decoded.
        records = read_manifest(manifest, check_files=False)
    else:
        records = list(manifest)
    seen: set[str] = set()
    dupes = sorted({r.video_id for r in records if r.video_id in seen or seen.add(r.video_id)})
    if dupes:
        raise ScoreError(f"video ids must be unique in the manifest; duplicated: {', '.join(dupes[:10])}")
    return [replace(r, path=Path(os.path.abspath(r.path))) for r in records]


# -- bare videos --------------------------------------------------------------------------
def is_manifest(path: str | os.PathLike) -> bool:
    """Whether ``aigvqa score`` reads ``path`` as a manifest (a file with a manifest suffix)."""
    path = Path(path)
    return path.is_file() and path.suffix.lower() in MANIFEST_SUFFIXES


def video_records(videos: str | os.PathLike | Iterable[str | os.PathLike], prompt: str | None = None) -> list[VideoRecord]:
    """Records for video files and folders of videos (the files in a folder whose suffix is
    in ``VIDEO_SUFFIXES``, not its sub-folders); the id is the file's stem, ``prompt`` the
    prompt of every video. Two files with one stem are refused: give a manifest instead."""
    if isinstance(videos, str | os.PathLike):
        videos = [videos]
    files: list[Path] = []
    for item in videos:
        item = Path(item)
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
            if not found:
                raise ScoreError(f"{item}: a folder without videos (looked for {' '.join(VIDEO_SUFFIXES)})")
            files += found
        elif item.exists():
            files.append(item)
        else:
            raise ScoreError(f"{item}: no such video file or folder")
    by_id: dict[str, list[Path]] = {}
    for f in files:
        by_id.setdefault(f.stem, []).append(f)
    clashes = {k: v for k, v in by_id.items() if len(v) > 1}
    if clashes:
        shown = "; ".join(f"{k}: {', '.join(map(str, v))}" for k, v in list(clashes.items())[:5])
        raise ScoreError(f"videos get their id from the file name, and these share one ({shown}); "
                         "score them with a manifest that gives each an id")
    text = prompt.strip() if prompt else None
    return [VideoRecord(video_id=f.stem, path=Path(os.path.abspath(f)), prompt=text) for f in files]


def read_rows(out: str | os.PathLike, label_names: Sequence[str], ids: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Rows of an output CSV with the scores as floats (None where the video failed), in the
    order of ``ids`` when given (only those rows), else in file order."""
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        for name in label_names:
            row[name] = float(row[name]) if row["status"] == STATUS_OK else None
    if ids is None:
        return rows
    by_id = {r["video_id"]: r for r in rows}
    return [by_id[i] for i in ids if i in by_id]


def check_prompts(bundle, records: Sequence[VideoRecord], how: str) -> None:
    """Refuse, before any work, records without a prompt when the model reads prompt
    features; ``how`` says how to give one (``--prompt``, ``prompt=``)."""
    needs = prompt_groups(bundle)
    missing = [r.video_id for r in records if not (r.prompt or "").strip()]
    if needs and missing:
        raise ScoreError(
            f"{bundle.path or 'the model'} reads prompt features ({', '.join(needs)}), and no prompt was "
            f"given for {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}: give the prompt with "
            f"{how}, or score with a manifest that has a prompt column"
        )


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


def score_to_rows(manifest, model, *, out: str | os.PathLike | None = None,
                  **options: Any) -> tuple[ScoreReport, list[dict[str, Any]]]:
    """``score`` into ``out`` -- or into a temporary folder, removed afterwards, when ``out``
    is None -- and the rows of the input's videos as ``read_rows`` gives them."""
    from aigvqa.pipeline.model.bundle import Bundle, load_bundle

    bundle = model if isinstance(model, Bundle) else load_bundle(model)
    records = _records(manifest)
    ids = [r.video_id for r in records]
    if out is not None:
        report = score(records, bundle, out, **options)
        return report, read_rows(out, bundle.label_names, ids)
    with tempfile.TemporaryDirectory(prefix="aigvqa-score-") as tmp:
        report = score(records, bundle, Path(tmp) / "scores.csv", **options)
        return report, read_rows(Path(tmp) / "scores.csv", bundle.label_names, ids)
