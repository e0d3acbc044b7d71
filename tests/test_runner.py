"""extract_video decodes once for all extractors and batches; encode_prompts de-duplicates."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest

from aigvqa.extractors import create_extractor, encode_prompts, extract_video, run_stats, views
from aigvqa.extractors.decode import write_video
from aigvqa.extractors.registry import ConfiguredExtractor
from aigvqa.extractors.runner import MissingPromptError, VideoFeatureBuilder

N_FRAMES = 8


class Brightness(ConfiguredExtractor):
    """Mean pixel value of every frame (items in order: 0, 10, 20, ...)."""

    name = "test-brightness"
    defaults: ClassVar[dict] = {"batch_size": 3, "n": None}

    def view(self):
        return views.UniformFramesView(n=self["n"], size=None)

    def output_dims(self):
        return {"values": 1}

    def load(self, device="cpu"):
        self.loads = getattr(self, "loads", 0) + 1
        self.weights_identity = "none: test"

    def forward(self, items):
        self.batch_sizes = [*getattr(self, "batch_sizes", []), len(items)]
        return items.reshape(len(items), -1).mean(axis=1, keepdims=True)


class Darkness(Brightness):
    name = "test-darkness"

    def forward(self, items):
        return 255 - super().forward(items)


class Broken(Brightness):
    name = "test-broken"

    def forward(self, items):
        return np.zeros((len(items) + 1, 1))


class PromptMatch(Brightness):
    """A needs_prompt extractor: brightness plus the length of the prompt it was handed."""

    name = "test-prompt-match"
    needs_prompt = True

    def forward(self, items, prompts=None):
        self.prompts_seen = [*getattr(self, "prompts_seen", []), list(prompts)]
        lengths = np.array([[len(p)] for p in prompts], dtype=np.float32)
        return np.hstack([super().forward(items), lengths])


class PromptLength(ConfiguredExtractor):
    name = "test-prompt-length"
    modality = "text"
    defaults: ClassVar[dict] = {"batch_size": 2}

    def output_dims(self):
        return {"pooled": 1}

    def load(self, device="cpu"):
        self.calls = []
        self.weights_identity = "none: test"

    def encode_text(self, prompts):
        self.calls.append(list(prompts))
        lengths = np.array([[len(p)] for p in prompts], dtype=np.float32)
        return {"pooled": lengths, "tokens": np.repeat(lengths[:, None], 4, axis=1)}


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """Grey frames of value 0, 10, ..., 70: item order is readable from the features."""
    frames = np.stack([np.full((32, 48, 3), 10 * t, dtype=np.uint8) for t in range(N_FRAMES)])
    return write_video(tmp_path_factory.mktemp("runner") / "steps.mp4", frames, fps=8)


@pytest.fixture(autouse=True)
def fresh_stats():
    run_stats.reset()
    yield
    run_stats.reset()


@pytest.fixture
def decoder_passes(monkeypatch):
    """Count how many times a file is decoded (views.stream_views calls iter_frames once)."""
    passes = []
    real = views.iter_frames

    def counting(path, *args, **kwargs):
        passes.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(views, "iter_frames", counting)
    return passes


def test_one_decode_for_several_extractors_and_views(video, decoder_passes):
    brightness, darkness = Brightness(), Darkness(n=4)
    handcrafted = create_extractor("handcrafted", max_frames=3)
    out = extract_video(video, [brightness, darkness, handcrafted])
    assert decoder_passes == [str(video)]
    assert out["test-brightness"].shape == (N_FRAMES, 1)
    assert out["test-darkness"].shape == (4, 1)
    assert out["handcrafted"].shape == (3, 14)
    assert all(a.dtype == np.float32 for a in out.values())


def test_items_come_back_in_order_and_batched(video):
    extractor = Brightness()
    features = extract_video(video, [extractor])["test-brightness"][:, 0]
    np.testing.assert_allclose(features, 10 * np.arange(N_FRAMES), atol=3)
    assert extractor.batch_sizes == [3, 3, 2]
    assert run_stats.forward_calls["test-brightness"] == 3
    assert run_stats.items["test-brightness"] == N_FRAMES
    assert run_stats.videos == 1


def test_a_view_asked_twice_is_built_once(video, monkeypatch):
    seen_views = []
    real = views.stream_views

    def spying(path, view_list, info=None, **kwargs):
        seen_views.append([v.key for v in view_list])
        return real(path, view_list, info=info, **kwargs)

    monkeypatch.setattr(views, "stream_views", spying)
    out = extract_video(video, [Brightness(), Darkness()])
    assert len(seen_views) == 1 and len(seen_views[0]) == 1
    np.testing.assert_allclose(out["test-darkness"], 255 - out["test-brightness"], atol=1e-4)


def test_extractors_are_loaded_once_across_videos(video):
    extractor = Brightness()
    extract_video(video, [extractor])
    extract_video(video, [extractor])
    assert extractor.loads == 1 and run_stats.videos == 2


def test_bad_forward_output_and_duplicate_names_are_refused(video):
    with pytest.raises(RuntimeError, match="expected \\[3, D\\]"):
        extract_video(video, [Broken()])
    with pytest.raises(ValueError, match="test-brightness"):
        extract_video(video, [Brightness(), Brightness(n=2)])


def test_text_extractors_are_ignored_by_extract_video(video):
    out = extract_video(video, [Brightness(), PromptLength()])
    assert list(out) == ["test-brightness"]


def test_encode_prompts_encodes_each_distinct_prompt_once():
    extractor = PromptLength()
    prompts = ["a dog", "a cat running", "a dog", "sky", "a dog"]
    out = encode_prompts(extractor, prompts)
    assert extractor.calls == [["a dog", "a cat running"], ["sky"]]
    np.testing.assert_array_equal(out["pooled"][:, 0], [len(p) for p in prompts])
    assert out["tokens"].shape == (5, 4, 1)
    assert run_stats.prompts_encoded["test-prompt-length"] == 3
    assert run_stats.text_calls["test-prompt-length"] == 2
    with pytest.raises(ValueError, match="not a text extractor"):
        encode_prompts(Brightness(), prompts)


def test_needs_prompt_extractors_get_the_videos_prompt_with_every_item(video):
    matcher, plain = PromptMatch(), Brightness()
    out = extract_video(video, [matcher, plain], prompt="a fox")
    assert matcher.prompts_seen == [["a fox"] * 3, ["a fox"] * 3, ["a fox"] * 2]  # batches of 3
    np.testing.assert_array_equal(out["test-prompt-match"][:, 1], 5.0)
    np.testing.assert_allclose(out["test-prompt-match"][:, 0], out["test-brightness"][:, 0])
    assert not hasattr(plain, "prompts_seen")  # the others keep forward(items)


@pytest.mark.parametrize("prompt", [None, "", "   "])
def test_a_needs_prompt_extractor_without_a_prompt_fails_at_its_first_item(video, prompt):
    builder = VideoFeatureBuilder([PromptMatch()], prompt=prompt)
    assert [v.key for v in builder.views]  # the views are known without a prompt
    with pytest.raises(MissingPromptError, match="test-prompt-match"):
        extract_video(video, [PromptMatch()], prompt=prompt)
    out = extract_video(video, [Brightness()], prompt=prompt)  # others do not need one
    assert out["test-brightness"].shape == (N_FRAMES, 1)
