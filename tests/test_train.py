"""`mula train` end to end on CPU: run directory, resume bit for bit, torchrun, bad input."""

from __future__ import annotations

import csv
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import run_cli, subprocess_env, synthetic_cache

TINY = ["--model", "hg-tiny", "--width", "16", "--batch-size", "4", "--workers", "0", "--schedule", "constant",
        "--lr", "1e-3", "--log-every", "1"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic dataset made the way users make one: `mula prepare synthetic`."""
    return synthetic_cache(tmp_path_factory.mktemp("data"), train=16, val=4)


def _mula(*args: object, cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mula_cli", *map(str, args)], cwd=cwd, env=subprocess_env(),
                          capture_output=True, text=True, timeout=600, check=False, **kwargs)


def _rows(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


@pytest.mark.slow
def test_train_writes_the_run_directory_and_the_loss_goes_down(cache: Path, tmp_path: Path) -> None:
    result = _mula("train", "--data", cache, *TINY, "--epochs", "3", "--val-every", "1", "--project", "runs",
                   cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run = tmp_path / "runs" / "exp"
    assert str(run.relative_to(tmp_path)) in result.stdout
    for name in ("config.json", "metrics.csv", "weights/last.pt", "weights/best.pt", "weights/best_parsing.pt",
                 "weights/best_pose.pt", "vis/epoch_001.jpg", "vis/epoch_003.jpg"):
        assert (run / name).is_file(), name
    rows = _rows(run)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])
    assert rows[0]["val_miou"] and rows[0]["val_pckh"]
    # best.pt is an ordinary weights file: evaluate/predict/export read it
    from mula_cli.model.weights import load_weights

    _, config, extra = load_weights(run / "weights" / "best.pt")
    assert config.preset == "hg-tiny" and "metrics" in extra and config.class_names[0] == "Background"
    again = _mula("train", "--data", cache, *TINY, "--epochs", "1", "--project", "runs", "--device-augment",
                  "--lovasz", "1", cwd=tmp_path)  # the batched resampling path, here on the CPU
    assert again.returncode == 0 and (tmp_path / "runs" / "exp2").is_dir()
    assert json.loads((tmp_path / "runs" / "exp2" / "config.json").read_text())["train"]["lovasz"] == 1.0


@pytest.mark.slow
def test_interrupted_run_resumes_to_the_same_weights(cache: Path, tmp_path: Path) -> None:
    args = ["train", "--data", cache, *TINY, "--epochs", "2", "--val-every", "2", "--seed", "3"]
    whole = _mula(*args, "--project", "a", cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr

    proc = subprocess.Popen([sys.executable, "-m", "mula_cli", *map(str, args), "--project", "b"], cwd=tmp_path,
                            env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:  # the per-epoch line of epoch 1: epoch 2 starts right after
        if line.startswith("epoch 1:"):
            proc.send_signal(signal.SIGINT)
            break
    rest, errors = proc.communicate(timeout=600)
    assert proc.returncode == 128 + signal.SIGINT, errors  # as a shell reports a Ctrl-C: not a crash's 1
    assert "interrupted" in errors and "--resume" in rest
    last = tmp_path / "b" / "exp" / "weights" / "last.pt"
    saved = torch.load(last, weights_only=True)["training"]["state"]
    assert saved["epoch"] == 1 and 1 <= saved["epoch_step"] < 4  # stopped inside epoch 2

    from mula_cli.utils.files import _HOST

    killed = subprocess.Popen([sys.executable, "-c", ""])
    killed.wait()
    stale = last.with_name(f".last.pt.{_HOST}-{killed.pid}.partial")  # as a SIGKILL during a save leaves it
    stale.write_bytes(b"half a checkpoint")
    resumed = _mula("train", "--resume", "--project", "b", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming at epoch 2" in resumed.stdout
    assert not stale.exists()
    a, b = _state(tmp_path / "a" / "exp" / "weights" / "last.pt"), _state(last)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    rows_a, rows_b = _rows(tmp_path / "a" / "exp"), _rows(tmp_path / "b" / "exp")
    assert [r["loss"] for r in rows_a] == [r["loss"] for r in rows_b]


@pytest.mark.slow
def test_torchrun_two_ranks_reduce_metrics_like_one_process(cache: Path, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "--log-dir", str(logs), "--redirects", "3", "-m", "mula_cli", "train", "--data", str(cache), *TINY,
           "--epochs", "1", "--device", "cpu", "--project", "runs", "--batch-size", "2"]
    result = subprocess.run(cmd, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=600,
                            check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    rank_logs = {p.parent.name: p.read_text() for p in logs.rglob("stdout.log")}
    assert set(rank_logs) == {"0", "1"}  # both ranks ran
    assert "run directory" in rank_logs["0"] and rank_logs["1"].strip() == ""  # only rank 0 speaks
    assert "consider --sync-bn" in next(logs.rglob("0/stderr.log")).read_text()  # 1 image per process
    runs = list((tmp_path / "runs").iterdir())
    assert [r.name for r in runs] == ["exp"]  # only rank 0 made a run directory
    best = runs[0] / "weights" / "best.pt"
    import json

    assert json.loads((runs[0] / "config.json").read_text())["world_size"] == 2

    from mula_cli.data.cache import CacheFile
    from mula_cli.evaluation.runner import eval_loader, evaluate_model
    from mula_cli.model.weights import load_weights

    model, config, extra = load_weights(best)
    with CacheFile(cache) as c:
        manifest = c.manifest
    # one image per forward pass and one thread (conftest), as each rank ran: identical float results
    loader = eval_loader(cache, "val", config.input_size, config.stride, batch_size=1, workers=0)
    single = evaluate_model(model, loader, manifest).summary()
    for key in ("pixel_acc", "mean_acc", "miou", "pckh"):
        assert single[key] == pytest.approx(extra["metrics"][key], rel=1e-9, abs=1e-9), key


def test_bad_training_input_is_one_line_exit_2(cache: Path, tmp_path: Path) -> None:
    missing = run_cli("train", "--data", "lip")
    assert missing.exit_code == 2 and "mula prepare lip" in missing.output  # MULA_HOME is empty in tests
    corrupt = tmp_path / "corrupt.h5"
    corrupt.write_bytes(b"\x89HDF\r\n\x1a\n" + b"garbage" * 10)
    bad_cache = run_cli("train", "--data", corrupt)
    assert bad_cache.exit_code == 2 and "corrupt.h5" in bad_cache.output
    preset = run_cli("train", "--data", cache, "--model", "hg-99s")
    assert preset.exit_code == 2 and "hg-99s" in preset.output
    config = tmp_path / "bad.toml"
    config.write_text("epochs = 3\nlearning_rate = 0.1\n")
    bad_key = run_cli("train", "--data", cache, "--config", config)
    assert bad_key.exit_code == 2 and "learning_rate" in bad_key.output
    config.write_text('epochs = "ten"\n')
    bad_type = run_cli("train", "--data", cache, "--config", config)
    assert bad_type.exit_code == 2 and "epochs" in bad_type.output
    schedule = run_cli("train", "--data", cache, "--schedule", "cosine")
    assert schedule.exit_code == 2 and "cosine" in schedule.output
    both = run_cli("train", "--resume", tmp_path / "last.pt", "--weights", tmp_path / "w.pt")
    assert both.exit_code == 2 and "drop --weights" in both.output
    lovasz = run_cli("train", "--data", cache, "--lovasz", "-1")
    assert lovasz.exit_code == 2 and "--lovasz" in lovasz.output
    for result in (missing, bad_cache, preset, bad_key, bad_type, schedule, both, lovasz):
        assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1, result.output


def test_config_file_sets_options_and_flags_win(tmp_path: Path) -> None:
    from mula_cli.train.config import resolve_config

    toml = tmp_path / "c.toml"
    toml.write_text('model = "hg-2s"\nepochs = 7\nbatch-size = 6\nlr = 1\n')
    cfg = resolve_config({"epochs": 9, "model": None}, toml)
    assert (cfg.model, cfg.epochs, cfg.batch_size, cfg.lr) == ("hg-2s", 9, 6, 1.0)


def test_learning_rate_schedules() -> None:
    from mula_cli.train.config import TrainConfig

    paper = TrainConfig(schedule="paper")
    assert paper.lr_at(0, "hourglass") == 2.5e-3
    assert paper.lr_at(148, "hourglass") == 2.5e-3 and paper.lr_at(149, "hourglass") == 1.25e-3
    assert paper.lr_at(249, "hourglass") == pytest.approx(2.5e-3 / 16)
    official = TrainConfig(schedule="official")
    assert official.lr_at(0, "hourglass") == 1.5e-3 and official.lr_at(0, "vgg16") == 1e-4
    assert official.lr_at(199, "hourglass") == pytest.approx(1.5e-4)
    assert official.lr_at(229, "hourglass") == pytest.approx(0.05 * 1.5e-3)
    short = TrainConfig(schedule="paper", epochs=10)
    assert [short.lr_at(e, "hourglass") / 2.5e-3 for e in (0, 4, 5, 6, 9)] == [1.0, 1.0, 0.5, 0.25, 0.0625]


@pytest.mark.slow
def test_a_loss_diverging_on_one_rank_stops_every_rank_with_the_message(cache: Path, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    script = Path(__file__).with_name("diverge_one_rank.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "--log-dir", str(logs), "--redirects", "3", str(script), "train", "--data", str(cache), *TINY,
           "--epochs", "1", "--device", "cpu", "--project", "runs", "--batch-size", "2"]
    result = subprocess.run(cmd, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=300,
                            check=False)
    assert result.returncode != 0
    errors = {p.parent.name: p.read_text() for p in logs.rglob("stderr.log")}
    assert set(errors) == {"0", "1"}
    for rank, text in errors.items():
        assert "the loss became nan at epoch 1, step 2" in text, (rank, text[-2000:])
        assert "Traceback" not in text, (rank, text[-2000:])


@pytest.mark.slow
def test_resume_writes_into_the_run_the_checkpoint_names(cache: Path, tmp_path: Path) -> None:
    first = _mula("train", "--data", cache, *TINY, "--epochs", "1", "--project", "runs", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    run = tmp_path / "runs" / "exp"
    elsewhere = tmp_path / "downloads"
    elsewhere.mkdir()
    copy = elsewhere / "last.pt"
    shutil.copy(run / "weights" / "last.pt", copy)
    resumed = _mula("train", "--resume", copy, "--epochs", "2", cwd=elsewhere)
    assert resumed.returncode == 0, resumed.stderr
    assert [int(r["epoch"]) for r in _rows(run)] == [1, 2]
    assert sorted(p.name for p in elsewhere.iterdir()) == ["last.pt"]  # nothing written beside the copy

    shutil.rmtree(tmp_path / "runs")  # the run directory is gone: a new one, and the user is told
    again = _mula("train", "--resume", copy, "--epochs", "3", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "is gone; continuing in a new one" in " ".join(again.stderr.split())
    assert [int(r["epoch"]) for r in _rows(tmp_path / "runs" / "exp")] == [2, 3]  # the copy was after epoch 1


@pytest.mark.slow
def test_sigterm_saves_and_tells_how_to_resume(cache: Path, tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "mula_cli", "train", "--data", str(cache), *TINY, "--epochs", "50",
                             "--val-every", "50", "--project", "runs"], cwd=tmp_path, env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("epoch 1:"):  # 49 epochs left: the signal always lands inside the run
            proc.send_signal(signal.SIGTERM)
            break
    rest, errors = proc.communicate(timeout=600)
    assert proc.returncode == 128 + signal.SIGTERM, errors
    assert "interrupted (SIGTERM)" in errors and "mula train --resume" in " ".join(rest.split())
    last = tmp_path / "runs" / "exp" / "weights" / "last.pt"
    saved = torch.load(last, weights_only=True)
    assert saved["training"]["state"]["epoch"] >= 1 and saved["training"]["state"]["world_size"] == 1

    # a mid-epoch checkpoint of two processes cannot go on with one: its sharding would change
    saved["training"]["state"].update(epoch_step=1, world_size=2)
    torch.save(saved, tmp_path / "two.pt")
    result = run_cli("train", "--resume", tmp_path / "two.pt")
    assert result.exit_code == 2 and "with 2 process(es)" in result.output, result.output
    # a checkpoint from a version with other options: one line, not a TypeError
    saved["extra"]["train_config"]["future_option"] = 1
    torch.save(saved, tmp_path / "future.pt")
    result = run_cli("train", "--resume", tmp_path / "future.pt")
    assert result.exit_code == 2 and "future_option" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


def test_deterministic_is_strict_and_a_missing_kernel_is_one_line(cache: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from mula_cli.train import engine

    seen = []
    real_step = engine._step
    monkeypatch.setattr(engine, "_step", lambda *a: seen.append(
        (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
         torch.backends.cudnn.deterministic)) or real_step(*a))
    result = run_cli("train", "--data", cache, *TINY, "--epochs", "1", "--deterministic", "--project",
                     tmp_path / "runs", "--quiet")
    assert result.exit_code == 0, result.output
    assert seen and set(seen) == {(True, False, True)}
    assert not torch.are_deterministic_algorithms_enabled()  # put back for whoever runs next in this process

    # MuLA itself runs no operation without a deterministic kernel (tests/test_deterministic.py checks every
    # one of a step against PyTorch's list); should one appear (a new model part, another PyTorch), the
    # run stops with PyTorch's reason on one line. The stub raises PyTorch's message for an operation MuLA never runs.
    def no_kernel(*args, **kwargs):
        raise RuntimeError("histc_cuda does not have a deterministic implementation, "
                           "but you set 'torch.use_deterministic_algorithms(True)'. You can turn off ...")

    monkeypatch.setattr(engine, "_train", no_kernel)
    result = run_cli("train", "--data", cache, "--deterministic")
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert "histc_cuda does not have a deterministic implementation" in result.output


def _resume(monkeypatch: pytest.MonkeyPatch, *args: object) -> tuple[object, list[Path]]:
    """``mula train ARGS`` in-process, stopped by the engine right after it has the checkpoint: the
    result and the checkpoint files read (a stand-in payload, so nothing trains)."""
    from mula_cli.train import checkpoint, engine
    from mula_cli.train.config import TrainConfig
    from mula_cli.utils.errors import MulaError

    payload = {"state_dict": {}, "config": {}, "extra": {"train_config": TrainConfig(epochs=1).to_dict()},
               "training": {"optimizer": {}, "scaler": {}, "state": {"epoch": 1}, "rng": {}}}
    reads: list[Path] = []
    monkeypatch.setattr(checkpoint, "read_weights_file", lambda path, *a, **k: reads.append(Path(path)) or payload)

    def stop_after_loading(data: str) -> Path:  # the engine's first step after loading the checkpoint
        raise MulaError("stopped after loading")

    monkeypatch.setattr(engine, "resolve_cache", stop_after_loading)
    result = run_cli("train", *args)
    assert result.exit_code == 2 and "stopped after loading" in result.output, result.output
    return result, reads


def test_resume_reads_the_checkpoint_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """m13: the command reads the checkpoint for the run's settings and the engine resumes from that
    same payload (a checkpoint with optimiser state is hundreds of MB)."""
    _, reads = _resume(monkeypatch, "--resume", tmp_path / "last.pt", "--epochs", "2", "--device", "cpu")
    assert reads == [tmp_path / "last.pt"], f"read {len(reads)} times"


def test_resume_takes_a_path_or_alone_the_newest_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--resume`` alone (last, or before another option) is the newest run's last.pt; with a value, that file."""
    newest = tmp_path / "runs" / "exp" / "weights" / "last.pt"
    newest.parent.mkdir(parents=True)
    newest.touch()
    given = tmp_path / "given.pt"
    runs = tmp_path / "runs"
    for args, want in ((["--project", runs, "--resume"], newest), (["--resume", "--epochs", "3", "--project", runs], newest),
                       (["--resume", "-q", "--project", runs], newest), (["--resume", given, "--epochs", "3"], given),
                       ([f"--resume={given}"], given)):
        _, reads = _resume(monkeypatch, *args)
        assert reads == [want], args
