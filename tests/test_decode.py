"""Decoding: probe metadata, streaming frames, bad and truncated files, every container."""

from __future__ import annotations

import fractions
import re
import warnings
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest

from aigvqa.errors import AigvqaError, DecodeError
from aigvqa.extractors import decode
from aigvqa.extractors.decode import TruncatedVideoWarning, iter_frames, probe, write_video
from aigvqa.extractors.synthetic import moving_pattern

FORMATS = ["mp4", "avi", "webm", "gif"]
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _decode_all(path) -> np.ndarray:
    frames = list(iter_frames(path))
    assert [index for index, _ in frames] == list(range(len(frames)))
    return np.stack([frame for _, frame in frames])


@pytest.mark.parametrize("fmt", FORMATS)
def test_probe_and_decode_every_container(tmp_path, fmt):
    clip = moving_pattern(20, 48, 64, seed=1)
    path = write_video(tmp_path / f"clip.{fmt}", clip, fps=10)

    info = probe(path)
    assert (info.num_frames, info.height, info.width) == (20, 48, 64)
    assert info.fps == pytest.approx(10.0)
    assert info.path == str(path)

    decoded = _decode_all(path)
    assert decoded.shape == clip.shape and decoded.dtype == np.uint8
    # frame i of the file is frame i of the source: the closest source frame to every
    # decoded frame is the one with the same index (lossy codecs, 3-3-2 bit GIF colour)
    errors = np.abs(decoded[:, None].astype(np.int16) - clip[None].astype(np.int16)).mean(
        axis=(2, 3, 4)
    )
    assert (errors.argmin(axis=1) == np.arange(20)).all()
    assert errors.diagonal().max() < (25 if fmt == "gif" else 12)


def test_webm_frame_count_comes_from_demuxing(tmp_path):
    path = write_video(tmp_path / "clip.webm", moving_pattern(17, 32, 32), fps=12)
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames == 0  # the header states no count
    assert probe(path).num_frames == 17


def test_wanted_frames_are_exactly_those_and_match_a_full_decode(video_factory):
    path = video_factory(n_frames=30)
    full = _decode_all(path)
    picked = list(iter_frames(path, [21, 3, 3, 0, 29]))
    assert [index for index, _ in picked] == [0, 3, 21, 29]
    for index, frame in picked:
        np.testing.assert_array_equal(frame, full[index])


def test_decoding_stops_after_the_last_wanted_frame(video_factory, monkeypatch):
    path = video_factory(n_frames=40)
    calls = []
    real = decode._decode

    def counting(stream, packet):
        calls.append(packet)
        return real(stream, packet)

    monkeypatch.setattr(decode, "_decode", counting)
    assert [i for i, _ in iter_frames(path, {2})] == [2]
    assert len(calls) < 20  # x264 delays output by a few frames, never by 20


def test_empty_wanted_decodes_nothing(video_factory):
    assert list(iter_frames(video_factory(), [])) == []


def test_negative_index_is_refused(video_factory):
    with pytest.raises(ValueError, match=">= 0"):
        list(iter_frames(video_factory(), [-1, 2]))


def _audio_only(path: Path) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 800), np.int16), format="s16", layout="mono"
        )
        frame.sample_rate = 8000
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)
    return path


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _zeroed_payload(path: Path) -> Path:
    """A valid mp4 index whose frame data is all zeros: opens, but nothing decodes."""
    data = bytearray(path.read_bytes())
    start = data.find(b"mdat") + 4
    data[start:] = bytes(len(data) - start)
    bad = path.with_name("zeroed.mp4")
    bad.write_bytes(bytes(data))
    return bad


@pytest.mark.parametrize(
    "make_bad, reason",
    [
        (lambda p: p / "missing.mp4", "no such video file"),
        (lambda p: _write(p / "empty.mp4", b""), "empty"),
        (lambda p: _write(p / "text.mp4", b"not a video\n" * 20), "not a readable video container"),
        (lambda p: _audio_only(p / "audio.mkv"), "no video stream"),
        (lambda p: _audio_only(p / "audio.wav"), "not a video"),
        (
            lambda p: _zeroed_payload(write_video(p / "ok.mp4", moving_pattern(8, 32, 32), 8)),
            "no frame of the video stream could be decoded",
        ),
    ],
    ids=["missing", "zero-byte", "text-renamed-mp4", "audio-only-mkv", "wav", "undecodable"],
)
def test_bad_files_raise_decode_error_naming_the_file(tmp_path, make_bad, reason):
    path = make_bad(tmp_path)
    with pytest.raises(DecodeError) as probed:
        probe(path)
    assert str(path) in str(probed.value) and reason in str(probed.value)
    assert isinstance(probed.value, AigvqaError)
    with pytest.raises(DecodeError, match=re.escape(str(path))):
        list(iter_frames(path))


def _text_file(path: Path) -> Path:
    """Text long enough for FFmpeg's ``tty`` demuxer, which renders it as a picture."""
    lines = [f"line {i}: the quick brown fox jumps over the lazy dog" for i in range(60)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _image(path: Path, ext: str | None = None) -> Path:
    import cv2

    ok, data = cv2.imencode(ext or path.suffix, np.full((32, 48, 3), 128, np.uint8))
    assert ok
    path.write_bytes(data.tobytes())
    return path


@pytest.mark.parametrize(
    "make_bad, reason",
    [
        (lambda p: _text_file(p / "notes.txt"), "not a video"),
        (
            lambda p: _write(p / "subs.srt", b"1\n00:00:01,000 --> 00:00:02,000\nHello\n"),
            "not a video",
        ),
        (lambda p: _image(p / "frame.png"), "a still image"),
        (lambda p: _image(p / "frame.jpg"), "a still image"),
        (lambda p: _image(p / "frame.mp4", ".png"), "a still image"),  # the name does not matter
        (lambda p: _write(p / "empty.gif", b""), "empty"),
    ],
    ids=["txt-tty", "srt", "png", "jpeg", "png-renamed-mp4", "zero-byte-gif"],
)
def test_files_ffmpeg_opens_but_are_no_video_are_refused(tmp_path, make_bad, reason):
    """FFmpeg "decodes" a .txt into a picture of its text (tty demuxer) and an image into one
    frame; both used to be scored ok. Only video containers are accepted."""
    path = make_bad(tmp_path)
    with pytest.raises(DecodeError) as probed:
        probe(path)
    assert str(path) in str(probed.value) and reason in str(probed.value)
    with pytest.raises(DecodeError):
        next(iter_frames(path))


def test_every_video_container_name_is_one_ffmpeg_knows():
    known = set()
    for name in av.formats_available:
        known.update(name.split(","))
    assert decode.VIDEO_CONTAINERS <= known | {"mp4"}  # FFmpeg lists mp4 as part of "mov,mp4,..."


def _truncated(path: Path) -> Path:
    cut = path.with_name("cut" + path.suffix)
    data = path.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    return cut


@pytest.mark.parametrize("fmt", ["mp4", "avi"])
def test_truncated_file_still_yields_frames(video_factory, fmt):
    cut = _truncated(video_factory(n_frames=30, size=(48, 64), fmt=fmt))
    assert probe(cut).num_frames == 30  # the header still promises every frame

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no padding asked: no warning, just fewer frames
        plain = list(iter_frames(cut))
    assert 0 < len(plain) < 30

    with pytest.warns(TruncatedVideoWarning) as caught:
        padded = list(iter_frames(cut, range(30), pad_missing=True))
    assert [index for index, _ in padded] == list(range(30))
    warning = caught[0].message
    assert (warning.decoded, warning.expected) == (len(plain), 30)
    assert str(cut) in str(warning) and isinstance(warning, RuntimeWarning)
    last_real = plain[-1][1]
    for _index, frame in padded[len(plain) :]:
        np.testing.assert_array_equal(frame, last_real)


@pytest.mark.parametrize(
    "average, guessed, frames, seconds, expected",
    [
        (fractions.Fraction(25, 3), fractions.Fraction(8), 32, 4.0, 8.0),  # GIF 1/100 s delays
        (fractions.Fraction(30000, 1001), fractions.Fraction(30000, 1001), 10, 1.0, 30000 / 1001),
        (fractions.Fraction(24), fractions.Fraction(90000), 10, 1.0, 24.0),  # time-base artefact
        (fractions.Fraction(12), fractions.Fraction(30), 10, 1.0, 12.0),  # variable rate: mean
        (None, None, 50, 2.0, 25.0 * 50 / 50),
        (None, None, 30, 2.0, 15.0),
        (None, None, 0, None, decode.DEFAULT_FPS),
    ],
)
def test_frame_rate_fallbacks(average, guessed, frames, seconds, expected):
    stream = SimpleNamespace(average_rate=average, guessed_rate=guessed)
    assert decode._frame_rate(stream, frames, seconds) == pytest.approx(expected)


def test_write_video_refuses_odd_sizes_for_yuv420_but_not_gif(tmp_path):
    clip = moving_pattern(3, 33, 40)
    with pytest.raises(ValueError, match="even"):
        write_video(tmp_path / "odd.mp4", clip, fps=8)
    assert probe(write_video(tmp_path / "odd.gif", clip, fps=8)).height == 33


def test_write_video_accepts_a_generator_and_checks_its_input(tmp_path):
    frames = (frame for frame in moving_pattern(5, 32, 32))
    assert probe(write_video(tmp_path / "gen.avi", frames, fps=5)).num_frames == 5
    with pytest.raises(ValueError, match="not '.mov'"):
        write_video(tmp_path / "x.mov", moving_pattern(2, 32, 32), fps=5)
    with pytest.raises(ValueError, match="no frames"):
        write_video(tmp_path / "none.mp4", np.zeros((0, 32, 32, 3), np.uint8), fps=5)
    with pytest.raises(ValueError, match="first frame's size"):
        write_video(
            tmp_path / "mixed.mp4",
            [np.zeros((32, 32, 3), np.uint8)] * 2 + [np.zeros((16, 16, 3), np.uint8)],
            fps=5,
        )


# -- real files in ../shared/data/video_samples ---------------------------------------------

SAMPLES = SHARED_DATA / "video_samples"


def _sample_table() -> dict[str, tuple[int, int, fractions.Fraction, int]]:
    """ffprobe's (width, height, fps, frames) per file, from SOURCE.md's technical table."""
    table = {}
    row = re.compile(r"^\| \d+ \| (\S+) \| \w+,(\d+),(\d+),(\d+/\d+),[\d.]+,(\d+) \|$")
    for line in (SAMPLES / "SOURCE.md").read_text().splitlines():
        match = row.match(line.strip())
        if match:
            name, width, height, rate, frames = match.groups()
            table[name] = (int(width), int(height), fractions.Fraction(rate), int(frames))
    return table


def _samples() -> dict:
    if not (SAMPLES / "SOURCE.md").is_file():
        pytest.skip(f"real video samples not present at {SAMPLES}")
    table = _sample_table()
    assert len(table) == len(
        [p for p in SAMPLES.rglob("*") if p.suffix in (".mp4", ".avi", ".gif")]
    )
    return table


def test_probe_matches_ffprobe_on_every_real_sample():
    for name, (width, height, rate, frames) in _samples().items():
        info = probe(SAMPLES / name)
        assert (info.width, info.height, info.num_frames) == (width, height, frames), name
        assert info.fps == pytest.approx(float(rate), rel=1e-6), name
        index, first = next(iter_frames(SAMPLES / name, [0]))
        assert index == 0 and first.shape == (height, width, 3), name


@pytest.mark.slow
def test_every_real_sample_decodes_completely():
    for name, (width, height, _rate, frames) in _samples().items():
        count = 0
        for index, frame in iter_frames(SAMPLES / name):
            assert index == count and frame.shape == (height, width, 3)
            count += 1
        assert count == frames, name


def test_every_fetv_gif_is_accepted_as_a_video():
    gifs = sorted((SHARED_DATA / "fetv" / "gifs").rglob("*.gif"))
    if not gifs:
        pytest.skip(f"FETV GIFs not present at {SHARED_DATA / 'fetv'}")
    for path in gifs:
        assert probe(path).num_frames >= 1, path
