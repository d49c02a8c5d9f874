"""`mula train --deterministic` on CUDA: no operation of MuLA's training step lacks a deterministic kernel.

With ``torch.use_deterministic_algorithms(True)`` PyTorch raises on CUDA for the operations its docstring
lists as having no deterministic implementation. The CPU raises none of those errors, so the key test
records every aten operation of a training step (forward, every loss, backward, the balance
measurement, the device-side augmentation) and checks them against that list. The replacements must
also compute what the operations they replace compute, and two deterministic runs must agree bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from mula_cli.data.device_warp import warp_images
from mula_cli.model.adaptation import ParameterAdapter, adaptive_average_by_matrices
from mula_cli.model.loss import (
    _cumsum,
    labelled_cross_entropy_sum,
    lovasz_softmax,
    mula_loss,
    parsing_cross_entropy,
)
from mula_cli.model.presets import build_model, dataset_overrides
from mula_cli.ops import dynconv
from mula_cli.ops.resample import upsample_bilinear_aligned
from mula_cli.train.balance import measure_balance
from mula_cli.utils.manifests import load_manifest

from conftest import run_cli

Refuses = Callable[[torch._ops.OpOverload, tuple, dict], bool]


def _always(func, args, kwargs) -> bool:
    return True


def _floating_cumsum(func, args, kwargs) -> bool:
    dtype = kwargs.get("dtype") or args[0].dtype  # the kernel sums in the output dtype
    return dtype.is_floating_point or dtype.is_complex


def _with_weights(func, args, kwargs) -> bool:
    return (args[1] if len(args) > 1 else kwargs.get("weights")) is not None


def _with_indices(func, args, kwargs) -> bool:
    return func._overloadname != "default"  # the dim overloads return the indices too


def _product(func, args, kwargs) -> bool:
    return (args[4] if len(args) > 4 else kwargs.get("reduce")) == "prod"


# The aten operations that raise on CUDA with deterministic algorithms on, from the list "will throw a
# RuntimeError when mode=True" of torch.use_deterministic_algorithms.__doc__ (PyTorch 2.13), each entry
# mapped to the operators that run it. Where an entry is narrower than an operator (NLLLoss's alert is
# for reduced losses, EmbeddingBag's for mode='max') the whole operator is refused: MuLA uses neither.
CUDA_REFUSES: dict[str, Refuses] = {
    **dict.fromkeys(["avg_pool3d_backward",  # AvgPool3d backward
                     "_adaptive_avg_pool2d_backward", "_adaptive_avg_pool3d_backward",  # AdaptiveAvgPool2d/3d
                     "adaptive_max_pool2d_backward",  # AdaptiveMaxPool2d backward
                     "fractional_max_pool2d_backward", "fractional_max_pool3d_backward",  # FractionalMaxPool2d/3d
                     "max_unpool2d", "max_unpool3d",  # MaxUnpool1d/2d/3d
                     # F.interpolate backward, linear / bilinear / bicubic / trilinear
                     "upsample_linear1d_backward", "upsample_bilinear2d_backward", "_upsample_bilinear2d_aa_backward",
                     "upsample_bicubic2d_backward", "_upsample_bicubic2d_aa_backward", "upsample_trilinear3d_backward",
                     "reflection_pad1d_backward", "reflection_pad2d_backward", "reflection_pad3d_backward",
                     "nll_loss_forward", "nll_loss2d_forward", "nll_loss_backward", "nll_loss2d_backward",  # NLLLoss
                     "_ctc_loss_backward",  # CTCLoss backward
                     "_embedding_bag_backward", "_embedding_bag_dense_backward",  # EmbeddingBag backward, mode='max'
                     "put_", "put",  # put_ (accumulate=False anywhere, True on CUDA)
                     "histc",
                     "grid_sampler_2d_backward", "grid_sampler_3d_backward", "cudnn_grid_sampler_backward"],
                    _always),
    "bincount": _with_weights,  # bincount with a weights tensor
    "median": _with_indices, "nanmedian": _with_indices,  # median with indices output
    "cumsum": _floating_cumsum, "cumsum_": _floating_cumsum,  # cumsum of floating point or complex
    "scatter_reduce": _product, "scatter_reduce_": _product,  # scatter_reduce, reduce='prod'
}


class OpRecorder(TorchDispatchMode):
    """Records every aten operation run under it; ``refused`` lists those in :data:`CUDA_REFUSES`."""

    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()
        self.refused: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        self.names.add(name)
        refuses = CUDA_REFUSES.get(name)
        if refuses is not None and refuses(func, args, kwargs):
            self.refused.add(name)
        return func(*args, **kwargs)


@pytest.fixture
def deterministic() -> Iterator[None]:
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(before)


def _grad_of(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, seed: int = 0) -> tuple:
    """``fn(x)`` and the gradient of a fixed random projection of it with respect to ``x``."""
    x = x.detach().clone().requires_grad_(True)
    out = fn(x)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    (out * weights).sum().backward()
    return out.detach(), x.grad


@pytest.mark.parametrize(("hw", "size", "factor"), [
    ((1, 1), None, 2), ((2, 3), None, 2), ((5, 4), None, 2), ((8, 8), None, 2),
    ((5, 7), (17, 29), None), ((4, 4), (4, 4), None), ((7, 6), (3, 2), None), ((3, 5), (1, 1), None),
])
@pytest.mark.parametrize("memory", [torch.contiguous_format, torch.channels_last])
def test_matrix_upsampling_equals_interpolate(hw, size, factor, memory, deterministic) -> None:
    x = torch.randn(2, 3, *hw, generator=torch.Generator().manual_seed(1)).contiguous(memory_format=memory)
    got, got_grad = _grad_of(lambda t: upsample_bilinear_aligned(t, size=size, scale_factor=factor), x)
    torch.use_deterministic_algorithms(False)
    want, want_grad = _grad_of(lambda t: F.interpolate(t, size=size, scale_factor=factor and float(factor),
                                                       mode="bilinear", align_corners=True), x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-5, atol=1e-6)
    # the next convolution gets the layout it was given (a 1 x 1 input is both layouts: either will do)
    assert got.is_contiguous(memory_format=memory) or x.is_contiguous()


def test_matrix_upsampling_runs_only_where_a_deterministic_backward_is_needed(deterministic) -> None:
    x = torch.randn(1, 2, 6, 5)
    with OpRecorder() as ops:
        upsample_bilinear_aligned(x, scale_factor=2)  # no gradient: interpolate's forward is deterministic
    assert "upsample_bilinear2d" in ops.names and "bmm" not in ops.names
    with OpRecorder() as ops:
        upsample_bilinear_aligned(x.requires_grad_(True), scale_factor=2)
    assert "upsample_bilinear2d" not in ops.names
    with torch.autocast("cpu", dtype=torch.bfloat16):  # CUDA's default training precision, here on the CPU
        low = upsample_bilinear_aligned(x.bfloat16(), size=(13, 7))
    want = F.interpolate(x.detach(), size=(13, 7), mode="bilinear", align_corners=True)
    assert low.dtype == torch.bfloat16 and low.float().sub(want).abs().max() < 0.05


@pytest.mark.parametrize("ignore", ["some", "none", "all"])
@pytest.mark.parametrize("ignore_index", [255, 0])
def test_gathered_cross_entropy_equals_the_nll_loss(ignore: str, ignore_index: int) -> None:
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 5, 7, 6, generator=gen) * 3
    target = torch.randint(0, 5, (2, 7, 6), generator=gen)
    if ignore == "some":
        target[:, :3] = ignore_index
    elif ignore == "all":
        target[:] = ignore_index
    else:
        target[target == ignore_index] = 1 if ignore_index == 0 else 0
    got, got_grad = _grad_of(lambda t: labelled_cross_entropy_sum(t, target, ignore_index), logits)
    want, want_grad = _grad_of(lambda t: F.cross_entropy(t, target, ignore_index=ignore_index, reduction="sum"),
                               logits)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-5, atol=1e-6)
    small = logits[..., :2, :3]  # stride-4 logits of the 7 x 6 labels: the loss upsamples them
    default, default_grad = _grad_of(lambda t: parsing_cross_entropy(t, target, ignore_index), small)
    torch.use_deterministic_algorithms(True)
    try:
        both, both_grad = _grad_of(lambda t: parsing_cross_entropy(t, target, ignore_index), small)
    finally:
        torch.use_deterministic_algorithms(False)
    torch.testing.assert_close(both, default, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(both_grad, default_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("hw", "size"), [((15, 15), 7), ((7, 9), 3), ((3, 3), 3), ((10, 5), 4), ((2, 2), 3)])
def test_matrix_pool_equals_adaptive_average_pool(hw: tuple[int, int], size: int) -> None:
    x = torch.randn(2, 4, *hw, generator=torch.Generator().manual_seed(3))
    got, got_grad = _grad_of(lambda t: adaptive_average_by_matrices(t, size), x)
    want, want_grad = _grad_of(lambda t: F.adaptive_avg_pool2d(t, size), x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-5, atol=1e-6)


def test_adapter_pools_by_matrices_in_deterministic_training(deterministic) -> None:
    torch.manual_seed(0)
    adapter = ParameterAdapter(8, kernel_size=3)
    x = torch.randn(2, 8, 40, 40)  # 40 -> 19 -> 9 -> 4 -> 4: the pool to 3 x 3 is not an identity
    with OpRecorder() as ops:
        got, got_grad = _grad_of(adapter, x)
    assert "_adaptive_avg_pool2d" not in ops.names
    torch.use_deterministic_algorithms(False)
    want, want_grad = _grad_of(adapter, x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-5, atol=1e-6)


def test_integer_cumsum_and_lovasz_are_exact(deterministic) -> None:
    gen = torch.Generator().manual_seed(4)
    truth = (torch.rand(3, 1000, generator=gen) > 0.7).float()
    logits = torch.randn(2, 3, 8, 8, generator=gen)
    target = torch.randint(0, 3, (2, 32, 32), generator=gen)
    target[:, :5] = 255
    with OpRecorder() as ops:
        summed = _cumsum(truth, 1)
        got, got_grad = _grad_of(lambda t: lovasz_softmax(t, target), logits)
    assert "cumsum" in ops.names and not ops.refused
    torch.use_deterministic_algorithms(False)
    assert summed.dtype == torch.float32 and torch.equal(summed, truth.cumsum(1))
    want, want_grad = _grad_of(lambda t: lovasz_softmax(t, target), logits)
    assert torch.equal(got, want) and torch.equal(got_grad, want_grad)


def _batch(memory: torch.memory_format) -> tuple[torch.Tensor, ...]:
    """A training batch of 128 x 128 images for a multi-person model (LIP-sized labels with ignored rows)."""
    gen = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (2, 3, 128, 128), generator=gen).float().contiguous(memory_format=memory)
    labels = torch.randint(0, 7, (2, 128, 128), generator=gen)
    labels[:, :20] = 255
    offsets = torch.randn(2, 28, 32, 32, generator=gen)
    mask = (torch.rand(2, 14, 32, 32, generator=gen) > 0.9).float()
    return images, torch.rand(2, 15, 32, 32, generator=gen), labels, offsets, mask


def _training_step(memory: torch.memory_format, amp: torch.dtype | None) -> tuple[torch.nn.Module, torch.Tensor]:
    """What the engine runs on a batch: the balance measurement, then a step's forward, loss and backward."""
    torch.manual_seed(0)
    model = build_model("hg-tiny", width=16, **dataset_overrides(load_manifest("pascal_person_part")))
    model.to(memory_format=memory)
    images, heatmaps, labels, offsets, mask = _batch(memory)
    measure_balance(model, images, heatmaps, labels, offsets, mask, beta=0.01, ignore_index=255, amp_dtype=amp,
                    lovasz_weight=1.0)
    with torch.autocast("cpu", dtype=amp or torch.float32, enabled=amp is not None):
        output = model(images)
    total, _ = mula_loss(output, heatmaps, labels, offsets=offsets, offset_mask=mask, lovasz_weight=1.0)
    total.backward()
    crops = [torch.randint(0, 256, (3, 40 + 7 * i, 50), dtype=torch.uint8) for i in range(2)]
    warp = torch.tensor([[[0.3, 0.0, 2.0], [0.0, 0.3, 1.0]]]).repeat(2, 1, 1)
    warp_images(crops, warp, 128)  # --device-augment resamples on the device, without gradients
    return model, total.detach()


STEPS = [(torch.contiguous_format, None, "grouped"), (torch.channels_last, None, "auto"),
         (torch.channels_last, torch.bfloat16, "auto"), (torch.contiguous_format, torch.bfloat16, "grouped")]


@pytest.mark.parametrize(("memory", "amp", "dynconv_mode"), STEPS)
def test_a_deterministic_training_step_uses_no_operation_cuda_refuses(memory, amp, dynconv_mode,
                                                                       deterministic) -> None:
    dynconv.set_dispatch_mode(dynconv_mode)  # grouped: the dynamic convolution CUDA runs without Triton
    with OpRecorder() as ops:
        model, total = _training_step(memory, amp)
    assert {"convolution_backward", "bmm", "gather", "grid_sampler_2d"} <= ops.names  # it saw the step
    assert ops.refused == set()
    assert torch.isfinite(total) and all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_the_default_step_uses_the_refused_operations_that_deterministic_mode_replaces() -> None:
    """The recorder is not blind: without deterministic algorithms the same step runs exactly the
    operations the replacements remove (what `--deterministic` on CUDA used to stop at)."""
    with OpRecorder() as ops:
        default_model, default_total = _training_step(torch.channels_last, None)
    assert ops.refused == {"upsample_bilinear2d_backward", "nll_loss2d_forward", "nll_loss2d_backward",
                           "_adaptive_avg_pool2d_backward", "cumsum"}
    torch.use_deterministic_algorithms(True)
    try:
        model, total = _training_step(torch.channels_last, None)
    finally:
        torch.use_deterministic_algorithms(False)
    torch.testing.assert_close(total, default_total, rtol=1e-5, atol=1e-6)  # and the step learns the same
    for (name, p), q in zip(model.named_parameters(), default_model.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-3, atol=1e-6, msg=name)


@pytest.fixture(scope="module")
def crowd_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mula_cli.commands.prepare import prepare_synthetic_dataset

    root = tmp_path_factory.mktemp("crowd")
    return prepare_synthetic_dataset(root / "tree", train=4, val=2, seed=3, multi_person=True,
                                     out_path=root / "crowd.h5", quiet=True).path


def test_two_deterministic_runs_give_the_same_weights(crowd_cache: Path, tmp_path: Path) -> None:
    args = ["train", "--data", crowd_cache, "--model", "hg-tiny", "--width", "16", "--batch-size", "2",
            "--workers", "0", "--epochs", "1", "--val-every", "1", "--lr", "1e-3", "--seed", "7", "--lovasz", "1",
            "--device-augment", "--deterministic", "--project", tmp_path, "-q"]
    with OpRecorder() as ops:  # the whole run: data, balance, steps, validation
        first = run_cli(*args, "--name", "a")
    assert first.exit_code == 0, first.output
    assert ops.refused == set()
    # it saw the training steps, the resampling on the device and the validation's confusion matrix
    assert {"convolution_backward", "bmm", "grid_sampler_2d", "bincount"} <= ops.names
    second = run_cli(*args, "--name", "b")
    assert second.exit_code == 0, second.output
    a, b = (torch.load(tmp_path / name / "weights" / "last.pt", weights_only=True)["state_dict"] for name in "ab")
    assert a.keys() == b.keys() and any("offset_head" in key for key in a)
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert not torch.are_deterministic_algorithms_enabled()  # the engine put the setting back
