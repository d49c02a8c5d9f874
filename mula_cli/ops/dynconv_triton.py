"""Triton kernels for the per-sample depthwise convolution and its two gradients.

Three passes, two kernels:

* ``_rows_conv_kernel`` computes ``out[y, x] = sum_ij w[i, j] * src[y + i - p, x + j - p]`` (zero
  padding). It is the forward pass, and with the taps rotated (``FLIP``) the input gradient, which is
  the correlation of the output gradient with the rotated kernel.
* ``_weight_grad_kernel`` computes ``gw[i, j] = sum_yx go[y, x] * x[y + i - p, x + j - p]`` for all
  ``h * h`` taps in one pass over the data and writes one partial sum per (sample, channel, tile, tap);
  ``torch.sum`` then adds the tiles in a fixed order: no atomics, so the result is deterministic.

Design. A program owns a band of ``BLOCK_H`` output rows of a tile of ``BLOCK_C`` channels x
``BLOCK_W`` columns of one sample, and streams the input rows of the band (plus the ``h - 1`` halo
rows, minus those outside the image) through registers in a loop. Each input row is read once per
column shift (``h`` loads per element, not ``h * h``; the shifted reads hit L1) and feeds the ``h``
output rows it touches, whose accumulators form a sliding window of ``h`` register tiles (the weight
gradient keeps a window of ``h`` output-gradient rows and ``h * h`` accumulators instead). The tap
loops are unrolled at compile time (``h`` is constexpr), so the window, the ``h * h`` per-sample
weights and the column masks stay in registers, and each multiply-add is one FFMA with fp32
accumulation (fp64 for fp64 inputs). The unshifted copy of each row is read ``PREFETCH`` rows ahead
into a register queue, which keeps DRAM reads in flight while the FMAs run. NCHW tiles put columns on
the lanes; channels_last tiles put 32 channels on the lanes and one column on each warp; both read
whole lines, one element per thread (see ``choose_config``).

What limits them (sm_90 machine code from Triton 3.6 and 3.9, compiled without a GPU): per output
element and pass there are ``h * h`` FMAs, ``h`` loads from L1 and one DRAM read and write. The NCHW
7x7 fp32 forward loop issues about 92 instructions per 49 FFMAs (the rest: loads, mask restores, zero
fills of masked loads, the window shift), so it reaches about half the FMA peak: 7x7 passes are bound
by instruction issue, close to the DRAM time on an H100 (49 FMAs per 8 bytes moved, 33 TFMA/s against
3 TB/s). The weight-gradient loop issues about 99 per 49 FFMAs, plus a reduction per tap and tile at
the end. 3x3 passes are bound by DRAM bytes. Registers (fp32 7x7, NCHW): about 80 for the forward and
89 for the weight gradient, no spills; they grow with ``h * h`` (about 175 for 11x11).

What the interpreter (``TRITON_INTERPRET=1``) cannot tell: it runs the same programs with NumPy on the
CPU, so it checks indexing, masks, the sliding window, the band seams and the arithmetic, but not
register counts or spills, the layouts the compiler picks, coalescing, occupancy, compile time or any
timing; it also accepts code the compiler rejects, so compile the kernels for a GPU target as well.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import wrap_triton

from mula_cli.ops._layout import in_layout, kernel_memory_format

# Decided when the kernels are decorated: Triton reads TRITON_INTERPRET at that moment too.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")

MAX_KERNEL_SIZE = 11
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass(frozen=True)
class TileConfig:
    """How one launch tiles the (rows, channels, columns) space of a sample."""

    block_h: int
    block_c: int
    block_w: int
    num_warps: int
    prefetch: int = 2


@triton.jit
def _tile_setup(pid, C, n_cblocks, n_bands, n_ctiles, CHANNELS_LAST: tl.constexpr,
                BLOCK_H: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_W: tl.constexpr):
    """Which sample, channels, columns and first row one program owns, as broadcastable tiles."""
    n_tiles = n_bands * n_ctiles
    tile = pid % n_tiles
    plane_block = pid // n_tiles
    b = (plane_block // n_cblocks).to(tl.int64)
    chan_ids = (plane_block % n_cblocks) * BLOCK_C + tl.arange(0, BLOCK_C)
    col_ids = (tile % n_ctiles) * BLOCK_W + tl.arange(0, BLOCK_W)
    y0 = (tile // n_ctiles) * BLOCK_H
    if CHANNELS_LAST:
        chans = chan_ids[None, :]
        cols = col_ids[:, None]
    else:
        chans = chan_ids[:, None]
        cols = col_ids[None, :]
    # The band's first row as a tile rather than a scalar: the interpreter turns a broadcast scalar
    # boolean into int32, which tl.load rejects as a mask. Compiled, the copies fold into one value.
    y0s = (chans + cols) * 0 + y0
    return tile, b, chan_ids, chans, cols, y0, y0s


@triton.jit
def _shifted_masks(cols, chan_ok, W, K: tl.constexpr):
    """Masks of the K column-shifted reads of a row: the same for every row."""
    oks = ()
    for j in tl.static_range(K):
        oks = oks + ((cols + (j - K // 2) >= 0) & (cols + (j - K // 2) < W) & chan_ok,)
    return oks


@triton.jit
def _load_row(row_ptrs, s_w, oks, centre, K: tl.constexpr, ACC: tl.constexpr):
    """The K column-shifted copies of one input row; the unshifted one was prefetched (``centre``).

    The shift is added to the pointers last, so that for NCHW (unit column stride) it becomes an
    immediate offset of the load instead of a 64-bit address computation per load.
    """
    xs = ()
    for j in tl.static_range(K):
        if j == K // 2:
            xs = xs + (centre,)
        else:
            xs = xs + (tl.load(row_ptrs + (j - K // 2) * s_w, mask=oks[j], other=0.0).to(ACC),)
    return xs


@triton.jit
def _rows_conv_kernel(
    src_ptr, w_ptr, dst_ptr,
    C, H, W,
    s_b, s_c, s_h, s_w,
    d_b, d_c, d_h, d_w,
    n_cblocks, n_bands, n_ctiles,
    K: tl.constexpr, FLIP: tl.constexpr, CHANNELS_LAST: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_W: tl.constexpr, PREFETCH: tl.constexpr,
    FP64: tl.constexpr,
):
    ACC: tl.constexpr = tl.float64 if FP64 else tl.float32  # fp32 accumulation for every narrower dtype
    P: tl.constexpr = K // 2
    _tile, b, chan_ids, chans, cols, y0, y0s = _tile_setup(
        tl.program_id(0), C, n_cblocks, n_bands, n_ctiles, CHANNELS_LAST, BLOCK_H, BLOCK_C, BLOCK_W)
    zero = tl.zeros_like(y0s).to(ACC)
    chan_ok = chans < C
    col_ok = chan_ok & (cols < W)

    # Per-sample weights, in registers for the whole band (rotated for the input gradient). Loaded
    # per channel and then broadcast, so that a thread keeps one copy for all its columns.
    w_base = w_ptr + (b * C + chan_ids) * (K * K)
    ws = ()
    for tap in tl.static_range(K * K):
        w = tl.load(w_base + ((K * K - 1 - tap) if FLIP else tap), mask=chan_ids < C, other=0.0).to(ACC)
        ws = ws + ((w[None, :] if CHANNELS_LAST else w[:, None]),)

    src_base = src_ptr + b * s_b + chans * s_c
    centre_ptr = src_base + cols * s_w
    oks = _shifted_masks(cols, chan_ok, W, K)
    dst_base = dst_ptr + b * d_b + chans * d_c + cols * d_w

    # Input row y0 - P + u for u in [u_lo, u_hi): the rows of the band's reach inside the image (rows
    # outside contribute zeros, so they are skipped). Their unshifted copies are read PREFETCH rows
    # ahead into a register queue, which keeps DRAM reads in flight while the FMAs run.
    u_lo = tl.maximum(P - y0, 0)
    u_hi = tl.minimum(BLOCK_H + K - 1, H - y0 + P)
    queue = ()
    for d in tl.static_range(PREFETCH):
        r_ahead = tl.minimum(y0 - P + u_lo + d, H - 1)
        queue = queue + (tl.load(centre_ptr + r_ahead * s_h, mask=col_ok, other=0.0).to(ACC),)

    # win[m] accumulates output row y0 + u - (K - 1) + m, which input row u meets through tap row
    # K - 1 - m. After each row win[0] is complete and the window shifts. Slots of rows outside the
    # band are computed too (no branches) but never stored.
    win = (zero,) * K
    for u in range(u_lo, u_hi):
        r = y0 - P + u
        centre = queue[0]
        r_ahead = tl.minimum(r + PREFETCH, H - 1)
        queue = queue[1:] + (tl.load(centre_ptr + r_ahead * s_h, mask=col_ok, other=0.0).to(ACC),)
        xs = _load_row(centre_ptr + r * s_h, s_w, oks, centre, K, ACC)
        new_win = ()
        for m in tl.static_range(K):
            acc = win[m]
            for j in tl.static_range(K):
                acc = tl.fma(ws[(K - 1 - m) * K + j], xs[j], acc)
            new_win = new_win + (acc,)
        ys = y0s + (u - (K - 1))
        y_ok = col_ok & (ys >= y0s) & (ys < y0s + BLOCK_H) & (ys < H)
        tl.store(dst_base + (y0 + u - (K - 1)) * d_h, new_win[0].to(dst_ptr.dtype.element_ty), mask=y_ok)
        win = new_win[1:] + (zero,)

    # Rows whose last input rows lie below the image are complete now: store them.
    for m in tl.static_range(K - 1):
        ys = y0s + (u_hi - (K - 1) + m)
        y_ok = col_ok & (ys >= y0s) & (ys < y0s + BLOCK_H) & (ys < H)
        tl.store(dst_base + (y0 + u_hi - (K - 1) + m) * d_h, win[m].to(dst_ptr.dtype.element_ty), mask=y_ok)


@triton.jit
def _weight_grad_kernel(
    go_ptr, x_ptr, part_ptr,
    C, H, W,
    g_b, g_c, g_h, g_w,
    s_b, s_c, s_h, s_w,
    n_cblocks, n_bands, n_ctiles,
    K: tl.constexpr, CHANNELS_LAST: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_W: tl.constexpr, PREFETCH: tl.constexpr,
    FP64: tl.constexpr,
):
    ACC: tl.constexpr = tl.float64 if FP64 else tl.float32  # fp32 accumulation for every narrower dtype
    P: tl.constexpr = K // 2
    tile, b, chan_ids, chans, cols, y0, y0s = _tile_setup(
        tl.program_id(0), C, n_cblocks, n_bands, n_ctiles, CHANNELS_LAST, BLOCK_H, BLOCK_C, BLOCK_W)
    zero = tl.zeros_like(y0s).to(ACC)
    chan_ok = chans < C
    col_ok = chan_ok & (cols < W)

    x_base = x_ptr + b * s_b + chans * s_c
    centre_ptr = x_base + cols * s_w
    oks = _shifted_masks(cols, chan_ok, W, K)
    go_ptrs = go_ptr + b * g_b + chans * g_c + cols * g_w

    u_lo = tl.maximum(P - y0, 0)
    u_hi = tl.minimum(BLOCK_H + K - 1, H - y0 + P)
    queue = ()
    for d in tl.static_range(PREFETCH):
        r_ahead = tl.minimum(y0 - P + u_lo + d, H - 1)
        queue = queue + (tl.load(centre_ptr + r_ahead * s_h, mask=col_ok, other=0.0).to(ACC),)
    # gwin[m] holds output-gradient row y0 + u - (K - 1) + m (zero outside the band and the image):
    # the first K meet input row y0 - P + u through tap row K - 1 - m, the last PREFETCH are read ahead.
    gwin = ()
    for m in tl.static_range(K + PREFETCH):
        ys = y0s + (u_lo - (K - 1) + m)
        g_ok = col_ok & (ys >= y0s) & (ys < y0s + BLOCK_H) & (ys < H)
        gwin = gwin + (tl.load(go_ptrs + (y0 + u_lo - (K - 1) + m) * g_h, mask=g_ok, other=0.0).to(ACC),)

    # accs[i * K + j] sums go(y, x) * x(y + i - P, x + j - P) over the tile: one register tile per tap.
    accs = (zero,) * (K * K)
    for u in range(u_lo, u_hi):
        r = y0 - P + u
        centre = queue[0]
        r_ahead = tl.minimum(r + PREFETCH, H - 1)
        queue = queue[1:] + (tl.load(centre_ptr + r_ahead * s_h, mask=col_ok, other=0.0).to(ACC),)
        xs = _load_row(centre_ptr + r * s_h, s_w, oks, centre, K, ACC)
        new_accs = ()
        for i in tl.static_range(K):
            for j in tl.static_range(K):
                new_accs = new_accs + (tl.fma(gwin[K - 1 - i], xs[j], accs[i * K + j]),)
        accs = new_accs
        ys = y0s + (u + PREFETCH + 1)
        g_ok = col_ok & (ys < y0s + BLOCK_H) & (ys < H)
        gwin = gwin[1:] + (tl.load(go_ptrs + (y0 + u + PREFETCH + 1) * g_h, mask=g_ok, other=0.0).to(ACC),)

    # One partial sum per (sample, channel, tile, tap); the tiles are summed afterwards in fixed order.
    part_base = part_ptr + ((b * C + chan_ids) * (n_bands * n_ctiles) + tile) * (K * K)
    for tap in tl.static_range(K * K):
        tl.store(part_base + tap, tl.sum(accs[tap], axis=0 if CHANNELS_LAST else 1), mask=chan_ids < C)


def can_run(t: Tensor) -> bool:
    """Whether the kernels can run on this tensor's device (CUDA, or the CPU under the interpreter)."""
    return t.is_cuda or (INTERPRET and t.device.type == "cpu")


def unsupported_reason(x: Tensor, kernel_size: int, *others: Tensor) -> str | None:
    """Why the kernels cannot take ``x`` (with ``others`` alongside it), or None when they can."""
    if not can_run(x):
        return f"tensors are on {x.device.type}; the kernels need CUDA (or TRITON_INTERPRET=1 on the CPU)"
    if x.dtype not in SUPPORTED_DTYPES:
        return f"dtype {x.dtype} is not one of float16, bfloat16, float32, float64"
    for t in others:
        if t.dtype != x.dtype or t.device != x.device:
            return f"tensors differ in dtype or device ({x.dtype} on {x.device}, {t.dtype} on {t.device})"
    if kernel_size % 2 == 0 or not 1 <= kernel_size <= MAX_KERNEL_SIZE:
        return f"kernel size {kernel_size} is not odd and at most {MAX_KERNEL_SIZE}"
    if x.dim() == 4 and x.shape[1] * x.shape[2] * x.shape[3] >= 2**31:
        return "a sample has 2**31 elements or more; the kernels index within a sample in 32 bits"
    return None


def _pow2_at_most(n: int, cap: int) -> int:
    return min(triton.next_power_of_2(max(n, 1)), cap)


@functools.lru_cache(maxsize=256)
def choose_config(shape: tuple[int, int, int, int], kernel_size: int, channels_last: bool) -> TileConfig:
    """The tiling for a (B, C, H, W) problem (cached: a model asks for the same few shapes every step).

    One element per thread: a thread keeps the h * h weights of its channel in registers whatever
    its element count, yet two columns per thread compiled to as many instructions per FMA as one and
    twice the registers (the weight gradient's h * h accumulators: 167 against 89 for 7x7 fp32), so
    one buys occupancy at no cost. NCHW tiles put up to 64 columns of one plane on the lanes of one or
    two warps; channels_last tiles put 32 channels on the lanes and one column on each of 4 warps.
    Bands of up to 32 rows (16 for 3x3) keep enough programs in flight; the h - 1 halo rows a band
    re-reads come from L2.
    """
    _, c, h, w = shape
    block_h = min(h, 32 if kernel_size >= 5 else 16)
    prefetch = 2 if kernel_size >= 5 else 3
    if channels_last:
        # A known unit channel stride would make the compiler give a thread several (vectorised)
        # channels, each with its own h * h weights, if the tile had more elements than threads.
        block_c = _pow2_at_most(c, 32)
        block_w = _pow2_at_most(w, 4)
    else:
        block_w = _pow2_at_most(w, 64)
        block_c = _pow2_at_most(c, max(1, 32 // block_w))
    num_warps = max(1, block_c * block_w // 32)
    return TileConfig(block_h, block_c, block_w, num_warps, prefetch)


def _grid(shape: tuple[int, ...], cfg: TileConfig) -> tuple[int, int, int, int]:
    b, c, h, w = shape
    n_cblocks = triton.cdiv(c, cfg.block_c)
    n_bands = triton.cdiv(h, cfg.block_h)
    n_ctiles = triton.cdiv(w, cfg.block_w)
    return b * n_cblocks * n_bands * n_ctiles, n_cblocks, n_bands, n_ctiles


@contextlib.contextmanager
def _on_device_of(t: Tensor) -> Iterator[None]:
    """Launch on ``t``'s GPU and its current stream: Triton launches on the *current* device, which is
    not the tensor's for a model on ``cuda:1`` in a process that never called ``set_device``. (Traced
    by torch.compile, the launch is Inductor's, which guards it itself; tracing fake CUDA tensors on a
    machine without CUDA needs no guard.)"""
    if t.is_cuda and torch.cuda.is_available():
        with torch.cuda.device(t.device):
            yield
    else:
        yield


def _shape(t: Tensor) -> tuple[int, int, int, int]:
    return tuple(int(d) for d in t.shape)  # type: ignore[return-value]


def _rows_conv(src: Tensor, weight: Tensor, flip: bool, config: TileConfig | None) -> Tensor:
    fmt = kernel_memory_format(src)
    src = in_layout(src, fmt)
    weight = weight.contiguous()
    out = torch.empty_like(src, memory_format=fmt)
    if out.numel() == 0:
        return out
    k = weight.shape[-1]
    cl = fmt == torch.channels_last
    cfg = config or choose_config(_shape(src), k, cl)
    n_programs, n_cblocks, n_bands, n_ctiles = _grid(_shape(src), cfg)
    # wrap_triton: under torch.compile the launch becomes part of the graph (no Python per call)
    with _on_device_of(src):
        wrap_triton(_rows_conv_kernel)[(n_programs,)](
            src, weight, out,
            src.shape[1], src.shape[2], src.shape[3],
            *src.stride(), *out.stride(),
            n_cblocks, n_bands, n_ctiles,
            K=k, FLIP=flip, CHANNELS_LAST=cl,
            BLOCK_H=cfg.block_h, BLOCK_C=cfg.block_c, BLOCK_W=cfg.block_w, PREFETCH=cfg.prefetch,
            FP64=src.dtype == torch.float64,
            num_warps=cfg.num_warps,
        )
    return out


def forward(x: Tensor, weight: Tensor, config: TileConfig | None = None) -> Tensor:
    """``out[b, c] = x[b, c] (*) weight[b, c]``, 'same' padding, in the layout of ``x``."""
    return _rows_conv(x, weight, flip=False, config=config)


def input_grad(grad_out: Tensor, weight: Tensor, config: TileConfig | None = None) -> Tensor:
    """Gradient with respect to x: the output gradient correlated with the rotated kernels."""
    return _rows_conv(grad_out, weight, flip=True, config=config)


def weight_grad(grad_out: Tensor, x: Tensor, kernel_size: int, config: TileConfig | None = None) -> Tensor:
    """Gradient with respect to the per-sample kernels, (B, C, h, h) in the dtype of ``x``."""
    fmt = kernel_memory_format(x)
    x = in_layout(x, fmt)
    grad_out = in_layout(grad_out, fmt)
    b, c, h, w = _shape(x)
    k = kernel_size
    if x.numel() == 0:
        return torch.zeros(b, c, k, k, dtype=x.dtype, device=x.device)
    cl = fmt == torch.channels_last
    cfg = config or choose_config(_shape(x), k, cl)
    n_programs, n_cblocks, n_bands, n_ctiles = _grid(_shape(x), cfg)
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    partials = torch.empty(b, c, n_bands * n_ctiles, k * k, dtype=acc_dtype, device=x.device)
    with _on_device_of(x):
        wrap_triton(_weight_grad_kernel)[(n_programs,)](
            grad_out, x, partials,
            c, h, w,
            *grad_out.stride(), *x.stride(),
            n_cblocks, n_bands, n_ctiles,
            K=k, CHANNELS_LAST=cl,
            BLOCK_H=cfg.block_h, BLOCK_C=cfg.block_c, BLOCK_W=cfg.block_w, PREFETCH=cfg.prefetch,
            FP64=x.dtype == torch.float64,
            num_warps=cfg.num_warps,
        )
    return partials.sum(dim=2).to(x.dtype).reshape(b, c, k, k)
