"""The per-sample depthwise convolution: dispatch, the custom operator and the Triton kernels.

Without a GPU the Triton kernels run under the interpreter (TRITON_INTERPRET=1) on CPU tensors. Triton
reads that variable when it is imported (its own library functions are decorated then), so it cannot be
switched on inside a running session: ``test_kernels_under_the_interpreter`` runs this file again in a
subprocess with the variable set, where the ``interpreted`` tests run. The ``cuda`` tests run the
compiled kernels on a GPU and are skipped elsewhere.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import subprocess
import sys
import types
import warnings

import pytest
import torch
import torch.nn.functional as F

from mula_cli.ops import dynamic_depthwise_conv2d, dynamic_depthwise_conv2d_grouped, dynconv, dynconv_op
from mula_cli.utils.errors import MulaError

HAS_TRITON = importlib.util.find_spec("triton") is not None
needs_triton = pytest.mark.skipif(
    not HAS_TRITON, reason="triton is not installed (pip install triton; Linux only)"
)
INTERPRETING = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")
interpreted_only = pytest.mark.skipif(
    not (HAS_TRITON and INTERPRETING),
    reason="runs in the TRITON_INTERPRET=1 subprocess of test_kernels_under_the_interpreter",
)
needs_cuda = pytest.mark.skipif(
    not (HAS_TRITON and torch.cuda.is_available()), reason="needs a CUDA GPU and triton"
)

# Relative error bounds against the fp64 reference: fp32 accumulation everywhere, so the inputs'
# rounding dominates for the 16-bit types (fp16 has 3 more mantissa bits than bf16).
TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-12, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def _use_mode(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    """Set MULA_DYNCONV and have the dispatch read it again (it reads it once)."""
    monkeypatch.setenv("MULA_DYNCONV", mode)
    dynconv.set_dispatch_mode()


def _loop_reference(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Each sample through its own F.conv2d: the plainest statement of the operation."""
    k = weight.shape[-1]
    return torch.stack(
        [
            F.conv2d(x[b : b + 1], weight[b][:, None], padding=k // 2, groups=x.shape[1])[0]
            for b in range(x.shape[0])
        ]
    )


def _references(x: torch.Tensor, weight: torch.Tensor, grad: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
    """(out, grad x, grad weight) in fp64 from the grouped convolution and from the per-sample loop."""
    results = []
    for fn in (dynamic_depthwise_conv2d_grouped, _loop_reference):
        xr = x.detach().double().requires_grad_()
        wr = weight.detach().double().requires_grad_()
        out = fn(xr, wr)
        out.backward(grad.double())
        results.append((out.detach(), xr.grad, wr.grad))
    return results


def _rel_err(value: torch.Tensor, ref: torch.Tensor) -> float:
    return ((value.double() - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def _check_against_references(x, weight, grad, out, grad_x, grad_w) -> None:
    for ref in _references(x, weight, grad):
        for value, expected in zip((out, grad_x, grad_w), ref):
            assert torch.isfinite(value).all()
            assert _rel_err(value, expected) < TOLERANCE[x.dtype]


@pytest.fixture
def interpreted() -> object:
    """The kernel module, its kernels interpreted on CPU tensors (only in the TRITON_INTERPRET=1 run)."""
    return importlib.import_module("mula_cli.ops.dynconv_triton")


def _inputs(shape, kernel_size, dtype, channels_last=False, device="cpu", seed=0):
    gen = torch.Generator().manual_seed(seed)
    b, c = shape[:2]
    x = torch.randn(shape, generator=gen).to(device=device, dtype=dtype)
    weight = torch.randn(b, c, kernel_size, kernel_size, generator=gen).to(device=device, dtype=dtype)
    grad = torch.randn(shape, generator=gen).to(device=device, dtype=dtype)
    if channels_last:
        x, grad = (
            x.contiguous(memory_format=torch.channels_last),
            grad.contiguous(memory_format=torch.channels_last),
        )
    return x, weight, grad


# ---------------------------------------------------------------- dispatch (no triton needed)


def test_invalid_mode_names_the_variable_and_the_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    _use_mode(monkeypatch, "fastest")
    x, weight, _ = _inputs((1, 2, 5, 5), 3, torch.float32)
    with pytest.raises(MulaError, match=r"MULA_DYNCONV='fastest'.*auto, triton, grouped"):
        dynamic_depthwise_conv2d(x, weight)


@pytest.mark.parametrize("mode", ["", "auto", "grouped", "GROUPED"])
def test_cpu_tensors_take_the_grouped_convolution(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    _use_mode(monkeypatch, mode)
    monkeypatch.setattr(dynconv_op, "dynconv_forward", _fail_if_called)
    x, weight, _ = _inputs((2, 3, 6, 7), 3, torch.float32)
    assert torch.equal(dynamic_depthwise_conv2d(x, weight), dynamic_depthwise_conv2d_grouped(x, weight))


def _fail_if_called(*args):
    raise AssertionError("the custom operator was called")


def test_forced_triton_without_a_device_for_it_is_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    if HAS_TRITON and importlib.import_module("mula_cli.ops.dynconv_triton").INTERPRET:
        pytest.skip("TRITON_INTERPRET=1 is set for the whole run: the kernels can run on the CPU")
    _use_mode(monkeypatch, "triton")
    x, weight, _ = _inputs((1, 2, 5, 5), 3, torch.float32)
    with pytest.raises(MulaError, match="MULA_DYNCONV=triton"):
        dynamic_depthwise_conv2d(x, weight)


def test_scripting_and_tracing_never_reach_the_operator(monkeypatch: pytest.MonkeyPatch) -> None:
    _use_mode(monkeypatch, "triton")
    monkeypatch.setattr(dynconv_op, "dynconv_forward", _fail_if_called)

    class Adapt(torch.nn.Module):
        def forward(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
            return dynamic_depthwise_conv2d(x, weight)

    x, weight, _ = _inputs((2, 3, 6, 7), 3, torch.float32)
    expected = dynamic_depthwise_conv2d_grouped(x, weight)
    torch.testing.assert_close(torch.jit.script(Adapt())(x, weight), expected)
    torch.testing.assert_close(torch.jit.trace(Adapt(), (x, weight), check_trace=False)(x, weight), expected)


def test_operator_without_triton_falls_back_to_the_grouped_convolution() -> None:
    x, weight, grad = _inputs((2, 3, 5, 6), 3, torch.float64)
    if dynconv_op.triton_unsupported_reason(x, 3, weight) is None:
        pytest.skip("the Triton kernels run on CPU tensors in this process")
    x.requires_grad_()
    weight.requires_grad_()
    out = dynconv_op.dynconv_forward(x, weight)
    gx, gw = torch.autograd.grad(out, (x, weight), grad)
    _check_against_references(x, weight, grad, out, gx, gw)


def test_the_mode_is_read_once(monkeypatch: pytest.MonkeyPatch) -> None:
    _use_mode(monkeypatch, "grouped")
    x, weight, _ = _inputs((1, 2, 5, 5), 3, torch.float32)
    monkeypatch.setenv("MULA_DYNCONV", "fastest")  # changed after it was read: not looked at again
    dynamic_depthwise_conv2d(x, weight)
    dynconv.set_dispatch_mode()  # read it again
    with pytest.raises(MulaError, match="fastest"):
        dynamic_depthwise_conv2d(x, weight)


def test_a_one_dimensional_input_gets_the_shape_message() -> None:
    with pytest.raises(ValueError, match=r"expected x \(B, C, H, W\)"):
        dynconv_op.dynconv_forward(torch.randn(5), torch.randn(1, 1, 3, 3))


class _InjectedKernels:
    """Stand-ins for the three Triton operators that count their calls; ``broken`` says how they fail.

    CPU tensors are sent down the Triton path, so ``MULA_DYNCONV=auto``'s check runs without a GPU.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch, broken: str | None = None) -> None:
        self.forward_calls = 0
        self.broken = broken
        self.batches: list[int] = []  # the batch size of every forward call
        monkeypatch.setattr(dynconv, "auto_takes", lambda x: True)
        monkeypatch.setattr(dynconv_op, "triton_unsupported_reason", lambda *args: None)
        scale = {part: 1.01 if broken == part else 1.0 for part in ("forward", "input", "weight")}

        def forward(x, weight):
            self.forward_calls += 1
            self.batches.append(x.shape[0])
            if self.broken == "compile":
                raise RuntimeError("CompilationError: at 12:8: unsupported tuple in loop")
            if self.broken == "oom":
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 512.00 MiB")
            if self.broken == "deterministic":
                raise RuntimeError("dynconv does not have a deterministic implementation, but you set "
                                   "'torch.use_deterministic_algorithms(True)'")
            return dynamic_depthwise_conv2d_grouped(x, weight) * scale["forward"]

        monkeypatch.setattr(dynconv_op, "dynconv_forward", forward)
        monkeypatch.setattr(dynconv_op, "dynconv_input_grad",
                            lambda g, w: dynamic_depthwise_conv2d_grouped(g, w.flip(-2, -1)) * scale["input"])
        monkeypatch.setattr(dynconv_op, "dynconv_weight_grad",
                            lambda g, x, k: dynconv_op._grouped_weight_grad(g, x, k) * scale["weight"])


def test_auto_checks_each_case_once_and_then_uses_a_good_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    kernels = _InjectedKernels(monkeypatch)
    x, weight, _ = _inputs((2, 3, 6, 7), 3, torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", dynconv.TritonFallbackWarning)  # a good kernel: no warning
        dynamic_depthwise_conv2d(x, weight)
        assert kernels.forward_calls == 2  # the check, then the call itself
        dynamic_depthwise_conv2d(x, weight)
        assert kernels.forward_calls == 3  # checked once
        dynamic_depthwise_conv2d(*_inputs((2, 3, 6, 7), 5, torch.float32)[:2])
        assert kernels.forward_calls == 5  # another kernel size is another case


@pytest.mark.parametrize("broken,cause", [("compile", "CompilationError: at 12:8"),
                                          ("forward", "its forward differs"),
                                          ("input", "its input gradient differs"),
                                          ("weight", "its weight gradient differs")])
def test_auto_falls_back_with_one_warning_when_the_kernels_fail(monkeypatch: pytest.MonkeyPatch, broken: str,
                                                                 cause: str) -> None:
    kernels = _InjectedKernels(monkeypatch, broken)
    x, weight, _ = _inputs((2, 3, 6, 7), 3, torch.float32)
    with pytest.warns(dynconv.TritonFallbackWarning, match=rf"3x3 contiguous torch.float32 on cpu \(\w+: {cause}"):
        out = dynamic_depthwise_conv2d(x, weight)
    assert torch.equal(out, dynamic_depthwise_conv2d_grouped(x, weight))
    calls = kernels.forward_calls
    with warnings.catch_warnings():
        warnings.simplefilter("error", dynconv.TritonFallbackWarning)  # one warning only
        assert torch.equal(dynamic_depthwise_conv2d(x, weight), dynamic_depthwise_conv2d_grouped(x, weight))
    assert kernels.forward_calls == calls  # the broken path is not tried again


@pytest.mark.parametrize("refusal,error", [("oom", torch.OutOfMemoryError), ("deterministic", RuntimeError)])
def test_auto_check_lets_refusals_through_and_decides_nothing(monkeypatch: pytest.MonkeyPatch, refusal: str,
                                                               error: type) -> None:
    """Out of memory, or deterministic mode refusing an operation, says nothing about the kernels: it is
    raised as it is, and the next call checks again instead of pinning the grouped convolution."""
    kernels = _InjectedKernels(monkeypatch, refusal)
    x, weight, _ = _inputs((2, 3, 6, 7), 3, torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", dynconv.TritonFallbackWarning)  # no fallback warning either
        with pytest.raises(error):
            dynamic_depthwise_conv2d(x, weight)
        assert dynconv._state.verdicts == {}
        kernels.broken = None  # memory freed, or the mode switched off
        dynamic_depthwise_conv2d(x, weight)
    assert dynconv._state.verdicts == {(3, "contiguous", torch.float32, x.device): None}


def test_auto_check_runs_on_two_samples_of_a_large_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    kernels = _InjectedKernels(monkeypatch)
    x, weight, _ = _inputs((6, 3, 6, 7), 3, torch.float32)
    dynamic_depthwise_conv2d(x, weight)
    assert kernels.batches == [2, 6]  # the check's fp64 copies stay small; then the call itself
    assert dynconv._state.verdicts == {(3, "contiguous", torch.float32, x.device): None}


def _auto_dispatch_runs(x: torch.Tensor, weight: torch.Tensor, grad: torch.Tensor, calls: list,
                        ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Two forward and backward passes under MULA_DYNCONV=auto after a first call that runs the check (which
    calls the operator itself): ``calls`` then counts the passes' own operator calls only."""
    dynamic_depthwise_conv2d(x.detach(), weight.detach())  # the check, then the call
    calls.clear()
    x, weight = x.detach().requires_grad_(), weight.detach().requires_grad_()
    return [torch.autograd.grad(dynamic_depthwise_conv2d(x, weight), (x, weight), grad) for _ in range(2)]


def test_auto_dispatch_counts_replayed_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA test below, on the CPU with stand-in kernels: the check's own operator call is not counted."""
    kernels = _InjectedKernels(monkeypatch)
    calls: list[int] = []
    real = dynconv_op.dynconv_forward
    monkeypatch.setattr(dynconv_op, "dynconv_forward", lambda *args: calls.append(1) or real(*args))
    runs = _auto_dispatch_runs(*_inputs((4, 8, 9, 9), 7, torch.float32), calls)
    assert len(calls) == 2 and kernels.forward_calls == 4  # 1 check + 1 call, then the two counted passes
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


def test_forced_triton_raises_the_kernels_own_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    _InjectedKernels(monkeypatch, "compile")
    _use_mode(monkeypatch, "triton")
    with pytest.raises(RuntimeError, match="CompilationError"):
        dynamic_depthwise_conv2d(*_inputs((2, 3, 6, 7), 3, torch.float32)[:2])


@needs_triton
def test_launches_switch_to_the_tensors_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from mula_cli.ops import dynconv_triton

    entered = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device", lambda device: entered.append(device) or contextlib.nullcontext())
    with dynconv_triton._on_device_of(types.SimpleNamespace(is_cuda=True, device=torch.device("cuda", 1))):
        pass
    with dynconv_triton._on_device_of(torch.zeros(1)):
        pass
    assert entered == [torch.device("cuda", 1)]


@needs_triton
def test_tile_choice_is_cached_and_large_samples_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from mula_cli.ops import dynconv_triton

    dynconv_triton.choose_config.cache_clear()
    first = dynconv_triton.choose_config((16, 256, 64, 64), 7, False)
    assert dynconv_triton.choose_config((16, 256, 64, 64), 7, False) is first
    assert dynconv_triton.choose_config.cache_info().hits == 1
    monkeypatch.setattr(dynconv_triton, "can_run", lambda t: True)  # as if on a GPU
    huge = torch.empty(1, 2**16, 2**8, 2**7, device="meta")  # 2**31 elements in one sample
    assert "32 bits" in dynconv_triton.unsupported_reason(huge, 3)
    assert dynconv_triton.unsupported_reason(huge[:, :-1], 3) is None


@needs_triton
def test_compiled_graphs_launch_the_kernels_themselves() -> None:
    """The operators are triton_ops: traced as torch.compile traces them, the graph holds the three
    kernel launches, not opaque calls back into Python (traced on fake CUDA tensors: no GPU needed)."""
    if INTERPRETING:
        pytest.skip("the interpreter's kernels cannot be traced: there the operators are opaque")
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch._subclasses.functional_tensor import dispatch_functionalize
    from torch.fx.experimental.proxy_tensor import make_fx

    with FakeTensorMode():  # shapes, strides, devices and dtypes only
        x = torch.empty_strided((2, 8, 16, 16), (2048, 1, 128, 8), device="cuda")  # channels_last
        weight = torch.empty(2, 8, 7, 7, device="cuda")

        def passes(x: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return (dynconv_op.dynconv_forward(x, weight), dynconv_op.dynconv_input_grad(x, weight),
                    dynconv_op.dynconv_weight_grad(x, x, 7))

        out, grad_x, grad_w = passes(x, weight)
        assert out.is_contiguous(memory_format=torch.channels_last) and grad_x.stride() == x.stride()
        assert grad_w.shape == (2, 8, 7, 7) and out.device.type == "cuda"
    graph = make_fx(dispatch_functionalize(passes), tracing_mode="fake")(x, weight)
    targets = [str(node.target) for node in graph.graph.nodes if node.op == "call_function"]
    assert sum("triton_kernel_wrapper_functional" in t for t in targets) == 3, targets
    assert not any(t.startswith("mula.") for t in targets), targets


# Every constexpr combination that changes the code (kernel size, layout, dtype, the flip of the input
# gradient), compiled by Triton for a Hopper GPU (sm_90) on this machine: no GPU is needed to compile.
HOPPER_CASES = [  # (kernel, kernel size, channels_last, dtype, flip)
    ("rows", 7, False, "fp32", False),
    ("rows", 7, True, "bf16", True),
    ("rows", 11, False, "fp16", True),
    ("rows", 3, True, "fp64", False),
    ("weight_grad", 7, False, "fp32", False),
    ("weight_grad", 7, True, "bf16", False),
    ("weight_grad", 11, True, "fp16", False),
    ("weight_grad", 1, False, "fp64", False),
]


@pytest.mark.slow
@needs_triton
@pytest.mark.parametrize("kernel,kernel_size,channels_last,dtype,flip", HOPPER_CASES)
def test_kernels_compile_for_hopper_without_a_gpu(kernel, kernel_size, channels_last, dtype, flip) -> None:
    if INTERPRETING:
        pytest.skip("under the interpreter Triton compiles nothing")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from mula_cli.ops import dynconv_triton

    fn = dynconv_triton._rows_conv_kernel if kernel == "rows" else dynconv_triton._weight_grad_kernel
    cfg = dynconv_triton.choose_config((16, 256, 64, 64), kernel_size, channels_last)
    constants = {"K": kernel_size, "FLIP": flip, "CHANNELS_LAST": channels_last, "BLOCK_H": cfg.block_h,
                 "BLOCK_C": cfg.block_c, "BLOCK_W": cfg.block_w, "PREFETCH": cfg.prefetch, "FP64": dtype == "fp64"}
    constants = {name: value for name, value in constants.items() if name in fn.arg_names}
    accumulator = "*fp64" if dtype == "fp64" else "*fp32"
    signature = {name: "constexpr" if name in constants else (accumulator if name == "part_ptr" else f"*{dtype}")
                 if name.endswith("_ptr") else "i32" for name in fn.arg_names}
    source = ASTSource(fn=fn, signature=signature,
                       constexprs={(fn.arg_names.index(name),): value for name, value in constants.items()})
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": cfg.num_warps})
    assert "cubin" in compiled.asm and compiled.metadata.num_warps == cfg.num_warps


# ---------------------------------------------------------------- Triton kernels, interpreted on the CPU


@pytest.mark.slow
@needs_triton
def test_kernels_under_the_interpreter() -> None:
    if INTERPRETING:
        pytest.skip("this is the interpreter run")
    env = {**os.environ, "TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k", "interpreted"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "skipped" not in run.stdout.splitlines()[-1], run.stdout[-2000:]


CASES = [  # (shape, kernel size, dtype, channels_last)
    ((2, 3, 5, 6), 1, torch.float32, False),
    ((2, 3, 7, 9), 3, torch.float32, False),
    ((1, 3, 6, 7), 5, torch.float32, True),
    ((1, 2, 9, 8), 7, torch.float32, False),
    ((1, 2, 5, 6), 11, torch.float32, False),  # kernel larger than the picture
    ((2, 2, 5, 7), 3, torch.bfloat16, False),
    ((1, 3, 5, 6), 5, torch.bfloat16, True),
    ((1, 2, 5, 7), 3, torch.float16, False),
]


@interpreted_only
@pytest.mark.parametrize("shape,kernel_size,dtype,channels_last", CASES)
def test_interpreted_kernels_match_the_references(
    interpreted, shape, kernel_size, dtype, channels_last
) -> None:
    x, weight, grad = _inputs(shape, kernel_size, dtype, channels_last)
    out = interpreted.forward(x, weight)
    grad_x = interpreted.input_grad(grad, weight)
    grad_w = interpreted.weight_grad(grad, x, kernel_size)
    assert out.dtype == grad_x.dtype == grad_w.dtype == dtype
    assert out.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    _check_against_references(x, weight, grad, out, grad_x, grad_w)


@interpreted_only
@pytest.mark.parametrize("channels_last", [False, True])
def test_interpreted_kernels_with_small_tiles(interpreted, channels_last: bool) -> None:
    # Several bands, column tiles and a partial channel block: the seams between programs.
    cfg = interpreted.TileConfig(block_h=2, block_c=2, block_w=4, num_warps=1, prefetch=1)
    x, weight, grad = _inputs((1, 3, 5, 6), 3, torch.float64, channels_last, seed=3)
    out = interpreted.forward(x, weight, cfg)
    grad_x = interpreted.input_grad(grad, weight, cfg)
    grad_w = interpreted.weight_grad(grad, x, 3, cfg)
    _check_against_references(x, weight, grad, out, grad_x, grad_w)


@interpreted_only
def test_interpreted_dispatch_honours_triton_and_autograd_matches(
    interpreted, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    real = dynconv_op.dynconv_forward
    monkeypatch.setattr(dynconv_op, "dynconv_forward", lambda *args: calls.append(1) or real(*args))
    _use_mode(monkeypatch, "triton")
    x, weight, grad = _inputs((2, 3, 6, 5), 3, torch.float32)
    x.requires_grad_()
    weight.requires_grad_()
    out = dynamic_depthwise_conv2d(x, weight)
    gx, gw = torch.autograd.grad(out, (x, weight), grad)
    assert calls == [1]
    _check_against_references(x, weight, grad, out, gx, gw)

    _use_mode(monkeypatch, "auto")  # auto keeps CPU tensors on the grouped convolution
    dynamic_depthwise_conv2d(x, weight)
    assert calls == [1]


@interpreted_only
def test_interpreted_gradcheck_fp64(interpreted) -> None:
    x, weight, _ = _inputs((1, 1, 4, 5), 3, torch.float64)
    x.requires_grad_()
    weight.requires_grad_()
    assert torch.autograd.gradcheck(dynconv_op.dynconv_forward, (x, weight), fast_mode=True)
    assert torch.autograd.gradgradcheck(dynconv_op.dynconv_forward, (x, weight), fast_mode=True)


@interpreted_only
def test_interpreted_opcheck(interpreted) -> None:
    x, weight, grad = _inputs((1, 2, 4, 3), 3, torch.float32)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    torch.library.opcheck(dynconv_op.dynconv_forward, (x_cl, weight))
    torch.library.opcheck(dynconv_op.dynconv_input_grad, (grad, weight))
    torch.library.opcheck(dynconv_op.dynconv_weight_grad, (grad, x, 3))


@interpreted_only
def test_interpreted_weight_grad_is_deterministic(interpreted) -> None:
    x, _, grad = _inputs((1, 2, 5, 6), 3, torch.float32)
    cfg = interpreted.TileConfig(block_h=2, block_c=2, block_w=8, num_warps=1)  # several partial sums
    first = interpreted.weight_grad(grad, x, 3, cfg)
    assert torch.equal(first, interpreted.weight_grad(grad, x, 3, cfg))


@interpreted_only
def test_interpreted_torch_compile_keeps_one_graph(interpreted, monkeypatch: pytest.MonkeyPatch) -> None:
    _use_mode(monkeypatch, "triton")
    x, weight, grad = _inputs((1, 2, 5, 6), 3, torch.float32)

    def step(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return dynamic_depthwise_conv2d(x.relu(), weight) * 2

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    x.requires_grad_()
    weight.requires_grad_()
    got = torch.autograd.grad(compiled(x, weight), (x, weight), grad)
    want = torch.autograd.grad(step(x, weight), (x, weight), grad)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


@interpreted_only
def test_interpreted_auto_checks_the_real_kernels_then_compiles_with_them(
    interpreted, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dynconv, "auto_takes", lambda x: True)  # CPU tensors take the (interpreted) kernels
    calls = []
    real = dynconv_op.dynconv_forward
    monkeypatch.setattr(dynconv_op, "dynconv_forward", lambda *args: calls.append(1) or real(*args))
    x, weight, grad = _inputs((1, 2, 5, 6), 3, torch.float32)

    def step(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return dynamic_depthwise_conv2d(x.relu(), weight) * 2

    with warnings.catch_warnings():
        warnings.simplefilter("error", dynconv.TritonFallbackWarning)  # the kernels pass the check: no fallback warning
        compiled = torch.compile(step, backend="aot_eager")  # the check is a graph break, once
        x.requires_grad_()
        weight.requires_grad_()
        got = torch.autograd.grad(compiled(x, weight), (x, weight), grad)
    assert len(calls) >= 2 and dynconv._state.verdicts == {(3, "contiguous", torch.float32, x.device): None}
    _use_mode(monkeypatch, "grouped")
    want = torch.autograd.grad(step(x, weight), (x, weight), grad)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


@interpreted_only
def test_interpreted_every_launch_is_guarded_by_the_tensors_device(interpreted, monkeypatch: pytest.MonkeyPatch) -> None:
    guarded = []
    real = interpreted._on_device_of

    @contextlib.contextmanager
    def recording(t):
        with real(t):
            guarded.append(t.device)
            yield

    monkeypatch.setattr(interpreted, "_on_device_of", recording)
    launches = []
    for kernel in (interpreted._rows_conv_kernel, interpreted._weight_grad_kernel):
        monkeypatch.setattr(kernel, "run", _counting(kernel.run, launches, guarded))
    x, weight, grad = _inputs((1, 2, 5, 6), 3, torch.float32)
    interpreted.forward(x, weight)
    interpreted.input_grad(grad, weight)
    interpreted.weight_grad(grad, x, 3)
    assert launches == [1, 2, 3]  # each launch ran inside its own guard


def _counting(run, launches: list, guarded: list):
    def counted(*args, **kwargs):
        launches.append(len(guarded))
        return run(*args, **kwargs)

    return counted


# ---------------------------------------------------------------- compiled kernels on a GPU


# Every kernel size in fp32 NCHW, the others where layouts and dtypes change the code; each case is
# three kernels compiled for two shapes, so the list stays short.
CUDA_CASES = (
    [(torch.float32, False, k) for k in (1, 3, 5, 7, 9, 11)]
    + [(torch.float32, True, k) for k in (3, 7, 11)]
    + [(torch.bfloat16, cl, k) for cl in (False, True) for k in (3, 7)]
    + [(torch.float16, False, 5), (torch.float16, True, 3)]
)


def _poison_cuda_allocator(nbytes: int) -> None:
    # A freed NaN block is what the next allocation of that size gets: unwritten outputs show as NaN.
    torch.full((nbytes // 4 + 1024,), float("nan"), device="cuda")


@needs_cuda
@pytest.mark.parametrize("dtype,channels_last,kernel_size", CUDA_CASES)
def test_cuda_kernels_match_the_references(dtype, channels_last: bool, kernel_size: int) -> None:
    from mula_cli.ops import dynconv_triton

    for shape in [(3, 37, 33, 65), (2, 5, 64, 64)]:  # partial tiles and bands; the model's aligned case
        x, weight, grad = _inputs(shape, kernel_size, dtype, channels_last, device="cuda")
        _poison_cuda_allocator(x.numel() * x.element_size())
        out = dynconv_triton.forward(x, weight)
        _poison_cuda_allocator(x.numel() * x.element_size())
        grad_x = dynconv_triton.input_grad(grad, weight)
        _poison_cuda_allocator(weight.numel() * 4 * 64)
        grad_w = dynconv_triton.weight_grad(grad, x, kernel_size)
        layout = torch.channels_last if channels_last else torch.contiguous_format
        assert out.is_contiguous(memory_format=layout) and grad_x.is_contiguous(memory_format=layout)
        _check_against_references(*(t.cpu() for t in (x, weight, grad, out, grad_x, grad_w)))


@needs_cuda
def test_cuda_auto_dispatch_uses_the_operator_and_is_deterministic(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = dynconv_op.dynconv_forward
    monkeypatch.setattr(dynconv_op, "dynconv_forward", lambda *args: calls.append(1) or real(*args))
    runs = _auto_dispatch_runs(*_inputs((4, 64, 64, 64), 7, torch.float32, device="cuda"), calls)
    assert len(calls) == 2  # replayed on the CPU by test_auto_dispatch_counts_replayed_on_the_cpu
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_torch_compile_and_graph_capture(monkeypatch: pytest.MonkeyPatch, dtype) -> None:
    _use_mode(monkeypatch, "triton")
    x, weight, grad = _inputs((2, 16, 32, 32), 7, dtype, device="cuda")
    x.requires_grad_()
    weight.requires_grad_()

    def step(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return dynamic_depthwise_conv2d(x.relu(), weight) * 2

    want = torch.autograd.grad(step(x, weight), (x, weight), grad)
    got = torch.autograd.grad(torch.compile(step, fullgraph=True)(x, weight), (x, weight), grad)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype])

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm up (compiles the kernels) outside the capture
        torch.autograd.grad(step(x, weight), (x, weight), grad)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = torch.autograd.grad(step(x, weight), (x, weight), grad)
    x.data.copy_(torch.randn_like(x))  # new inputs in the captured buffers
    graph.replay()
    torch.cuda.synchronize()
    fresh = torch.autograd.grad(step(x, weight), (x, weight), grad)
    for g, w in zip(captured, fresh):
        assert torch.equal(g, w)
