"""Video decoding with PyAV: metadata first, then one streaming pass over the frames.

Why PyAV: one wheel with FFmpeg inside reads mp4 / avi / webm / gif (and writes them, which
the tests and the demo need) with no system FFmpeg; it exposes the demuxer, so a missing
frame count is recovered by counting packets without decoding, and it lets us convert to
RGB only the frames a view asks for. ``bench/decode.py`` compares it with OpenCV and
decord.

Frame indices are decode-order positions in presentation order (0, 1, 2, ...), not
timestamps: that is what the views' index formulas (``floor(N/n*i)``, ``i*fps``) mean.
"""

from __future__ import annotations

import fractions
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import av
import numpy as np

from aigvqa.errors import DecodeError
from aigvqa.extractors.base import VideoInfo

DEFAULT_FPS = 25.0
"""Used when the container states no usable rate (FFmpeg's own default)."""

MAX_FPS = 240.0
"""Rates above this are container artefacts (e.g. a 1/90000 time base), not frame rates."""

VIDEO_CONTAINERS = frozenset(
    {
        "mov",
        "mp4",  # .mp4 / .mov / .m4v / .3gp: what most generators and datasets ship
        "matroska",
        "webm",  # .mkv / .webm
        "avi",
        "gif",
        "apng",  # animated images: FETV and many T2V demo pages ship GIFs
        "flv",
        "mpegts",
        "mpeg",
        "asf",
        "ogg",  # .flv, .ts, .mpg, .wmv, .ogv
        "ivf",
        "yuv4mpegpipe",  # VP8/VP9/AV1 test streams, .y4m raw video (research pipelines)
        "h264",
        "hevc",
        "m4v",
        "obu",  # raw elementary video streams
    }
)
"""FFmpeg demuxer names accepted as video. Anything else FFmpeg can open is refused: it
would "decode" a .txt file into a picture of its text (the ``tty`` demuxer), a subtitle
file into nothing, and a still image (``png_pipe``, ``jpeg_pipe``, ``image2``, ...) into
one frame. Still images are refused by choice: the temporal views (SlowFast clips, frame
pairs for flicker and flow) need motion, and a quality score for a photo among videos
would be compared with video scores as if it meant the same thing."""

TEXT_CODECS = frozenset({"ansi", "bintext", "xbin", "idf"})
"""Decoders that render text files as pictures; never a video even inside an allowed container."""

__all__ = [
    "DEFAULT_FPS",
    "VIDEO_CONTAINERS",
    "TruncatedVideoWarning",
    "iter_frames",
    "probe",
    "write_video",
]


class TruncatedVideoWarning(RuntimeWarning):
    """The file ended before frames the caller asked for (``iter_frames(pad_missing=True)``).

    ``decoded``: frames the file really holds; ``expected``: one past the largest index
    asked for. Callers that must reject short files check these, not the message text.
    """

    def __init__(self, message: str, path: str, decoded: int, expected: int) -> None:
        super().__init__(message)
        self.path = path
        self.decoded = decoded
        self.expected = expected


def _open(path: Path) -> tuple[av.container.InputContainer, av.video.stream.VideoStream]:
    """Open ``path`` and return (container, first video stream), or raise DecodeError."""
    if not path.is_file():
        raise DecodeError(f"{path}: no such video file; check the path in the manifest")
    if path.stat().st_size == 0:
        raise DecodeError(f"{path}: the file is empty (0 bytes); re-download or re-export it")
    try:
        container = av.open(str(path), mode="r")
    except (av.FFmpegError, OSError, UnicodeDecodeError) as err:
        raise DecodeError(
            f"{path}: not a readable video container ({err}); check that the file is a "
            "complete mp4/avi/webm/gif and not another kind of file renamed"
        ) from err
    try:
        _check_is_video(path, container)
    except DecodeError:
        container.close()
        raise
    return container, container.streams.video[0]


def _check_is_video(path: Path, container) -> None:
    """Refuse what FFmpeg opens but is no video: see ``VIDEO_CONTAINERS``."""
    fmt = container.format
    names = set(fmt.name.split(","))
    if not names & VIDEO_CONTAINERS:
        still = any(n.endswith("_pipe") or n.startswith("image2") for n in names)
        kind = "a still image" if still else "not a video"
        raise DecodeError(
            f"{path}: {kind} (FFmpeg reads it as {fmt.long_name or fmt.name!r}, demuxer "
            f"{fmt.name!r}); aigvqa decodes video files only (mp4/mov, mkv/webm, avi, gif, "
            "flv, mpeg-ts, ...): remove it from the manifest"
            + ("; to score a still image, encode it as a short video first" if still else "")
        )
    if not container.streams.video:
        raise DecodeError(
            f"{path}: the file has no video stream (audio, subtitles or data only); remove it "
            "from the manifest"
        )
    codec = container.streams.video[0].codec_context.name
    if not codec or codec in TEXT_CODECS:
        raise DecodeError(
            f"{path}: its video stream has "
            f"{'no known codec' if not codec else 'the text codec ' + repr(codec)} "
            "(not a video); re-encode it (e.g. to H.264 mp4) or remove it from the manifest"
        )


def _valid_rate(rate: fractions.Fraction | None) -> float | None:
    if rate is None:
        return None
    value = float(rate)
    return value if 0.0 < value <= MAX_FPS else None


def _frame_rate(
    stream: av.video.stream.VideoStream, num_frames: int, seconds: float | None
) -> float:
    """Frames per second, from the best source the container offers.

    ``average_rate`` is the measured mean; ``guessed_rate`` is the nominal rate. They
    differ slightly when timestamps are rounded (GIF delays are in 1/100 s, so an 8 fps
    GIF averages 8.33): within 10 % of each other the nominal rate wins; further apart
    (variable frame rate) the measured mean wins. Then frames / duration, then 25.
    """
    average = _valid_rate(stream.average_rate)
    guessed = _valid_rate(stream.guessed_rate)
    if average and guessed:
        return guessed if abs(average - guessed) <= 0.1 * guessed else average
    if average or guessed:
        return average or guessed  # type: ignore[return-value]
    if seconds and seconds > 0 and num_frames > 0:
        fps = num_frames / seconds
        if 0.0 < fps <= MAX_FPS:
            return fps
    return DEFAULT_FPS


def probe(path: str | Path) -> VideoInfo:
    """Read a video's metadata without decoding it all.

    The frame count comes from the container header when it has one (mp4, avi, most gif);
    otherwise (webm, some gif and mkv) packets are counted by demuxing, which reads the
    file but decodes nothing. The first frame is decoded to prove the stream decodes and to
    take the true frame size. The count can still be too high for a truncated file:
    ``iter_frames(..., pad_missing=True)`` and ``views.stream_views`` cope with that.

    Raises DecodeError (naming the file) for missing, empty, non-video or undecodable files.
    """
    path = Path(path)
    container, stream = _open(path)
    try:
        seconds = None
        if stream.duration is not None and stream.time_base is not None:
            seconds = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            seconds = container.duration / av.time_base
        num_frames = int(stream.frames or 0)
        first, packets = _first_frame_and_packet_count(
            container, stream, path, count_all=num_frames <= 0
        )
        if num_frames <= 0:
            num_frames = packets
        fps = _frame_rate(stream, num_frames, seconds)
        return VideoInfo(
            path=str(path), num_frames=num_frames, fps=fps, width=first.width, height=first.height
        )
    finally:
        container.close()


def _undecodable(path: Path) -> DecodeError:
    return DecodeError(
        f"{path}: no frame of the video stream could be decoded; the file is corrupt or "
        "uses a codec this FFmpeg build lacks (re-encode it, e.g. to H.264 mp4)"
    )


def _packets(container, stream) -> Iterator[av.Packet]:
    """The stream's non-empty packets; a demuxer error (truncated file) ends the stream."""
    try:
        for packet in container.demux(stream):
            if packet.size > 0:
                yield packet
    except av.FFmpegError:
        pass  # what was demuxed so far still decodes
    # the decoder's delayed frames (B-frames, frame threads) come out of a flush packet
    yield None


def _decode(stream, packet) -> list[av.VideoFrame] | None:
    """Frames out of one packet (None flushes); None if the packet is damaged."""
    try:
        return stream.decode(packet)
    except av.FFmpegError:
        return None


def _first_frame_and_packet_count(container, stream, path: Path, count_all: bool):
    """Decode up to the first frame; count packets to the end when ``count_all``."""
    first = None
    packets = 0
    for packet in _packets(container, stream):
        if packet is not None:
            packets += 1
        if first is None:
            frames = _decode(stream, packet)
            if frames:
                first = frames[0]
        if first is not None and not count_all:
            break
    if first is None:
        raise _undecodable(path)
    return first, packets


def iter_frames(
    path: str | Path,
    wanted: Iterable[int] | None = None,
    *,
    pad_missing: bool = False,
    threads: int = 0,
) -> Iterator[tuple[int, np.ndarray]]:
    """Decode ``path`` once, in order, yielding ``(index, frame [H, W, 3] uint8 RGB)``.

    ``wanted``: the frame indices to yield (None = every frame). Frames in between are
    decoded (inter-coded video needs them) but never converted to RGB, and decoding stops
    right after the largest wanted index. Only the frame being yielded is held.

    A file can hold fewer frames than ``probe`` said (truncated download) and can contain
    damaged packets (skipped, as FFmpeg does). With ``pad_missing=True`` every wanted index
    past the real end is still yielded, as a copy of the last decoded frame (a
    ``TruncatedVideoWarning`` says how many); otherwise the iteration just ends early. A file with
    no decodable frame raises DecodeError.

    ``threads``: decoder threads (0 = FFmpeg picks, one per core).
    """
    path = Path(path)
    targets: np.ndarray | None = None
    if wanted is not None:
        targets = np.unique(np.fromiter(wanted, dtype=np.int64))
        if targets.size and targets[0] < 0:
            raise ValueError(f"frame indices must be >= 0, got {targets[0]}")
        if targets.size == 0:
            return
    container, stream = _open(path)
    stream.thread_type = "AUTO"  # frame + slice threading: ~2x on multi-core machines
    stream.thread_count = threads
    index = -1  # index of the last decoded frame
    last: av.VideoFrame | None = None  # kept (as YUV, not RGB) only to pad a short file
    damaged = 0
    cursor = 0  # position in targets of the next wanted index
    try:
        for packet in _packets(container, stream):
            frames = _decode(stream, packet)
            if frames is None:
                damaged += 1
                continue
            for frame in frames:
                index += 1
                if pad_missing:
                    last = frame
                if targets is None:
                    yield index, frame.to_ndarray(format="rgb24")
                elif index == targets[cursor]:
                    yield index, frame.to_ndarray(format="rgb24")
                    cursor += 1
                    if cursor == targets.size:
                        return
        if index < 0:
            raise _undecodable(path)
        if damaged:
            warnings.warn(
                f"{path}: skipped {damaged} damaged packet(s) while decoding",
                RuntimeWarning,
                stacklevel=2,
            )
        if targets is not None and cursor < targets.size and pad_missing:
            missing = targets[cursor:]
            message = (
                f"{path}: the file ends after {index + 1} frames but frames up to "
                f"{int(missing[-1])} were expected; {missing.size} missing frame(s) repeat "
                "the last decoded frame (the file may be truncated)"
            )
            warnings.warn(
                TruncatedVideoWarning(message, str(path), index + 1, int(missing[-1]) + 1),
                stacklevel=2,
            )
            padding = last.to_ndarray(format="rgb24")
            for missing_index in missing:
                yield int(missing_index), padding.copy()
    finally:
        container.close()


# -- writing (tests, demo, benchmarks) ------------------------------------------------------

_ENCODERS = {
    # extension: (codec candidates in order of preference, pixel format)
    ".mp4": (("libx264", "h264", "mpeg4"), "yuv420p"),
    ".avi": (("mpeg4",), "yuv420p"),
    ".webm": (("libvpx-vp9", "libvpx", "vp9", "vp8"), "yuv420p"),
    ".gif": (("gif",), "rgb8"),  # 3-3-2 bit colour: GIF's palette needs a filter graph
}

_ENCODER_OPTIONS = {
    "libx264": {"crf": "18", "preset": "veryfast"},
    "libvpx-vp9": {"crf": "24", "b": "0", "deadline": "realtime", "cpu-used": "8", "row-mt": "1"},
    "libvpx": {"crf": "10", "b": "2M", "deadline": "realtime", "cpu-used": "8"},
}


def _encoder_for(suffix: str, path: Path) -> tuple[str, str]:
    if suffix not in _ENCODERS:
        raise ValueError(f"{path}: write_video writes {sorted(_ENCODERS)}, not {suffix!r}")
    candidates, pix_fmt = _ENCODERS[suffix]
    for name in candidates:
        try:
            av.codec.Codec(name, "w")
        except av.FFmpegError:
            continue
        return name, pix_fmt
    raise ValueError(f"{path}: this PyAV build has none of the encoders {candidates}")


def write_video(path: str | Path, frames: np.ndarray | Iterable[np.ndarray], fps: float) -> Path:
    """Encode RGB frames ([T, H, W, 3] uint8 array or an iterable of [H, W, 3]) to ``path``.

    The container follows the extension: .mp4 (H.264, or MPEG-4 Part 2 without x264),
    .avi (MPEG-4 Part 2), .webm (VP9, else VP8), .gif (8-bit 3-3-2 colour). The YUV 4:2:0
    codecs need an even width and height. Frames are encoded as they come, so a generator
    writes a long clip in constant memory.
    """
    path = Path(path)
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    codec, pix_fmt = _encoder_for(path.suffix.lower(), path)
    rate = fractions.Fraction(fps).limit_denominator(1001)
    path.parent.mkdir(parents=True, exist_ok=True)
    stream = None
    # faststart puts the mp4 index first, as web downloads have it (a truncated copy still opens)
    options = {"movflags": "faststart"} if path.suffix.lower() == ".mp4" else {}
    with av.open(str(path), mode="w", options=options) as container:
        for frame in frames:
            frame = np.ascontiguousarray(frame, dtype=np.uint8)
            if frame.ndim != 3 or frame.shape[2] != 3:
                raise ValueError(f"frames must be [H, W, 3] uint8 RGB, got shape {frame.shape}")
            if stream is None:
                height, width = frame.shape[:2]
                if pix_fmt == "yuv420p" and (height % 2 or width % 2):
                    raise ValueError(
                        f"{path}: {codec} stores YUV 4:2:0 and needs even frame sizes, got "
                        f"{height}x{width}; crop or pad the frames"
                    )
                stream = container.add_stream(codec, rate=rate)
                stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
                if codec == "mpeg4":
                    stream.bit_rate = max(2_000_000, int(width * height * float(rate) * 2))
                stream.options = dict(_ENCODER_OPTIONS.get(codec, {}))
            elif frame.shape[:2] != (stream.height, stream.width):
                raise ValueError(
                    f"all frames must have the first frame's size {stream.height}x{stream.width}, "
                    f"got {frame.shape[:2]}"
                )
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        if stream is None:
            raise ValueError(f"{path}: no frames to write")
        for packet in stream.encode():
            container.mux(packet)
    return path
