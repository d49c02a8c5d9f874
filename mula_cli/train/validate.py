"""Validation during training: the evaluation code of ``mula evaluate`` on the val split, plus pictures."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from mula_cli.data.cache import CacheFile
from mula_cli.evaluation.runner import ImagePrediction, eval_loader, evaluate_model
from mula_cli.io.visualize import prediction_panel, stack_panels
from mula_cli.train.config import TrainConfig
from mula_cli.train.distributed import World, sync_buffers
from mula_cli.utils.manifests import DatasetManifest
from mula_cli.utils.progress import make_progress


def selection_score(miou: float, pckh: float | None) -> float:
    """What best.pt maximises: the mean of mIoU and PCKh (multi-person: pose mAP), both as fractions
    (mIoU alone without pose)."""
    if pckh is None or not math.isfinite(pckh):
        return miou / 100.0
    return (miou / 100.0 + pckh / 100.0) / 2.0


class Validator:
    """Scores the model on (the first ``val_limit`` images of) the val split, sharded across ranks."""

    def __init__(self, cache_path: Path, manifest: DatasetManifest, cfg: TrainConfig, world: World,
                 amp_dtype: torch.dtype | None) -> None:
        self.cache_path, self.manifest, self.cfg, self.world, self.amp_dtype = cache_path, manifest, cfg, world, amp_dtype

    def run(self, model: torch.nn.Module, epoch: int, run_dir: Path | None, quiet: bool) -> dict[str, float]:
        """Validate, write ``vis/epoch_XXX.jpg`` (when ``run_dir`` is given) and return the headline metrics."""
        cfg, world = self.cfg, self.world
        loader = eval_loader(self.cache_path, "val", model.config.input_size, model.config.stride,
                             batch_size=max(1, cfg.batch_size // world.size), workers=min(cfg.workers, 4),
                             limit=cfg.val_limit, rank=world.rank, world=world.size)
        kept: list[ImagePrediction] = []

        def keep(pred: ImagePrediction) -> None:
            if len(kept) < cfg.vis_images:
                kept.append(pred)

        sync_buffers(model, world)  # every rank scores the model rank 0 will save
        was_training = model.training
        with make_progress(quiet or not world.is_main) as bar:
            task = bar.add_task(f"validate epoch {epoch}", total=len(loader.dataset), unit="images")
            result = evaluate_model(model, loader, self.manifest, amp_dtype=self.amp_dtype,
                                    progress=lambda n: bar.advance(task, n), on_prediction=keep)
        model.train(was_training)
        summary = result.summary()
        summary["fwiou"] = float(result.parsing["fwiou"])
        summary["score"] = selection_score(summary["miou"], summary.get("pckh", summary.get("map")))
        if run_dir is not None and kept:
            self._pictures(kept, run_dir / "vis" / f"epoch_{epoch:03d}.jpg")
        return summary

    def _pictures(self, predictions: list[ImagePrediction], path: Path) -> None:
        panels = []
        with CacheFile(self.cache_path) as cache:
            split = cache.split("val")
            index = {sid: i for i, sid in enumerate(split.ids)}
            for pred in predictions:
                i = index[pred.id]
                people = None if pred.people is None else [p.joints for p in pred.people]
                panels.append(prediction_panel(split.image(i), pred.labels, pred.joints, self.manifest,
                                               pred.scores, truth=split.label(i), people=people))
        stack_panels(panels).save(path, quality=90)
