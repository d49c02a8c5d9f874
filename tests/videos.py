"""Short test videos written with PyAV: a rectangle moving across a grey background."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np


def frame_image(index: int, width: int, height: int) -> np.ndarray:
    """Frame ``index``: grey with a red box that moves right two pixels a frame."""
    image = np.full((height, width, 3), 96, np.uint8)
    left = (2 * index) % max(1, width - width // 4)
    image[height // 4 : 3 * height // 4, left : left + width // 4] = (220, 40, 40)
    return image


def write_video(path: Path, frames: int = 12, fps: int | Fraction = 25, size: tuple[int, int] = (64, 48),
                codec: str = "libx264", rotation: int = 0, options: dict[str, str] | None = None) -> Path:
    """A ``frames``-frame video of ``size`` (width, height) at ``fps``; ``rotation`` is stored as display
    metadata (counter-clockwise degrees, as phones record portrait videos)."""
    import av

    container = av.open(str(path), "w", options=options or {})
    stream = container.add_stream(codec, rate=fps)
    stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
    if rotation:
        stream.set_display_rotation(rotation)
    for i in range(frames):
        frame = av.VideoFrame.from_ndarray(frame_image(i, *size), format="rgb24")
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return path


def read_video(path: Path) -> tuple[list[np.ndarray], list[float], Fraction]:
    """Every frame (RGB), its time in seconds, and the stream's average rate."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames, times = [], []
        for frame in container.decode(stream):
            frames.append(frame.to_ndarray(format="rgb24"))
            times.append(float(frame.time))
        return frames, times, Fraction(stream.average_rate)


def write_resizing_video(path: Path, parts: list[tuple[int, tuple[int, int]]], fps: int = 25) -> Path:
    """An H.264 MPEG-TS video whose size changes: ``parts`` is (frames, (width, height)) in order, as an
    adaptive stream switching quality sends it (one stream, a new encoder, and so a new SPS, per size)."""
    import av

    container = av.open(str(path), "w")
    stream = container.add_stream("libx264", rate=fps)
    stream.width, stream.height, stream.pix_fmt = parts[0][1][0], parts[0][1][1], "yuv420p"
    start = 0
    for part, (frames, (width, height)) in enumerate(parts):
        encoder = stream.codec_context if part == 0 else av.CodecContext.create("libx264", "w")
        if part:
            encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuv420p"
            encoder.time_base, encoder.framerate = Fraction(1, fps), Fraction(fps)
        for index in [*range(start, start + frames), None]:  # None: flush this encoder
            frame = None
            if index is not None:
                frame = av.VideoFrame.from_ndarray(frame_image(index, width, height), format="rgb24")
                frame.pts, frame.time_base = index, Fraction(1, fps)
            for packet in encoder.encode(frame):
                packet.stream = stream
                container.mux(packet)
        start += frames
    container.close()
    return path
