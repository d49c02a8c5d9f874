"""Video files, streams and cameras: reading, `mula predict` on them, truncation, Ctrl-C, smoothing."""

from __future__ import annotations

import itertools
import json
import signal
import struct
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from videos import read_video, write_resizing_video, write_video

from mula_cli.utils.errors import MulaError
from mula_cli.utils.manifests import load_manifest

from conftest import run_cli, subprocess_env

av = pytest.importorskip("av", reason="the video extra (PyAV) is not installed")


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize(("suffix", "fps"), [(".mp4", 25), (".mkv", Fraction(30000, 1001))])
def test_reader_frame_count_sizes_and_timestamps(tmp_path: Path, suffix: str, fps) -> None:
    from mula_cli.io.video import open_source

    path = write_video(tmp_path / f"clip{suffix}", frames=10, fps=fps, size=(64, 48))
    reader = open_source(str(path))
    assert reader.frame_count == 10 and reader.fps == pytest.approx(float(fps)) and not reader.live
    frames = list(reader)
    reader.close()
    assert [f.index for f in frames] == list(range(10))
    assert all(f.image.shape == (48, 64, 3) and f.image.dtype == np.uint8 for f in frames)
    assert [f.time for f in frames] == pytest.approx([i / float(fps) for i in range(10)], abs=2e-3)
    assert abs(int(frames[3].image[24, 8 + 6, 0]) - 220) < 30  # the red box, moved 2 px a frame


def test_a_rotated_phone_video_is_read_upright(tmp_path: Path) -> None:
    from mula_cli.io.video import open_source

    # Stored 64 x 48 landscape with the display matrix saying "turn 90 degrees counter-clockwise".
    path = write_video(tmp_path / "portrait.mp4", frames=2, size=(64, 48), rotation=90)
    first = next(iter(open_source(str(path))))
    assert first.image.shape == (64, 48, 3)
    # Counter-clockwise: the stored frame's left edge (where the red box starts) ends up at the bottom.
    assert first.image[60, 24, 0] > 180 and first.image[4, 24, 0] < 130


def test_predict_video_writes_one_record_and_one_overlay_frame_per_frame(tiny_weights: Path, tmp_path: Path) -> None:
    clip = write_video(tmp_path / "clip.mp4", frames=12, fps=25, size=(64, 48))
    result = run_cli("predict", clip, "--weights", tiny_weights, "--vis", tmp_path / "clip_overlay.mp4",
                     "--pose", tmp_path / "clip_poses.jsonl", "-q")
    assert result.exit_code == 0, result.output
    assert "bottleneck" in result.output and "prediction path: fast" in result.output
    frames, times, rate = read_video(tmp_path / "clip_overlay.mp4")
    records = _lines(tmp_path / "clip_poses.jsonl")
    assert len(frames) == len(records) == 12 and rate == 25
    assert all(f.shape == (48, 64, 3) for f in frames)
    assert times == pytest.approx([i / 25 for i in range(12)], abs=1e-3)
    lip = load_manifest("lip")
    for i, record in enumerate(records):
        assert (record["frame"], record["width"], record["height"]) == (i, 64, 48)
        assert record["time"] == pytest.approx(i / 25, abs=1e-3)
        (person,) = record["people"]
        assert [j["name"] for j in person["joints"]] == list(lip.joints)
        assert all(0 <= j["x"] <= 63 and 0 <= j["y"] <= 47 for j in person["joints"])


def test_stride_and_per_frame_label_pngs(tiny_weights: Path, tmp_path: Path) -> None:
    from PIL import Image

    clip = write_video(tmp_path / "walk.mkv", frames=10, fps=30, size=(50, 40))
    result = run_cli("predict", clip, "--weights", tiny_weights, "--out-dir", tmp_path / "out", "--stride", "3",
                     "--smooth", "-q")
    assert result.exit_code == 0, result.output
    records = _lines(tmp_path / "out" / "walk.jsonl")
    assert [r["frame"] for r in records] == [0, 3, 6, 9]
    frames, times, rate = read_video(tmp_path / "out" / "walk_overlay.mp4")
    assert len(frames) == 4 and rate == 10 and frames[0].shape == (40, 50, 3)  # odd sizes padded to even
    assert times == pytest.approx([0, 0.1, 0.2, 0.3], abs=1e-3)
    pngs = sorted((tmp_path / "out" / "walk").glob("frame_*.png"))
    assert [p.name for p in pngs] == [f"frame_{i:06d}.png" for i in (0, 3, 6, 9)]
    label = Image.open(pngs[1])
    assert label.size == (50, 40) and label.mode == "P"


@pytest.mark.parametrize(
    ("suffix", "options"),
    [(".mkv", None), (".mp4", {"movflags": "faststart"})],
    ids=["ends-early", "decode-error"],
)
def test_a_truncated_video_is_a_one_line_error_and_keeps_the_frames_before(
    tiny_weights: Path, tmp_path: Path, suffix: str, options
) -> None:
    clip = write_video(tmp_path / f"cut{suffix}", frames=40, size=(64, 48), options=options)
    data = clip.read_bytes()
    clip.write_bytes(data[: int(len(data) * 0.6)])
    result = run_cli("predict", clip, "--weights", tiny_weights, "--vis", tmp_path / "o.mp4",
                     "--pose", tmp_path / "p.jsonl", "-q")
    assert result.exit_code == 2, result.output
    error = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "truncated or damaged" in " ".join(result.output.split())
    assert "Traceback" not in result.output
    records = _lines(tmp_path / "p.jsonl")
    frames, _, _ = read_video(tmp_path / "o.mp4")  # a complete, playable file
    assert 0 < len(records) == len(frames) < 40
    assert [r["frame"] for r in records] == list(range(len(records)))


@pytest.mark.parametrize(("second", "border"), [((96, 64), (slice(0, 2), slice(None))),
                                              ((32, 32), (slice(None), slice(0, 8)))], ids=["grows", "shrinks"])
def test_a_video_whose_size_changes_is_written_whole_with_one_warning(tiny_weights: Path, tmp_path: Path,
                                                                      second, border) -> None:
    # 64x48, then 96x64 (scaled to 64x43: black rows above and below) or 32x32 (48x48: black at the sides).
    clip = write_resizing_video(tmp_path / "switch.ts", [(6, (64, 48)), (6, second), (2, (64, 48))])
    result = run_cli("predict", clip, "--weights", tiny_weights, "--vis", tmp_path / "o.mp4",
                     "--pose", tmp_path / "p.jsonl", "-q")
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert said.count("change size") == 1 and f"from 64x48 to {second[0]}x{second[1]} after 6 frame(s)" in said
    records = _lines(tmp_path / "p.jsonl")
    assert [(r["width"], r["height"]) for r in records] == [(64, 48)] * 6 + [second] * 6 + [(64, 48)] * 2
    frames, times, _ = read_video(tmp_path / "o.mp4")
    assert len(frames) == 14 and all(f.shape == (48, 64, 3) for f in frames)
    assert times == pytest.approx([i / 25 for i in range(14)], abs=1e-3)
    resized = frames[8].astype(float)
    assert resized[border].mean() < 24 < resized[16:32, 24:40].mean()  # fitted on black, not cropped
    assert frames[2].astype(float)[border].mean() > 24  # the first size fills the video


def test_a_source_that_declares_no_length_and_yields_no_frame_is_a_one_line_error() -> None:
    from mula_cli.io.video import VideoReader

    stream = SimpleNamespace(frames=0, duration=None, time_base=None, average_rate=None, guessed_rate=None,
                             base_rate=None)
    container = SimpleNamespace(streams=SimpleNamespace(video=[stream]), duration=None,
                                decode=lambda stream: iter(()), close=lambda: None)
    with pytest.raises(MulaError, match=r"^silent ends after 0 frames \(0.00 s\); the file is truncated"):
        list(VideoReader(container, "silent"))


def test_a_file_that_is_no_video_and_a_moov_less_mp4_are_refused(tiny_weights: Path, tmp_path: Path) -> None:
    (tmp_path / "notes.mp4").write_text("not a video")
    clip = write_video(tmp_path / "cut.mp4", frames=20)  # moov atom at the end: cut, nothing is readable
    clip.write_bytes(clip.read_bytes()[:1000])
    for path in (tmp_path / "notes.mp4", clip, tmp_path / "missing.mp4"):
        result = run_cli("predict", path, "--weights", tiny_weights, "--pose", tmp_path / "p.jsonl", "-q")
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        assert path.name in result.output


def test_bad_video_options_are_one_line_errors(tiny_weights: Path, tmp_path: Path) -> None:
    clip = write_video(tmp_path / "clip.mp4", frames=3)
    cases = {
        ("--vis", tmp_path / "o.xyz"): "cannot write a .xyz video",
        ("--out", tmp_path / "x.png"): "--out-dir writes one label PNG per frame",
        ("--vis", tmp_path / "same", "--pose", tmp_path / "same"): "different files",
    }
    for extra, message in cases.items():
        result = run_cli("predict", clip, "--weights", tiny_weights, *extra, "-q")
        assert result.exit_code == 2 and message in " ".join(result.output.split()), (extra, result.output)
    two = run_cli("predict", clip, clip, "--weights", tiny_weights, "-q")
    assert two.exit_code == 2 and "one video" in two.output


class PacedCamera:
    """A camera stand-in: a video file whose frames arrive at their frame rate, with no length."""

    def __init__(self, path: Path, fps: float) -> None:
        self._container = av.open(str(path))
        self.streams, self.duration, self.fps = self._container.streams, None, fps

    def decode(self, stream):
        for frame in self._container.decode(stream):
            time.sleep(1.0 / self.fps)
            yield frame

    def close(self) -> None:
        self._container.close()


def test_a_camera_source_is_predicted_live(tiny_weights: Path, tmp_path: Path, monkeypatch) -> None:
    from mula_cli.io import video

    clip = write_video(tmp_path / "camera.mp4", frames=15, fps=25, size=(64, 48))
    opened: list[str] = []

    def fake_camera(device: str) -> PacedCamera:
        opened.append(device)
        return PacedCamera(clip, fps=25)

    monkeypatch.setattr(video, "camera_container", fake_camera)
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    result = run_cli("predict", "0", "--weights", tiny_weights, "--pose", tmp_path / "cam.jsonl",
                     "--vis", tmp_path / "cam.mp4", "--show", "-q")
    assert result.exit_code == 0, result.output
    assert opened == ["0"] and "live" in result.output and "no display" in result.output
    records = _lines(tmp_path / "cam.jsonl")
    frames, times, _ = read_video(tmp_path / "cam.mp4")
    dropped = int(result.output.split(" frame(s) dropped")[0].split()[-1]) if "dropped" in result.output else 0
    assert len(records) == len(frames) and len(records) + dropped == 15 and len(records) >= 5
    assert all(b > a for a, b in itertools.pairwise(times))  # wall-clock times, strictly increasing
    indices = [r["frame"] for r in records]
    assert indices == sorted(indices)
    webcam = run_cli("predict", "--source", "webcam", "--weights", tiny_weights, "--pose", tmp_path / "w.jsonl",
                     "-q")
    assert webcam.exit_code == 0 and opened == ["0", "0"], webcam.output


def test_ctrl_c_on_a_camera_stops_at_once_and_keeps_the_outputs(tiny_weights: Path, tmp_path: Path) -> None:
    from mula_cli.inference.predictor import Predictor
    from mula_cli.inference.video_predict import VideoOptions, VideoOutputs, predict_video
    from mula_cli.io.video import VideoReader

    predictor = Predictor(tiny_weights, "cpu")
    calls = []
    predict = predictor.predict_decoded

    def interrupted_on_the_third_batch(pictures):
        calls.append(len(pictures))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return predict(pictures)

    predictor.predict_decoded = interrupted_on_the_third_batch
    camera = VideoReader(PacedCamera(write_video(tmp_path / "long.mp4", frames=150), fps=25), "camera 0",
                         live=True)  # six seconds of frames
    start = time.monotonic()
    report = predict_video(predictor, camera, VideoOutputs(vis=tmp_path / "o.mp4", pose=tmp_path / "p.jsonl"),
                           VideoOptions(batch_size=2))
    assert report.interrupted and time.monotonic() - start < 3.0  # the decoder did not run on to the end
    frames, _, _ = read_video(tmp_path / "o.mp4")
    assert len(frames) == len(_lines(tmp_path / "p.jsonl")) == report.frames_written == sum(calls[:2]) > 0


def test_a_camera_that_cannot_be_opened_is_a_one_line_error(tiny_weights: Path, tmp_path: Path, monkeypatch) -> None:
    from mula_cli.io import video

    def no_camera(device: str):
        raise av.error.FileNotFoundError(2, "No such file or directory", f"/dev/video{device}")

    monkeypatch.setattr(video, "camera_container", no_camera)
    result = run_cli("predict", "3", "--weights", tiny_weights, "--pose", tmp_path / "c.jsonl", "-q")
    assert result.exit_code == 2 and "cannot open camera 3" in result.output and "Traceback" not in result.output


def _predict_until(tmp_path: Path, weights: Path, lines: int, fps: int = 25) -> subprocess.Popen:
    """``mula predict long.mp4 --vis o.mp4 --pose p.jsonl`` in a subprocess, running once p.jsonl has ``lines``
    lines (the clip is long enough to be still running when polled)."""
    clip = write_video(tmp_path / "long.mp4", frames=2000, fps=fps, size=(64, 48))
    command = [sys.executable, "-m", "mula_cli", "predict", str(clip), "--weights", str(weights),
               "--vis", str(tmp_path / "o.mp4"), "--pose", str(tmp_path / "p.jsonl"), "-q", "--batch-size", "2"]
    process = subprocess.Popen(command, cwd=tmp_path, env=subprocess_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        written = (tmp_path / "p.jsonl").read_text().count("\n") if (tmp_path / "p.jsonl").exists() else 0
        if written >= lines:
            break
        time.sleep(0.05)
    assert process.poll() is None, process.communicate()
    return process


@pytest.mark.slow
@pytest.mark.parametrize(("stop", "code", "said"), [(signal.SIGINT, 130, "stopped by Ctrl-C"),
                                                    (signal.SIGTERM, 143, "stopped by SIGTERM")],
                         ids=["ctrl-c", "sigterm"])
def test_a_stop_signal_keeps_every_frame_written_so_far(tiny_weights: Path, tmp_path: Path, stop, code,
                                                        said: str) -> None:
    process = _predict_until(tmp_path, tiny_weights, lines=6)
    process.send_signal(stop)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == code, stdout + stderr  # 128 + the signal, as a shell reports it
    assert said in stderr and "Traceback" not in stderr
    records = _lines(tmp_path / "p.jsonl")  # whole lines only
    frames, _, _ = read_video(tmp_path / "o.mp4")  # closed: every frame written plays
    assert 6 <= len(records) == len(frames) < 2000
    assert [r["frame"] for r in records] == list(range(len(records)))


def _fragment_frames(path: Path) -> int:
    """Frames in a fragmented MP4's whole fragments: the samples that the ``trun`` boxes of every ``moof``
    followed by its complete ``mdat`` count (a box cut short by the end of the file counts nothing)."""

    def boxes(data: bytes):
        offset = 0
        while offset + 8 <= len(data):
            size, kind = struct.unpack(">I4s", data[offset : offset + 8])
            if size < 8 or offset + size > len(data):
                return
            yield kind, data[offset + 8 : offset + size]
            offset += size

    frames = waiting = 0
    for kind, body in boxes(path.read_bytes() if path.exists() else b""):
        if kind == b"moof":
            waiting = sum(struct.unpack(">I", run[4:8])[0] for traf_kind, traf in boxes(body) if traf_kind == b"traf"
                          for run_kind, run in boxes(traf) if run_kind == b"trun")
        elif kind == b"mdat":
            frames, waiting = frames + waiting, 0
    return frames


@pytest.mark.slow
def test_a_killed_prediction_leaves_an_overlay_that_plays_to_its_last_fragment(tiny_weights: Path,
                                                                               tmp_path: Path) -> None:
    # At 5 frames/s a fragment is 10 frames (a keyframe every 2 s) and the encoder holds back about 11:
    # after 40 frames at least two fragments are whole.
    process = _predict_until(tmp_path, tiny_weights, lines=40, fps=5)
    process.kill()
    process.communicate(timeout=60)
    records = _lines(tmp_path / "p.jsonl")  # every line parses: none is cut short
    assert [r["frame"] for r in records] == list(range(len(records)))
    overlay = tmp_path / "o.mp4"
    whole = _fragment_frames(overlay)
    assert whole >= 10, f"{whole} frames in whole fragments ({overlay.stat().st_size if overlay.exists() else 'no'} " \
        f"bytes written) after {len(records)} lines"
    frames, times, rate = read_video(overlay)
    assert whole <= len(frames) <= len(records) and rate == 5
    assert times == pytest.approx([i / 5 for i in range(len(frames))], abs=1e-3)


def test_without_pyav_video_input_says_how_to_install_it(monkeypatch) -> None:
    from mula_cli.io.video import require_av

    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(MulaError, match=r"pip install \"mula\[video\]\""):
        require_av()


def test_the_pipeline_names_the_model_as_the_bottleneck_when_it_is(tiny_weights: Path, tmp_path: Path) -> None:
    from mula_cli.inference.predictor import Predictor
    from mula_cli.inference.video_predict import VideoOptions, VideoOutputs, predict_video
    from mula_cli.io.video import open_source

    class SlowPredictor:
        def __init__(self, inner: Predictor) -> None:
            self.inner, self.manifest = inner, inner.manifest

        def predict_decoded(self, pictures):
            time.sleep(0.03 * len(pictures))
            return self.inner.predict_decoded(pictures)

    # Many more frames than the queues hold: the decoder finishes long before the model.
    clip = write_video(tmp_path / "clip.mp4", frames=24)
    reader = open_source(str(clip))
    report = predict_video(SlowPredictor(Predictor(tiny_weights, "cpu")), reader,
                           VideoOutputs(vis=tmp_path / "o.mp4", pose=tmp_path / "p.jsonl"), VideoOptions(batch_size=2))
    assert report.error is None and not report.interrupted
    assert report.frames_decoded == report.frames_predicted == report.frames_written == 24
    assert len(read_video(tmp_path / "o.mp4")[0]) == len(_lines(tmp_path / "p.jsonl")) == 24
    assert report.bottleneck() == "model" and report.model_busy_s >= 0.7
    assert report.busy_fractions()["model"] > 0.5


def test_an_overlay_stopped_before_its_first_frame_leaves_no_older_video_behind(tmp_path: Path) -> None:
    from fractions import Fraction

    from mula_cli.io.video import VideoWriter

    old = write_video(tmp_path / "o.mp4", frames=8)  # an earlier run's overlay, same name
    writer = VideoWriter(old, Fraction(25), 64, 48)
    writer.close()  # stopped before any frame: its records (none) and its video (none) agree
    assert not old.exists() or len(read_video(old)[0]) == 0
