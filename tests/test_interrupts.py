"""A scheduler's SIGTERM or a terminal's Ctrl-C reaches every process of the job: the DataLoader workers
must ignore it (from their first instruction, whatever the start method) and the main process must
finish its step, save and say how to resume; under torchrun, every rank."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mula_cli.utils.interrupts import Interrupted, ignore_stop_signals, raising_on_stop_signals, signal_number

from conftest import subprocess_env, synthetic_cache

TRAIN = ["--model", "hg-tiny", "--width", "16", "--workers", "2", "--schedule", "constant", "--lr", "1e-3",
         "--log-every", "1", "--epochs", "50", "--val-every", "50", "--device", "cpu"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_cache(tmp_path_factory.mktemp("data"), train=16, val=2)


def _ignored(pid: int) -> set[int]:
    """The signals a process ignores, from /proc (Linux)."""
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("SigIgn:"))
    mask = int(line.split()[1], 16)
    return {sig for sig in range(1, 65) if mask >> (sig - 1) & 1}


def _signal_group_after(proc: subprocess.Popen, marker: str, sig: signal.Signals, delay: float = 0.2) -> str:
    """Read stdout until a line starts with ``marker``, then send ``sig`` to the whole process group."""
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith(marker):
            time.sleep(delay)  # inside the next epoch, whose workers are just starting or running
            os.killpg(proc.pid, sig)
            break
    return "".join(seen)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_workers_started_under_spawn_or_forkserver_ignore_the_signals_from_birth(method: str) -> None:
    code = (f"import multiprocessing as mp, sys, time; from mula_cli.utils.interrupts import starting_workers\n"
            f"ctx = mp.get_context('{method}'); mp.set_start_method('{method}')\n"
            "with starting_workers():\n    p = ctx.Process(target=time.sleep, args=(30,)); p.start()\n"
            "print(p.pid, flush=True); sys.stdin.readline(); p.kill()")
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=subprocess_env())
    try:
        child = int(proc.stdout.readline())
        assert {signal.SIGINT, signal.SIGTERM} <= _ignored(child)  # no initializer ran: inherited at birth
        assert not {signal.SIGINT, signal.SIGTERM} & _ignored(proc.pid)  # the parent handles them again
    finally:
        proc.communicate("\n", timeout=60)


@pytest.mark.skipif(not hasattr(signal, "sigwaitinfo"), reason="the sender of a signal is known on Linux only")
def test_a_worker_still_ends_when_its_owner_terminates_it(tmp_path: Path) -> None:
    # a worker busy in a long item when its loader is dropped: the loader, then the interpreter's exit,
    # terminate it (SIGTERM from the owner); a worker deaf to that would keep the program from ending
    script = tmp_path / "busy.py"
    script.write_text(
        "import sys, time\nfrom torch.utils.data import Dataset\nfrom mula_cli.data.loader import WorkerLoader\n"
        "class Slow(Dataset):\n    def __len__(self): return 4\n"
        "    def __getitem__(self, i):\n        if i: time.sleep(600)\n        return i\n"
        "it = iter(WorkerLoader(Slow(), batch_size=1, num_workers=1))\nprint(next(it), flush=True)\nsys.exit(0)\n")
    started = time.monotonic()
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                         env=subprocess_env(), check=False)
    assert run.returncode == 0 and run.stdout.strip() == "tensor([0])", run.stderr[-2000:]
    assert time.monotonic() - started < 60


def test_the_worker_initializer_ignores_the_signals_and_the_commands_raise_on_them() -> None:
    code = ("import os, signal; from mula_cli.utils.interrupts import ignore_stop_signals\n"
            "ignore_stop_signals(0); os.kill(os.getpid(), signal.SIGTERM); os.kill(os.getpid(), signal.SIGINT)\n"
            "print('alive')")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0 and run.stdout.strip() == "alive", run.stderr
    with raising_on_stop_signals(), pytest.raises(Interrupted) as caught:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises at the next bytecode
    assert signal_number(caught.value) == signal.SIGTERM and signal_number(KeyboardInterrupt()) == signal.SIGINT
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # restored
    assert ignore_stop_signals.__module__ == "mula_cli.utils.interrupts"  # importable by spawn's workers


@pytest.mark.slow
@pytest.mark.parametrize("method,sig", [("fork", signal.SIGINT), ("spawn", signal.SIGTERM),
                                        ("forkserver", signal.SIGINT)])  # SIGTERM under fork: evaluate's
def test_a_signal_to_the_process_group_saves_and_says_how_to_resume(cache: Path, tmp_path: Path, method: str,
                                                                     sig: signal.Signals) -> None:
    boot = (f"import multiprocessing as mp, sys; mp.set_start_method('{method}'); from mula_cli.cli import main; "
            "main(sys.argv[1:])")
    proc = subprocess.Popen([sys.executable, "-c", boot, "train", "--data", str(cache), *TRAIN, "--batch-size", "2",
                             "--project", "runs"], cwd=tmp_path, env=subprocess_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    before = _signal_group_after(proc, "epoch 1:", sig)
    rest, errors = proc.communicate(timeout=300)
    assert proc.returncode == 128 + sig, errors[-3000:]
    assert "Traceback" not in errors and "killed by signal" not in errors, errors[-3000:]
    assert f"interrupted ({sig.name})" in errors and errors.count("interrupted (") == 1  # the workers keep quiet
    assert "mula train --resume" in " ".join(rest.split()), before + rest
    state = torch.load(tmp_path / "runs" / "exp" / "weights" / "last.pt", weights_only=True)["training"]["state"]
    assert state["epoch"] >= 1


@pytest.mark.slow
def test_torchrun_ranks_all_save_when_the_job_is_signalled(cache: Path, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "--log-dir",
           str(logs), "--redirects", "2", "-m", "mula_cli", "train", "--data", str(cache), *TRAIN,
           "--batch-size", "2", "--project", "runs"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    _signal_group_after(proc, "epoch 1:", signal.SIGTERM)
    rest, _ = proc.communicate(timeout=300)  # torchrun's agent itself ends in its own SignalException
    rank_errors = {p.parent.name: p.read_text() for p in logs.rglob("stderr.log")}
    assert set(rank_errors) == {"0", "1"}
    for rank, text in rank_errors.items():  # each rank saw the signal (twice: the group's and the agent's)
        assert "interrupted (SIGTERM)" in text and "Traceback" not in text, (rank, text[-3000:])
    assert "mula train --resume" in " ".join(rest.split())
    state = torch.load(tmp_path / "runs" / "exp" / "weights" / "last.pt", weights_only=True)["training"]["state"]
    assert state["epoch"] >= 1 and state["world_size"] == 2


def test_a_stop_while_the_program_loads_exits_quietly_with_128_plus_the_signal() -> None:
    from mula_cli.utils.interrupts import exiting_on_stop_signals

    for sig in (signal.SIGINT, signal.SIGTERM):
        with pytest.raises(SystemExit) as caught, exiting_on_stop_signals():
            os.kill(os.getpid(), sig)
            time.sleep(5)  # as if importing torch
        assert caught.value.code == 128 + sig


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_evaluate_with_workers_stops_cleanly_on_a_signal_to_the_group(tmp_path: Path, tiny_weights: Path) -> None:
    sig = signal.SIGTERM
    from mula_cli.data.prepare import prepare_dataset
    from mula_cli.utils.manifests import load_manifest

    from trees import build_lip_tree

    build_lip_tree(tmp_path / "LIP", counts={"train": 1, "val": 40}, seed=1)
    prepare_dataset(load_manifest("lip"), tmp_path / "LIP", tmp_path / "lip.h5")
    proc = subprocess.Popen([sys.executable, "-m", "mula_cli", "evaluate", str(tiny_weights), "--data",
                             str(tmp_path / "lip.h5"), "--workers", "2", "--batch-size", "1", "--device", "cpu"],
                            cwd=tmp_path, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while len(_children(proc.pid)) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # the workers are up: the signal reaches them too
    time.sleep(0.5)
    os.killpg(proc.pid, sig)
    _, errors = proc.communicate(timeout=300)
    assert proc.returncode == 128 + sig, errors[-3000:]
    assert f"interrupted ({sig.name})" in errors and "Traceback" not in errors, errors[-3000:]


def test_a_stop_while_a_batch_is_handed_over_takes_effect_after_it_and_a_second_one_at_once() -> None:
    from mula_cli.utils.interrupts import deferring_stop_signals

    handed_over = False
    with raising_on_stop_signals():
        with pytest.raises(Interrupted) as caught:
            with deferring_stop_signals():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.2)  # a batch's tensors arriving from a worker
                handed_over = True
        assert handed_over and caught.value.signum == signal.SIGTERM
        with pytest.raises(Interrupted), deferring_stop_signals():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)
            os.kill(os.getpid(), signal.SIGINT)  # asked twice: no more waiting
            time.sleep(5)
            pytest.fail("the second signal did not stop the wait")


def test_a_sigterm_that_a_library_turned_into_a_plain_keyboardinterrupt_still_exits_143() -> None:
    """A SIGTERM during start-up whose Interrupted a library re-raised as a plain KeyboardInterrupt (the
    fault check caught `mula predict` on a video exiting 130 so, once) still exits with 128 + SIGTERM."""
    import signal

    from mula_cli.utils.interrupts import exiting_on_stop_signals

    with pytest.raises(SystemExit) as stopped, exiting_on_stop_signals():
        try:
            signal.raise_signal(signal.SIGTERM)
        except KeyboardInterrupt:
            raise KeyboardInterrupt from None  # what the library does with it
    assert stopped.value.code == 128 + signal.SIGTERM
