"""``mula benchmark predict``: the prediction fast path against the plain eager model, in one process.

Both paths predict the same photos with the same weights, picture by picture end to end as
``Predictor.predict`` does (JPEG decode, letterbox, network with the pose flip, outputs mapped
back to the photo). The runs are interleaved (eager, fast, fast, eager, ...) so that a machine
shared with other work slows both alike; the report gives medians over the repeats of the time
per picture and of the per-repeat ratio, and how far the fast path's labels and joints are from
the eager path's. It also records the CPU time per picture (all threads of the process): with
``OMP_WAIT_POLICY=PASSIVE`` waiting OpenMP threads sleep instead of spinning, and the CPU time is
then the work each path does, which other processes on the machine barely change.

Random weights are fine for speed, but untrained BatchNorm statistics and unscaled adapters make
a deep MuLA's activations grow from stage to stage until the outputs are flat or not finite, which
would make the label and joint comparison meaningless. :func:`trained_like` sets them the way a
trained model's look (unit-variance convolutions, positive BN scales, adapter kernels that
average rather than amplify).
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mula_cli.utils.version import __version__


def trained_like(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give ``model`` random weights with well-behaved activations through every stage (in place)."""
    from mula_cli.model.adaptation import ParameterAdapter

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) / fan_in**0.5)
                if module.bias is not None:
                    module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.01)
            elif isinstance(module, nn.BatchNorm2d):
                module.weight.copy_(torch.rand(module.weight.shape, generator=generator) * 0.8 + 0.2)
                module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.1)
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) * 1.5 + 0.5)
        for module in model.modules():
            if isinstance(module, ParameterAdapter):  # kernels of h x h taps that sum to about one
                module.conv3.weight.div_(module.kernel_size**2)
    return model


def write_random_weights(path: Path, preset: str, seed: int = 0) -> Path:
    """A LIP weights file of ``preset`` with :func:`trained_like` random weights."""
    from mula_cli.model.presets import build_model, dataset_overrides
    from mula_cli.model.weights import save_weights
    from mula_cli.utils.manifests import load_manifest

    lip = load_manifest("lip")
    model = trained_like(build_model(preset, **dataset_overrides(lip)), seed)
    return save_weights(path, model.eval(), extra={"manifest": lip.to_json()})


def write_photos(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """Generated JPEG photos of a person (640 x 480 and 480 x 640, as a phone takes them)."""
    from PIL import Image

    from mula_cli.data.synthetic.writer import lip_scene

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        _, scene = lip_scene(seed + 2000, "test", i)
        size = (640, 480) if i % 2 else (480, 640)
        path = folder / f"photo_{i}.jpg"
        scene.image.resize(size, Image.Resampling.BICUBIC).save(path, quality=90)
        paths.append(path)
    return paths


def agreement(reference: list, other: list) -> dict[str, float]:
    """How far ``other``'s predictions are from ``reference``'s (lists of Prediction)."""
    pixels = sum(r.labels.size for r in reference)
    equal = sum(int((r.labels == o.labels).sum()) for r, o in zip(reference, other))
    joints = np.concatenate([np.linalg.norm(r.joints - o.joints, axis=1) for r, o in zip(reference, other)])
    scores = np.concatenate([np.abs(r.scores - o.scores) for r, o in zip(reference, other)])
    return {
        "label_agreement": equal / pixels,
        "labels_differing": pixels - equal,
        "joint_max_px": float(joints.max()),
        "joints_moved": int((joints > 0).sum()),
        "joints": int(joints.size),
        "score_max_abs_diff": float(scores.max()),
    }


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "mula": __version__,
            "torch_threads": torch.get_num_threads(), "python": platform.python_version()}


def run(weights: Path, photos: list[Path], *, batches: tuple[int, ...] = (1, 8), repeats: int = 5,
        device: str = "cpu", precision: str = "auto", log: Callable[[str], None] = print,
        save: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Time eager and fast prediction of ``photos`` (interleaved) and compare their outputs.

    Args:
        weights: a weights file (see :func:`write_random_weights`).
        photos: at least ``max(batches)`` pictures.
        batches: pictures per ``Predictor.predict`` call.
        repeats: timed calls per path and batch size, after one untimed warm-up call each.
        device: where the models run.
        precision: the default path's (``Predictor``'s ``precision``): where it comes to bfloat16, the
            fast path is timed in bfloat16 too (``fast_bf16``), against eager float32 like the others.
        log: progress lines.
        save: called with the report after every batch size (a run cut short keeps what it measured).
    """
    from mula_cli.inference.predictor import Predictor
    from mula_cli.utils.devices import pick_device, prediction_precision

    chosen = prediction_precision(precision, pick_device(device))
    paths = {"eager": Predictor(weights, device, fast=False, precision="fp32"),
             "fast": Predictor(weights, device, fast=True, precision="fp32")}
    if chosen == "bf16":
        paths["fast_bf16"] = Predictor(weights, device, fast=True, precision="bf16")
    report: dict[str, Any] = {
        "what": "Predictor.predict per picture end to end (JPEG decode, letterbox, network with pose flip, "
                "outputs mapped back), eager float32 vs the fast path",
        "preset": paths["fast"].config.preset, "input_size": paths["fast"].input_size, "device": device,
        "machine": machine(), "paths": {name: p.path for name, p in paths.items()}, "repeats": repeats,
        "precision": precision, "default_path": "fast_bf16" if chosen == "bf16" else "fast",
        "results": [],
    }  # fmt: skip
    for batch in batches:
        chosen = photos[:batch]
        outputs = {name: p.predict(chosen) for name, p in paths.items()}  # warm-up, and the comparison
        times: dict[str, list[float]] = {name: [] for name in paths}
        cpu: dict[str, list[float]] = {name: [] for name in paths}
        for r in range(repeats):
            order = list(paths) if r % 2 == 0 else list(paths)[::-1]
            for name in order:
                if paths[name].device.type == "cuda":
                    torch.cuda.synchronize()
                start, start_cpu = time.perf_counter(), time.process_time()
                paths[name].predict(chosen)  # returns NumPy results: the device work is done
                times[name].append((time.perf_counter() - start) / batch)
                cpu[name].append((time.process_time() - start_cpu) / batch)
            log(f"batch {batch} repeat {r + 1}/{repeats}: "
                + ", ".join(f"{name} {times[name][-1] * 1000:.0f} ms" for name in paths) + " per picture")
        row: dict[str, Any] = {"batch": batch,
                               "eager_ms_per_picture": round(statistics.median(times["eager"]) * 1000, 1),
                               "eager_ms": [round(t * 1000, 1) for t in times["eager"]],
                               "eager_cpu_ms_per_picture": round(statistics.median(cpu["eager"]) * 1000, 1)}
        for name in list(paths)[1:]:
            ratios = [e / f for e, f in zip(times["eager"], times[name])]
            prefix = "" if name == "fast" else f"{name}_"
            row.update({
                f"{name}_ms_per_picture": round(statistics.median(times[name]) * 1000, 1),
                f"{prefix}speedup_median": round(statistics.median(ratios), 3),
                f"{prefix}speedups": [round(r, 3) for r in ratios],
                f"{name}_ms": [round(t * 1000, 1) for t in times[name]],
                f"{name}_cpu_ms_per_picture": round(statistics.median(cpu[name]) * 1000, 1),
                f"{name}_vs_eager": agreement(outputs["eager"], outputs[name]),
            })  # fmt: skip
        report["results"].append(row)
        # read after every batch size: the dispatch decides (and may fall back) at the first calls
        report["dynconv"] = dynconv_paths(paths["eager"].device)
        if save is not None:
            save(report)
    return report


def dynconv_paths(device: torch.device | str) -> str:
    """What the dynamic convolution ran as on ``device`` in this process, read off the dispatch state
    (:mod:`mula_cli.ops.dynconv`) after the models ran: its mode and, for CUDA under ``auto``, the
    verdict of the Triton check of every case it met (kernel size, layout, dtype)."""
    from mula_cli.ops import dynconv

    device = torch.device(device)
    mode = dynconv.dispatch_mode()
    forced = f"{dynconv.DISPATCH_VARIABLE}={mode}"
    if mode == "grouped":
        return f"grouped convolution ({forced})"
    if mode == "triton":
        return f"Triton operator ({forced})"
    if device.type != "cuda":  # auto takes the Triton path for CUDA tensors only
        return (f"grouped convolution; one depthwise convolution per sample for channels_last batches (the fast "
                f"path's) ({forced} on {device.type})")
    verdicts = {key: cause for key, cause in dynconv.checked_cases().items() if key[3].type == "cuda"}
    if not verdicts:  # no case was checked: the kernels could not take any (e.g. Triton missing)
        return f"grouped convolution ({forced}: the Triton kernels took no case on {device})"

    def cases(keys: list) -> str:
        return ", ".join(f"{k}x{k} {layout} {str(dtype).removeprefix('torch.')}" for k, layout, dtype, _ in keys)

    good = [key for key, cause in verdicts.items() if cause is None]
    fell_back = {key: cause for key, cause in verdicts.items() if cause is not None}
    parts = [f"Triton operator for {cases(good)}"] if good else []
    if fell_back:
        first_cause = next(iter(fell_back.values()))
        parts.append(f"grouped convolution for {cases(list(fell_back))} (auto fell back: {first_cause})")
    return f"{'; '.join(parts)} ({forced} on {device})"


def summary(report: dict[str, Any]) -> list[str]:
    """Human-readable lines of a report."""
    lines = [(f"{report['preset']} at {report['input_size']}x{report['input_size']} on {report['device']} "
              f"({report['machine']['cpu']}, {report['machine']['torch_threads']} threads)")]
    for name, path in report["paths"].items():
        lines.append(f"  {name}: {path}")
    if "dynconv" in report:
        lines.append(f"  dynamic convolution: {report['dynconv']}")
    for row in report["results"]:
        lines.append(f"  batch {row['batch']}: eager {row['eager_ms_per_picture']:.0f} ms per picture")
        for name in [n for n in report["paths"] if n != "eager"]:
            prefix = "" if name == "fast" else f"{name}_"
            a = row[f"{name}_vs_eager"]
            default = " (the default path)" if name == report.get("default_path") else ""
            lines.append(
                f"    {name}{default} {row[f'{name}_ms_per_picture']:.0f} ms per picture, speed-up "
                f"x{row[f'{prefix}speedup_median']:.2f} (median of {len(row[f'{prefix}speedups'])}); labels "
                f"{a['label_agreement'] * 100:.4f}% equal, joints within {a['joint_max_px']:.3g} px"
            )
    return lines
