"""``mula predict`` on a video, a stream or a camera: decode, predict and encode as a pipeline.

Three threads hand frames on through bounded queues, so the codec works while the network does:

    decode  -> frames ->  predict (this thread, batches)  -> predictions ->  write
    (PyAV)                (the Predictor, pose flip)                         (JSON Lines, label PNGs,
                                                                              overlay video)

PyAV, PyTorch and NumPy release the GIL in their heavy parts, so the stages overlap. Each stage
measures the time it spends working and waiting; :class:`PipelineReport` says which one bounds the
rate (the network, by far, on a CPU: see ``benchmarks/video_pipeline.py``).

Nothing is lost on the way out: the JSON Lines file is flushed after every frame (one whole line at
a time), and on Ctrl-C, SIGTERM, a decoding error or a truncated file the frames already predicted are
still written and the video container is closed properly; a second signal meanwhile does not cut that
short. An overlay MP4 is fragmented, so even a killed process leaves one that plays up to its last
whole fragment (see :class:`mula_cli.io.video.VideoWriter`). A live source
(camera, live stream) never waits for the network: when frames arrive faster than they are
predicted, the oldest waiting frame is dropped.
"""

from __future__ import annotations

import json
import os
import platform
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mula_cli.inference.smoothing import OneEuroFilter, OneEuroSettings
from mula_cli.io.pose_records import (
    found_joint_records,
    frame_record,
    joint_records,
    keypoint_layout,
    pose_people,
)
from mula_cli.io.video import Frame, VideoReader, VideoWriter
from mula_cli.io.visualize import draw_pose, overlay, save_label_png
from mula_cli.utils.interrupts import signal_number

_END = object()  # end of a queue's items
_POLL_S = 0.1  # queue waits wake up this often to notice a stop


@dataclass
class VideoOutputs:
    """Where a video's predictions go (each optional)."""

    vis: Path | None = None  # overlay video
    pose: Path | None = None  # JSON Lines, one record per predicted frame
    labels_dir: Path | None = None  # frame_000123.png label maps


@dataclass
class VideoOptions:
    stride: int = 1  # predict every n-th frame
    batch_size: int = 8  # frames per forward pass (live sources take what has arrived, up to this)
    smooth: OneEuroSettings | None = None  # temporal smoothing of joints; None = off
    show: bool = False  # show the overlay in a window (needs a display)
    pose_format: str = "mula"  # the JSON Lines' layout: mula's records, openpose, openpose-coco18 or coco


@dataclass
class PipelineReport:
    """What a run did, and where its time went (seconds)."""

    frames_decoded: int = 0
    frames_predicted: int = 0
    frames_written: int = 0
    frames_dropped: int = 0  # live sources only
    wall_s: float = 0.0
    decode_busy_s: float = 0.0
    model_busy_s: float = 0.0
    encode_busy_s: float = 0.0
    model_waiting_for_frames_s: float = 0.0
    model_waiting_for_writer_s: float = 0.0
    interrupted: bool = False
    stop_signal: int | None = None  # the signal that interrupted the run (SIGINT for Ctrl-C, SIGTERM, ...)
    error: str | None = None
    outputs: dict[str, str] = field(default_factory=dict)

    def busy_fractions(self) -> dict[str, float]:
        wall = self.wall_s or 1.0
        return {"decode": self.decode_busy_s / wall, "model": self.model_busy_s / wall,
                "encode": self.encode_busy_s / wall}  # fmt: skip

    def bottleneck(self) -> str:
        """The stage that worked the longest."""
        busy = self.busy_fractions()
        return max(busy, key=busy.get)

    def summary(self) -> str:
        busy = self.busy_fractions()
        rate = self.frames_written / self.wall_s if self.wall_s else 0.0
        parts = ", ".join(f"{name} {value * 100:.0f}%" for name, value in busy.items())
        return (f"{self.frames_written} frames in {self.wall_s:.1f} s ({rate:.2f} frames/s); busy: {parts}; "
                f"the {self.bottleneck()} is the bottleneck")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "busy_fraction": self.busy_fractions(), "bottleneck": self.bottleneck()}

    def stopped_by(self, exc: KeyboardInterrupt) -> None:
        """Record a stop signal (the first one, when more arrive)."""
        self.interrupted = True
        if self.stop_signal is None:
            self.stop_signal = signal_number(exc)


class _Stop(Exception):
    """Raised inside a stage when another stage has stopped the pipeline."""


def _put(q: queue.Queue, item: Any, stop: threading.Event) -> None:
    while True:
        if stop.is_set():
            raise _Stop
        try:
            q.put(item, timeout=_POLL_S)
            return
        except queue.Full:
            continue


def _get(q: queue.Queue, stop: threading.Event | None = None) -> Any:
    while True:
        if stop is not None and stop.is_set():
            raise _Stop
        try:
            return q.get(timeout=_POLL_S)
        except queue.Empty:
            continue


class _Writer:
    """The last stage: JSON Lines, label PNGs and the overlay video, in frame order."""

    def __init__(self, outputs: VideoOutputs, predictor, rate: Fraction, size: tuple[int, int],
                 smooth: OneEuroSettings | None, draw: bool, pose_format: str = "mula") -> None:
        self.outputs, self.predictor, self.draw = outputs, predictor, draw or outputs.vis is not None
        self.manifest = predictor.manifest
        self.layout = None if pose_format == "mula" else keypoint_layout(self.manifest, pose_format)  # before any file
        self.smoother = OneEuroFilter(smooth) if smooth is not None else None
        self.video = VideoWriter(outputs.vis, rate, size[1], size[0]) if outputs.vis is not None else None
        if outputs.pose is not None:
            outputs.pose.parent.mkdir(parents=True, exist_ok=True)
        self.lines = outputs.pose.open("w", encoding="utf-8") if outputs.pose is not None else None
        self.latest: np.ndarray | None = None  # the newest overlay, for a preview window

    def write(self, frame: Frame, prediction) -> None:
        joints = prediction.joints
        height, width = frame.image.shape[:2]
        if self.smoother is not None:  # in units of the long side, as the settings expect
            joints = self.smoother(joints / max(height, width), frame.time) * max(height, width)
        if prediction.people is not None:  # multi-person: every person found (no smoothing: identities change)
            people = [{"joints": found_joint_records(self.manifest.joints, p), "score": round(float(p.score), 4)}
                      for p in prediction.people]
        else:
            people = [{"joints": joint_records(self.manifest.joints, joints, prediction.scores),
                       "score": round(float(np.mean(prediction.scores)), 4)}]
        if self.lines is not None:
            if self.layout is None:
                record = {"frame": frame.index, "time": round(frame.time, 4), "width": width, "height": height,
                          "people": people}
            else:  # another program's layout: OpenPose's document (frame and time added) or COCO results
                record = frame_record(self.layout, pose_people(joints, prediction.scores, prediction.people),
                                      frame.index, frame.time, width, height)
            self.lines.write(json.dumps(record) + "\n")
            self.lines.flush()  # a crash or Ctrl-C keeps every line written so far
        if self.outputs.labels_dir is not None:
            save_label_png(self.outputs.labels_dir / f"frame_{frame.index:06d}.png", prediction.labels, self.manifest)
        if self.draw:
            people = None if prediction.people is None else [p.joints for p in prediction.people]
            drawn = draw_pose(overlay(Image.fromarray(frame.image), prediction.labels, self.manifest), self.manifest,
                              joints, prediction.scores, people)
            self.latest = np.asarray(drawn)
            if self.video is not None:
                self.video.write(self.latest, frame.time)

    def close(self) -> None:
        try:
            if self.video is not None:
                self.video.close()
        finally:
            if self.lines is not None:
                self.lines.close()


def predict_video(predictor, reader: VideoReader, outputs: VideoOutputs, options: VideoOptions | None = None,
                  progress: Callable[[int], None] | None = None) -> PipelineReport:
    """Run the pipeline over ``reader`` until it ends, fails or Ctrl-C; always returns the report.

    Args:
        predictor: a :class:`~mula_cli.inference.predictor.Predictor`.
        reader: the source (:func:`mula_cli.io.video.open_source`).
        outputs: what to write.
        options: stride, batch size, smoothing, preview.
        progress: called with the number of frames written after each one.

    The report's ``interrupted`` is set after Ctrl-C or SIGTERM (a KeyboardInterrupt in this thread;
    ``stop_signal`` says which signal) and ``error`` holds a decoding or writing error's message; the
    caller decides how to exit.
    """
    options = options or VideoOptions()
    report = PipelineReport(outputs={k: str(v) for k, v in asdict(outputs).items() if v is not None})
    stop = threading.Event()
    frames: queue.Queue = queue.Queue(maxsize=max(2, 2 * options.batch_size))
    predictions: queue.Queue = queue.Queue(maxsize=max(2, 2 * options.batch_size))
    errors: list[BaseException] = []
    rate = (reader.rate or Fraction(25)) / options.stride
    try:
        first = _first_frame(reader, options.stride, report)
        if first is None:
            return report
        writer = _Writer(outputs, predictor, rate, first[1].image.shape[:2], options.smooth, draw=options.show,
                         pose_format=options.pose_format)
    except KeyboardInterrupt as exc:  # before the first prediction: nothing is written yet
        report.stopped_by(exc)
        return report
    preview = None
    started = time.perf_counter()

    def decode() -> None:
        iterator = first[0]
        try:
            _put(frames, first[1], stop)
            while not stop.is_set():  # a camera never ends by itself
                tick = time.perf_counter()
                frame = next(iterator, None)
                report.decode_busy_s += time.perf_counter() - tick
                if frame is None:
                    break
                report.frames_decoded += 1
                if frame.index % options.stride:
                    continue
                if reader.live:
                    _put_dropping_oldest(frames, frame, report)
                else:
                    _put(frames, frame, stop)
        except _Stop:
            pass
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread, which reports it
            errors.append(exc)
        finally:
            _put_end(frames, stop.is_set)  # after a stop the predicting loop reads no more

    def write() -> None:
        try:
            while (item := _get(predictions)) is not _END:
                tick = time.perf_counter()
                writer.write(*item)
                report.encode_busy_s += time.perf_counter() - tick
                report.frames_written += 1
                if progress is not None:
                    progress(report.frames_written)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread, which reports it
            errors.append(exc)
            stop.set()
        finally:
            try:
                writer.close()
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

    decoder = threading.Thread(target=decode, name="mula-decode", daemon=True)
    writer_thread = threading.Thread(target=write, name="mula-write", daemon=True)
    threads = [writer_thread, decoder]  # the writer first: it closes the outputs
    try:
        for thread in threads:
            thread.start()
        preview = _Preview.open() if options.show else None
        _predict_loop(predictor, frames, predictions, stop, reader.live, options.batch_size, report, preview,
                      writer, errors)
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (mula_cli.utils.interrupts)
        report.stopped_by(exc)
    except _Stop:
        pass
    finally:
        stop.set()  # the decoder stops; the writer still writes every prediction already made
        _wind_down(writer, writer_thread, predictions, threads, report)
        report.wall_s = time.perf_counter() - started
        if preview is not None:
            preview.close()
    if errors:
        report.error = str(errors[0]) if hasattr(errors[0], "exit_code") else f"{type(errors[0]).__name__}: {errors[0]}"
    return report


def _wind_down(writer: _Writer, writer_thread: threading.Thread, predictions: queue.Queue,
               threads: list[threading.Thread], report: PipelineReport) -> None:
    """Let the writer write every prediction already made and close the outputs, then wait for the
    decoder; a second Ctrl-C or SIGTERM meanwhile is recorded, not obeyed (the wait is short: the
    predictions still queued; cutting it would lose the overlay video's end and the JSON Lines' last lines)."""
    ended, unstarted = False, writer_thread.ident is None
    while True:
        try:
            if unstarted:  # stopped before the writer started: nothing was written, close the files
                unstarted = False
                writer.close()
            elif not ended:
                _put_end(predictions, lambda: not writer_thread.is_alive())
                ended = True
            for thread in threads:
                if thread.ident is not None:
                    thread.join()
            return
        except KeyboardInterrupt as exc:
            report.stopped_by(exc)


def _first_frame(reader: VideoReader, stride: int, report: PipelineReport):
    """The iterator and the first frame (its size fixes the overlay's), or None for an empty source."""
    iterator = iter(reader)
    tick = time.perf_counter()
    try:
        frame = next(iterator, None)
    except Exception as exc:  # noqa: BLE001 - a damaged file: report it like later decoding errors
        report.error = str(exc)
        return None
    report.decode_busy_s += time.perf_counter() - tick
    if frame is None:
        report.error = f"{reader.name} has no frames"
        return None
    report.frames_decoded += 1
    return iterator, frame


def _put_dropping_oldest(q: queue.Queue, frame: Frame, report: PipelineReport) -> None:
    while True:
        try:
            q.put_nowait(frame)
            return
        except queue.Full:
            try:
                q.get_nowait()
                report.frames_dropped += 1
            except queue.Empty:
                pass


def _put_end(q: queue.Queue, abandoned: Callable[[], bool]) -> None:
    """Queue the end marker behind every item (never dropping one) while the reader still reads;
    once ``abandoned()`` says it no longer does, nobody needs the marker."""
    while True:
        try:
            q.put(_END, timeout=_POLL_S)
            return
        except queue.Full:
            if abandoned():
                return


def _predict_loop(predictor, frames: queue.Queue, predictions: queue.Queue, stop: threading.Event, live: bool,
                  batch_size: int, report: PipelineReport, preview, writer: _Writer, errors: list) -> None:
    ended = False
    while not ended:
        tick = time.perf_counter()
        item = _get(frames, stop)
        batch: list[Frame] = []
        while item is not _END:
            batch.append(item)
            if len(batch) == batch_size:
                break
            try:  # a file fills the batch; a live source takes only what has already arrived
                item = frames.get_nowait() if live else _get(frames, stop)
            except queue.Empty:
                break
        ended = item is _END
        report.model_waiting_for_frames_s += time.perf_counter() - tick
        if not batch:
            break
        tick = time.perf_counter()
        results = predictor.predict_decoded([(Image.fromarray(f.image), f.image.shape[:2]) for f in batch])
        report.model_busy_s += time.perf_counter() - tick
        report.frames_predicted += len(batch)
        tick = time.perf_counter()
        for frame, result in zip(batch, results):
            _put(predictions, (frame, result), stop)
        report.model_waiting_for_writer_s += time.perf_counter() - tick
        if preview is not None and writer.latest is not None:
            preview.show(writer.latest)
        if stop.is_set():  # the writer failed; a decoding error instead ends the frames with _END, after
            break  # every frame decoded before it, which are still predicted and written


def display_available() -> bool:
    """Whether a window can be shown (X11 / Wayland on Linux; always on macOS and Windows)."""
    if platform.system() in ("Windows", "Darwin"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


class _Preview:
    """A Tk window showing the newest overlay (Tk runs on the main thread, between batches)."""

    def __init__(self, root, label) -> None:
        self.root, self.label, self.photo = root, label, None

    @classmethod
    def open(cls) -> _Preview | None:
        from mula_cli.utils.console import err

        if not display_available():
            err.print("no display: the overlay is not shown (outputs are written as usual)")
            return None
        try:
            import tkinter

            root = tkinter.Tk()
        except Exception as exc:  # noqa: BLE001 - no tkinter, or a display that refuses the connection
            err.print(f"cannot open a window ({type(exc).__name__}); the overlay is not shown")
            return None
        root.title("mula predict")
        label = tkinter.Label(root)
        label.pack()
        return cls(root, label)

    def show(self, image: np.ndarray) -> None:
        from PIL import ImageTk

        self.photo = ImageTk.PhotoImage(Image.fromarray(image))
        self.label.configure(image=self.photo)
        self.root.update()

    def close(self) -> None:
        self.root.destroy()
