"""The prediction fast path: the same MuLA arranged for inference speed, with the same results.

:func:`fast_model` returns an inference-only copy of a model in which

- every BatchNorm that follows a convolution is folded into that convolution's weights and bias
  (the pre-activation BNs that follow a residual's input stay, as a scale and shift);
- tensors are channels_last, the layout oneDNN's CPU convolutions work in without reordering
  every activation (and the one cuDNN's tensor cores prefer);
- on the CPU, each convolution's weights are packed once into oneDNN's blocked layout and the
  ReLU or residual addition that follows it runs inside the convolution (the fused kernels
  ``torch.compile`` uses for frozen CPU models); elsewhere it is ``F.conv2d`` followed by in-place
  addition and ReLU;
- the per-sample depthwise convolution runs in its fastest form for the layout (see
  :mod:`mula_cli.ops.dynconv`);
- on the CPU a batch is split into shards that run at the same time in worker threads, each with
  its share of the cores (a picture and its mirror, the pose flip, take one core each on a
  two-core machine): single-threaded convolutions skip the per-layer OpenMP barriers that the
  small late-hourglass layers cannot amortise.

Results equal the model's up to float rounding (the folded weights round differently); the tests
compare labels and joints against the plain model for every preset. The converted modules keep
the call signatures of the blocks they replace, so :class:`~mula_cli.model.mula.MulaStage` and
:class:`~mula_cli.model.mula.MuLA` run unchanged on top of them.
"""

from __future__ import annotations

import copy
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from mula_cli.model.adaptation import AdaptiveResidual, StaticResidual
from mula_cli.model.blocks import ConvBnRelu, PlainBottleneck, PostActSkip, PostRes, PreActSkip, PreRes
from mula_cli.model.hourglass import Hourglass, HourglassStageEncoder, HourglassStem
from mula_cli.model.mula import ModelOutput, MuLA, NextStageMapping, model_output
from mula_cli.ops import dynamic_depthwise_conv2d
from mula_cli.utils.devices import autocast

_PACKED_SHAPES = 4  # input shapes a FusedConv keeps packed weights for (each a copy of the weights)


@lru_cache(maxsize=2)
def onednn_fusion_available(dtype: torch.dtype = torch.float32) -> bool:
    """Whether this PyTorch has oneDNN's fused convolution operators and they compute what F.conv2d does
    in ``dtype`` (float32, or bfloat16 where oneDNN supports it on this CPU).

    They are internal operators (the ones ``torch.compile`` emits for CPU convolutions), so they are
    checked once, numerically, before they are trusted.
    """
    if not torch.backends.mkldnn.is_available():
        return False
    ops = getattr(torch.ops, "mkldnn", None)
    if ops is None or not hasattr(ops, "_convolution_pointwise") or not hasattr(ops, "_reorder_convolution_weight"):
        return False
    if dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False
    try:
        generator = torch.Generator().manual_seed(0)
        conv = nn.Conv2d(8, 8, 3, padding=1).to(dtype)
        x = torch.randn(2, 8, 6, 6, generator=generator).to(dtype).contiguous(memory_format=torch.channels_last)
        residual = torch.randn(2, 8, 6, 6, generator=generator).to(dtype).contiguous(memory_format=torch.channels_last)
        tolerance = 1e-5 if dtype == torch.float32 else 5e-2
        with torch.no_grad():
            fused = FusedConv(conv, relu=True, onednn=True)
            want = (conv(x) + residual).relu()
            got = fused(x, residual)
            return got.dtype == dtype and bool(torch.allclose(got.float(), want.float(), atol=tolerance, rtol=tolerance))
    except (RuntimeError, TypeError, AttributeError):
        return False


class FusedConv(nn.Module):
    """``relu?(BN?(conv(x)) + residual?)``: one convolution with the BatchNorm after it folded in.

    Args:
        conv: the convolution (its weights are copied).
        bn: a BatchNorm applied to the convolution's output, folded into it (eval statistics).
        relu: apply ReLU last (after adding ``residual`` when one is given).
        onednn: pack the weights for oneDNN and fuse ReLU / the addition into the convolution
            (CPU, float32 or bfloat16 weights; see :func:`onednn_fusion_available`).
    """

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d | None = None, *, relu: bool = False,
                 onednn: bool = False) -> None:
        super().__init__()
        weight, bias = conv.weight.detach(), conv.bias.detach() if conv.bias is not None else None
        if bn is not None:
            weight, bias = fuse_conv_bn_weights(weight, bias, bn.running_mean, bn.running_var, bn.eps,
                                                bn.weight, bn.bias)
            weight, bias = weight.detach(), bias.detach()
        if bias is None:
            bias = torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device)
        self.register_buffer("weight", weight.contiguous(memory_format=torch.channels_last))
        self.register_buffer("bias", bias.contiguous())
        if not isinstance(conv.padding, tuple):
            raise TypeError(f"padding {conv.padding!r} is not supported by the fast path (numbers only)")
        self.stride, self.padding = list(conv.stride), list(conv.padding)
        self.dilation, self.groups = list(conv.dilation), conv.groups
        self.relu = relu
        self.onednn = onednn
        # oneDNN's blocked weight layouts (opaque tensors, so not buffers), one per input shape: the
        # best blocking depends on the spatial size, and a model sees only a few shapes. The shard
        # threads of FastMuLA share this cache, so it is read, evicted from and filled under a lock.
        self._packed: dict[tuple[int, ...], Tensor] = {}
        self._packed_lock = threading.Lock()

    def __getstate__(self) -> dict:
        # Copies and pickles leave out the lock and the packed weights (opaque, rebuilt on first use).
        state = self.__dict__.copy()
        state["_packed"] = {}
        state.pop("_packed_lock", None)
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._packed_lock = threading.Lock()

    def _packed_weight(self, shape: tuple[int, ...]) -> Tensor:
        """The weights packed for an input of ``shape`` (made and cached on first use)."""
        with self._packed_lock:
            packed = self._packed.get(shape)
            if packed is None:
                if len(self._packed) >= _PACKED_SHAPES:
                    self._packed.pop(next(iter(self._packed)))  # the oldest shape
                packed = torch.ops.mkldnn._reorder_convolution_weight(
                    self.weight, self.padding, self.stride, self.dilation, self.groups, list(shape))
                self._packed[shape] = packed
            return packed

    def extra_repr(self) -> str:
        out, cin = self.weight.shape[:2]
        return (f"{cin * self.groups}, {out}, kernel_size={tuple(self.weight.shape[2:])}, stride={self.stride}, "
                f"relu={self.relu}, onednn={self.onednn}")

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        if self.weight.dtype == torch.bfloat16 and x.dtype != torch.bfloat16:
            x = x.to(torch.bfloat16)  # a bfloat16 model's first convolution: the normalised picture
        if self.onednn and x.device.type == "cpu" and x.dtype == self.weight.dtype:
            pointwise = torch.ops.mkldnn._convolution_pointwise
            packed = self._packed_weight(tuple(x.shape))
            if residual is None:
                return pointwise(x, packed, self.bias, self.padding, self.stride, self.dilation, self.groups,
                                 "relu" if self.relu else "none", [], "")
            return pointwise.binary(x, residual, packed, self.bias, self.padding, self.stride, self.dilation,
                                    self.groups, "add", 1.0, "relu" if self.relu else None, [], None)
        y = F.conv2d(x, self.weight.to(x.dtype), self.bias.to(x.dtype), self.stride, self.padding, self.dilation,
                     self.groups)
        if residual is not None:
            y = y.add_(residual)
        return y.relu_() if self.relu else y


class ScaleShiftRelu(nn.Module):
    """``ReLU(BN(x))`` with the BN's eval statistics: a pre-activation that cannot be folded into a conv."""

    def __init__(self, bn: nn.BatchNorm2d) -> None:
        super().__init__()
        scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
        self.register_buffer("scale", scale.reshape(1, -1, 1, 1))
        self.register_buffer("shift", (bn.bias.detach() - bn.running_mean * scale).reshape(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return torch.addcmul(self.shift.to(x.dtype), x, self.scale.to(x.dtype)).relu_()


class FastPreActSkip(nn.Module):
    def __init__(self, skip: PreActSkip, onednn: bool) -> None:
        super().__init__()
        self.pre = ScaleShiftRelu(skip.bn)
        self.conv = FusedConv(skip.conv, onednn=onednn)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(self.pre(x))


class FastPreRes(nn.Module):
    """PreRes with BN2 folded into conv1, BN3 into conv2, and the skip added inside conv3."""

    def __init__(self, block: PreRes, onednn: bool) -> None:
        super().__init__()
        self.pre = ScaleShiftRelu(block.bn1)
        self.conv1 = FusedConv(block.conv1, block.bn2, relu=True, onednn=onednn)
        self.conv2 = FusedConv(block.conv2, block.bn3, relu=True, onednn=onednn)
        self.conv3 = FusedConv(block.conv3, onednn=onednn)
        self.skip = FastPreActSkip(block.skip, onednn) if isinstance(block.skip, PreActSkip) else None

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv2(self.conv1(self.pre(x)))
        return self.conv3(y, residual=self.skip(x) if self.skip is not None else x)


class FastPostRes(nn.Module):
    """PostRes with every BN folded and ``ReLU(conv3(y) + skip)`` as one fused convolution."""

    def __init__(self, block: PostRes, onednn: bool) -> None:
        super().__init__()
        self.conv1 = FusedConv(block.conv1, block.bn1, relu=True, onednn=onednn)
        self.conv2 = FusedConv(block.conv2, block.bn2, relu=True, onednn=onednn)
        self.conv3 = FusedConv(block.conv3, block.bn3, relu=True, onednn=onednn)
        skip = block.skip
        self.skip = FusedConv(skip.conv, skip.bn, onednn=onednn) if isinstance(skip, PostActSkip) else None

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv2(self.conv1(x))
        return self.conv3(y, residual=self.skip(x) if self.skip is not None else x)


class FastPlainBottleneck(nn.Module):
    def __init__(self, block: PlainBottleneck, onednn: bool) -> None:
        super().__init__()
        self.conv1 = FusedConv(block.conv1, block.bn1, relu=True, onednn=onednn)
        self.conv2 = FusedConv(block.conv2, block.bn2, relu=True, onednn=onednn)
        self.conv3 = FusedConv(block.conv3, onednn=onednn)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv3(self.conv2(self.conv1(x)), residual=x)


class FastHourglassStem(nn.Module):
    def __init__(self, stem: HourglassStem, onednn: bool) -> None:
        super().__init__()
        self.conv = FusedConv(stem.conv, stem.bn, relu=True, onednn=onednn)
        self.post_res = FastPostRes(stem.post_res, onednn)
        self.bottleneck = FastPlainBottleneck(stem.bottleneck, onednn)
        self.pre_res = FastPreRes(stem.pre_res, onednn)

    def forward(self, x: Tensor) -> Tensor:
        x = F.max_pool2d(self.post_res(self.conv(x)), kernel_size=2, stride=2)
        return self.pre_res(self.bottleneck(x))


class FastHourglass(nn.Module):
    def __init__(self, hourglass: Hourglass, onednn: bool) -> None:
        super().__init__()
        self.down = nn.ModuleList(FastPreRes(b, onednn) for b in hourglass.down)
        self.bottom = FastPreRes(hourglass.bottom, onednn)
        self.up = nn.ModuleList(FastPreRes(b, onednn) for b in hourglass.up)
        self.out = ScaleShiftRelu(hourglass.bn)

    def forward(self, x: Tensor) -> Tensor:
        skips: list[Tensor] = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = F.max_pool2d(x, kernel_size=2, stride=2)
        x = self.bottom(x)
        for block, skip in zip(self.up, skips[::-1]):
            x = block(F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True).add_(skip))
        return self.out(x)


class FastStageEncoder(nn.Module):
    def __init__(self, encoder: HourglassStageEncoder, onednn: bool) -> None:
        super().__init__()
        self.hourglass = FastHourglass(encoder.hourglass, onednn)
        self.conv = FusedConv(encoder.conv, encoder.bn, relu=True, onednn=onednn)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(self.hourglass(x))


class FastFactorisedResidual(nn.Module):
    """``own + ReLU(BN(V(depthwise(U(own)))))`` with BN folded into V; kernels adaptive or static."""

    def __init__(self, block: AdaptiveResidual | StaticResidual, onednn: bool) -> None:
        super().__init__()
        bn = block.bn if isinstance(block.bn, nn.BatchNorm2d) else None
        self.u = FusedConv(block.u, onednn=onednn)
        self.v = FusedConv(block.v, bn, relu=True, onednn=onednn)
        self.adapter = convert(block.adapter, onednn) if isinstance(block, AdaptiveResidual) else None
        self.kernel = FusedConv(block.kernel, onednn=onednn) if isinstance(block, StaticResidual) else None

    def forward(self, own: Tensor, other: Tensor) -> Tensor:
        x = self.u(own)
        filtered = self.kernel(x) if self.kernel is not None else dynamic_depthwise_conv2d(x, self.adapter(other))
        return self.v(filtered).add_(own)


class FastNextStageMapping(nn.Module):
    """``x + Conv1x1(feature) + sum Conv1x1(prediction)`` with each addition inside its convolution."""

    def __init__(self, mapping: NextStageMapping, onednn: bool) -> None:
        super().__init__()
        self.features = FusedConv(mapping.features, onednn=onednn)
        self.predictions = nn.ModuleList(FusedConv(c, onednn=onednn) for c in mapping.predictions)

    def forward(self, x: Tensor, feature: Tensor, predictions: list[Tensor]) -> Tensor:
        x = self.features(feature, residual=x)
        for remap, prediction in zip(self.predictions, predictions):
            x = remap(prediction, residual=x)
        return x


def _conv_bn_relu(block: ConvBnRelu, onednn: bool) -> FusedConv:
    bn = block.bn if isinstance(block.bn, nn.BatchNorm2d) else None
    return FusedConv(block.conv, bn, relu=True, onednn=onednn)


# Block type -> its fast twin's constructor. Anything else keeps its own forward; its convolutions
# become FusedConv and its remaining BatchNorms run as they are (eval statistics).
_TWINS = {
    PreRes: FastPreRes,
    PostRes: FastPostRes,
    PlainBottleneck: FastPlainBottleneck,
    HourglassStem: FastHourglassStem,
    Hourglass: FastHourglass,
    HourglassStageEncoder: FastStageEncoder,
    AdaptiveResidual: FastFactorisedResidual,
    StaticResidual: FastFactorisedResidual,
    NextStageMapping: FastNextStageMapping,
    ConvBnRelu: _conv_bn_relu,
}


def convert(module: nn.Module, onednn: bool) -> nn.Module:
    """``module`` with every known block replaced by its fast twin (children converted in place)."""
    twin = _TWINS.get(type(module))
    if twin is not None:
        return twin(module, onednn)
    if isinstance(module, nn.Conv2d):
        return FusedConv(module, onednn=onednn)
    for name, child in module.named_children():
        setattr(module, name, convert(child, onednn))
    return module


class FastMuLA(nn.Module):
    """A MuLA model converted for inference (see the module docstring); called like the model.

    Args:
        model: the model to convert (left unchanged).
        onednn: use oneDNN's packed, fused convolutions (default: on the CPU when available).
        workers: on the CPU, split a batch into up to this many shards and run them at once, each
            in its own thread with ``threads // shards`` PyTorch threads (default: PyTorch's thread
            count, the number of cores). A picture and its mirror are two shards, each on one core
            of a two-core machine: every convolution then runs single-threaded, without the OpenMP
            barriers that make the small late-hourglass convolutions scale poorly over cores (and
            that stall whenever another process holds a core). 1 keeps one intra-op parallel pass.
        dtype: the network's weights and activations: float32, or bfloat16 (the picture is normalised
            in float32 and the outputs come back as float32, so decoding never sees bfloat16). Unlike
            autocast, which is per thread, this keeps oneDNN's packed convolutions and the batch split.
    """

    def __init__(self, model: MuLA, *, onednn: bool | None = None, workers: int | None = None,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        device = model.pixel_mean.device
        if onednn is None:
            onednn = device.type == "cpu" and onednn_fusion_available(dtype)
        self.config = model.config
        self.onednn = onednn
        self.dtype = dtype
        self.workers = max(1, workers if workers is not None else torch.get_num_threads())
        self._pool: ThreadPoolExecutor | None = None
        with torch.no_grad():
            self.model = convert(copy.deepcopy(model).eval(), onednn).to(memory_format=torch.channels_last)
            if dtype != torch.float32:
                self.model.to(dtype)
                self.model.pixel_mean, self.model.pixel_std = model.pixel_mean.float(), model.pixel_std.float()

    def forward(self, image: Tensor) -> ModelOutput:
        image = image.contiguous(memory_format=torch.channels_last)
        shards = min(self.workers, image.shape[0])
        out = self.model(image) if shards < 2 or image.device.type != "cpu" else self._sharded(image, shards)
        if self.dtype == torch.float32:
            return out
        return model_output([p.float() for p in out.pose], [p.float() for p in out.parsing],
                            [p.float() for p in out.offsets])

    def _sharded(self, image: Tensor, shards: int) -> ModelOutput:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="mula-shard")
        threads = torch.get_num_threads()
        grad = torch.is_grad_enabled()

        def run(chunk: Tensor) -> ModelOutput:
            # Thread counts and grad mode are per thread: set them in the worker itself.
            torch.set_num_threads(max(1, threads // shards))
            with torch.set_grad_enabled(grad):
                return self.model(chunk)

        try:
            outputs = list(self._pool.map(run, image.chunk(shards)))
        finally:
            torch.set_num_threads(threads)  # the workers changed the process-wide default too
        return model_output([torch.cat(stage) for stage in zip(*(o.pose for o in outputs))],
                            [torch.cat(stage) for stage in zip(*(o.parsing for o in outputs))],
                            [torch.cat(stage) for stage in zip(*(o.offsets for o in outputs))])

    def describe(self) -> str:
        """What the fast path does here, for the user."""
        parts = ["BatchNorm folded", "channels_last"]
        if self.dtype != torch.float32:
            parts.append(f"{str(self.dtype).removeprefix('torch.')} weights and activations")
        if self.onednn:
            parts.append("oneDNN packed convolutions with fused ReLU/residual")
        if self.workers > 1 and self.model.pixel_mean.device.type == "cpu":
            parts.append(f"batch split over {self.workers} threads")
        return ", ".join(parts)


def fast_model(model: MuLA) -> FastMuLA:
    """The inference-only fast copy of ``model`` (eval statistics; ``model`` itself is not changed)."""
    return FastMuLA(model).eval()


def prediction_model(model: MuLA, *, fast: bool = True, bf16: bool = False) -> tuple[nn.Module, str]:
    """The model prediction runs, and a one-line description of that path for the user.

    Args:
        model: a MuLA model in eval mode, on its device.
        fast: use :class:`FastMuLA` (default); False keeps the plain float32 eager model.
        bf16: run the network in bfloat16. The CPU fast path holds bfloat16 weights itself (oneDNN's
            packed convolutions and the batch split stay); elsewhere the network runs under bfloat16
            autocast (:class:`Bfloat16`). Decoding is float32 either way.
    """
    device = model.pixel_mean.device
    count = torch.get_num_threads()
    threads = f"{count} thread{'s' if count != 1 else ''}" if device.type == "cpu" else str(device)
    if fast and bf16 and device.type == "cpu":
        runner = FastMuLA(model, dtype=torch.bfloat16).eval()
        return runner, f"fast bfloat16: {runner.describe()} ({threads})"
    precision = "bfloat16 autocast" if bf16 else "float32"
    runner: nn.Module = model
    description = f"eager {precision} ({threads})"
    if fast:
        # Autocast is per thread: under bf16 the batch is not split over worker threads.
        runner = FastMuLA(model, onednn=False if bf16 else None, workers=1 if bf16 else None).eval()
        description = f"fast {precision}: {runner.describe()} ({threads})"
    return (Bfloat16(runner) if bf16 else runner), description


class Bfloat16(nn.Module):
    """Runs a model under bfloat16 autocast and hands back float32 outputs, so that everything after
    the network (upsampling, softmax, heatmap blur and argmax) stays in float32."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.config = model.config

    def forward(self, image: Tensor) -> ModelOutput:
        with autocast(image.device, torch.bfloat16):
            out = self.model(image)
        return model_output([p.float() for p in out.pose], [p.float() for p in out.parsing],
                            [p.float() for p in out.offsets])
