"""The client side of a stage-one run: plan, submit, merge as shards land, report.

The client submits every task up front, consumes them with ``as_completed`` (progress
bar), and merges landed shards into the cache in batches (``merge_shards`` rewrites what
it touches, so merging per shard would be quadratic in the run length). A run that is
killed leaves complete shard files; the next run merges them first, then skips every id
the cache already holds for a group: finished work is never recomputed.

Prompts are encoded by separate, small tasks (chunks of distinct prompt ids): the text
tower runs on a worker like every other model, the client never builds one, and 10
videos of one prompt cost one encoding. Text features are keyed by prompt id.

Failures: an exception while extracting one video becomes a failure row
(id, extractor, error text) on the worker and the chunk goes on (``chunk``). A worker
process that dies (segfault, OOM kill, ``os._exit``) is replaced by its nanny and Dask
re-runs its task elsewhere (``distributed.scheduler.allowed-failures`` times); a chunk
that still cannot finish is split into single-video tasks so only the culprit video
fails. Failed videos are retried by the next run (the error may have been transient);
their failure rows are replaced by the new outcome.
"""

from __future__ import annotations

import contextlib
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aigvqa.cache.schema import ALL_EXTRACTORS, video_row
from aigvqa.extractors.base import Extractor
from aigvqa.pipeline.extract.cluster import describe_client
from aigvqa.pipeline.extract.failures import error_text
from aigvqa.pipeline.extract.options import (
    ISOLATED_ATTEMPTS,
    PROMPT_CHUNK_SIZE,
    TASK_RETRIES,
    TASKS_PER_WORKER,
    VIDEOS_PER_DECODE_WORKER,
    ExtractError,
    ExtractOptions,
    default_chunk_size,
)
from aigvqa.pipeline.extract.provenance import (
    SHARD_GLOB,
    check_leftover_shard,
    check_provenance,
    shard_dir_for,
    shard_name,
)
from aigvqa.pipeline.extract.report import ExtractReport
from aigvqa.pipeline.extract.worker import (
    ChunkResult,
    WorkerProblem,
    describe_extractors,
    host_cores,
    run_prompt_chunk,
    run_video_chunk,
)
from aigvqa.pipeline.records import VideoRecord, not_the_cached_file


class ExtractRun:
    """One extraction run on a connected client (plan -> submit -> merge as they land)."""

    def __init__(
        self,
        client,
        records: list[VideoRecord],
        extractors: list[Extractor],
        cache: Path,
        options: ExtractOptions,
        spec,
        *,
        release_workers: bool = False,
    ) -> None:
        self.client = client
        # connected to a shared scheduler by this run: hand the workers back clean at the end
        self.release_workers = release_workers
        self.records = records
        self.video_exts = [e for e in extractors if e.modality == "video"]
        self.text_exts = [e for e in extractors if e.modality == "text"]
        # extractors that need the video's prompt: text ones, and video ones scoring frames
        # against it (blip-itm, imagereward)
        self.prompt_exts = self.text_exts + [e for e in self.video_exts if e.needs_prompt]
        self.by_name = {e.name: e for e in extractors}
        self.cache = cache
        self.shard_dir = shard_dir_for(cache)
        self.spec = spec
        self.options = options
        self.decode = options.decode  # filled from the cluster by go()
        self.report = ExtractReport(cache=cache, cluster=describe_client(client))
        self.token = uuid.uuid4().hex[:8]
        self.provenance: dict[str, dict[str, Any]] = {}
        self._recovered: set[str] = set()  # video ids merged from leftover shards
        self._ok: set[str] = set()  # video ids computed without failure
        self._failed: set[str] = set()  # video ids with a failure row from this run
        self._prompts_done: set[str] = set()
        self._prompts_failed: set[str] = set()
        self._pending: list[Path] = []  # landed shards not merged yet
        self._client_shards = 0
        self._last_merge = time.monotonic()
        self._merge_seconds = 0.0
        self._identities_checked = False  # resumed ids compared with their files (_say_changed)

    # -- phases ---------------------------------------------------------------------
    def go(self) -> ExtractReport:
        from aigvqa.pipeline.extract.cluster import check_workers, worker_torch_threads
        from aigvqa.pipeline.extract.worker import release_models

        # Before anything is shipped to the workers: a worker without aigvqa (or with
        # another version) would fail to unpickle the first plugin or task.
        check_workers(self.client)
        try:
            with worker_torch_threads(self.client, self.spec.torch_threads):
                self._go()
        finally:
            if self.release_workers:
                # a shared cluster: the models and decode processes of this run stay
                # nowhere (the cluster's next user gets its memory back)
                with contextlib.suppress(OSError, RuntimeError):
                    self.client.run(release_models)
        return self.report

    def _go(self) -> None:
        from aigvqa.pipeline.extract.api import resolve_decode_settings

        self.decode = resolve_decode_settings(
            self.decode,
            self.video_exts,
            self.spec.torch_threads,
            lambda: self.client.run(host_cores),
        )
        self.report.decode_workers = int(self.decode.decode_workers)
        self.chunk_size = self.options.chunk_size or default_chunk_size(self.decode.decode_workers)
        self._describe()
        self.shard_dir.mkdir(exist_ok=True)
        self._recover_leftovers()
        video_plan, prompt_plan, no_prompt, self.report.prompts_skipped = self._plan()
        self._execute(video_plan, prompt_plan, no_prompt)
        self._tally()
        try:
            self.shard_dir.rmdir()  # only when empty: never delete a shard not merged
        except OSError:
            pass

    def _say(self, line: str) -> None:
        if self.options.progress:
            print(line, file=sys.stderr, flush=True)

    def _describe(self) -> None:
        """Load every extractor on every worker (one task per worker, so the progress says
        what the minutes of model loading are) and take their provenance (weights identity
        included); check that the workers agree, and check it against the cache before any
        video is touched."""
        everything = self.video_exts + self.text_exts
        workers = list(self.client.scheduler_info().get("workers", {}))
        # a run with little (or nothing) to compute loads the models where tasks will run
        workers = workers[: max(1, self._tasks_expected())]
        started = time.monotonic()
        names = ", ".join(e.name for e in everything)
        if workers:
            self._say(
                f"loading {len(everything)} model(s) ({names}) on {len(workers)} worker(s) ..."
            )
            futures = [
                self.client.submit(
                    describe_extractors,
                    everything,
                    pure=False,
                    workers=[w],
                    allow_other_workers=True,
                    priority=100,
                    key=f"load-extractors-{self.token}-{i}",
                )
                for i, w in enumerate(workers)
            ]
        else:
            self._say(f"waiting for a Dask worker to join {describe_client(self.client)} ...")
            futures = [
                self.client.submit(
                    describe_extractors,
                    everything,
                    pure=False,
                    key=f"load-extractors-{self.token}-0",
                )
            ]
        from distributed import as_completed

        answers = []
        bar = _progress_bar(len(futures), self.options.progress, desc="load models", unit="worker")
        try:
            for future in as_completed(futures):
                answer = future.result()
                if isinstance(answer, WorkerProblem):
                    self.client.cancel(futures)
                    raise _worker_error(answer)
                answers.append((future.key, answer))
                bar.update()
        finally:
            bar.close()
        self._say(f"models loaded in {time.monotonic() - started:.1f} s")
        first = answers[0][1]
        for _, other in answers[1:]:
            for e, mine, theirs in zip(everything, first, other):
                if mine != theirs:
                    from aigvqa.cache.store import describe_differences

                    raise ExtractError(
                        f"the Dask workers disagree on extractor {e.name!r}: "
                        + "; ".join(describe_differences(mine, theirs)[:5])
                        + ". Every worker must see the same weights (same files, or the same "
                        "$AIGVQA_WEIGHTS content); features of two checkpoints must not mix"
                    )
        self.provenance = {e.name: p for e, p in zip(everything, first)}
        if not self.options.overwrite:  # --overwrite replaces a group whose settings changed
            check_provenance(self.cache, self.provenance)

    def _recover_leftovers(self) -> None:
        """Merge the complete shards an interrupted run left behind (never recomputed)."""
        from aigvqa.cache.store import FeatureCache

        # A shard write killed midway leaves only its hidden temp file: nothing to keep.
        for partial in self.shard_dir.glob(".shard-*.partial"):
            partial.unlink(missing_ok=True)
        leftovers = sorted(self.shard_dir.glob(SHARD_GLOB))
        if not leftovers:
            return
        if self.options.overwrite:
            # They may hold exactly what --overwrite was asked to recompute.
            for path in leftovers:
                path.unlink()
            return
        recovered: set[str] = set()
        for path in leftovers:
            shard = FeatureCache(path)
            for group in shard.groups():
                info = shard.group_info(group)
                if group in self.provenance:
                    check_leftover_shard(
                        path, self.shard_dir, group, info.provenance, self.provenance[group]
                    )
                if info.keyed_by == "video":
                    recovered.update(shard.ids(group))
        self._merge(leftovers)
        self._recovered = recovered
        print(f"merged {len(leftovers)} shard(s) left by an interrupted run", file=sys.stderr)

    def _plan(self):
        from aigvqa.cache.store import FeatureCache

        have: dict[str, set[str]] = defaultdict(set)
        if self.cache.exists() and not self.options.overwrite:
            reader = FeatureCache(self.cache)
            present = set(reader.groups())
            for name in self.by_name:
                if name in present:
                    have[name] = set(reader.ids(name))
            self._say_changed(reader.videos(), have)

        no_prompt = [r for r in self.records if r.prompt_id is None or not (r.prompt or "").strip()]
        prompt_less = {r.video_id for r in no_prompt}
        by_missing: dict[tuple[str, ...], list[VideoRecord]] = defaultdict(list)
        for rec in self.records:
            missing = tuple(
                e.name
                for e in self.video_exts
                if rec.video_id not in have[e.name]
                # a video without a prompt is planned without the extractors that need one
                # (it gets their failure row instead, in _execute)
                and not (e.needs_prompt and rec.video_id in prompt_less)
            )
            if missing:
                by_missing[missing].append(rec)

        prompts: dict[str, dict[str, str]] = {}
        prompts_skipped = 0
        for e in self.text_exts:
            todo: dict[str, str] = {}
            cached: set[str] = set()
            for rec in self.records:
                pid = rec.prompt_id
                if pid is None or not (rec.prompt or "").strip():
                    continue
                if pid in have[e.name]:
                    cached.add(pid)
                    continue
                if pid in todo and todo[pid] != rec.prompt:
                    raise ExtractError(
                        f"prompt id {pid!r} is used for two different texts ({todo[pid]!r} "
                        f"and {rec.prompt!r}); fix the prompt group column of the manifest"
                    )
                todo[pid] = rec.prompt
            prompts_skipped += len(cached)
            prompts[e.name] = todo
        if not self.prompt_exts:
            no_prompt = []
        return by_missing, prompts, no_prompt, prompts_skipped

    def _say_changed(self, stored: list[dict], have: dict[str, set[str]]) -> None:
        """One line when videos resumed by id are not the files their cached features were
        made from (another path, or size / mtime_ns other than recorded): they are not
        silently re-extracted -- ids are the cache's keys -- but said, with the fix."""
        if self._identities_checked:  # _plan runs twice: stat the files once
            return
        self._identities_checked = True
        rows = {v["video_id"]: v for v in stored}
        cached = set().union(*have.values()) if have else set()
        changed = [
            rec.video_id
            for rec in self.records
            if rec.video_id in cached and not_the_cached_file(rows.get(rec.video_id, {}), rec.path)
        ]
        if changed:
            print(
                f"{len(changed)} video(s) already in {self.cache} by id are not the file their "
                f"features were made from (changed since, or another path): "
                f"{', '.join(changed[:5])}{' ...' if len(changed) > 5 else ''}; their cached "
                "features are kept (`aigvqa score` extracts such videos afresh). To recompute "
                "them, re-run with --overwrite or extract into a new cache.",
                file=sys.stderr,
                flush=True,
            )

    def _tasks_expected(self) -> int:
        """About how many tasks the run will submit (before leftover shards are merged,
        which only lowers it): models are loaded on no more workers than that (at least
        one, for the provenance)."""
        video_plan, prompt_plan, _, _ = self._plan()
        videos = sum(len(self._chunks(recs)) for recs in video_plan.values())
        prompts = sum(-(-len(todo) // PROMPT_CHUNK_SIZE) for todo in prompt_plan.values())
        return videos + prompts

    def _chunks(self, records: list[VideoRecord]) -> list[list[VideoRecord]]:
        n_workers = max(1, len(self.client.scheduler_info().get("workers", {})))
        size = self.chunk_size
        if n_workers > 1:
            # A small run gets smaller chunks, at least TASKS_PER_WORKER per worker, so that
            # the last tasks do not leave workers idle (40 videos on 2 workers as chunks of
            # 16, 16, 8 would keep one worker busy 50 % longer than the other) -- but not
            # below a few videos per decode process, which idle between tasks.
            balanced = -(-len(records) // (TASKS_PER_WORKER * n_workers))
            floor = VIDEOS_PER_DECODE_WORKER * int(self.decode.decode_workers or 0)
            size = min(size, max(balanced, floor))
        size = max(1, size)
        count = -(-len(records) // size)
        size = -(-len(records) // count)  # even chunks: 12 videos by 8 make 6 + 6, not 8 + 4
        return [records[i : i + size] for i in range(0, len(records), size)]

    # -- submission -----------------------------------------------------------------
    def _submit_video(self, chunk: list[VideoRecord], names: Sequence[str], attempt: int = 0):
        exts = [self.by_name[n] for n in names]
        name = shard_name("video", [r.video_id for r in chunk], [self.provenance[n] for n in names])
        return self.client.submit(
            run_video_chunk,
            chunk,
            exts,
            str(self.shard_dir / name),
            self.decode,
            key=f"video-chunk-{name[len('shard-video-') : -3]}-{self.token}-{attempt}",
            retries=TASK_RETRIES,
            pure=False,
        ), ("video", chunk, exts, attempt)

    def _submit_prompts(self, part: dict[str, str], ext_name: str):
        name = shard_name("prompt", list(part), [self.provenance[ext_name]])
        ext = self.by_name[ext_name]
        return self.client.submit(
            run_prompt_chunk,
            part,
            ext,
            str(self.shard_dir / name),
            key=f"prompt-chunk-{name[len('shard-prompt-') : -3]}-{self.token}",
            retries=TASK_RETRIES,
            pure=False,
            priority=10,  # small: run them first
        ), ("prompt", list(part), [ext], 0)

    def _execute(self, video_plan, prompt_plan, no_prompt) -> None:
        from distributed import as_completed

        meta: dict[str, tuple[str, list, list[Extractor], int]] = {}
        futures = []

        def add(submitted):
            fut, info = submitted
            meta[fut.key] = info
            futures.append(fut)
            return fut

        n_videos = 0
        for names, recs in video_plan.items():
            for chunk in self._chunks(recs):
                # a chunk of one video is already "alone": one isolated try used
                add(self._submit_video(chunk, names, attempt=int(len(chunk) == 1)))
                n_videos += len(chunk)
        for ext_name, todo in prompt_plan.items():
            ids = sorted(todo)
            for i in range(0, len(ids), PROMPT_CHUNK_SIZE):
                add(
                    self._submit_prompts(
                        {p: todo[p] for p in ids[i : i + PROMPT_CHUNK_SIZE]}, ext_name
                    )
                )

        # The videos table of every record (labels, prompt ids: it refreshes rows of
        # skipped videos too) and one failure row per video without a prompt and extractor
        # needing one (text features, prompt-scored frames); both land with the first merge.
        no_prompt_rows = [
            (
                r.video_id,
                e.name,
                f"the manifest gives no prompt for this video; {e.name} "
                "needs one (add a prompt column)",
            )
            for e in self.prompt_exts
            for r in no_prompt
        ]
        self._pending.append(self._client_shard(videos=self.records, failures=no_prompt_rows))
        self.report.failures.extend(no_prompt_rows)
        self._failed.update(r[0] for r in no_prompt_rows)

        bar = _progress_bar(n_videos, self.options.progress)
        merge_every = self.options.merge_every or max(4, min(64, len(futures) // 8))
        pool = as_completed(futures)
        try:
            for fut in pool:
                kind, items, exts, attempt = meta.pop(fut.key)
                if fut.status == "finished":
                    result: ChunkResult = fut.result()
                    self._pending.append(Path(result.shard))
                    self.report.shards_written += 0 if result.reused else 1
                    rows = result.failures
                elif kind == "video" and (len(items) > 1 or attempt < ISOLATED_ATTEMPTS):
                    # Dask gave up on the task (workers kept dying while it ran, or it kept
                    # raising): one task per video, so only the culprit fails. A worker's
                    # death also counts against the tasks queued beside the culprit, so a
                    # single video gets another chance before it is declared failed.
                    names = [e.name for e in exts]
                    for rec in items:
                        pool.add(add(self._submit_video([rec], names, attempt + 1)))
                    fut.release()
                    continue
                else:
                    rows = self._task_failed(kind, items, exts, fut.exception())
                fut.release()
                self.report.failures.extend(rows)
                failed_ids = {r[0] for r in rows}
                if kind == "video":
                    ids = [r.video_id for r in items]
                    self._failed.update(i for i in ids if i in failed_ids)
                    self._ok.update(i for i in ids if i not in failed_ids)
                    bar.update(len(ids))
                    bar.set_postfix(failed=len(self._failed), refresh=False)
                else:
                    self._prompts_failed.update(failed_ids)
                    self._prompts_done.update(p for p in items if p not in failed_ids)
                if self._merge_due(merge_every):
                    bar.set_description("extract (merging)", refresh=True)
                    self._merge(self._pending)
                    bar.set_description("extract", refresh=False)
            bar.close()
            if self._pending:
                started = time.monotonic()
                count = len(self._pending)
                self._say(f"merging {count} shard(s) into {self.cache} ...")
                self._merge(self._pending)
                self._say(f"merged in {time.monotonic() - started:.1f} s")
        except KeyboardInterrupt:
            # Keep what landed (merging is atomic); the next run resumes the rest.
            self.client.cancel(futures)
            self._merge(self._pending)
            raise
        finally:
            bar.close()

    def _task_failed(self, kind, items, exts, err) -> list[tuple[str, str, str]]:
        """Failure rows for a task Dask gave up on, written to a client-side shard."""
        text = (
            f"the task failed on every try ({error_text(err)}); the worker process may "
            "have crashed on this input (see the worker logs)"
        )
        if kind == "video":  # a single video here: it crashed whatever ran on it
            rows = [(r.video_id, ALL_EXTRACTORS, text) for r in items]
        else:
            rows = [(pid, exts[0].name, text) for pid in items]
        self._pending.append(self._client_shard(failures=rows))
        return rows

    def _tally(self) -> None:
        """Per-video counts: a video counts once, failed if any of its rows failed."""
        for rec in self.records:
            vid = rec.video_id
            if vid in self._failed or rec.prompt_id in self._prompts_failed:
                self.report.failed += 1
            elif vid in self._ok or rec.prompt_id in self._prompts_done:
                self.report.succeeded += 1
            elif vid in self._recovered:
                self.report.resumed += 1
            else:
                self.report.skipped += 1
        self.report.prompts_encoded = len(self._prompts_done)

    # -- cache writes ---------------------------------------------------------------
    def _client_shard(self, videos=(), failures=()) -> Path:
        """A shard written by the client: the videos table, failure rows of tasks that
        never finished."""
        from aigvqa.cache.store import Failure, write_shard

        self._client_shards += 1
        path = self.shard_dir / f"shard-client-{self.token}-{self._client_shards}.h5"
        write_shard(path, [], [Failure(*f) for f in failures], [video_row(r) for r in videos])
        return path

    def _merge_due(self, merge_every: int) -> bool:
        # merge_shards rewrites the cache: merge in batches, and keep merging under ~10 %
        # of the run time however large the cache grows.
        since = time.monotonic() - self._last_merge
        enough = len(self._pending) >= merge_every or since > 120
        return enough and since >= 10 * self._merge_seconds

    def _merge(self, shards: list[Path]) -> None:
        from aigvqa.cache.store import merge_shards

        shards = [s for s in shards if s.exists()]
        self._pending = []
        if not shards:
            return
        started = time.monotonic()
        report = merge_shards(
            self.cache, shards, overwrite=self.options.overwrite, remove_shards=True
        )
        if report.groups_replaced:
            print(
                f"--overwrite: replaced group(s) {', '.join(report.groups_replaced)} made "
                "with other settings",
                file=sys.stderr,
            )
        self._last_merge = time.monotonic()
        self._merge_seconds = self._last_merge - started


def _progress_bar(total: int, enabled: bool, desc: str = "extract", unit: str = "video"):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit=unit, desc=desc, disable=not enabled, dynamic_ncols=True)


def _worker_error(problem: WorkerProblem) -> Exception:
    """The error a worker sent back, naming the worker (a missing-weights message already
    does: it says whose environment was searched)."""
    from aigvqa.errors import WeightsNotFoundError

    err = problem.error
    if isinstance(err, WeightsNotFoundError):
        return err
    try:
        return type(err)(f"on {problem.who}: {Exception.__str__(err)}")
    except TypeError:  # an error class with another constructor: as it came
        return err
