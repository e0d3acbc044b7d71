"""Where a chunk's view items come from: decoders, and three ways to run them.

A *source* turns the records of a chunk into one stream of events, each
``(video, kind, payload)`` with ``video`` the record's position in the chunk:

  ``("start", VideoInfo)``, then ``("item", (view_key, item_index, array))`` per view
  item, then exactly one terminal event: ``("end", truncation warnings)``,
  ``("error", exception)`` or ``("skipped", None)`` (after ``cancel(video)``). The
  decode pool may also send ``("restart", None)``: the video's decode process died and a
  fresh one decodes it again from the start (items already sent come again).

Events of one video come in order; the sources here and the decode pool deliver videos
in record order, so the batches an extractor sees do not depend on the source (the
features are the same for 0, 1 or N decode processes). The sources:

- ``SequentialSource``: decode in the consuming thread (``videos_in_flight=1``);
- ``ThreadSource``: a decoder thread in the model worker runs up to ``videos_in_flight - 1``
  videos and ``decode_ahead_bytes`` of items ahead (``_DecodeAhead`` is the hand-off);
- ``decode_pool.PoolSource``: decode processes beside the model worker.

A ``Decoder`` is what reads frames: ``PyAVDecoder`` (FFmpeg through PyAV) is the only
one; a hardware decoder would be one more class in ``DECODERS``.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import ClassVar

from aigvqa.extractors.base import VideoInfo, View
from aigvqa.pipeline.extract.failures import truncation_warnings

TERMINAL = frozenset({"end", "error", "skipped"})


class Decoder(ABC):
    """Reads a video's metadata and streams the items of some views from it."""

    name: ClassVar[str] = ""

    @abstractmethod
    def probe(self, path: str) -> VideoInfo: ...

    @abstractmethod
    def stream(
        self, path: str, views: Sequence[View], info: VideoInfo, threads: int
    ) -> Iterator[tuple[str, int, object]]: ...


class PyAVDecoder(Decoder):
    """FFmpeg through PyAV on the CPU: ``decode.probe`` + ``views.stream_views``."""

    name = "pyav"

    def probe(self, path: str) -> VideoInfo:
        from aigvqa.extractors.decode import probe  # looked up per call: tests spy on it

        return probe(path)

    def stream(self, path, views, info, threads):
        from aigvqa.extractors.views import stream_views

        return stream_views(path, views, info=info, threads=threads)


DECODERS: dict[str, type[Decoder]] = {"pyav": PyAVDecoder}


def decode_events(
    decoder: Decoder,
    path: str,
    views: Sequence[View],
    threads: int,
    stop: Callable[[], bool] = lambda: False,
) -> Iterator[tuple[str, object]]:
    """One video's events (kind, payload) minus errors, which the caller catches."""
    info = decoder.probe(path)
    yield "start", info
    with truncation_warnings() as caught:
        for key, index, item in decoder.stream(path, views, info, threads):
            if stop():
                yield "skipped", None
                return
            yield "item", (key, index, item)
    yield "end", list(caught)


class SequentialSource:
    """Decode each video in the consuming thread, in turn with the forward passes."""

    def __init__(
        self,
        paths: Sequence[str],
        views: Sequence[View],
        threads: int,
        decoder: Decoder | None = None,
    ) -> None:
        self.paths, self.views, self.threads = list(paths), list(views), threads
        self.decoder = decoder or PyAVDecoder()
        self._cancelled: set[int] = set()

    def events(self) -> Iterator[tuple[int, str, object]]:
        for video, path in enumerate(self.paths):
            if video in self._cancelled:
                yield video, "skipped", None
                continue
            try:
                for kind, payload in decode_events(
                    self.decoder,
                    path,
                    self.views,
                    self.threads,
                    lambda v=video: v in self._cancelled,
                ):
                    yield video, kind, payload
            except Exception as err:  # noqa: BLE001 - one bad video fails alone
                yield video, "error", err

    def cancel(self, video: int) -> None:
        self._cancelled.add(video)

    def close(self) -> None:
        pass


class _DecoderStopped(Exception):
    """The forward side closed the hand-off: the decoder thread ends."""


class _SkipVideo(Exception):
    """The forward side gave up on the video being decoded: stop decoding it."""


class _DecodeAhead:
    """Hand-off from the decoder thread to the forward passes: a queue of events, bounded
    in videos (the decoder starts video i + ``max_videos`` only once video i is done) and
    in bytes of queued items (at least one item always fits). The forward side can ask
    the decoder to abandon the video it is decoding (``skip``) and learns why the decoder
    thread stopped if it died (``get`` re-raises with the cause)."""

    def __init__(self, max_videos: int, max_bytes: int) -> None:
        self._cond = threading.Condition()
        self._events: deque = deque()
        self._bytes = 0
        self._max_videos, self._max_bytes = max_videos, max_bytes
        self._started = self._finished = 0
        self._skip = -1  # index of a video the forward side no longer wants
        self._closed = self._decoder_done = False
        self._decoder_error: BaseException | None = None

    def begin_video(self) -> int:
        """Wait for room, then return the index of the video the decoder starts."""
        with self._cond:
            self._cond.wait_for(
                lambda: self._closed or self._started - self._finished < self._max_videos
            )
            if self._closed:
                raise _DecoderStopped
            self._started += 1
            return self._started - 1

    def put(self, event: tuple, nbytes: int = 0, video: int | None = None) -> None:
        """Queue ``event``; raises _SkipVideo when ``video`` is the one to abandon."""
        with self._cond:
            self._cond.wait_for(
                lambda: (
                    self._closed
                    or video == self._skip
                    or not self._events
                    or self._bytes + nbytes <= self._max_bytes
                )
            )
            if self._closed:
                raise _DecoderStopped
            if video is not None and video == self._skip:
                raise _SkipVideo
            self._events.append((event, nbytes))
            self._bytes += nbytes
            self._cond.notify_all()

    def decoder_done(self, error: BaseException | None = None) -> None:
        with self._cond:
            self._decoder_done, self._decoder_error = True, error
            self._cond.notify_all()

    def get(self) -> tuple:
        with self._cond:
            self._cond.wait_for(lambda: self._events or self._decoder_done)
            if not self._events:
                raise RuntimeError(
                    "the decoder thread stopped before handing over every video"
                ) from self._decoder_error
            event, nbytes = self._events.popleft()
            self._bytes -= nbytes
            self._cond.notify_all()
            return event

    def skip(self, video: int) -> None:
        with self._cond:
            self._skip = video
            self._cond.notify_all()

    def finish_video(self) -> None:
        with self._cond:
            self._finished += 1
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class ThreadSource:
    """A decoder thread in the model worker, ahead of the forward passes (FFmpeg releases
    the GIL). One thread, not one per video: a thread per video that decodes and then
    computes falls into step with its twin, both decoding while the models sit idle."""

    def __init__(
        self,
        paths: Sequence[str],
        views: Sequence[View],
        threads: int,
        videos_in_flight: int,
        max_bytes: int,
        decoder: Decoder | None = None,
    ) -> None:
        self.paths, self.views, self.threads = list(paths), list(views), threads
        self.decoder = decoder or PyAVDecoder()
        self.hand_off = _DecodeAhead(videos_in_flight, max_bytes)
        self._thread: threading.Thread | None = None

    def _decode_all(self) -> None:
        hand_off = self.hand_off
        stopped_by: BaseException | None = None
        try:
            for path in self.paths:
                video = hand_off.begin_video()
                try:
                    for kind, payload in decode_events(
                        self.decoder, path, self.views, self.threads
                    ):
                        if kind == "item":
                            hand_off.put((video, kind, payload), payload[2].nbytes, video)
                        else:
                            hand_off.put((video, kind, payload))
                except _SkipVideo:
                    hand_off.put((video, "skipped", None))
                except _DecoderStopped:
                    raise
                except Exception as err:  # noqa: BLE001 - handed over: one bad video fails alone
                    hand_off.put((video, "error", err))
        except _DecoderStopped:
            pass
        except BaseException as err:  # noqa: BLE001 - the forward side re-raises it as the cause
            stopped_by = err
        finally:
            hand_off.decoder_done(stopped_by)

    def events(self) -> Iterator[tuple[int, str, object]]:
        self._thread = threading.Thread(target=self._decode_all, name="aigvqa-decoder", daemon=True)
        self._thread.start()
        done = 0
        while done < len(self.paths):
            event = self.hand_off.get()
            if event[1] in TERMINAL:
                done += 1
                self.hand_off.finish_video()
            yield event

    def cancel(self, video: int) -> None:
        self.hand_off.skip(video)

    def close(self) -> None:
        self.hand_off.close()
        if self._thread is not None:
            self._thread.join()
