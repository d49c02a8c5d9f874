"""How close the CPU fast path is to what this CPU can do in float32: the evidence behind "2x at batch 1
needs fewer operations or lower precision".

Measures, in one run on this machine:

- the 5-stage model's forward pass on a picture and its mirror (batch 2, what ``mula predict`` runs
  for one picture with pose flip) on the fast path, and the arithmetic rate that implies (the
  model's counted FLOPs, a multiply-add counting 2);
- the rate oneDNN reaches on the model's own largest convolutions alone (3x3 and 1x1 on 64x64 maps),
  in float32 and under bfloat16 autocast: the float32 figure is a ceiling no whole network reaches
  (its small late-hourglass layers run slower);
- the forward time the 2x target of issue 12 asks for, given the baseline and the time spent
  outside the network (from ``benchmarks/results/predict_cpu.json``).

    python benchmarks/cpu_ceiling.py        # writes benchmarks/results/cpu_ceiling.json
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

from mula_cli.inference.fastpath import FastMuLA
from mula_cli.model.presets import build_model
from mula_cli.model.summary import model_flops

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "cpu_ceiling.json"


def best_of(fn, repeats: int = 5) -> float:
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def conv_rates(channels_in: int, channels_out: int, kernel: int) -> dict[str, float]:
    """GFLOP/s of one convolution on a (2, C, 64, 64) channels_last input, float32 and bfloat16 autocast."""
    conv = torch.nn.Conv2d(channels_in, channels_out, kernel, padding=kernel // 2).eval()
    conv = conv.to(memory_format=torch.channels_last)
    x = torch.randn(2, channels_in, 64, 64).contiguous(memory_format=torch.channels_last)
    flops = 2 * channels_in * channels_out * kernel * kernel * 64 * 64 * 2
    with torch.no_grad():
        fp32 = best_of(lambda: conv(x), 10)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = best_of(lambda: conv(x), 10)
    return {"float32_gflops": round(flops / fp32 / 1e9), "bfloat16_gflops": round(flops / bf16 / 1e9)}


def main() -> None:
    torch.manual_seed(0)
    model = build_model("hg-5s").eval()
    with torch.device("meta"):
        flops = model_flops(build_model("hg-5s"), 256)
    fast = FastMuLA(model).eval()
    x = torch.randint(0, 256, (2, 3, 256, 256)).float()
    with torch.no_grad():
        forward = best_of(lambda: fast(x))
    convs = {f"{ci}->{co} {k}x{k}": conv_rates(ci, co, k) for ci, co, k in ((128, 128, 3), (256, 128, 1),
                                                                             (128, 256, 1))}
    entry: dict[str, object] = {
        "model": "hg-5s", "input": 256, "gflops_per_picture": round(flops / 1e9, 1),
        "fast_forward_batch2_ms": round(1000 * forward, 1),
        "fast_forward_gflops": round(2 * flops / forward / 1e9),
        "largest_convs_alone": convs,
        "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
    }
    predict = HERE / "results" / "predict_cpu_idle.json"  # `mula benchmark predict` on an idle machine
    if predict.is_file():  # the 2x target of issue 12 in forward-pass terms
        batch1 = next(r for r in json.loads(predict.read_text())["results"] if r["batch"] == 1)
        eager, fast_total = batch1["eager_ms_per_picture"], batch1["fast_ms_per_picture"]
        outside = fast_total - 1000 * forward  # decoding, letterbox, post-processing
        needed = eager / 2 - outside
        entry["target_2x"] = {"eager_ms": eager, "fast_ms": fast_total, "outside_network_ms": round(outside, 1),
                              "forward_needed_ms": round(needed, 1),
                              "gflops_needed": round(2 * flops / (needed / 1000) / 1e9)}
    print(json.dumps(entry, indent=2))
    RESULTS.write_text(json.dumps(entry, indent=2) + "\n")


if __name__ == "__main__":
    main()
