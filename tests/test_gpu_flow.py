"""What a default CUDA run does, walked on the CPU: the GPU's code paths in the normal test suite.

A CUDA run trains under bf16 autocast with channels_last models and batches and resamples its
augmentations on the device; it validates, evaluates and predicts under the same autocast. The CPU
follows all of that here (CPU autocast lowers the same operations to bfloat16), single- and
multi-person, one process and two. Where it cannot follow:

- device placement and host synchronisation: the training step runs on the ``meta`` device, where a
  tensor made on the CPU by mistake, or a value read on the host, fails as it would on a GPU;
- Inductor: ``--compile`` is traced by Dynamo and AOTAutograd as on a GPU and run by the ``aot_eager``
  backend (Inductor's CPU code generation is another compiler than the GPU's Triton one);
- the Triton kernels, their dispatch and torch.compile of them: tests/test_dynconv.py (stand-in
  kernels, the interpreter, fake CUDA tensors), and NCCL: tests/test_gpu_paths.py on a GPU.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from mula_cli.codecs.heatmaps import decode_official
from mula_cli.data.cache import CacheFile
from mula_cli.data.dataset import MulaDataset, SampleConfig, collate
from mula_cli.evaluation.runner import eval_loader, evaluate_model
from mula_cli.inference.batch import InferenceOptions, predict_batch
from mula_cli.model.presets import build_model, dataset_overrides
from mula_cli.train.balance import measure_balance
from mula_cli.train.config import TrainConfig
from mula_cli.train.step import BatchInputs, train_step
from mula_cli.transforms.affine import AUGMENTATIONS

from conftest import run_cli, subprocess_env

BF16 = torch.bfloat16
TINY = ["--model", "hg-tiny", "--width", "16", "--batch-size", "4", "--workers", "0", "--log-every", "1"]
# what CUDA's defaults are, asked for on the CPU (channels_last is the engine's default everywhere)
GPU_DEFAULTS = ["--amp", "bf16", "--device-augment", "--device", "cpu"]
# the unit-sized walks also run on a real GPU where there is one (benchmarks/device_check.sh runs this file)
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]


@pytest.fixture(scope="module")
def caches(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A single-person (LIP layout) and a multi-person (PASCAL-Person-Part layout) synthetic cache."""
    root = tmp_path_factory.mktemp("gpu_flow")
    made = {"single": root / "single.h5", "multi": root / "multi.h5"}
    for kind, extra in (("single", ["--test", "0"]), ("multi", ["--multi-person"])):
        result = run_cli("prepare", "synthetic", root / f"tree_{kind}", "--train", "8", "--val", "4", *extra,
                         "--out", made[kind], "-q")
        assert result.exit_code == 0, result.output
    return made


def _model(cache: Path, **kwargs) -> tuple[torch.nn.Module, object]:
    with CacheFile(cache) as c:
        manifest = c.manifest
    torch.manual_seed(0)
    return build_model("hg-tiny", width=16, input_size=128, **dataset_overrides(manifest), **kwargs), manifest


# ------------------------------------------------------------------ decoding is float32 under autocast


def test_decoding_is_float32_under_autocast() -> None:
    """bfloat16 has 8 bits of mantissa: coordinates above 256 would be rounded to even pixels (301 -> 300)
    and a flat blurred top would tie. Decoding switches autocast off whatever its caller does."""
    maps = torch.zeros(1, 2, 96, 96)
    maps[0, 0, 37, 75] = 1.0  # cell centres at stride 4: x = 75 * 4 + 1.5 = 301.5 before the blur's argmax
    maps[0, 1, 94, 83] = 1.0
    want, want_scores = decode_official(maps, (384, 384))
    with torch.autocast("cpu", dtype=BF16):
        got, scores = decode_official(maps, (384, 384))
    assert got.dtype == torch.float32 and scores.dtype == torch.float32
    assert torch.equal(got, want) and torch.equal(scores, want_scores)
    assert got[0, 0, 0] > 300  # not rounded to a bfloat16 neighbour


class _Spy(torch.nn.Module):
    """A model that notes the autocast dtype of every forward pass (None: autocast off)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model, self.config, self.seen = model, model.config, []

    def forward(self, x: torch.Tensor):
        self.seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        return self.model(x)


@pytest.mark.parametrize("kind", ["single", "multi"])
def test_the_network_alone_runs_under_autocast_and_the_rest_in_float32(caches: dict[str, Path], kind: str) -> None:
    model, manifest = _model(caches[kind])
    spy = _Spy(model.eval())
    images = torch.randint(0, 256, (2, 3, 128, 128), generator=torch.Generator().manual_seed(1)).float()
    with torch.autocast("cpu", dtype=BF16):  # an outer autocast changes nothing after the network
        pred = predict_batch(spy, images, manifest, InferenceOptions(), amp_dtype=BF16)
    assert spy.seen == [BF16]
    assert pred.joints.dtype == pred.scores.dtype == pred.probabilities.dtype == torch.float32
    assert pred.heatmaps.dtype == torch.float32
    joints, _ = decode_official(pred.heatmaps, (128, 128))  # float32, outside any autocast
    assert torch.equal(pred.joints, joints)
    assert (pred.people is not None) == (kind == "multi")
    plain = predict_batch(spy, images, manifest, InferenceOptions())
    assert spy.seen[-1] is None and plain.joints.dtype == torch.float32  # None: full precision


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind,protocol", [("single", "default"), ("single", "authors"), ("multi", "default")])
def test_evaluation_under_bf16_autocast_scores_every_picture(caches: dict[str, Path], kind: str, protocol: str,
                                                             device: str) -> None:
    """What training-time validation does on a GPU by default (the crash: NumPy has no bfloat16)."""
    model, manifest = _model(caches[kind])
    model = model.to(device).to(memory_format=torch.channels_last)
    options = InferenceOptions(protocol=protocol)
    loader = eval_loader(caches[kind], "val", 128, 4, batch_size=2, workers=0, options=options)
    with torch.autocast(device, dtype=BF16):  # as if a caller's autocast covered it all: decoding must not care
        result = evaluate_model(model, loader, manifest, options=options, amp_dtype=BF16)
    full = evaluate_model(model, loader, manifest, options=options)
    assert result.images == full.images == 4
    summary = result.summary()
    assert np.isfinite(summary["miou"]) and ("map" in summary if kind == "multi" else "pckh" in summary)
    assert abs(summary["miou"] - full.summary()["miou"]) < 5.0  # bfloat16 moves a few pixels, not the picture


# ------------------------------------------------------------------ device placement and host syncs


@pytest.mark.parametrize("kind", ["single", "multi"])
def test_the_training_step_keeps_to_its_device_and_never_reads_a_value(caches: dict[str, Path], kind: str) -> None:
    """The step, its batch preparation (the device-augmentation warp, channels_last) and the loss-balance
    measurement on the ``meta`` device: a tensor made on the CPU by mistake meets a device mismatch, and a
    host sync (``.item()``, ``bool(t)``, ``.tolist()``) finds no value to read, as a GPU step must not."""
    cache = caches[kind]
    dataset = MulaDataset(cache, "train", SampleConfig(input_size=128, stride=4, augment=AUGMENTATIONS["full"],
                                                       seed=0, defer_warp=True))
    batch = next(iter(DataLoader(dataset, batch_size=2, collate_fn=collate)))
    meta = torch.device("meta")
    model, manifest = _model(cache)
    model = model.to(meta).to(memory_format=torch.channels_last)
    inputs = BatchInputs(meta, 128, dataset.config)(batch)
    assert all(t.device == meta for t in inputs if t is not None)
    assert inputs[0].is_contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    loss, parts = train_step(model, optimizer, scaler, inputs, None, TrainConfig(lovasz=1.0), manifest.ignore_label)
    assert loss.device == meta and all(v.device == meta for v in parts.values())
    assert ("s2/offsets" in parts) == (kind == "multi")
    balance = measure_balance(model, *inputs, beta=0.01, ignore_index=manifest.ignore_label, lovasz_weight=1.0)
    assert balance and all(v.device == meta for v in balance.values())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["single", "multi"])
def test_the_training_step_under_bf16_autocast(caches: dict[str, Path], kind: str, device: str) -> None:
    """The dtype flow of a CUDA step: bf16 network, float32 losses, float32 gradients on float32 weights."""
    cache = caches[kind]
    dataset = MulaDataset(cache, "train", SampleConfig(input_size=128, stride=4, seed=0, defer_warp=True))
    batch = next(iter(DataLoader(dataset, batch_size=2, collate_fn=collate)))
    model, manifest = _model(cache)
    model = model.to(device).to(memory_format=torch.channels_last)
    inputs = BatchInputs(torch.device(device), 128, dataset.config)(batch)
    optimizer = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler(device, enabled=False)
    before = [p.detach().clone() for p in model.parameters()]
    loss, parts = train_step(model, optimizer, scaler, inputs, BF16, TrainConfig(lovasz=1.0), manifest.ignore_label)
    assert loss.dtype == torch.float32 and torch.isfinite(loss) and all(v.dtype == torch.float32 for v in parts.values())
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in model.parameters() if p.grad is not None)
    assert sum(not torch.equal(a, p) for a, p in zip(before, model.parameters())) > len(before) // 2
    balance = measure_balance(model, *inputs, beta=0.01, ignore_index=manifest.ignore_label, lovasz_weight=1.0,
                              amp_dtype=BF16)
    assert all(torch.isfinite(v) and v.dtype == torch.float32 for v in balance.values())


# ------------------------------------------------------------------ the commands, as a GPU user runs them


def _interrupted_then_resumed(args: list[str], cwd: Path) -> tuple[str, str]:
    """Run ``mula ARGS``, Ctrl-C it after the first epoch's line, resume it to the end; both outputs."""
    proc = subprocess.Popen([sys.executable, "-m", "mula_cli", *args], cwd=cwd, env=subprocess_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("epoch 1:"):
            proc.send_signal(signal.SIGINT)
            break
    rest, errors = proc.communicate(timeout=600)
    assert proc.returncode == 128 + signal.SIGINT, errors[-3000:]
    assert "mula train --resume" in " ".join(rest.split())
    resumed = subprocess.run([sys.executable, "-m", "mula_cli", "train", "--resume", "--project", "runs"], cwd=cwd,
                             env=subprocess_env(), capture_output=True, text=True, timeout=600, check=False)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return "".join(seen) + rest, resumed.stdout


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["single", "multi"])
def test_a_default_gpu_run_walked_on_the_cpu(caches: dict[str, Path], tmp_path: Path, kind: str) -> None:
    """train (interrupted, resumed, validated every epoch), evaluate, predict and export --half, each with
    the GPU's precision, as a user with a GPU runs them."""
    cache = caches[kind]
    first, resumed = _interrupted_then_resumed(["train", "--data", str(cache), *TINY, *GPU_DEFAULTS, "--epochs", "3",
                                                "--val-every", "1", "--lovasz", "1", "--project", "runs"], tmp_path)
    assert "x cpu bfloat16" in " ".join(first.split()) and "resuming at epoch 2" in resumed
    run = tmp_path / "runs" / "exp"
    rows = (run / "metrics.csv").read_text().splitlines()
    assert len(rows) == 4 and all(row.split(",")[rows[0].split(",").index("val_miou")] for row in rows[1:])
    best = run / "weights" / "best.pt"
    assert best.is_file()

    evaluated = run_cli("evaluate", best, "--data", cache, "--amp", "bf16", "--device", "cpu", "--workers", "0",
                        "--json", "--save-dir", tmp_path / "eval")
    assert evaluated.exit_code == 0, evaluated.output
    doc = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert doc["precision"] == {"network": "bfloat16", "decoding": "float32", "device": "cpu"}
    assert ("map" in doc["pose"]) if kind == "multi" else ("pckh" in doc["pose"])

    picture = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (150, 100, 3), dtype=np.uint8)).save(picture)
    predicted = run_cli("predict", picture, "--weights", best, "--bf16", "--device", "cpu", "--out",
                        tmp_path / "parse.png", "--pose", tmp_path / "pose.json", "-q")
    assert predicted.exit_code == 0, predicted.output
    assert Image.open(tmp_path / "parse.png").size == (100, 150) and json.loads((tmp_path / "pose.json").read_text())

    exported = run_cli("export", best, "--format", "torchscript", "--half", "--device", "cpu", "--out",
                       tmp_path / "model.torchscript")
    assert exported.exit_code == 0, exported.output


@pytest.mark.slow
def test_compile_traces_the_bf16_step(caches: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--compile on the GPU's dtype flow: Dynamo and AOTAutograd trace the step with autocast, the custom
    dynamic-convolution operator and channels_last as on a GPU; aot_eager runs what they produce."""
    import torch._dynamo

    compiled = []
    real = torch.compile

    def aot_eager(model, **kwargs):
        compiled.append(model)
        return real(model, backend="aot_eager", **kwargs)

    monkeypatch.setattr(torch, "compile", aot_eager)
    monkeypatch.chdir(tmp_path)
    torch._dynamo.reset()
    try:
        result = run_cli("train", "--data", caches["multi"], *TINY, *GPU_DEFAULTS, "--epochs", "1", "--compile",
                         "--project", "runs")
    finally:
        torch._dynamo.reset()
    assert result.exit_code == 0, result.output
    assert len(compiled) == 1 and (tmp_path / "runs" / "exp" / "weights" / "best.pt").is_file()


def test_a_compiled_step_that_fails_on_its_first_run_gives_way_to_eager(caches: dict[str, Path], tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Generated code can fail where the model runs (PyTorch 2.13's Inductor C++ backend does on this model's
    bf16 backward, after minutes of compiling): one line, then the run goes on eagerly to the end."""
    from mula_cli.train import engine

    class Compiled(torch.nn.Module):  # what torch.compile returns, standing in: a wrapper of the model
        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor):
            return self.net(x)

    real_step, taken = engine._step, []

    def step(model, *args):
        taken.append(type(model).__name__)
        if isinstance(model, Compiled):
            raise UnboundLocalError("cannot access local variable 'buf197' where it is not associated with a value")
        return real_step(model, *args)

    monkeypatch.setattr(torch, "compile", Compiled)
    monkeypatch.setattr(engine, "_step", step)
    monkeypatch.chdir(tmp_path)
    result = run_cli("train", "--data", caches["single"], *TINY, "--device", "cpu", "--epochs", "2", "--compile",
                     "--project", "runs")
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "--compile: the compiled training step failed on its first run (UnboundLocalError" in text
    assert taken[:2] == ["Compiled", "MuLA"] and set(taken[2:]) == {"MuLA"} and len(taken) == 5  # 2 x 2 steps + 1
    assert "finished 2 epochs" in text


@pytest.mark.slow
def test_two_gloo_ranks_on_the_gpu_defaults(caches: dict[str, Path], tmp_path: Path) -> None:
    """torchrun with two processes, multi-person, bf16, device augmentation: every rank validates its shard."""
    logs = tmp_path / "logs"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "--log-dir",
           str(logs), "--redirects", "3", "-m", "mula_cli", "train", "--data", str(caches["multi"]), *TINY,
           *GPU_DEFAULTS, "--epochs", "1", "--project", "runs"]
    result = subprocess.run(cmd, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0 = next(logs.rglob("0/stdout.log")).read_text()
    assert "2 x cpu bfloat16" in " ".join(rank0.split()) and "pose mAP" in rank0



@pytest.mark.slow
def test_fp16_with_its_grad_scaler(caches: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--amp fp16: the grad scaler's path (scaled loss, unscale, inf check, update), on the CPU as on a GPU."""
    monkeypatch.chdir(tmp_path)
    result = run_cli("train", "--data", caches["single"], *TINY, "--amp", "fp16", "--device", "cpu", "--epochs", "2",
                     "--project", "runs")
    assert result.exit_code == 0, result.output
    assert "x cpu float16" in " ".join(result.output.split())
    saved = torch.load(tmp_path / "runs" / "exp" / "weights" / "last.pt", weights_only=True)["training"]["scaler"]
    assert saved["scale"] > 0 and saved["_growth_tracker"] >= 0  # an enabled scaler was stepped and saved


# ------------------------------------------------------------------ the GPU arms of device branches


def test_the_fast_path_takes_its_gpu_arm_off_the_cpu() -> None:
    """FastMuLA on a device other than the CPU: no oneDNN packing, no thread sharding, device-true outputs
    (on ``meta``, which takes the same arm as CUDA and fails on a tensor left on the CPU)."""
    from mula_cli.inference.fastpath import prediction_model

    model = build_model("hg-tiny", width=16, input_size=128).eval().to("meta")
    runner, path = prediction_model(model)
    assert "oneDNN" not in path and "split" not in path and "(meta)" in path
    with torch.no_grad():
        out = runner(torch.empty(2, 3, 128, 128, device="meta"))
    assert out.pose[-1].device.type == "meta" and out.parsing[-1].shape == (2, 20, 32, 32)


def test_cuda_random_state_travels_with_the_checkpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    """A resumed GPU run draws the same random numbers: the CUDA generators' states are saved and restored
    (stand-in generators: this machine has no GPU), and not forced onto a machine with another GPU count."""
    import io

    from mula_cli.train import checkpoint

    states = [torch.arange(8, dtype=torch.uint8), torch.arange(8, 16, dtype=torch.uint8)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [s.clone() for s in states])
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.append)
    buffer = io.BytesIO()
    torch.save(checkpoint.rng_state(), buffer)  # as save_checkpoint stores it, read back as --resume reads it
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    checkpoint.set_rng_state(saved)
    assert len(restored) == 1 and all(torch.equal(a, b) for a, b in zip(restored[0], states))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    checkpoint.set_rng_state(saved)
    assert len(restored) == 1  # two generators' states do not fit one GPU: left as they are


def test_the_process_group_is_nccl_for_gpus_with_gloo_beside_it() -> None:
    """CUDA tensors reduce over NCCL, CPU tensors (the stop flag's agreement on a GPU run) over gloo."""
    from mula_cli.train.distributed import process_group_backend

    assert process_group_backend(torch.device("cuda", 1)) == "cpu:gloo,cuda:nccl"
    assert process_group_backend(torch.device("cpu")) == "gloo"
