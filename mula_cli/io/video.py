"""Video in and out: files, streams and cameras read with PyAV (FFmpeg), overlay videos written.

PyAV is the optional ``video`` extra (``pip install "mula[video]"``); its wheels bundle FFmpeg,
so every container and codec FFmpeg decodes is read, with no system FFmpeg needed. Frames come
out upright (the display rotation phone videos carry is applied) as RGB arrays, each with its
index in the source and its time in seconds.

A source is a video file (by suffix), a URL (``rtsp://``, ``http(s)://``, ...), or a camera: a
whole number (``0``) or a device path (``/dev/video1``). Cameras are live sources: frames carry
wall-clock times from the first one, and a reader that falls behind drops the oldest frames
rather than lagging further (see :mod:`mula_cli.inference.video_predict`).
"""

from __future__ import annotations

import platform
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from mula_cli.utils.errors import MulaError

VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts",
                  ".flv", ".wmv", ".3gp", ".ogv"}  # fmt: skip
STREAM_PREFIXES = ("rtsp://", "rtsps://", "rtmp://", "rtmps://", "http://", "https://", "udp://", "tcp://",
                   "srt://")  # fmt: skip
# Encoders per output suffix, best first (PyAV's wheels bundle libx264 and libvpx).
ENCODERS = {
    ".mp4": ("libx264", "h264", "mpeg4"),
    ".m4v": ("libx264", "h264", "mpeg4"),
    ".mov": ("libx264", "h264", "mpeg4"),
    ".mkv": ("libx264", "h264", "mpeg4"),
    ".avi": ("mpeg4",),
    ".webm": ("libvpx-vp9", "libvpx"),
}
DEFAULT_CAMERA_RATE = 30
# MP4-family overlays are written as fragmented MP4: an empty ``moov`` first, then one ``moof`` + ``mdat``
# fragment per keyframe interval, each written out (flushed) as soon as it is cut. A reader needs no
# trailer, so a process killed outright (SIGKILL, a power cut) leaves a file that plays up to its last
# whole fragment; Ctrl-C and SIGTERM close the container as usual. No B-frames there: with B-frames the
# first timestamps are negative and, with the ``moov`` written before any frame, no edit list can shift
# them back, so the video would start a frame or two late (``negative_cts_offsets`` is not enough either).
FRAGMENTED_SUFFIXES = {".mp4", ".m4v", ".mov"}
FRAGMENTED_OPTIONS = {"movflags": "frag_keyframe+empty_moov+default_base_moof", "flush_packets": "1"}
# A keyframe (and so a fragment) every 2 s: a kill loses at most that plus the encoder's lookahead, and
# players seek to 2 s; the encoders' own default would be up to 250 frames (libx264), 10 s at 25 frames/s.
KEYFRAME_INTERVAL_S = 2


def require_av() -> ModuleType:
    """The ``av`` module, or a MulaError saying how to install it."""
    try:
        import av
    except ImportError:
        raise MulaError('video input and output need PyAV: pip install "mula[video]" (or pip install av)') from None
    return av


def is_camera(source: str) -> bool:
    """A whole number (camera index) or a V4L2 device path."""
    return source.isdigit() or bool(re.fullmatch(r"/dev/video\d+", source))


def is_stream(source: str) -> bool:
    return source.lower().startswith(STREAM_PREFIXES)


def is_video(source: str) -> bool:
    """Whether ``mula predict`` should read ``source`` as a video (file, stream or camera)."""
    return Path(source).suffix.lower() in VIDEO_SUFFIXES or is_stream(source) or (
        is_camera(source) and not Path(source).is_file())


@dataclass
class Frame:
    """One decoded frame, upright."""

    index: int  # position in the source, counting every decoded frame from 0
    time: float  # seconds from the source's first frame (wall clock for live sources)
    image: np.ndarray  # (H, W, 3) uint8 RGB


class VideoReader:
    """Frames of an opened PyAV container's first video stream.

    Args:
        container: an input container (``av.open``).
        name: how the user named the source (for messages).
        live: a camera or live stream: times from the wall clock, no length, no truncation check.
    """

    def __init__(self, container: Any, name: str, *, live: bool = False) -> None:
        if not container.streams.video:
            container.close()
            raise MulaError(f"{name} has no video stream; is it an audio file?")
        self.container = container
        self.stream = container.streams.video[0]
        self.stream.thread_type = "AUTO"  # frame and slice threads inside FFmpeg's decoder
        self.name, self.live = name, live
        self.decoded = 0
        self.last_time = 0.0
        rate = self.stream.average_rate or self.stream.guessed_rate or self.stream.base_rate
        self.rate: Fraction | None = Fraction(rate) if rate else None

    @property
    def fps(self) -> float | None:
        return float(self.rate) if self.rate else None

    @property
    def frame_count(self) -> int | None:
        """Frames the container declares (or its duration implies); None for live sources or when unknown."""
        if self.live:
            return None
        if self.stream.frames:
            return int(self.stream.frames)
        duration = self.duration
        return round(duration * self.fps) if duration and self.fps else None

    @property
    def duration(self) -> float | None:
        """Seconds of video the container declares (the container's length only when video is its one stream)."""
        if self.stream.duration and self.stream.time_base:
            return float(self.stream.duration * self.stream.time_base)
        if self.container.duration and len(self.container.streams) == 1:
            return self.container.duration / 1_000_000
        return None

    def __iter__(self) -> Iterator[Frame]:
        av = require_av()
        start: float | None = None
        wall_start = time.monotonic()
        try:
            for frame in self.container.decode(self.stream):
                if self.live:
                    stamp = time.monotonic() - wall_start
                else:
                    stamp = float(frame.time) if frame.time is not None else self.decoded / (self.fps or 1.0)
                    start = stamp if start is None else start
                    stamp -= start
                image = frame.to_ndarray(format="rgb24")
                turns = round((getattr(frame, "rotation", 0) or 0) / 90) % 4  # counter-clockwise quarter turns
                if turns:
                    image = np.ascontiguousarray(np.rot90(image, turns))
                self.last_time = stamp
                yield Frame(self.decoded, stamp, image)
                self.decoded += 1
        except av.error.FFmpegError as exc:
            raise MulaError(f"{self.name} could not be decoded after frame {self.decoded} "
                            f"({_first_line(exc)}); the file is truncated or damaged") from None
        self._check_complete()

    def _check_complete(self) -> None:
        # A truncated file often just ends: compare with the length the container declares.
        if self.live:
            return
        expected, duration = self.frame_count, self.duration
        short_of_count = self.stream.frames and self.decoded < self.stream.frames
        step = 1.0 / self.fps if self.fps else 0.0
        short_of_time = duration is not None and self.decoded and self.last_time + 2.5 * step < duration
        if self.decoded == 0 or short_of_count or short_of_time:
            # A source may declare neither a frame count nor a duration (and then yield no frame).
            told = f"{expected} frames" if expected else f"{duration:.2f} s" if duration is not None else None
            declared = f" of the {told} it declares" if told else ""
            raise MulaError(f"{self.name} ends after {self.decoded} frames ({self.last_time:.2f} s){declared}; "
                            "the file is truncated or damaged")

    def close(self) -> None:
        self.container.close()


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]


def open_file_or_stream(source: str) -> VideoReader:
    """A reader for a video file or a URL."""
    av = require_av()
    if not is_stream(source) and not Path(source).is_file():
        raise MulaError(f"video {source} does not exist; check the path")
    try:
        container = av.open(source, timeout=(10.0, 10.0) if is_stream(source) else None)
    except (av.error.FFmpegError, OSError) as exc:
        raise MulaError(f"cannot read {source} as a video ({_first_line(exc)}); is it a complete video file?") from None
    return VideoReader(container, source, live=is_stream(source) and not _seekable(container))


def _seekable(container: Any) -> bool:
    return bool(container.duration)


def camera_container(device: str) -> Any:
    """Open a camera with FFmpeg's capture device of this platform (V4L2, AVFoundation, DirectShow)."""
    av = require_av()
    system = platform.system()
    if system == "Linux":
        path = f"/dev/video{device}" if device.isdigit() else device
        return av.open(path, format="v4l2")
    if system == "Darwin":
        return av.open(device, format="avfoundation", options={"framerate": str(DEFAULT_CAMERA_RATE)})
    return av.open(device if device.startswith("video=") else f"video={device}", format="dshow")


def open_camera(device: str) -> VideoReader:
    """A live reader for camera ``device`` (an index such as ``0``, or a device path or name)."""
    av = require_av()
    try:
        container = camera_container(device)
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise MulaError(f"cannot open camera {device} ({_first_line(exc)}); is it connected and free? "
                        "Pass another index or a device path such as /dev/video1") from None
    reader = VideoReader(container, f"camera {device}", live=True)
    reader.rate = reader.rate or Fraction(DEFAULT_CAMERA_RATE)
    return reader


def open_source(source: str, *, camera: bool = False) -> VideoReader:
    """A reader for ``source``: a camera when ``camera`` or when it names one, else a file or stream."""
    if camera or (is_camera(source) and not Path(source).is_file()):
        return open_camera(source)
    return open_file_or_stream(source)


class VideoWriter:
    """An overlay video: frames in order, at ``rate``, with presentation times from the frames' own.

    The container is complete once :meth:`close` returns, so the caller closes it on every way out,
    Ctrl-C and SIGTERM included. An MP4, M4V or MOV is fragmented (see ``FRAGMENTED_OPTIONS``): even
    unclosed, it plays up to its last whole fragment. Other containers need :meth:`close` (an AVI's
    index, a WebM's cues).

    The video keeps the first frame's size (``width`` x ``height``, made even). A later frame of
    another size (an adaptive stream switching quality) is scaled to fit, keeping its aspect, centred
    on black; this is said once.
    """

    def __init__(self, path: Path, rate: Fraction, width: int, height: int) -> None:
        av = require_av()
        suffix = path.suffix.lower()
        if suffix not in ENCODERS:
            raise MulaError(f"cannot write a {suffix or 'suffix-less'} video ({path}); use one of "
                            f"{', '.join(sorted(ENCODERS))}")
        codec = next((c for c in ENCODERS[suffix] if c in av.codecs_available), None)
        if codec is None:
            raise MulaError(f"this PyAV has none of the encoders {', '.join(ENCODERS[suffix])} for {suffix}; "
                            "write .mp4 or .avi instead")
        path.parent.mkdir(parents=True, exist_ok=True)
        # PyAV creates the file only with the first frame: an older video of the same name must not
        # outlive a run stopped before it (its frames would not be this run's records)
        path.unlink(missing_ok=True)
        self.path, self.rate = path, rate
        fragmented = suffix in FRAGMENTED_SUFFIXES
        self.container = av.open(str(path), "w", options=dict(FRAGMENTED_OPTIONS) if fragmented else None)
        self.stream = self.container.add_stream(codec, rate=rate)
        # Even sizes for 4:2:0 chroma; the overlay is padded by one pixel when a side is odd.
        self.source_width, self.source_height = width, height
        self.width, self.height = width + width % 2, height + height % 2
        self.stream.width, self.stream.height = self.width, self.height
        self.stream.pix_fmt = "yuv420p"
        context = self.stream.codec_context
        context.time_base = Fraction(1, 1) / rate
        context.gop_size = max(1, round(KEYFRAME_INTERVAL_S * rate))
        if fragmented:
            context.max_b_frames = 0
        self.frames = 0
        self._last_pts = -1
        self._resized = False  # whether the size change was said
        self._av = av

    def write(self, image: np.ndarray, time_s: float) -> None:
        """Append an (H, W, 3) RGB frame shown at ``time_s`` seconds."""
        if image.shape[:2] != (self.height, self.width):
            image = self._fit(image)
        frame = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        pts = max(self._last_pts + 1, round(time_s * self.rate))
        frame.pts, self._last_pts = pts, pts
        for packet in self.stream.encode(frame):
            self.container.mux(packet)
        self.frames += 1

    def _fit(self, image: np.ndarray) -> np.ndarray:
        """``image`` on a canvas of the video's size: as it is when it has the first frame's size (an odd
        side padded by one pixel), else scaled to fit that size, keeping its aspect, centred on black.

        Scaling, rather than cropping or padding only, keeps the whole picture, at the video's full size
        when the source drops to a lower resolution of the same aspect (the usual adaptive-stream switch);
        keeping the aspect leaves people undistorted, so the overlay still shows their true proportions.
        """
        from PIL import Image

        canvas = np.zeros((self.height, self.width, 3), np.uint8)
        height, width = image.shape[:2]
        top = left = 0
        if (height, width) != (self.source_height, self.source_width):
            if not self._resized:
                from mula_cli.utils.console import err

                err.print(f"{self.path.name}: the frames change size from {self.source_width}x{self.source_height} "
                          f"to {width}x{height} after {self.frames} frame(s); every frame of another size is scaled "
                          f"to fit {self.source_width}x{self.source_height} (aspect kept, black borders)",
                          soft_wrap=True, highlight=False)
                self._resized = True
            scale = min(self.source_width / width, self.source_height / height)
            fitted = (min(self.source_width, max(1, round(width * scale))),
                      min(self.source_height, max(1, round(height * scale))))
            image = np.asarray(Image.fromarray(image).resize(fitted, Image.Resampling.BILINEAR))
            top, left = (self.source_height - fitted[1]) // 2, (self.source_width - fitted[0]) // 2
        canvas[top : top + image.shape[0], left : left + image.shape[1]] = image
        return canvas

    def close(self) -> None:
        """Flush the encoder and write the trailer."""
        try:
            for packet in self.stream.encode():
                self.container.mux(packet)
        finally:
            self.container.close()
