"""Views: index formulas, item shapes and pixels, fragments, streaming order and memory."""

from __future__ import annotations

import itertools
import warnings
import weakref

import cv2
import numpy as np
import pytest

from aigvqa.errors import DecodeError
from aigvqa.extractors import views
from aigvqa.extractors.base import VideoInfo, View
from aigvqa.extractors.decode import TruncatedVideoWarning, iter_frames, probe, write_video
from aigvqa.extractors.sampling import (
    center_square,
    fragment_clip_indices,
    frame_pair_starts,
    keyframe_indices,
    resampled_indices,
    resize_short_side,
    slow_fast_split,
    slowfast_clip_indices,
    uniform_indices,
)
from aigvqa.extractors.synthetic import coordinate_frames, decode_coordinates, moving_pattern
from aigvqa.extractors.views import (
    FragmentsView,
    FramePairsView,
    KeyFramesView,
    SlowFastClipsView,
    UniformFramesView,
    build_views,
    stream_views,
    stream_views_from_frames,
    views_from_array,
)


def numbered_frames(n_frames: int, height: int = 40, width: int = 60) -> np.ndarray:
    """Frame t is filled with the value t (so any resize of it still reads t)."""
    return np.broadcast_to(
        np.arange(n_frames, dtype=np.uint8)[:, None, None, None], (n_frames, height, width, 3)
    ).copy()


def frame_ids(item: np.ndarray) -> list[int]:
    """Which numbered frame each frame of an item came from (checks it is uniform)."""
    item = item.reshape(-1, *item.shape[-3:])
    assert (item == item[:, :1, :1, :1]).all()
    return item[:, 0, 0, 0].astype(int).tolist()


# -- index formulas ------------------------------------------------------------------------


def test_keyframes_of_a_33_frame_clip():
    assert keyframe_indices(33).tolist() == [0, 4, 8, 12, 16, 20, 24, 28]
    assert keyframe_indices(4, 8).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert keyframe_indices(800, 8).tolist() == [0, 100, 200, 300, 400, 500, 600, 700]


def test_slowfast_clips_of_a_96_frame_24fps_video():
    clips = slowfast_clip_indices(96, 24.0)
    assert len(clips) == 4 and all(len(c) == 32 for c in clips)
    assert [int(c[0]) for c in clips] == [0, 24, 48, 72]
    assert clips[0].tolist() == list(range(32))
    assert clips[3].tolist() == list(range(72, 96)) + [95] * 8  # padded with the last frame


def test_slowfast_clips_round_the_rate_and_keep_one_clip_for_short_videos():
    assert [int(c[0]) for c in slowfast_clip_indices(240, 30000 / 1001)] == list(range(0, 240, 30))
    short = slowfast_clip_indices(10, 24.0)
    assert len(short) == 1 and short[0].tolist() == list(range(10)) + [9] * 22


def test_slow_fast_split_follows_pyslowfast_linspace():
    clip = np.arange(32)
    slow, fast = slow_fast_split(clip, alpha=4)
    assert len(slow) == 32 // 4 and fast is clip
    assert slow.tolist() == np.linspace(0, 31, 8).astype(int).tolist()
    assert slow[0] == 0 and slow[-1] == 31
    video = np.zeros((32, 2, 4, 4, 3))
    assert slow_fast_split(video, alpha=4)[0].shape == (8, 2, 4, 4, 3)
    with pytest.raises(ValueError):
        slow_fast_split(np.arange(3), alpha=4)


def test_uniform_and_resampled_indices():
    assert uniform_indices(160, 16).tolist() == list(range(5, 160, 10))
    assert uniform_indices(3, 6).tolist() == [0, 0, 1, 1, 2, 2]
    assert resampled_indices(30, 30.0, 10.0).tolist() == list(range(0, 30, 3))
    assert resampled_indices(4, 8.0, 16.0).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]


def test_fragment_clips_follow_fast_vqa_sampling():
    (clip,) = fragment_clip_indices(200, clip_len=32, num_clips=1, frame_interval=2)
    span_start = (200 - 64 + 1) // 2  # centred: int(a / 2) with a = N - span + 1
    assert clip.tolist() == list(range(span_start, span_start + 64, 2))
    two = fragment_clip_indices(200, 32, 2, 2)
    assert two[0][0] < two[1][0] and all(len(c) == 32 for c in two)
    looped = fragment_clip_indices(16, 32, 1, 2)[0]  # a 16-frame video loops
    assert looped.tolist() == [(2 * k) % 16 for k in range(32)]


def test_frame_pair_starts():
    assert frame_pair_starts(10, 64).tolist() == list(range(9))
    starts = frame_pair_starts(1001, 64)
    assert len(starts) == 64 and starts.max() < 1000 and (np.diff(starts) > 0).all()
    assert frame_pair_starts(1, 64).tolist() == [0]


@pytest.mark.parametrize(
    "call",
    [
        lambda: keyframe_indices(0),
        lambda: keyframe_indices(10, 0),
        lambda: slowfast_clip_indices(10, 24, clip_len=0),
        lambda: fragment_clip_indices(10, frame_interval=0),
        lambda: frame_pair_starts(10, 0),
    ],
)
def test_bad_parameters_are_refused(call):
    with pytest.raises(ValueError):
        call()


# -- items --------------------------------------------------------------------------------


def test_keyframe_items_are_the_right_frames_resized_to_squares():
    out = views_from_array(numbered_frames(33), [KeyFramesView(n=8, size=32)])
    items = out[KeyFramesView(n=8, size=32).key]
    assert [item.shape for item in items] == [(32, 32, 3)] * 8
    assert [frame_ids(item)[0] for item in items] == keyframe_indices(33).tolist()


def test_slowfast_items_hold_the_clip_frames_in_order():
    view = SlowFastClipsView(size=32)
    items = views_from_array(numbered_frames(96), [view], fps=24)[view.key]
    assert [item.shape for item in items] == [(32, 32, 32, 3)] * 4
    for item, indices in zip(items, slowfast_clip_indices(96, 24)):
        assert frame_ids(item) == indices.tolist()
    slow, fast = slow_fast_split(items[0])
    assert slow.shape == (8, 32, 32, 3) and fast.shape == (32, 32, 32, 3)


def test_uniform_frames_modes():
    video = numbered_frames(12)
    every = UniformFramesView(n=None, size=16)
    retimed = UniformFramesView(n=None, fps=4.0, size=16)
    clip = UniformFramesView(n=4, size=16, as_clip=True)
    out = views_from_array(video, [every, retimed, clip], fps=12)
    assert [frame_ids(i)[0] for i in out[every.key]] == list(range(12))
    assert [frame_ids(i)[0] for i in out[retimed.key]] == [0, 3, 6, 9]
    (whole,) = out[clip.key]
    assert whole.shape == (4, 16, 16, 3) and frame_ids(whole) == uniform_indices(12, 4).tolist()
    native = UniformFramesView(n=2, size=None)
    assert views_from_array(video, [native])[native.key][0].shape == (40, 60, 3)
    with pytest.raises(ValueError, match="not both"):
        views_from_array(video, [UniformFramesView(n=4, fps=2.0)])


def test_center_square_crops_the_middle_and_squashes_on_request():
    frame = coordinate_frames(1, 300, 400)[0]
    crop = center_square(frame, 300, "crop")  # short side already 300: no resampling
    ys, xs = decode_coordinates(crop)
    assert crop.shape == (300, 300, 3)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (50, 349, 0, 299)
    ramp = np.broadcast_to(np.linspace(0, 255, 400).astype(np.uint8)[None, :, None], (300, 400, 3))
    squash = center_square(np.ascontiguousarray(ramp), 100, "squash")
    assert squash.shape == (100, 100, 3)
    assert squash[:, 0].max() < 5 and squash[:, -1].min() > 250  # the whole width is kept
    with pytest.raises(ValueError, match="resize_mode"):
        center_square(frame, 100, "stretch")


def test_resize_uses_area_when_shrinking_and_bilinear_when_growing():
    frame = moving_pattern(1, 90, 120, seed=3)[0]
    small = resize_short_side(frame, 60)  # ratio 1.5: one INTER_AREA pass
    np.testing.assert_array_equal(small, cv2.resize(frame, (80, 60), interpolation=cv2.INTER_AREA))
    large = resize_short_side(frame, 180)
    np.testing.assert_array_equal(
        large, cv2.resize(frame, (240, 180), interpolation=cv2.INTER_LINEAR)
    )
    assert resize_short_side(frame, 180, enlarge=False) is frame


def test_large_shrinks_stay_close_to_a_single_area_pass():
    frame = moving_pattern(1, 1080, 1920, seed=4)[0]
    fast = center_square(frame, 224, "squash")
    exact = cv2.resize(frame, (224, 224), interpolation=cv2.INTER_AREA)
    assert np.abs(fast.astype(int) - exact).mean() < 1.5


# -- fragments ------------------------------------------------------------------------------


def _patch_corners(mosaic_frame: np.ndarray, grid: int, patch: int):
    """Source (top, left) of every patch of one mosaic frame, checking each patch is a
    contiguous, unscaled crop."""
    ys, xs = decode_coordinates(mosaic_frame)
    tops = np.zeros((grid, grid), int)
    lefts = np.zeros((grid, grid), int)
    offsets = np.arange(patch)
    for i in range(grid):
        for j in range(grid):
            block = np.s_[i * patch : (i + 1) * patch, j * patch : (j + 1) * patch]
            tops[i, j], lefts[i, j] = ys[block][0, 0], xs[block][0, 0]
            np.testing.assert_array_equal(ys[block], tops[i, j] + offsets[:, None] + 0 * offsets)
            np.testing.assert_array_equal(
                xs[block], lefts[i, j] + offsets[None, :] + 0 * offsets[:, None]
            )
    return tops, lefts


def test_fragments_are_temporally_aligned_and_inside_their_cells():
    height, width = 360, 480
    view = FragmentsView(num_clips=2, seed=7)
    items = views_from_array(coordinate_frames(160, height, width), [view])[view.key]
    assert [item.shape for item in items] == [(32, 224, 224, 3)] * 2
    corners = []
    for clip, item in enumerate(items):
        tops, lefts = _patch_corners(item[0], 7, 32)
        for frame in item[1:]:  # the same offsets in every frame of the clip
            np.testing.assert_array_equal(_patch_corners(frame, 7, 32)[0], tops)
            np.testing.assert_array_equal(_patch_corners(frame, 7, 32)[1], lefts)
        cell_h, cell_w = height // 7, width // 7
        rows, cols = np.arange(7)[:, None], np.arange(7)[None, :]
        assert (tops >= cell_h * rows).all() and (tops + 32 <= cell_h * (rows + 1)).all()
        assert (lefts >= cell_w * cols).all() and (lefts + 32 <= cell_w * (cols + 1)).all()
        expected = view.patch_origins(clip, height, width)
        np.testing.assert_array_equal(tops, expected[0])
        np.testing.assert_array_equal(lefts, expected[1])
        corners.append((tops, lefts))
    assert not np.array_equal(corners[0][0], corners[1][0])  # a new draw per clip


def test_fragments_are_deterministic_per_seed():
    video = moving_pattern(40, 240, 320, seed=1)
    first = views_from_array(video, [FragmentsView(seed=3)])[FragmentsView(seed=3).key][0]
    again = views_from_array(video, [FragmentsView(seed=3)])[FragmentsView(seed=3).key][0]
    other = views_from_array(video, [FragmentsView(seed=4)])[FragmentsView(seed=4).key][0]
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_small_videos_are_upsampled_before_cutting_fragments():
    height, width = 100, 150  # short side below 224: enlarged x2.24 to 224 x 336
    view = FragmentsView(clip_len=4, frame_interval=1)
    (item,) = views_from_array(coordinate_frames(4, height, width), [view])[view.key]
    assert item.shape == (4, 224, 224, 3)
    ys, xs = decode_coordinates(item[0])
    # the lattice spans the whole enlarged frame: the last row / column of cells comes
    # from the bottom / right of the source, and patches are magnified (fewer distinct
    # source pixels than patch pixels)
    assert (
        ys[-32:].min() >= 6 * 224 // 7 / 2.24 - 1 and xs[:, -32:].min() >= 6 * 336 // 7 / 2.24 - 1
    )
    assert len(np.unique(xs[:32, :32])) < 32


def test_tiny_frames_still_fill_every_patch():
    view = FragmentsView(clip_len=2, frame_interval=1)
    (item,) = views_from_array(moving_pattern(2, 24, 30), [view])[view.key]
    assert item.shape == (2, 224, 224, 3)


# -- frame pairs ------------------------------------------------------------------------------


def test_frame_pairs_are_consecutive_frames_shrunk_keeping_aspect():
    view = FramePairsView(max_frames=5, size=20)
    items = views_from_array(numbered_frames(50, 40, 60), [view])[view.key]
    assert len(items) == 5 and items[0].shape == (2, 20, 30, 3)
    starts = frame_pair_starts(50, 5).tolist()
    assert [frame_ids(item) for item in items] == [[t, t + 1] for t in starts]
    big = FramePairsView(max_frames=2, size=256)
    assert views_from_array(numbered_frames(5, 40, 60), [big])[big.key][0].shape == (2, 40, 60, 3)
    one = views_from_array(numbered_frames(1), [view])[view.key]
    assert len(one) == 1 and frame_ids(one[0]) == [0, 0]


# -- streaming --------------------------------------------------------------------------------


ALL_VIEWS = [
    KeyFramesView(size=32),
    UniformFramesView(n=5, size=24),
    SlowFastClipsView(size=32),
    FragmentsView(num_clips=2),
    FramePairsView(max_frames=6, size=32),
]


def test_stream_views_of_a_file_equals_the_views_of_its_frames(tmp_path):
    path = write_video(tmp_path / "v.mp4", moving_pattern(50, 64, 96, seed=2), fps=12)
    info = probe(path)
    decoded = np.stack([frame for _, frame in iter_frames(path)])
    from_file = build_views(path, ALL_VIEWS)
    from_array = views_from_array(decoded, ALL_VIEWS, fps=info.fps)
    assert from_file.keys() == from_array.keys() == {v.key for v in ALL_VIEWS}
    for key in from_file:
        assert len(from_file[key]) == len(from_array[key]) > 0
        for a, b in zip(from_file[key], from_array[key]):
            np.testing.assert_array_equal(a, b)
    streamed = list(stream_views(path, ALL_VIEWS, info=info))
    for view in ALL_VIEWS:
        order = [item for key, item, _ in streamed if key == view.key]
        assert order == list(range(len(from_file[view.key])))


def test_items_are_yielded_as_soon_as_their_last_frame_arrives():
    video = numbered_frames(96)
    info = VideoInfo("<test>", 96, 24.0, 60, 40)
    delivered: list[int] = []

    def frames():
        for index in range(96):
            delivered.append(index)
            yield index, video[index]

    view = SlowFastClipsView(size=8)
    for _key, item, _array in stream_views_from_frames(frames(), info, [view]):
        last_needed = int(slowfast_clip_indices(96, 24)[item].max())
        assert delivered[-1] == last_needed


def test_one_view_instance_per_key_and_out_of_range_items_refused():
    video = numbered_frames(10)
    out = views_from_array(video, [KeyFramesView(n=2, size=8), KeyFramesView(n=2, size=8)])
    assert len(out[KeyFramesView(n=2, size=8).key]) == 2

    class Greedy(View):
        kind = "greedy"

        def config(self):
            return {}

        def items(self, info):
            return [np.array([0, info.num_frames])]

    with pytest.raises(ValueError, match="outside"):
        views_from_array(video, [Greedy()])


def _tracking(view_class, live: set, peak: list):
    """A subclass of ``view_class`` that records how many prepared frames are alive."""

    class Tracked(np.ndarray):
        pass

    tokens = itertools.count()

    class Tracking(view_class):
        def prepare(self, item, frame_index, frame):
            prepared = np.asarray(super().prepare(item, frame_index, frame)).view(Tracked)
            token = next(tokens)
            live.add(token)
            weakref.finalize(prepared, live.discard, token)
            peak[0] = max(peak[0], len(live))
            return prepared

    return Tracking


def _peak_prepared_frames(n_frames: int) -> int:
    live: set = set()
    peak = [0]
    tracked = [
        _tracking(SlowFastClipsView, live, peak)(size=8),
        _tracking(FragmentsView, live, peak)(grid=2, patch=8, clip_len=8, num_clips=4),
        _tracking(KeyFramesView, live, peak)(size=8),
        _tracking(FramePairsView, live, peak)(max_frames=50, size=8),
    ]
    frame = np.zeros((24, 32, 3), np.uint8)
    info = VideoInfo("<long>", n_frames, 25.0, 32, 24)
    for _ in stream_views_from_frames(((i, frame) for i in range(n_frames)), info, tracked):
        pass
    return peak[0]


def test_pending_prepared_frames_do_not_grow_with_video_length():
    # What can be pending at once: one SlowFast clip (32 distinct frames; the next clip's
    # first frames are the same prepared arrays), one 8-frame fragment clip, one frame
    # pair, plus the frame being prepared. Key frames complete at once.
    bound = 32 + 8 + 2 + 1
    short, long = _peak_prepared_frames(300), _peak_prepared_frames(3000)
    assert 0 < short <= bound and 0 < long <= bound


def test_truncated_file_still_gives_every_item(tmp_path):
    path = write_video(tmp_path / "v.mp4", moving_pattern(96, 48, 64, seed=5), fps=24)
    data = path.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    assert probe(cut).num_frames == 96
    with pytest.warns(TruncatedVideoWarning):
        out = build_views(cut, [SlowFastClipsView(size=16), KeyFramesView(size=16)])
    assert len(out[SlowFastClipsView(size=16).key]) == 4
    assert len(out[KeyFramesView(size=16).key]) == 8


def test_frames_ending_early_repeat_the_last_one():
    info = VideoInfo("<short>", 10, 5.0, 60, 40)
    video = numbered_frames(6)
    view = KeyFramesView(n=5, size=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        items = list(stream_views_from_frames(enumerate(video), info, [view]))
    assert [frame_ids(array)[0] for _, _, array in items] == [0, 2, 4, 5, 5]


def test_no_frames_at_all_is_a_decode_error():
    info = VideoInfo("nothing.mp4", 10, 5.0, 60, 40)
    with pytest.raises(DecodeError, match="nothing.mp4"):
        list(stream_views_from_frames(iter(()), info, [KeyFramesView()]))


def test_stream_views_decodes_the_union_of_wanted_frames_once(tmp_path, monkeypatch):
    path = write_video(tmp_path / "v.mp4", moving_pattern(40, 32, 32), fps=8)
    calls = []
    real = views.iter_frames

    def spy(p, wanted=None, **kwargs):
        calls.append(sorted(wanted))
        return real(p, wanted, **kwargs)

    monkeypatch.setattr(views, "iter_frames", spy)
    list(stream_views(path, [KeyFramesView(n=4, size=8), UniformFramesView(n=2, size=8)]))
    assert calls == [sorted({0, 10, 20, 30} | {10, 30})]


@pytest.mark.parametrize("fmt", ["avi", "webm", "gif"])
def test_views_on_other_containers(tmp_path, fmt):
    path = write_video(tmp_path / f"v.{fmt}", moving_pattern(33, 48, 64), fps=8)
    out = build_views(path, [KeyFramesView(size=32), SlowFastClipsView(size=16)])
    assert len(out[KeyFramesView(size=32).key]) == 8
    assert [c.shape for c in out[SlowFastClipsView(size=16).key]] == [(32, 16, 16, 3)] * 4


def test_view_keys_and_configs_are_stable():
    view = FragmentsView(seed=3)
    assert view.key == FragmentsView(seed=3).key != FragmentsView(seed=4).key
    assert view.config()["seed"] == 3 and view.key.startswith("fragments(")
