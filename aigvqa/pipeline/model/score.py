"""``aigvqa score``: predict quality scores of the videos of a manifest with a model bundle.

For each batch of videos not yet in the output CSV:

1. features come from ``cache`` (``--cache``) for the videos it holds -- after checking that
   its groups were made by the extractors and weights the model was trained on -- and are
   extracted for the others into a *work cache* (default ``<out>.features.h5``) with the
   extractor configs recorded in the bundle (``extract`` on Dask, itself resumable);
2. the model predicts every video that has all its features;
3. one row per video is appended to the CSV and flushed: ``video_id, path, status, <one
   column per predicted label>, error``; ``status`` is ``ok`` or ``failed`` (with the
   error: decode failure, an extractor failure, features missing).

Resuming: videos already in the output CSV are not extracted or predicted again, so an
interrupted run continues where it stopped; ``retry_failed=True`` first drops the
``failed`` rows so those videos are tried again.
"""

from __future__ import annotations

import csv
import io
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from aigvqa.errors import AigvqaError
from aigvqa.pipeline.extract import extract
from aigvqa.pipeline.records import VideoRecord

STATUS_OK = "ok"
STATUS_FAILED = "failed"
IMPORTED = "imported"


class ScoreError(AigvqaError, ValueError):
    """Scoring cannot start: the output CSV belongs to another model, features cannot be made."""


@dataclass
class ScoreReport:
    out: Path
    scored: int = 0
    failed: int = 0
    already_done: int = 0
    from_cache: int = 0
    extracted: int = 0
    seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        text = (
            f"{self.scored + self.failed + self.already_done} videos: {self.scored} scored, "
            f"{self.failed} failed, {self.already_done} already in {self.out} (not recomputed); "
            f"features: {self.from_cache} from the given cache, {self.extracted} extracted "
            f"({self.seconds:.1f} s)"
        )
        for vid, error in self.failures[:10]:
            text += f"\n  failed {vid}: {error}"
        if len(self.failures) > 10:
            text += f"\n  ... {len(self.failures) - 10} more (status column of {self.out})"
        return text


def output_columns(label_names: Sequence[str]) -> list[str]:
    return ["video_id", "path", "status", *label_names, "error"]


def read_scored(out: Path, columns: list[str], retry_failed: bool) -> set[str]:
    """Ids already in ``out``; checks it was written for the same labels. With
    ``retry_failed`` the failed rows are removed from the file (atomically) first."""
    if not out.exists() or out.stat().st_size == 0:
        return set()
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
    return {r["video_id"] for r in rows}


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


def _extractor_configs(bundle) -> tuple[dict[str, dict], dict[str, str]]:
    """{extractor name: config} to recreate the model's features, and {group: why not} for
    groups that cannot be recreated (imported ones)."""
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
        configs[name] = dict(prov.get("config") or {})
    return configs, impossible


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


def _check_cache(bundle, cache: Path) -> None:
    from aigvqa.cache import FeatureCache

    store = FeatureCache(cache)
    have = store.groups()
    bundle.check_provenance({g: store.group_info(g).provenance for g in bundle.groups if g in have}, source=str(cache))


def _failure_text(cache: Path | None, vid: str, groups: Sequence[str]) -> str:
    from aigvqa.cache import FeatureCache

    if cache is not None and cache.exists():
        errors = [f"[{f.extractor}] {f.error}" for f in FeatureCache(cache).failures()
                  if f.id == vid and (f.extractor in groups or f.extractor == "*")]
        if errors:
            return " | ".join(errors)
    return f"features missing for {', '.join(groups)}"


def _predict(bundle, cache: Path, ids: list[str]) -> np.ndarray:
    from aigvqa.cache import FeatureCache
    from aigvqa.pipeline.training_data import featureset_from_cache

    data = FeatureCache(cache).read(bundle.groups, ids=ids)
    return bundle.predict(featureset_from_cache(data))


def score(
    manifest: str | os.PathLike | Iterable[VideoRecord],
    model: str | os.PathLike,
    out: str | os.PathLike,
    *,
    cache: str | os.PathLike | None = None,
    work_cache: str | os.PathLike | None = None,
    batch_size: int = 256,
    retry_failed: bool = False,
    scheduler: str | None = None,
    gpus: bool = False,
    n_workers: int | None = None,
    torch_threads: int = 1,
    client=None,
    progress: bool = True,
) -> ScoreReport:
    """Score every video of ``manifest`` with the bundle at ``model`` into the CSV ``out``.

    See the module docstring. Cluster options are those of ``extract``; a Dask cluster is
    started only if some features must be extracted (and only once for the whole run).
    """
    from tqdm.auto import tqdm

    from aigvqa.pipeline.cluster import ClusterSpec, open_cluster
    from aigvqa.pipeline.model.bundle import load_bundle

    started = time.perf_counter()
    if batch_size < 1:
        raise ScoreError(f"batch_size must be at least 1, got {batch_size}")
    bundle = load_bundle(model)
    out = Path(out)
    cache = Path(cache) if cache is not None else None
    work = Path(work_cache) if work_cache is not None else out.with_name(out.name + ".features.h5")
    if cache is not None:
        _check_cache(bundle, cache)
    records = _records(manifest)
    columns = output_columns(bundle.label_names)
    done = read_scored(out, columns, retry_failed)
    pending = [r for r in records if r.video_id not in done]
    report = ScoreReport(out=out, already_done=len(records) - len(pending))
    if not pending:
        report.seconds = time.perf_counter() - started
        return report

    in_cache = _cached_ids(cache, bundle.groups)
    configs, impossible = _extractor_configs(bundle)
    appender = _Appender(out, columns)
    bar = tqdm(total=len(pending), desc="scoring", unit="video", disable=not progress)
    own_cluster = None
    try:
        for start in range(0, len(pending), batch_size):
            batch = pending[start:start + batch_size]
            rows: dict[str, dict[str, Any]] = {}
            cached = [r for r in batch if r.video_id in in_cache]
            to_extract = [r for r in batch if r.video_id not in in_cache]
            sources: list[tuple[Path, list[VideoRecord]]] = []
            if cached:
                sources.append((cache, cached))
                report.from_cache += len(cached)
            if to_extract and impossible:
                for r in to_extract:
                    rows[r.video_id] = _row(r, STATUS_FAILED, error=" | ".join(impossible.values()))
            elif to_extract:
                if client is None and own_cluster is None:
                    own_cluster = open_cluster(ClusterSpec(scheduler=scheduler, gpus=gpus, n_workers=n_workers,
                                                           torch_threads=torch_threads))
                    client = own_cluster.__enter__()
                extract(to_extract, configs, work, client=client, gpus=gpus, progress=False,
                        torch_threads=torch_threads)
                report.extracted += len(to_extract)
                _check_cache(bundle, work)
                sources.append((work, to_extract))
            for source, recs in sources:
                ready = _cached_ids(source, bundle.groups)
                ok = [r for r in recs if r.video_id in ready]
                for r in recs:
                    if r.video_id not in ready:
                        rows[r.video_id] = _row(r, STATUS_FAILED, error=_failure_text(source, r.video_id, bundle.groups))
                if ok:
                    pred = _predict(bundle, source, [r.video_id for r in ok])
                    for r, p in zip(ok, pred):
                        rows[r.video_id] = _row(r, STATUS_OK, dict(zip(bundle.label_names, p.tolist())))
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
            own_cluster.__exit__(None, None, None)
    report.seconds = time.perf_counter() - started
    return report


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
