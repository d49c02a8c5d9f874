"""Multi-person check: does a tiny MuLA with the partition branch learn to find and group people?

On synthetic multi-person pictures in the PASCAL-Person-Part layout (1-4 people of varied sizes,
overlapping, cut by the border) it trains hg-tiny with the partition branch on the CPU and scores
held-out pictures with the multi-person protocol (pose mAP, parsing mIoU):

- ``untrained``: the same model before training (same seed, same initialisation);
- ``trained``: after training;
- ``offsets_zeroed``: the trained model with its offset maps set to 0 at test time, so that every
  joint candidate votes for its own position: grouping then has only the joints' positions to go on;
- ``ground_truth_decoding``: the perfect heatmaps and offsets of the held-out pictures decoded by the
  same grouping code (an upper bound that checks the decoder and the metric).

Results go to ``benchmarks/results/multi_person_check.json``, one entry per setting and seed.

    python benchmarks/multi_person_check.py                    # the default budget (about 8 min on 2 cores)
    python benchmarks/multi_person_check.py --epochs 2 --train 100   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mula_cli.codecs.heatmaps import encode_people_heatmaps
from mula_cli.codecs.partition import GroupingConfig, encode_offsets, group_people
from mula_cli.commands.prepare import prepare_synthetic_dataset
from mula_cli.data.cache import CacheFile
from mula_cli.evaluation.multi_person_metrics import MultiPersonPoseAP
from mula_cli.evaluation.runner import eval_loader, evaluate_model
from mula_cli.model.mula import ModelOutput, MultiPersonOutput
from mula_cli.model.weights import load_weights
from mula_cli.train.config import TrainConfig
from mula_cli.train.engine import build_training_model, train
from mula_cli.utils.files import write_json

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "multi_person_check.json"


class ZeroOffsets(nn.Module):
    """A model whose offset maps are replaced by zeros: every candidate votes for where it stands."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.config = model, model.config

    def forward(self, image: Tensor) -> ModelOutput:
        out = self.model(image)
        return MultiPersonOutput(out.pose, out.parsing, [torch.zeros_like(o) for o in out.offsets])


def score(model: nn.Module, cache: Path, manifest, limit: int | None) -> dict[str, float]:
    loader = eval_loader(cache, "val", model.config.input_size, model.config.stride, batch_size=8, workers=0,
                         limit=limit)
    result = evaluate_model(model, loader, manifest)
    return {"map": round(float(result.pose["map"]), 2), "miou": round(float(result.parsing["miou"]), 2),
            "ms_per_picture": round(1000 * result.seconds / max(result.images, 1), 1),
            "predicted_people": int(result.pose["pred_people"]), "gt_people": int(result.pose["gt_people"]),
            "groups": {k: round(float(v), 2) for k, v in result.pose["groups"].items()}}


def ground_truth_decoding(cache: Path, input_size: int, stride: int, limit: int | None) -> dict[str, float]:
    """mAP of decoding each held-out picture's perfect targets (letterboxed at the model's input size)."""
    from mula_cli.data.dataset import MulaDataset, SampleConfig

    data = MulaDataset(cache, "val", SampleConfig(input_size=input_size, stride=stride, train=False), limit=limit)
    metric = MultiPersonPoseAP(data.manifest)
    cells = input_size // stride
    seconds: list[float] = []
    for i in range(len(data)):
        sample = data[i]
        affine = sample["affine"].numpy()
        people = sample["orig_joints"]
        at_input = people @ affine[:, :2].T + affine[:, 2] if len(people) else people
        heat = encode_people_heatmaps(at_input, (cells, cells), stride, 7.0, data.manifest.num_joints)[:-1]
        offsets, _ = encode_offsets(torch.from_numpy(np.asarray(at_input, np.float32)), (cells, cells), stride, 7.0,
                                    input_size)
        start = time.perf_counter()
        found = group_people(heat.numpy(), offsets.numpy(), stride, input_size, GroupingConfig())
        seconds.append(time.perf_counter() - start)
        back = np.linalg.inv(np.vstack([affine, [0, 0, 1]]))[:2]
        pred = [p.transformed(back) for p in found]
        metric.update(np.stack([p.joints for p in pred]) if pred else np.zeros((0, data.manifest.num_joints, 3)),
                      people, gt_boxes=sample["orig_boxes"], person_scores=np.array([p.score for p in pred]))
    return {"map": round(float(metric.compute()["map"]), 2),
            "decode_ms_median": round(1000 * float(np.median(seconds)), 2),
            "decode_ms_max": round(1000 * float(np.max(seconds)), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=2000, help="synthetic training pictures")
    parser.add_argument("--val", type=int, default=100, help="held-out pictures")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--input-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--offset-weight", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, default=None, help="keep the run directory here")
    args = parser.parse_args()

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mula-mp-") as tmp:
        work = args.keep or Path(tmp)
        cache = prepare_synthetic_dataset(work / "tree", train=args.train, val=args.val, seed=args.seed + 100,
                                          multi_person=True, out_path=work / "mp.h5", quiet=True, force=True).path
        with CacheFile(cache) as c:
            manifest = c.manifest
        cfg = TrainConfig(data=str(cache), augment="flip", model="hg-tiny", width=args.width,
                          input_size=args.input_size, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                          offset_weight=args.offset_weight, seed=args.seed, device="cpu",
                          workers=min(2, os.cpu_count() or 1), val_every=args.epochs, project=str(work / "runs"),
                          name="mp", log_every=25)
        torch.manual_seed(args.seed)
        untrained = build_training_model(cfg, manifest).eval()
        results: dict[str, Any] = {"untrained": score(untrained, cache, manifest, None)}
        train_start = time.perf_counter()
        run = train(cfg, quiet=False)
        train_seconds = time.perf_counter() - train_start
        model, config, _ = load_weights(run / "weights" / "last.pt")
        model.eval()
        results["trained"] = score(model, cache, manifest, None)
        results["offsets_zeroed"] = score(ZeroOffsets(model), cache, manifest, None)
        results["ground_truth_decoding"] = ground_truth_decoding(cache, config.input_size, config.stride, None)
    entry = {"settings": vars(args) | {"keep": str(args.keep) if args.keep else None},
             "model": {"preset": config.preset, "width": config.width, "stages": config.stages,
                       "input_size": config.input_size, "partition": config.partition},
             "results": results, "train_seconds": round(train_seconds, 1),
             "total_seconds": round(time.perf_counter() - started, 1),
             "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count()}
    print(json.dumps(entry, indent=2))
    runs = json.loads(RESULTS.read_text()).get("runs", {}) if RESULTS.is_file() else {}
    key = f"train{args.train}_epochs{args.epochs}_w{args.width}_s{args.input_size}_ow{args.offset_weight:g}_seed{args.seed}"
    runs[key] = entry  # one entry per setting: reruns replace their own, other settings stay
    write_json(RESULTS, {"runs": runs})


if __name__ == "__main__":
    main()
