"""Learning is a tested property: a small MuLA must fit a handful of pictures in both tasks.

The whole training path runs as a user runs it: ``mula prepare synthetic`` pictures, the dataset
(augmentation reduced to mirroring of the test-time input), the loss, the optimiser and the
engine, then the official evaluation on those same pictures. It fails when the heatmap targets
are shifted by two cells, when left/right mirroring is broken or when the pose loss is switched
off, none of which a loss-goes-down test notices. Measured when written (2 cores, about 80 s):
PCKh 100, PCKh@0.25 95, mIoU 79; targets shifted two cells right: PCKh 87, PCKh@0.25 53; two cells
down: 13 and 0; left/right identities not swapped on mirroring: PCKh 55; pose loss off: PCKh 4.

Why mirroring stays on: with no augmentation at all (``--augment none``) the same test passes
(PCKh 100, PCKh@0.25 94, mIoU 83) and still fails on shifted targets (PCKh 29 and 16) and on a
switched-off pose loss (PCKh 2), but a broken left/right swap then only reaches the flip test at
evaluation, which a model that never saw a mirrored picture hardly responds to: PCKh 99, a pass.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import run_cli

OVERFIT_PICTURES = 8
OVERFIT_EPOCHS = 500  # one step each: about 75 s on two cores
OVERFIT_LR = 5e-3


@pytest.fixture(scope="module")
def handful(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("handful")
    result = run_cli("prepare", "synthetic", root / "tree", "--train", OVERFIT_PICTURES, "--val", "1", "--test", "0",
                     "--seed", "1", "--out", root / "handful.h5", "-q")
    assert result.exit_code == 0, result.output
    return root / "handful.h5"


@pytest.mark.slow
def test_a_small_model_overfits_a_handful_of_pictures_in_both_tasks(handful: Path, tmp_path: Path) -> None:
    from mula_cli.data.cache import CacheFile
    from mula_cli.evaluation.runner import eval_loader, evaluate_model
    from mula_cli.model.weights import load_weights
    from mula_cli.train.config import TrainConfig
    from mula_cli.train.engine import train

    torch.set_num_threads(2)  # the one test that trains for real: use both cores of the CI machine
    cfg = TrainConfig(data=str(handful), model="hg-tiny", augment="flip", epochs=OVERFIT_EPOCHS,
                      batch_size=OVERFIT_PICTURES, lr=OVERFIT_LR, schedule="paper", beta=0.01, workers=0,
                      val_every=OVERFIT_EPOCHS, device="cpu", project=str(tmp_path), name="overfit", vis_images=0,
                      log_every=50)
    run = train(cfg, quiet=True)
    model, _, _ = load_weights(run / "weights" / "last.pt")
    with CacheFile(handful) as cache:
        manifest = cache.manifest
    loader = eval_loader(handful, "train", model.config.input_size, model.config.stride, batch_size=8, workers=0)
    result = evaluate_model(model, loader, manifest)
    scores = {**result.summary(), "pckh@0.25": result.pose["curve"]["0.25"]}
    assert scores["pckh"] >= 90, scores
    # where the joints land, not only near enough: targets two heatmap cells off still pass PCKh@0.5
    # now and then (87 measured) but fall to about 50 at a quarter of the head size (95 when right)
    assert scores["pckh@0.25"] >= 80, scores
    assert scores["miou"] >= 75, scores
