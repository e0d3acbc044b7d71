"""Stage one on Dask: features, failure rows, resume, provenance refusal, prompts, CLI.

One LocalCluster of 2 worker processes is shared by the module (starting one costs a few
seconds). Test-only extractors are defined here and shipped to the workers by value
(cloudpickle), so they need no registry entry; they count their calls in files because
the work happens in other processes.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import cloudpickle
import numpy as np
import pytest
from _extract_helpers import MeanColour, two_worker_client

from aigvqa.cache.schema import ALL_EXTRACTORS
from aigvqa.cache.store import FeatureCache
from aigvqa.errors import AigvqaError, ProvenanceMismatchError
from aigvqa.extractors.base import Extractor
from aigvqa.extractors.decode import write_video
from aigvqa.extractors.handcrafted import FEATURE_NAMES
from aigvqa.extractors.synthetic import moving_pattern
from aigvqa.pipeline.extract import (
    ExtractError,
    extract,
    resolve_extractors,
    shard_dir_for,
    shard_name,
)
from aigvqa.pipeline.records import VideoRecord

cloudpickle.register_pickle_by_value(sys.modules[__name__])


# -- test extractors ------------------------------------------------------------------------
class PromptLength(Extractor):
    """A text extractor: pooled = [len(prompt), words]; logs every prompt it encodes."""

    name = "prompt-length"
    modality = "text"

    def __init__(self, log: str | None = None) -> None:
        super().__init__(log=log)

    def output_dims(self):
        return {"pooled": 2, "tokens": 2}

    def load(self, device="cpu"):
        self.weights_identity = "none"

    def encode_text(self, prompts):
        if self._config["log"]:
            with open(self._config["log"], "a") as fh:
                fh.writelines(p + "\n" for p in prompts)
        pooled = np.array([[len(p), len(p.split())] for p in prompts], dtype=np.float32)
        tokens = np.zeros((len(prompts), 4, 2), dtype=np.float32)
        mask = np.zeros((len(prompts), 4), dtype=bool)
        for i, p in enumerate(prompts):
            words = p.split()[:4]
            mask[i, : len(words)] = True
            tokens[i, : len(words)] = [[len(w), j] for j, w in enumerate(words)]
        return {"pooled": pooled, "tokens": tokens, "mask": mask}

    def provenance(self):
        prov = super().provenance()
        prov["config"] = {}
        return prov


class PromptScore(MeanColour):
    """A needs_prompt video extractor: [mean red, len(prompt)] per key frame; logs the
    prompts of every forward call (one line per item)."""

    name = "prompt-score"
    needs_prompt = True

    def output_dims(self):
        return {"values": 2}

    def forward(self, items, prompts=None):
        if self._config["log"]:
            with open(self._config["log"], "a") as fh:
                fh.writelines(p + "\n" for p in prompts)
        red = items.reshape(len(items), -1, 3).mean(axis=1)[:, :1]
        return np.hstack([red, [[len(p)] for p in prompts]]).astype(np.float32)


def calls(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


# -- fixtures -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client():
    with two_worker_client() as c:
        yield c


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    """Three good clips, a truncated copy, a zero-byte file, a text file named .mp4 and a
    one-frame clip."""
    folder = tmp_path_factory.mktemp("videos")
    paths = {}
    for i in range(3):
        paths[f"good{i}"] = write_video(
            folder / f"good{i}.mp4", moving_pattern(12, 48, 64, seed=i), 8
        )
    data = paths["good0"].read_bytes()
    paths["truncated"] = folder / "truncated.mp4"
    paths["truncated"].write_bytes(data[: len(data) // 2])
    paths["empty"] = folder / "empty.mp4"
    paths["empty"].write_bytes(b"")
    paths["text"] = folder / "text.mp4"
    paths["text"].write_text("this is a text file, not a video\n" * 40)
    paths["one-frame"] = write_video(folder / "one-frame.mp4", moving_pattern(1, 48, 64, seed=9), 8)
    return paths


def records_of(videos, ids, prompt=None):
    return [
        VideoRecord(
            i, videos[i], prompt=None if prompt is None else prompt(i), labels={"mos": float(n)}
        )
        for n, i in enumerate(ids)
    ]


GOOD = ["good0", "good1", "good2", "one-frame"]
BAD = ["truncated", "empty", "text"]


# -- behaviour ------------------------------------------------------------------------------
def test_bad_videos_become_one_failure_row_each_and_good_ones_get_features(
    client, videos, tmp_path
):
    cache = tmp_path / "feats.h5"
    extractors = resolve_extractors({"handcrafted": {"size": 32, "max_frames": 4}}) + [MeanColour()]
    report = extract(
        records_of(videos, GOOD + BAD),
        extractors,
        cache,
        client=client,
        chunk_size=2,
        progress=False,
    )

    reader = FeatureCache(cache)
    for group in ("handcrafted", "mean-colour"):
        assert sorted(reader.ids(group)) == sorted(GOOD)
    # each group is stored in its extractor's cache_dtype (handcrafted statistics overflow float16)
    assert reader.group_info("handcrafted").dtype == "float32"
    assert reader.group_info("mean-colour").dtype == "float16"
    # named for outside readers
    assert reader.group_info("handcrafted").columns == list(FEATURE_NAMES)
    failures = reader.failures()
    assert sorted(f.id for f in failures) == sorted(BAD)  # exactly one row per bad video
    assert {f.extractor for f in failures} == {ALL_EXTRACTORS}
    errors = {f.id: f.error for f in failures}
    assert "truncated" in errors["truncated"]
    assert "empty" in errors["empty"]
    assert "not a readable video" in errors["text"]
    assert (report.succeeded, report.failed, report.skipped) == (4, 3, 0)
    assert "4 succeeded, 3 failed, 0 skipped" in report.summary()
    # The one-frame clip is a success: key frames repeat its frame, handcrafted has one pair.
    data = reader.read(["handcrafted", "mean-colour"], ids=["one-frame"])
    assert data.lengths["handcrafted"][0] == 1 and data.lengths["mean-colour"][0] == 4
    assert data.labels["mos"][0] == GOOD.index("one-frame")
    assert not shard_dir_for(cache).exists()  # every shard merged and removed


def test_rerun_skips_cached_ids_retries_failures_and_overwrite_recomputes(client, videos, tmp_path):
    cache, log = tmp_path / "feats.h5", tmp_path / "calls.log"
    recs = records_of(videos, GOOD + ["empty"])
    first = extract(recs, [MeanColour(log=str(log))], cache, client=client, progress=False)
    assert (first.succeeded, first.failed) == (4, 1) and calls(log) == 4
    stored = FeatureCache(cache).read("mean-colour")

    again = extract(recs, [MeanColour(log=str(log))], cache, client=client, progress=False)
    assert (again.succeeded, again.failed, again.skipped) == (0, 1, 4)
    assert calls(log) == 4  # nothing recomputed
    assert len(FeatureCache(cache).failures()) == 1  # the retried failure replaced its row

    forced = extract(
        recs, [MeanColour(log=str(log))], cache, client=client, progress=False, overwrite=True
    )
    assert forced.succeeded == 4 and calls(log) == 8
    after = FeatureCache(cache).read("mean-colour")
    assert after.ids == stored.ids and len(after.ids) == 4
    np.testing.assert_array_equal(after.arrays["mean-colour"], stored.arrays["mean-colour"])


def test_new_ids_and_new_extractors_compute_only_what_is_missing(client, videos, tmp_path):
    cache, log = tmp_path / "feats.h5", tmp_path / "calls.log"
    extract(
        records_of(videos, ["good0"]),
        [MeanColour(log=str(log))],
        cache,
        client=client,
        progress=False,
    )
    report = extract(
        records_of(videos, ["good0", "good1"]),
        [MeanColour(log=str(log))],
        cache,
        client=client,
        progress=False,
    )
    assert (report.succeeded, report.skipped) == (1, 1) and calls(log) == 2
    both = extract(
        records_of(videos, ["good0", "good1"]),
        resolve_extractors({"handcrafted": {"size": 32, "max_frames": 4}})
        + [MeanColour(log=str(log))],
        cache,
        client=client,
        progress=False,
    )
    assert both.succeeded == 2 and calls(log) == 2  # mean-colour was cached for both
    assert sorted(FeatureCache(cache).ids("handcrafted")) == ["good0", "good1"]


def test_config_change_is_refused_before_any_video_is_processed(client, videos, tmp_path):
    cache, log = tmp_path / "feats.h5", tmp_path / "calls.log"
    recs = records_of(videos, ["good0", "good1"])
    extract(recs[:1], [MeanColour(n=4, log=str(log))], cache, client=client, progress=False)
    with pytest.raises(ProvenanceMismatchError, match=r"config\.n: 4 vs 5"):
        extract(recs, [MeanColour(n=5, log=str(log))], cache, client=client, progress=False)
    assert calls(log) == 1
    assert FeatureCache(cache).ids("mean-colour") == ["good0"]


def test_prompts_are_encoded_once_per_distinct_prompt(client, videos, tmp_path):
    cache, log = tmp_path / "feats.h5", tmp_path / "prompts.log"
    texts = {
        "good0": "a red fox",
        "good1": "a red fox",
        "good2": "two cats dancing",
        "one-frame": None,
    }
    recs = records_of(videos, list(texts), prompt=texts.get)
    report = extract(
        recs, [MeanColour(), PromptLength(log=str(log))], cache, client=client, progress=False
    )
    assert sorted(log.read_text().splitlines()) == ["a red fox", "two cats dancing"]
    reader = FeatureCache(cache)
    assert len(reader.ids("prompt-length")) == 2  # keyed by prompt id
    data = reader.read(["mean-colour", "prompt-length"])
    assert data.ids == ["good0", "good1", "good2"]
    np.testing.assert_array_equal(data.extras["prompt-length/pooled"][:, 0], [9, 9, 16])
    assert list(data.lengths["prompt-length"]) == [3, 3, 3]
    # the video without a prompt: one row for the text extractor, video features kept
    assert [(f.id, f.extractor) for f in reader.failures()] == [("one-frame", "prompt-length")]
    assert "one-frame" in reader.ids("mean-colour")
    assert (report.prompts_encoded, report.failed) == (2, 1)

    extract(recs, [MeanColour(), PromptLength(log=str(log))], cache, client=client, progress=False)
    assert len(log.read_text().splitlines()) == 2  # cached prompts are not encoded again


def test_prompt_scored_extractors_get_each_videos_prompt(client, videos, tmp_path):
    cache, log, colour_log = (
        tmp_path / "feats.h5",
        tmp_path / "prompts.log",
        tmp_path / "colour.log",
    )
    texts = {"good0": "a red fox", "good1": "two cats dancing", "one-frame": None}
    recs = records_of(videos, list(texts), prompt=texts.get)
    report = extract(
        recs,
        [PromptScore(n=3, log=str(log)), MeanColour(n=3, log=str(colour_log))],
        cache,
        client=client,
        progress=False,
    )
    # every item of a video is scored against that video's prompt; the prompt-less video is
    # planned without the extractor (no item of it reaches forward)
    assert sorted(log.read_text().splitlines()) == ["a red fox"] * 3 + ["two cats dancing"] * 3
    reader = FeatureCache(cache)
    data = reader.read(["prompt-score"])
    assert data.ids == ["good0", "good1"]
    np.testing.assert_array_equal(data.arrays["prompt-score"][:, :, 1], [[9] * 3, [16] * 3])
    assert [(f.id, f.extractor) for f in reader.failures()] == [("one-frame", "prompt-score")]
    assert "needs one" in reader.failures()[0].error
    assert sorted(reader.ids("mean-colour")) == ["good0", "good1", "one-frame"]
    assert (report.succeeded, report.failed) == (2, 1)


def test_decoding_ahead_hands_each_video_its_own_prompt(videos, tmp_path):
    from aigvqa.pipeline.extract import run_video_chunk

    log = tmp_path / "prompts.log"
    texts = {"good0": "a red fox", "good1": "two cats dancing", "good2": None}
    recs = records_of(videos, list(texts), prompt=texts.get)
    result = run_video_chunk(
        recs,
        [PromptScore(n=2, log=str(log)), MeanColour(n=2)],
        str(tmp_path / "shard.h5"),
        videos_in_flight=2,
    )
    assert log.read_text().splitlines() == ["a red fox"] * 2 + ["two cats dancing"] * 2
    assert result.done["prompt-score"] == ["good0", "good1"]
    assert result.done["mean-colour"] == ["good0", "good1", "good2"]  # isolated: kept
    assert [(f[0], f[1]) for f in result.failures] == [("good2", "prompt-score")]
    assert "MissingPromptError" in result.failures[0][2]


def test_leftover_shards_of_a_killed_run_are_merged_not_recomputed(client, videos, tmp_path):
    """A shard that landed before the client died is merged by the next run."""
    cache, log = tmp_path / "feats.h5", tmp_path / "calls.log"
    other = tmp_path / "other.h5"
    recs = records_of(videos, ["good0", "good1"])
    extract(
        recs[:1],
        [MeanColour(log=str(other.with_suffix(".log")))],
        other,
        client=client,
        progress=False,
    )
    # What a killed run leaves: a complete shard under <cache>.shards/, no cache yet.
    shard_dir_for(cache).mkdir()
    (shard_dir_for(cache) / "shard-video-leftover.h5").write_bytes(other.read_bytes())
    report = extract(recs, [MeanColour(log=str(log))], cache, client=client, progress=False)
    assert (report.resumed, report.succeeded) == (1, 1)
    assert calls(log) == 1
    assert sorted(FeatureCache(cache).ids("mean-colour")) == ["good0", "good1"]


def test_shard_names_are_deterministic_and_config_dependent():
    prov = [{"extractor": "x", "config": {"n": 4}, "weights": "none"}]
    assert shard_name("video", ["a", "b"], prov) == shard_name("video", ["a", "b"], prov)
    assert shard_name("video", ["a", "b"], prov) != shard_name("video", ["a", "c"], prov)
    changed = [{"extractor": "x", "config": {"n": 5}, "weights": "none"}]
    assert shard_name("video", ["a", "b"], prov) != shard_name("video", ["a", "b"], changed)


@pytest.fixture
def fake_torch_extractors(monkeypatch):
    """Two registered torch-style extractors (weights / random_init options) that import
    nothing heavy; the registry entries are removed after the test."""
    from aigvqa.extractors import registry

    class FakeTorch(registry.TorchExtractor):
        def output_dims(self):
            return {"values": 1}

        def load(self, device="cpu"):
            self.weights_identity = "none"

    for name in ("fake-a", "fake-b"):
        monkeypatch.setitem(registry._REGISTRY, name, type(name, (FakeTorch,), {"name": name}))


def test_resolve_extractors_applies_random_init_and_weights_only_where_accepted(
    fake_torch_extractors,
):
    built = resolve_extractors(["handcrafted", "fake-a"], random_init=True)
    by_name = {e.name: e.config() for e in built}
    assert by_name["fake-a"]["random_init"] is True
    assert "random_init" not in by_name["handcrafted"]
    on_gpu = {
        e.name: e.config()["device"]
        for e in resolve_extractors(["handcrafted", "fake-a"], device="cuda")
    }
    assert on_gpu == {"handcrafted": "cpu", "fake-a": "cuda"}  # handcrafted computes on the CPU
    with_weights = resolve_extractors(["handcrafted", "fake-a"], weights="ckpt.pt")
    # the path leaves the client absolute (workers may have another working directory)
    assert {e.name: e.config().get("weights") for e in with_weights}["fake-a"] == str(
        Path("ckpt.pt").absolute()
    )
    with pytest.raises(ExtractError, match="requested twice"):
        resolve_extractors([MeanColour(), MeanColour(n=5)])
    loaded = MeanColour()
    loaded.load()
    with pytest.raises(ExtractError, match="already loaded"):
        resolve_extractors([loaded])
    with pytest.raises(ExtractError, match="2 requested extractors take weights"):
        resolve_extractors(["fake-a", "fake-b"], weights="ckpt.pt")
    with pytest.raises(ExtractError, match="not a requested extractor"):
        resolve_extractors(["fake-a"], weights={"fake-b": "x.pt"})


def test_duplicate_video_ids_are_refused(videos, tmp_path):
    recs = records_of(videos, ["good0"]) * 2
    with pytest.raises(ExtractError, match="unique"):
        extract(recs, [MeanColour()], tmp_path / "c.h5")


def test_gpus_without_dask_cuda_names_the_fix(videos, tmp_path):
    pytest.importorskip("distributed")
    import importlib.util

    if importlib.util.find_spec("dask_cuda") is not None:
        pytest.skip("dask-cuda is installed here; the missing-package message cannot be shown")
    with pytest.raises(AigvqaError, match="dask-cuda") as caught:
        extract(records_of(videos, ["good0"]), [MeanColour()], tmp_path / "c.h5", gpus=True)
    # the install command is the README's, word for word
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    command = 'pip install -e ".[cuda]"'
    assert command in readme and command in str(caught.value)


# -- command line ---------------------------------------------------------------------------
def test_cli_extract_on_an_existing_scheduler_with_a_config_file(client, videos, tmp_path, capsys):
    from aigvqa.pipeline.cli import main

    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text(
        "".join(
            json.dumps({"video_id": i, "path": str(videos[i]), "prompt": "a red fox", "mos": 3.0})
            + "\n"
            for i in ["good0", "good1", "empty"]
        )
    )
    config = tmp_path / "extractors.toml"
    config.write_text("[handcrafted]\nsize = 32\nmax_frames = 3\n")
    cache = tmp_path / "feats.h5"
    code = main(
        [
            "extract",
            str(manifest),
            "--extractors",
            "handcrafted",
            "--config",
            str(config),
            "--cache",
            str(cache),
            "--scheduler",
            client.scheduler.address,
            "--no-progress",
        ]
    )
    out = capsys.readouterr()
    # one video failed: the exit status says so (0 only when all succeeded)
    assert code == 1, out.err
    assert "2 succeeded, 1 failed, 0 skipped" in out.out
    info = FeatureCache(cache).group_info("handcrafted")
    assert info.provenance["config"]["max_frames"] == 3 and info.n == 2

    bad = tmp_path / "bad.toml"
    bad.write_text("[clip-frame]\narch = 'ViT-B-16'\n")  # a typo of clip-frames
    code = main(
        [
            "extract",
            str(manifest),
            "--extractors",
            "handcrafted",
            "--config",
            str(bad),
            "--cache",
            str(cache),
        ]
    )
    assert code == 2 and "[clip-frame], which name no extractor" in capsys.readouterr().err


def test_a_config_of_many_extractors_serves_a_run_of_some():
    # one extractors.toml for a project (the README's examples/extractors.toml); --extractors
    # picks the tables of this run
    from aigvqa.pipeline.extract import extractor_options

    config = Path(__file__).parents[1] / "examples" / "extractors.toml"
    spec = extractor_options(config, "blip-itm,blip-text,imagereward")
    assert list(spec) == ["blip-itm", "blip-text", "imagereward"]
    assert spec["imagereward"]["weights"] == str(config.parent / "weights" / "ImageReward.pt")
    assert set(extractor_options(config)) == {
        "clip-frames",
        "slowfast",
        "handcrafted",
        "blip-itm",
        "blip-text",
        "imagereward",
    }


def test_a_file_short_by_a_few_frames_keeps_its_features_a_truncated_one_fails():
    from aigvqa.extractors.decode import TruncatedVideoWarning
    from aigvqa.pipeline.extract.failures import truncation as _truncation

    def caught(decoded, expected):
        return [TruncatedVideoWarning("short", "x.mp4", decoded, expected)]

    assert _truncation(caught(95, 100), num_frames=100) is None  # rounded metadata
    assert "only 50 of 100 frames" in _truncation(caught(50, 100), num_frames=100)
    assert _truncation([], num_frames=100) is None


def test_scheduler_file_connects_to_a_running_cluster(client, videos, tmp_path):
    scheduler_file = tmp_path / "scheduler.json"  # what dask-jobqueue / `dask scheduler` write
    scheduler_file.write_text(json.dumps({"address": client.scheduler.address}))
    report = extract(
        records_of(videos, ["good0"]),
        [MeanColour()],
        tmp_path / "c.h5",
        scheduler=str(scheduler_file),
        progress=False,
    )
    assert report.succeeded == 1 and report.cluster.startswith(
        f"scheduler {client.scheduler.address} ("
    )


def test_default_worker_count_follows_cores_and_torch_threads():
    from aigvqa.pipeline.extract.cluster import default_n_workers

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert 1 <= default_n_workers(1) <= cores
    assert default_n_workers(cores) == 1
    assert default_n_workers(1, memory_per_worker=2**62) == 1  # RAM caps it too


def test_local_workers_get_heap_friendly_malloc_settings_and_one_omp_thread(client):
    from aigvqa.pipeline.extract.cluster import MALLOC_ENV

    env = client.run(
        lambda: (os.environ.get("MALLOC_MMAP_THRESHOLD_"), os.environ.get("OMP_NUM_THREADS"))
    )
    assert set(env.values()) == {(MALLOC_ENV["MALLOC_MMAP_THRESHOLD_"], "1")}


def test_relative_weights_resolve_on_the_client_next_to_the_config(tmp_path, monkeypatch):
    # workers may run elsewhere with another working directory: paths leave the client absolute
    from aigvqa.pipeline.extract import extractor_options

    config = tmp_path / "conf" / "extractors.toml"
    config.parent.mkdir()
    config.write_text('[vit-keyframes]\nweights = "weights/vit.safetensors"\n')
    spec = extractor_options(config, "vit-keyframes")
    assert spec["vit-keyframes"]["weights"] == str(config.parent / "weights" / "vit.safetensors")

    monkeypatch.chdir(tmp_path)
    (model,) = resolve_extractors({"vit-keyframes": {"weights": "w/vit.safetensors"}})
    assert model.config()["weights"] == str(tmp_path / "w" / "vit.safetensors")


def test_decoder_threads_reach_ffmpeg_and_default_to_the_workers_torch_threads(
    videos, tmp_path, monkeypatch
):
    import aigvqa.extractors.views as views_module
    from aigvqa.pipeline.extract import default_decode_threads, run_video_chunk

    seen = []
    real_iter_frames = views_module.iter_frames

    def spy(path, wanted=None, **kwargs):
        seen.append(kwargs.get("threads"))
        return real_iter_frames(path, wanted, **kwargs)

    monkeypatch.setattr(views_module, "iter_frames", spy)
    result = {}
    for threads in (1, 0):
        shard = tmp_path / f"shard-{threads}.h5"
        run_video_chunk(
            records_of(videos, ["good0", "good1"]),
            [MeanColour(n=3)],
            str(shard),
            videos_in_flight=2,
            decode_threads=threads,
        )
        result[threads] = (
            FeatureCache(shard).read("mean-colour", ids=["good0", "good1"]).arrays["mean-colour"]
        )
    assert seen == [1, 1, 0, 0]
    np.testing.assert_array_equal(result[1], result[0])  # threading never changes pixels

    from aigvqa.extractors import create_extractor

    on_cpu = [MeanColour(), create_extractor("vit-keyframes", random_init=True)]
    on_gpu = on_cpu + [
        create_extractor("clip-frames", device="cuda", random_init=True)
    ]  # not loaded
    assert default_decode_threads(on_cpu, torch_threads=1) == 1
    assert default_decode_threads(on_cpu, torch_threads=4) == 4
    assert default_decode_threads(on_gpu, torch_threads=1) == 0
    with pytest.raises(ExtractError, match="decode_threads"):
        extract(records_of(videos, ["good0"]), [MeanColour()], tmp_path / "c.h5", decode_threads=-1)


class AlwaysFails(MeanColour):
    """Key-frame extractor whose forward pass always raises."""

    name = "always-fails"

    def forward(self, items):
        raise RuntimeError("this backbone is broken")


@pytest.mark.parametrize("videos_in_flight", [1, 2])
def test_a_failing_extractor_costs_only_its_own_features(videos, tmp_path, videos_in_flight):
    from aigvqa.pipeline.extract import run_video_chunk

    ids = ["good0", "good1", "good2", "empty"]
    result = run_video_chunk(
        records_of(videos, ids),
        [MeanColour(n=3), AlwaysFails()],
        str(tmp_path / "shard.h5"),
        videos_in_flight=videos_in_flight,
    )
    assert result.done["mean-colour"] == ["good0", "good1", "good2"]
    assert result.done["always-fails"] == []
    rows = {(vid, name): text for vid, name, text in result.failures}
    assert set(rows) == {
        ("good0", "always-fails"),
        ("good1", "always-fails"),
        ("good2", "always-fails"),
        ("empty", ALL_EXTRACTORS),
    }
    assert "this backbone is broken" in rows["good1", "always-fails"]
    stored = FeatureCache(tmp_path / "shard.h5").read(
        "mean-colour", ids=["good0", "good1", "good2"]
    )
    assert stored.lengths["mean-colour"].tolist() == [3, 3, 3]


NEXT_VIDEO_PROBED = None  # a threading.Event while the test below runs


class WaitsForTheNextDecode(MeanColour):
    """Its first forward pass waits (up to 10 s) until the second video is being decoded."""

    name = "waits"
    saw_next_decode: list = []

    def forward(self, items):
        if not self.saw_next_decode:
            self.saw_next_decode.append(NEXT_VIDEO_PROBED.wait(timeout=10))
        return super().forward(items)


def test_the_next_video_decodes_while_this_ones_forward_passes_run(videos, tmp_path, monkeypatch):
    import threading

    import aigvqa.extractors.decode as decode
    from aigvqa.pipeline.extract import run_video_chunk

    global NEXT_VIDEO_PROBED
    NEXT_VIDEO_PROBED = threading.Event()
    real_probe = decode.probe

    def spy(path):
        if Path(path) == videos["good1"]:
            NEXT_VIDEO_PROBED.set()
        return real_probe(path)

    monkeypatch.setattr(decode, "probe", spy)
    WaitsForTheNextDecode.saw_next_decode = []
    result = run_video_chunk(
        records_of(videos, ["good0", "good1"]),
        [WaitsForTheNextDecode(n=2)],
        str(tmp_path / "shard.h5"),
        videos_in_flight=2,
    )
    assert result.done["waits"] == ["good0", "good1"]
    assert WaitsForTheNextDecode.saw_next_decode == [True]


def test_decode_ahead_is_bounded_in_videos_and_in_bytes():
    import threading

    from aigvqa.pipeline.extract.sources import _DecodeAhead, _DecoderStopped

    hand_off = _DecodeAhead(max_videos=2, max_bytes=150)

    def blocked(action):  # -> (still waiting after 0.3 s, the thread)
        thread = threading.Thread(target=action, daemon=True)
        thread.start()
        thread.join(0.3)
        return thread.is_alive(), thread

    hand_off.begin_video()
    hand_off.put(("item", 1), 100)
    stuck, thread = blocked(lambda: hand_off.put(("item", 2), 100))  # 200 > 150 bytes
    assert stuck
    assert hand_off.get() == ("item", 1)
    thread.join(5)
    assert not thread.is_alive() and hand_off.get() == ("item", 2)
    hand_off.put(("item", 3), 1000)  # one item always fits, whatever its size

    hand_off.begin_video()
    stuck, thread = blocked(hand_off.begin_video)  # a third video while two are unfinished
    assert stuck
    hand_off.finish_video()
    thread.join(5)
    assert not thread.is_alive()

    outcome = []

    def put_and_record():
        try:
            hand_off.put(("item", 4), 100)  # waits: item 3 holds the byte budget
        except _DecoderStopped:
            outcome.append("stopped")

    stuck, thread = blocked(put_and_record)
    assert stuck
    hand_off.close()  # the forward side gave up: the waiting decoder is released and stops
    thread.join(5)
    assert outcome == ["stopped"]
    with pytest.raises(_DecoderStopped):
        hand_off.begin_video()


def test_decoding_ahead_gives_the_sequential_paths_features_rows_and_counters(videos, tmp_path):
    from aigvqa.extractors.runner import run_stats
    from aigvqa.pipeline.extract import run_video_chunk

    ids = ["good0", "truncated", "good1", "empty", "one-frame", "text", "good2"]
    models = resolve_extractors({"handcrafted": {"size": 32, "max_frames": 4}}) + [
        MeanColour(n=3),
        AlwaysFails(),
    ]
    outcome = {}
    for in_flight in (1, 2):
        run_stats.reset()
        shard = tmp_path / f"shard-{in_flight}.h5"
        result = run_video_chunk(
            records_of(videos, ids), models, str(shard), videos_in_flight=in_flight
        )
        good = result.done["mean-colour"]
        data = FeatureCache(shard).read(["handcrafted", "mean-colour"], ids=good)
        outcome[in_flight] = (
            result.done,
            sorted(result.failures),
            data.arrays,
            data.lengths,
            dict(run_stats.forward_calls),
            dict(run_stats.items),
        )
    sequential, ahead = outcome[1], outcome[2]
    assert sequential[0] == ahead[0] and sequential[0]["mean-colour"] == [
        "good0",
        "good1",
        "one-frame",
        "good2",
    ]
    assert sequential[1] == ahead[1]
    assert {(vid, name) for vid, name, _ in ahead[1] if name == ALL_EXTRACTORS} == {
        ("truncated", ALL_EXTRACTORS),
        ("empty", ALL_EXTRACTORS),
        ("text", ALL_EXTRACTORS),
    }
    for group in ("handcrafted", "mean-colour"):  # item for item: nothing crossed between videos
        np.testing.assert_array_equal(sequential[2][group], ahead[2][group])
        np.testing.assert_array_equal(sequential[3][group], ahead[3][group])
    assert sequential[4:] == ahead[4:]


class FailsOnItsFirstBatch(MeanColour):
    """Slowfast-like: one item per frame of a long view, a batch of 1; the first forward raises."""

    name = "fails-early"

    def view(self):
        from aigvqa.extractors.views import UniformFramesView

        return UniformFramesView(n=12, size=16)

    def config(self):
        return {**super().config(), "batch_size": 1}

    def forward(self, items):
        raise RuntimeError("broken on the first batch")


def test_a_forward_failure_stops_the_decoding_of_that_video(videos, tmp_path, monkeypatch):
    import aigvqa.extractors.views as views_module
    from aigvqa.pipeline import extract as extract_module

    handed_over = []
    real_stream = views_module.stream_views

    def counting(path, view_list, info=None, **kwargs):
        for event in real_stream(path, view_list, info=info, **kwargs):
            handed_over.append(Path(path).stem)
            yield event

    monkeypatch.setattr(views_module, "stream_views", counting)
    result = extract_module.run_video_chunk(
        records_of(videos, ["good0", "good1"]),
        [FailsOnItsFirstBatch()],
        str(tmp_path / "shard.h5"),
        videos_in_flight=2,
        decode_ahead_bytes=1,  # one item at a time: no run-ahead
    )
    assert result.done["fails-early"] == []
    assert {vid for vid, _, _ in result.failures} == {"good0", "good1"}
    # the decoder thread gave up after a few of each video's 12 items (the retry alone
    # that names the failing extractor stops at its first batch too)
    assert handed_over.count("good0") < 12 and handed_over.count("good1") < 12


def test_a_dead_decoder_thread_is_reported_with_its_cause(videos, tmp_path, monkeypatch):
    import aigvqa.extractors.decode as decode
    from aigvqa.pipeline.extract import run_video_chunk

    def dies(path):
        raise SystemExit("decoder killed")  # not an Exception: escapes the per-video handling

    monkeypatch.setattr(decode, "probe", dies)
    with pytest.raises(RuntimeError, match="decoder thread stopped") as caught:
        run_video_chunk(
            records_of(videos, ["good0", "good1"]),
            [MeanColour()],
            str(tmp_path / "s.h5"),
            videos_in_flight=2,
        )
    assert isinstance(caught.value.__cause__, SystemExit)


def test_cli_passes_decode_threads_to_extract(videos, tmp_path, monkeypatch):
    from aigvqa.pipeline import cli
    from aigvqa.pipeline import extract as extract_module

    seen = {}

    def fake_extract(records, spec, cache, **kwargs):
        seen.update(kwargs)
        raise SystemExit(0)

    monkeypatch.setattr(extract_module, "extract", fake_extract)
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"video_id,path\ngood0,{videos['good0']}\n")
    with pytest.raises(SystemExit):
        cli.main(
            [
                "extract",
                str(manifest),
                "--extractors",
                "handcrafted",
                "--cache",
                str(tmp_path / "c.h5"),
                "--decode-threads",
                "3",
                "--torch-threads",
                "2",
            ]
        )
    assert seen["decode_threads"] == 3 and seen["cluster"].torch_threads == 2


def test_the_truncation_hook_survives_code_that_restores_the_warnings_state():
    import warnings

    from aigvqa.extractors.decode import TruncatedVideoWarning
    from aigvqa.pipeline.extract.failures import truncation_warnings as _truncation_warnings

    def warn_truncated():
        warnings.warn(TruncatedVideoWarning("cut short", "v.mp4", 3, 8), stacklevel=1)

    with warnings.catch_warnings():  # a notebook cell, or pytest around a test
        with _truncation_warnings() as first:
            warn_truncated()
    with _truncation_warnings() as second:  # the hook above was dropped with that state
        warn_truncated()
    assert len(first) == 1 and len(second) == 1
    assert second[0].decoded == 3 and second[0].expected == 8
