"""GPU-only paths that the CPU suite can only pretend: they run where PyTorch sees a CUDA GPU
(``benchmarks/device_check.sh`` runs them) and are skipped elsewhere."""

from __future__ import annotations

import socket
import warnings
from pathlib import Path

import pytest
import torch

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@needs_cuda
def test_auto_survives_a_real_compiler_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """MULA_DYNCONV=auto on a kernel that cannot compile: one warning, the grouped convolution's result."""
    pytest.importorskip("triton")
    from mula_cli.ops import dynconv, dynconv_triton
    from mula_cli.ops.dynconv import dynamic_depthwise_conv2d, dynamic_depthwise_conv2d_grouped

    dynconv.set_dispatch_mode("auto")
    # three channels a tile: tl.arange needs a power of two, so Triton refuses to compile this
    monkeypatch.setattr(dynconv_triton, "choose_config",
                        lambda shape, k, channels_last: dynconv_triton.TileConfig(8, 3, 16, 2, 2))
    x = torch.randn(2, 6, 16, 16, device="cuda")
    weight = torch.randn(2, 6, 5, 5, device="cuda")
    with pytest.warns(dynconv.TritonFallbackWarning, match="5x5 contiguous torch.float32 on cuda"):
        out = dynamic_depthwise_conv2d(x, weight)
    torch.testing.assert_close(out, dynamic_depthwise_conv2d_grouped(x, weight))
    with warnings.catch_warnings():
        warnings.simplefilter("error", dynconv.TritonFallbackWarning)
        dynamic_depthwise_conv2d(x, weight)  # decided once
    dynconv.set_dispatch_mode()


@needs_cuda
def test_auto_uses_the_checked_kernels_on_the_gpu() -> None:
    pytest.importorskip("triton")
    from mula_cli.ops import dynconv

    dynconv.set_dispatch_mode("auto")
    x = torch.randn(4, 32, 32, 32, device="cuda").contiguous(memory_format=torch.channels_last)
    weight = torch.randn(4, 32, 7, 7, device="cuda")
    with warnings.catch_warnings():
        warnings.simplefilter("error", dynconv.TritonFallbackWarning)
        dynconv.dynamic_depthwise_conv2d(x, weight)
    assert dynconv._state.verdicts == {(7, "channels_last", torch.float32, x.device): None}
    dynconv.set_dispatch_mode()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@needs_cuda
def test_validation_reduces_on_the_process_group_torchrun_would_make(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A one-rank NCCL group with gloo beside it, as setup_world makes on CUDA: validation's sums are
    reduced by NCCL, a CPU tensor by gloo (two ranks cannot share one GPU under NCCL)."""
    import torch.distributed as dist

    from mula_cli.data.prepare import prepare_dataset
    from mula_cli.evaluation.runner import eval_loader, evaluate_model
    from mula_cli.model.presets import build_model
    from mula_cli.train.distributed import process_group_backend
    from mula_cli.utils.manifests import load_manifest

    from trees import build_lip_tree

    lip = load_manifest("lip")
    build_lip_tree(tmp_path / "LIP", counts={"val": 3}, seed=2)
    prepare_dataset(lip, tmp_path / "LIP", tmp_path / "lip.h5")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    device = torch.device("cuda", 0)
    torch.cuda.set_device(device)
    dist.init_process_group(backend=process_group_backend(device), rank=0, world_size=1, device_id=device)
    try:
        model = build_model("hg-tiny", num_classes=20, num_joints=16, width=16).to(device)
        loader = eval_loader(tmp_path / "lip.h5", "val", 128, 4, batch_size=2, workers=0)
        result = evaluate_model(model, loader, lip)
        assert result.images == 3 and result.pose is not None
        on_cpu = torch.ones(3)
        dist.all_reduce(on_cpu)  # gloo
        assert on_cpu.tolist() == [1.0, 1.0, 1.0]
    finally:
        dist.destroy_process_group()
