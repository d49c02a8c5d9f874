"""How training starts and what it logs: blank-answer heads, the loss-balance measurement, --augment."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mula_cli.data.dataset import MulaDataset, SampleConfig
from mula_cli.model.loss import mula_loss
from mula_cli.model.presets import build_model
from mula_cli.train.balance import balance_columns, measure_balance, shared_parameters
from mula_cli.transforms.affine import AUGMENTATIONS
from mula_cli.utils.manifests import load_manifest

from trees import build_lip_cache

SIZE = 64


def _model(**kwargs: object) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("hg-tiny", num_classes=20, num_joints=16, width=8, input_size=SIZE, **kwargs)


def _batch(n: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (n, 3, SIZE, SIZE), dtype=torch.uint8, generator=g)
    heatmaps = torch.rand(n, 17, SIZE // 4, SIZE // 4, generator=g) * 0.1
    labels = torch.randint(0, 20, (n, SIZE, SIZE), generator=g)
    return images, heatmaps, labels


def test_heads_start_at_the_blank_answer_unless_the_authors_init_is_asked() -> None:
    images, _, _ = _batch()
    blank, authors = _model().train(), _model(authors_init=True).train()  # as training starts: batch statistics
    with torch.no_grad():
        for model, small in ((blank, True), (authors, False)):
            pose = model(images).pose[-1]
            joints, background = pose[:, :-1], pose[:, -1]
            if small:  # joint maps near 0, the background map near 1: the blank prediction's error
                assert float(joints.abs().max()) < 0.05
                assert float((background - 1).abs().max()) < 0.05
            else:  # MSRA heads: maps of unit-size noise, as the authors' script starts them
                assert float(joints.abs().mean()) > 0.1
    for stage in blank.stages:
        for head in (stage.pose_head, stage.parsing_head):
            assert float(head.weight.detach().std()) < 2e-3
        assert float(stage.parsing_head.bias.detach().abs().max()) == 0.0


def test_loss_balance_measures_each_task_into_each_stream_and_leaves_training_untouched() -> None:
    model = _model().train()
    images, heatmaps, labels = _batch()
    buffers = [b.clone() for b in model.buffers()]
    result = measure_balance(model, images, heatmaps, labels, beta=0.01, ignore_index=255)
    assert list(result) == balance_columns(model)
    assert set(shared_parameters(model)) == {"pose", "parsing"}
    values = torch.stack(list(result.values()))
    assert bool(torch.isfinite(values).all()) and bool((values > 0).all())
    assert all(p.grad is None for p in model.parameters())  # the optimiser's gradients are untouched
    assert all(torch.equal(a, b) for a, b in zip(buffers, model.buffers()))  # BatchNorm statistics too

    # the measurement is of the weighted terms: beta scales every parsing column, and only those
    tenfold = measure_balance(model, images, heatmaps, labels, beta=0.1, ignore_index=255)
    for key, value in result.items():
        expected = value * (10.0 if "_parsing_grad_" in key else 1.0)
        torch.testing.assert_close(tenfold[key], expected, rtol=1e-4, atol=0)

    # and it is the gradient the training loss sends: stage 1's pose term into the pose stream
    model.zero_grad()
    output = model(images)
    _, parts = mula_loss(output, heatmaps, labels, beta=0.01, ignore_index=255)
    parts["s1/pose"].backward()
    pose_stream = shared_parameters(model)["pose"]
    norm = torch.sqrt(sum((p.grad.float() ** 2).sum() for p in pose_stream if p.grad is not None))
    torch.testing.assert_close(result["s1_pose_grad_pose"], norm, rtol=1e-4, atol=0)


@pytest.fixture(scope="module")
def lip_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_lip_cache(tmp_path_factory.mktemp("lip"), counts={"train": 6, "val": 2}, seed=5)


def test_augment_none_trains_on_exactly_what_evaluation_sees(lip_cache: Path) -> None:
    train = MulaDataset(lip_cache, "train", SampleConfig(augment=AUGMENTATIONS["none"], seed=3))
    test_view = MulaDataset(lip_cache, "train", SampleConfig(train=False))
    for i in range(len(train)):
        for epoch in (0, 1):
            a, b = train[(i, epoch)], test_view[i]
            assert torch.equal(a["image"], b["image"]) and torch.equal(a["parsing"], b["parsing"])
            torch.testing.assert_close(a["heatmaps"], b["heatmaps"])
            np.testing.assert_allclose(a["affine"].numpy(), b["affine"].numpy())


def test_augment_flip_mirrors_the_test_view_and_swaps_left_and_right(lip_cache: Path) -> None:
    manifest = load_manifest("lip")
    flip = MulaDataset(lip_cache, "train", SampleConfig(augment=AUGMENTATIONS["flip"], seed=3))
    test_view = MulaDataset(lip_cache, "train", SampleConfig(train=False))
    lut, flip_index = manifest.class_flip_lut(), manifest.joint_flip_index()
    seen = {True: 0, False: 0}
    for i in range(len(flip)):
        for epoch in range(4):
            a, b = flip[(i, epoch)], test_view[i]
            mirrored = not torch.equal(a["image"], b["image"])
            seen[mirrored] += 1
            if not mirrored:
                continue
            assert torch.equal(a["image"], b["image"].flip(-1))
            assert torch.equal(a["parsing"], torch.from_numpy(lut[b["parsing"].flip(-1).numpy()]))
            torch.testing.assert_close(a["heatmaps"][:-1], b["heatmaps"][flip_index].flip(-1), atol=0.02, rtol=0)
    assert seen[True] > 0 and seen[False] > 0  # mirrored about half the time


def test_the_training_step_and_the_balance_use_the_lovasz_weight() -> None:
    from mula_cli.train.config import TrainConfig
    from mula_cli.train.step import train_step

    images, heatmaps, labels = _batch()
    parsing = {}
    for weight in (0.0, 1.0):
        model = _model().train()
        optimizer = torch.optim.RMSprop(model.parameters(), lr=1e-3)
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        cfg = TrainConfig(data="x", lovasz=weight, device="cpu")
        _, parts = train_step(model, optimizer, scaler, (images.float(), heatmaps, labels, None, None), None, cfg, 255)
        parsing[weight] = parts["s1/parsing"].detach()
    with torch.no_grad():  # the same first forward pass, scored with and without the term
        mixed = mula_loss(_model().train()(images), heatmaps, labels, lovasz_weight=1.0)[1]["s1/parsing"]
        plain = mula_loss(_model().train()(images), heatmaps, labels)[1]["s1/parsing"]
    assert float(mixed - plain) > 0.1
    torch.testing.assert_close(parsing[1.0] - parsing[0.0], mixed - plain)
    model = _model().train()
    base = measure_balance(model, images, heatmaps, labels, beta=0.01, ignore_index=255)
    mixed = measure_balance(model, images, heatmaps, labels, beta=0.01, ignore_index=255, lovasz_weight=1.0)
    assert all(torch.equal(base[k], mixed[k]) for k in base if "_pose_grad_" in k)
    assert any(not torch.equal(base[k], mixed[k]) for k in base if "_parsing_grad_" in k)
