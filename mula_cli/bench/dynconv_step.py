"""The end-to-end part of ``mula benchmark dynconv``: a model's training step with each implementation.

The full ``hg-5s`` model at batch 16 calls the operator at (16, 256, 64, 64) with 7x7 kernels in every
adapted stage; ``op_share`` sets the step's measured saving against what those calls cost in the grid.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Protocol

import torch

from mula_cli.utils.errors import MulaError


class StepTimer(Protocol):  # mula_cli.bench.dynconv.Timer; not imported, so that module may import this one
    def median_ms(self, fn: Callable[[], object]) -> float: ...


@contextlib.contextmanager
def dispatch_mode(mode: str) -> Iterator[None]:
    """Run with ``MULA_DYNCONV=mode`` (``triton`` fails instead of falling back), then as before."""
    from mula_cli.ops import dynconv

    dynconv.set_dispatch_mode(mode)
    try:
        yield
    finally:
        dynconv.set_dispatch_mode()


def train_step(timer: StepTimer, device: str = "cuda", preset: str = "hg-5s", batch: int = 16,
               size: int = 256) -> dict:
    """Median training-step time of a model (the full hg-5s) with each implementation, fp32 and bf16
    autocast, timed by ``timer`` on ``device``."""
    from mula_cli.model.loss import IGNORE_INDEX, mula_loss
    from mula_cli.model.presets import build_model
    from mula_cli.ops import dynconv

    torch.manual_seed(0)
    model = build_model(preset, num_classes=20, num_joints=16).to(device).train()
    optimizer = torch.optim.RMSprop(model.parameters(), lr=2.5e-4)
    image = torch.rand(batch, 3, size, size, device=device) * 255
    with torch.no_grad():
        first = model(image)
    heatmaps = torch.rand_like(first.pose[-1])
    parsing = torch.randint(0, 20, (batch, size, size), device=device)
    parsing[:, :16] = IGNORE_INDEX  # some ignored pixels, as in real labels

    calls = []
    real_dispatch = dynconv._dispatch
    dynconv._dispatch = lambda x, w: calls.append((tuple(x.shape), w.shape[-1])) or real_dispatch(x, w)
    try:
        with torch.no_grad():
            model(image)
    finally:
        dynconv._dispatch = real_dispatch

    def step(autocast: bool) -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
            total, _ = mula_loss(model(image), heatmaps, parsing)
        total.backward()
        optimizer.step()

    result = {
        "preset": preset,
        "batch": batch,
        "size": size,
        "op_calls_per_forward": len(calls),
        "op_calls": calls,
        "ms": {},
    }
    for mode in ("triton", "grouped"):
        result["ms"][mode] = {}
        for precision in ("fp32", "bf16_autocast"):
            try:
                with dispatch_mode(mode):
                    result["ms"][mode][precision] = timer.median_ms(
                        lambda bf16=(precision == "bf16_autocast"): step(bf16)
                    )
            except (MulaError, RuntimeError, ValueError) as exc:  # record it, measure the rest
                result.setdefault("errors", {})[f"{mode}/{precision}"] = f"{type(exc).__name__}: {exc}"
    result["speedup"] = {
        p: result["ms"]["grouped"][p] / result["ms"]["triton"][p]
        for p in result["ms"]["triton"]
        if p in result["ms"]["grouped"]
    }
    return result


def op_share(report: dict) -> dict:
    """What the operator's calls in one training step cost with each implementation, from the grid.

    The step should get faster by about the difference (forward+backward of each call).
    """
    step = report.get("train_step_hg5s", {})
    cases = {(r["batch"], r["channels"], r["size"], r["kernel"], r["dtype"]): r for r in report["cases"]}
    share = {}
    for dtype, precision in (("fp32", "fp32"), ("bf16", "bf16_autocast")):
        rows = [cases.get((b, c, h, k, dtype)) for (b, c, h, _), k in step.get("op_calls", [])]
        if not rows or None in rows:
            continue
        op = {name: sum(r["ms"][name]["forward_backward"] for r in rows) for name in ("triton", "grouped")}
        measured = {m: step["ms"].get(m, {}).get(precision) for m in ("triton", "grouped")}
        share[precision] = {
            "op_ms_per_step": op,
            "expected_saving_ms": op["grouped"] - op["triton"],
            "measured_saving_ms": (measured["grouped"] - measured["triton"]) if None not in measured.values() else None,
        }
    return share
