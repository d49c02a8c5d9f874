"""The card's fp32 FMA rate, measured: the arithmetic ceiling the dynamic-convolution benchmark sets its
cases against (the kernels accumulate in fp32 for every input dtype, so the fp32 rate applies).

Imports Triton at the top (a ``@triton.jit`` kernel is defined here): import this module only where a
GPU is about to be used, as :func:`mula_cli.bench.dynconv.run` does.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _fma_probe_kernel(out_ptr, a, b, iters, BLOCK: tl.constexpr):
    # Eight independent FMA chains per element, so that latency never limits the rate.
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x0 = offs.to(tl.float32) * 1e-7
    x1 = x0 + 1.0
    x2 = x0 + 2.0
    x3 = x0 + 3.0
    x4 = x0 + 4.0
    x5 = x0 + 5.0
    x6 = x0 + 6.0
    x7 = x0 + 7.0
    for _ in range(iters):
        x0 = tl.fma(x0, a, b)
        x1 = tl.fma(x1, a, b)
        x2 = tl.fma(x2, a, b)
        x3 = tl.fma(x3, a, b)
        x4 = tl.fma(x4, a, b)
        x5 = tl.fma(x5, a, b)
        x6 = tl.fma(x6, a, b)
        x7 = tl.fma(x7, a, b)
    tl.store(out_ptr + offs, ((x0 + x1) + (x2 + x3)) + ((x4 + x5) + (x6 + x7)))


def measure_fma_rate(device: torch.device | str = "cuda", iters: int = 4096) -> float:
    """fp32 FMAs per second of the CUDA cores, measured (the kernels accumulate in fp32 for every dtype)."""
    props = torch.cuda.get_device_properties(device)
    block, per_sm = 2048, 8
    out = torch.empty(props.multi_processor_count * per_sm * block, device=device)

    def launch() -> None:
        _fma_probe_kernel[(out.numel() // block,)](out, 0.999, 1e-3, iters, BLOCK=block, num_warps=4)

    launch()  # compile
    torch.cuda.synchronize(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(5):
        start.record()
        launch()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return out.numel() * iters * 8 / sorted(times)[len(times) // 2]
