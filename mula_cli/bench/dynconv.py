"""Benchmark of the per-sample depthwise convolution against the card's floors (``mula benchmark dynconv``,
``benchmarks/dynconv_cuda.py``).

Times forward, backward and forward+backward of the Triton operator (NCHW and channels_last inputs)
and of the grouped convolution (NCHW, the fallback, and channels_last folded, cuDNN's best case) with
``triton.testing.do_bench`` (CUDA events, the L2 cache flushed before every repeat, median), and the
key case's forward+backward also replayed as a CUDA graph (``do_bench_cudagraph``: no host overhead).
Each case is set against its floor: max(bytes that must move / measured copy bandwidth, FMAs /
measured fp32 FMA rate). The Triton columns fail, rather than quietly time the grouped fallback,
when the kernels cannot take a case. The end-to-end training step of the full ``hg-5s`` model with
each implementation is in :mod:`mula_cli.bench.dynconv_step`, which this module uses (never the reverse).
"""

from __future__ import annotations

import json
import platform
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from mula_cli.utils.errors import MulaError

PASSES = ("forward", "backward", "forward_backward")
IMPLEMENTATIONS = ("triton", "triton_cl", "grouped", "grouped_cl")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
KEY_CASE = (16, 256, 64, 7)  # batch, channels, size, kernel: the Hourglass model's adaptation
DEVICE = "cuda"  # every tensor of the benchmark lives here


@dataclass(frozen=True)
class Case:
    batch: int
    channels: int
    size: int
    kernel: int
    dtype: str

    @property
    def elements(self) -> int:
        return self.batch * self.channels * self.size * self.size

    def bytes_moved(self) -> dict[str, int]:
        """Bytes each pass must read and write at least once (the weights and their gradient too)."""
        item = DTYPES[self.dtype].itemsize
        maps, kernels = self.elements * item, self.batch * self.channels * self.kernel**2 * item
        return {
            "forward": 2 * maps + kernels,
            "backward": 3 * maps + 2 * kernels,
            "forward_backward": 5 * maps + 3 * kernels,
        }

    def fmas(self) -> dict[str, int]:
        per_map = self.elements * self.kernel**2
        return {"forward": per_map, "backward": 2 * per_map, "forward_backward": 3 * per_map}


def grid(quick: bool) -> list[Case]:
    if quick:
        return [Case(16, 256, 64, k, d) for k in (3, 7) for d in DTYPES]
    return [
        Case(b, c, s, k, d)
        for b in (8, 16, 32)
        for c in (256, 512)
        for s in (32, 64)
        for k in (3, 7)
        for d in DTYPES
    ]


@dataclass(frozen=True)
class Timer:
    """Median milliseconds of a CUDA region: ``triton.testing.do_bench`` (L2 flushed before each repeat)."""

    warmup_ms: int = 25
    rep_ms: int = 100

    def median_ms(self, fn: Callable[[], object]) -> float:
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=self.warmup_ms, rep=self.rep_ms, return_mode="median"))

    def graph_ms(self, fn: Callable[[], object]) -> float:
        """Median of ``fn`` captured in a CUDA graph and replayed: the GPU time without launch overhead."""
        from triton.testing import do_bench_cudagraph

        return float(do_bench_cudagraph(fn, rep=self.rep_ms // 4, return_mode="median"))


def require_triton(x: torch.Tensor, weight: torch.Tensor) -> None:
    """MulaError unless the Triton kernels take these tensors: a Triton column must never time the fallback."""
    from mula_cli.ops import dynconv_op

    reason = dynconv_op.triton_unsupported_reason(x, weight.shape[-1], weight)
    if reason is not None:
        raise MulaError(f"the benchmark's Triton columns cannot run: {reason}")


def copy_bandwidth(timer: Timer) -> float:
    """Device-to-device copy bandwidth in bytes/s, counting bytes read plus bytes written."""
    src = torch.rand(1 << 28, device=DEVICE)  # 1 GiB
    dst = torch.empty_like(src)
    seconds = timer.median_ms(lambda: dst.copy_(src)) / 1e3
    return 2 * src.numel() * src.element_size() / seconds


def _passes(fn: Callable, x: torch.Tensor, weight: torch.Tensor, grad: torch.Tensor) -> dict[str, Callable]:
    x = x.detach().requires_grad_()
    weight = weight.detach().requires_grad_()
    out = fn(x, weight)
    return {
        "forward": lambda: fn(x, weight),
        "backward": lambda: torch.autograd.grad(out, (x, weight), grad, retain_graph=True),
        "forward_backward": lambda: torch.autograd.grad(fn(x, weight), (x, weight), grad),
    }


def _implementations(case: Case) -> dict[str, dict[str, Callable]]:
    from mula_cli.ops import dynconv_op
    from mula_cli.ops.dynconv import dynamic_depthwise_conv2d_grouped

    dtype, k = DTYPES[case.dtype], case.kernel
    b, c, s = case.batch, case.channels, case.size
    x = torch.randn(b, c, s, s, device=DEVICE, dtype=dtype)
    weight = torch.randn(b, c, k, k, device=DEVICE, dtype=dtype) / k
    grad = torch.randn_like(x)
    cl = torch.channels_last
    require_triton(x, weight)
    require_triton(x.contiguous(memory_format=cl), weight)

    def folded(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(1, b * c, s, s).contiguous(memory_format=cl)

    def grouped_cl(xf: torch.Tensor, wf: torch.Tensor) -> torch.Tensor:
        return F.conv2d(xf, wf, padding=k // 2, groups=b * c)

    return {
        "triton": _passes(dynconv_op.dynconv_forward, x, weight, grad),
        "triton_cl": _passes(
            dynconv_op.dynconv_forward,
            x.contiguous(memory_format=cl),
            weight,
            grad.contiguous(memory_format=cl),
        ),
        "grouped": _passes(dynamic_depthwise_conv2d_grouped, x, weight, grad),
        "grouped_cl": _passes(grouped_cl, folded(x), weight.reshape(b * c, 1, k, k), folded(grad)),
    }


def _max_rel_err(case: Case) -> float:
    """Forward and both gradients of the Triton operator against the grouped convolution, in fp64."""
    from mula_cli.ops import dynconv_op
    from mula_cli.ops.dynconv import dynamic_depthwise_conv2d_grouped

    dtype, k = DTYPES[case.dtype], case.kernel
    x = torch.randn(2, case.channels, case.size, case.size, device=DEVICE, dtype=dtype, requires_grad=True)
    weight = torch.randn(2, case.channels, k, k, device=DEVICE, dtype=dtype, requires_grad=True)
    require_triton(x, weight)
    grad = torch.randn_like(x)
    out = dynconv_op.dynconv_forward(x, weight)
    got = (out, *torch.autograd.grad(out, (x, weight), grad))
    xd, wd = x.detach().double().requires_grad_(), weight.detach().double().requires_grad_()
    ref_out = dynamic_depthwise_conv2d_grouped(xd, wd)
    want = (ref_out, *torch.autograd.grad(ref_out, (xd, wd), grad.double()))
    return max(((g.double() - w).norm() / w.norm()).item() for g, w in zip(got, want))


def measure_case(case: Case, timer: Timer, bandwidth: float, fma_rate: float) -> dict:
    implementations = _implementations(case)
    ms = {name: {p: timer.median_ms(fn) for p, fn in passes.items()} for name, passes in implementations.items()}
    graph_ms = None
    if (case.batch, case.channels, case.size, case.kernel) == KEY_CASE:  # host overhead: eager vs replayed
        try:
            graph_ms = {name: timer.graph_ms(implementations[name]["forward_backward"]) for name in ("triton", "grouped")}
        except Exception as exc:  # noqa: BLE001 - a capture that fails is a finding, not the end of the benchmark
            graph_ms = {"error": " ".join(f"{type(exc).__name__}: {exc}".split())[:300]}
    floor_ms = {p: 1e3 * max(case.bytes_moved()[p] / bandwidth, case.fmas()[p] / fma_rate) for p in PASSES}
    torch.cuda.empty_cache()
    return {
        **asdict(case),
        "bytes": case.bytes_moved(),
        "fmas": case.fmas(),
        "floor_ms": floor_ms,
        "ms": ms,
        "speedup_vs_grouped": {p: ms["grouped"][p] / ms["triton"][p] for p in PASSES},
        "speedup_vs_best_grouped": {
            p: min(ms["grouped"][p], ms["grouped_cl"][p]) / ms["triton"][p] for p in PASSES
        },
        "triton_x_floor": {p: ms["triton"][p] / floor_ms[p] for p in PASSES},
        "triton_cl_x_floor": {p: ms["triton_cl"][p] / floor_ms[p] for p in PASSES},
        "max_rel_err": _max_rel_err(case),
        "forward_backward_cuda_graph_ms": graph_ms,
    }


def sweep_tiles(timer: Timer) -> list[dict]:
    """Forward and backward kernels of the key case under other tilings (for tuning the defaults)."""
    from mula_cli.ops import dynconv_triton as kernels

    b, c, s, k = KEY_CASE
    rows = []
    for dtype_name, dtype in DTYPES.items():
        x = torch.randn(b, c, s, s, device=DEVICE, dtype=dtype)
        weight = torch.randn(b, c, k, k, device=DEVICE, dtype=dtype)
        grad = torch.randn_like(x)
        default = kernels.choose_config((b, c, s, s), k, channels_last=False)
        # (rows per band, prefetch, warps): the default, taller and shorter bands (halo rows against
        # programs in flight), prefetch depth, and two columns per thread (one warp for 64 columns).
        for block_h, prefetch, num_warps in (
            (32, 2, 2),
            (64, 2, 2),
            (16, 2, 2),
            (32, 1, 2),
            (32, 4, 2),
            (32, 2, 1),
        ):
            cfg = kernels.TileConfig(block_h, 1, default.block_w, num_warps, prefetch)
            rows.append(
                {
                    "dtype": dtype_name,
                    **asdict(cfg),
                    "default": cfg == default,
                    "forward_ms": timer.median_ms(lambda x=x, w=weight, cfg=cfg: kernels.forward(x, w, cfg)),
                    "input_grad_ms": timer.median_ms(
                        lambda g=grad, w=weight, cfg=cfg: kernels.input_grad(g, w, cfg)
                    ),
                    "weight_grad_ms": timer.median_ms(
                        lambda g=grad, x=x, cfg=cfg: kernels.weight_grad(g, x, k, cfg)
                    ),
                }
            )
    return rows


def kernel_resources() -> list[dict]:
    """Registers, spills and shared memory of every compiled kernel variant (the compiler's report)."""
    from mula_cli.ops import dynconv_triton as kernels

    report = []
    for fn in (kernels._rows_conv_kernel, kernels._weight_grad_kernel):
        for cache in getattr(fn, "device_caches", {}).values():
            for compiled in cache[0].values():
                constants = getattr(getattr(compiled, "src", None), "constants", {})
                named = {
                    fn.arg_names[key[0]]: str(value)
                    for key, value in constants.items()
                    if isinstance(key, tuple) and len(key) == 1 and fn.arg_names[key[0]].isupper()
                }
                report.append(
                    {
                        "kernel": fn.__name__,
                        **named,
                        "num_warps": compiled.metadata.num_warps,
                        "n_regs": getattr(compiled, "n_regs", None),
                        "n_spills": getattr(compiled, "n_spills", None),
                        "shared_bytes": compiled.metadata.shared,
                    }
                )
    return report


def targets(cases: list[dict]) -> dict:
    """The issue's targets read off the grid: the key case, and every case's Triton vs the fallback."""
    b, c, s, k = KEY_CASE
    key = {
        r["dtype"]: r for r in cases if (r["batch"], r["channels"], r["size"], r["kernel"]) == (b, c, s, k)
    }
    slower = [
        f"{r['batch']}x{r['channels']}x{r['size']}^2 h={r['kernel']} {r['dtype']} {p}"
        for r in cases
        for p in PASSES
        if r["speedup_vs_grouped"][p] < 1
    ]
    return {
        "key_case": f"B={b} C={c} {s}x{s} {k}x{k} forward+backward",
        "speedup_at_least_10x": {
            d: r["speedup_vs_grouped"]["forward_backward"] >= 10 for d, r in key.items()
        },
        "within_3x_of_floor": {d: r["triton_x_floor"]["forward_backward"] <= 3 for d, r in key.items()},
        "cases_slower_than_fallback": slower,
    }


def run(
    quick: bool = False,
    sweep: bool = True,
    train: bool = True,
    log: Callable[[str], None] = print,
    save: Callable[[dict], None] | None = None,
) -> dict:
    """The whole benchmark; returns the report (see the module docstring).

    ``save`` is handed the report so far after every case and part, so that a run cut short keeps
    what it measured.
    """
    save = save or (lambda report: None)
    if not torch.cuda.is_available():
        raise MulaError(
            "mula benchmark dynconv needs a CUDA GPU, and none is visible (torch.cuda.is_available() "
            "is False)"
        )
    import triton

    from mula_cli.bench.fma import measure_fma_rate

    props = torch.cuda.get_device_properties(0)
    timer = Timer(warmup_ms=10, rep_ms=40) if quick else Timer()
    bandwidth = copy_bandwidth(timer)
    fma_rate = measure_fma_rate()
    clock_khz = getattr(props, "clock_rate", None)
    log(f"{props.name}: copy {bandwidth / 1e9:.0f} GB/s, fp32 FMA {fma_rate / 1e12:.1f} T/s (measured)")
    report = {
        "device": {
            "name": props.name,
            "capability": f"{props.major}.{props.minor}",
            "sm_count": props.multi_processor_count,
            "l2_bytes": props.L2_cache_size,
            "torch": torch.__version__,
            "triton": triton.__version__,
            "cuda": torch.version.cuda,
            "python": platform.python_version(),
        },
        "ceilings": {
            "copy_bandwidth_bytes_per_s": bandwidth,
            "fma_per_s": fma_rate,
            "fma_rate_source": "measured",
            "fma_per_s_from_clock": (props.multi_processor_count * 128 * clock_khz * 1e3)
            if clock_khz
            else None,
        },
        "method": "triton.testing.do_bench (CUDA events, median of repeats, L2 flushed before each); the key "
        "case's forward+backward also as a replayed CUDA graph (do_bench_cudagraph); floor = max(bytes/copy bandwidth, "
        "FMAs/fp32 FMA rate) with bytes = every input read and output written once (forward+backward: "
        "x, y, dy, dx and the kernels), FMAs = B*C*H*W*h*h per pass (three passes); the kernels "
        "accumulate in fp32 for bf16 too, so the fp32 rate applies; grouped_cl = the folded (1, B*C, H, W) "
        "input already in channels_last, conversion not timed",
        "cases": [],
    }
    for case in grid(quick):
        row = measure_case(case, timer, bandwidth, fma_rate)
        report["cases"].append(row)
        both = "forward_backward"
        log(
            f"{case.batch:3d} {case.channels:4d} {case.size:3d}^2 h={case.kernel} {case.dtype}: fwd+bwd "
            f"triton {row['ms']['triton'][both]:.3f} ms, grouped {row['ms']['grouped'][both]:.3f} ms "
            f"({row['speedup_vs_grouped'][both]:.1f}x), {row['triton_x_floor'][both]:.2f}x floor"
        )
        save(report)
    report["targets"] = targets(report["cases"])
    report["kernels"] = kernel_resources()
    save(report)
    if sweep:
        report["tile_sweep"] = sweep_tiles(timer)
        save(report)
    if train:
        from mula_cli.bench import dynconv_step

        steps = 5 if quick else 10  # a step is ~0.2-0.3 s: 3 untimed, then about `steps` timed
        step_timer = Timer(warmup_ms=3 * 300, rep_ms=steps * 300)
        report["train_step_hg5s"] = dynconv_step.train_step(step_timer, DEVICE)
        report["op_share_of_step"] = dynconv_step.op_share(report)
        save(report)
    return report


def print_summary(report: dict) -> None:
    from rich.table import Table

    from mula_cli.utils.console import out

    table = Table(
        title=f"per-sample depthwise conv on {report['device']['name']}: forward+backward ms "
        f"(full numbers in the JSON)"
    )
    for column in ("case", *IMPLEMENTATIONS, "speed-up", "x floor", "fwd x floor"):
        table.add_column(column, justify="right")
    for r in report["cases"]:
        table.add_row(
            f"{r['batch']}x{r['channels']}x{r['size']}^2 h{r['kernel']} {r['dtype']}",
            *(f"{r['ms'][name]['forward_backward']:.3f}" for name in IMPLEMENTATIONS),
            f"{r['speedup_vs_grouped']['forward_backward']:.1f}",
            f"{r['triton_x_floor']['forward_backward']:.2f}",
            f"{r['triton_x_floor']['forward']:.2f}",
        )
    out.print(table, width=140)
    step = {k: v for k, v in report.get("train_step_hg5s", {}).items() if k != "op_calls"}
    summary = {"targets": report["targets"], "train_step_hg5s": step, "op_share": report.get("op_share_of_step")}
    out.print(json.dumps(summary, indent=1))


def card_name(report: dict) -> str:
    """The card's name as a file-name part: ``NVIDIA H200 (141 GB)`` -> ``nvidia_h200__141_gb``."""
    return "".join(ch if ch.isalnum() else "_" for ch in report["device"]["name"]).strip("_").lower()
