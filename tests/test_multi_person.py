"""Multi-person MuLA end to end: the partition branch, its targets and loss, training, `evaluate`,
`predict`, the Predictor and exported files on a synthetic PASCAL-Person-Part tree."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mula_cli.data.dataset import MulaDataset, SampleConfig
from mula_cli.model.loss import mula_loss
from mula_cli.model.presets import PRESET_FIELDS, build_model, dataset_overrides, preset_config
from mula_cli.transforms.affine import AugmentConfig
from mula_cli.utils.manifests import load_manifest

from conftest import run_cli

PASCAL = load_manifest("pascal_person_part")
HOURGLASS_PRESETS = [name for name, fields in PRESET_FIELDS.items() if fields["encoder"] == "hourglass"]


@pytest.mark.parametrize("preset", HOURGLASS_PRESETS)
def test_every_hourglass_preset_takes_the_partition_branch_on_multi_person_data(preset: str) -> None:
    cfg = preset_config(preset, **dataset_overrides(PASCAL))
    assert cfg.partition
    assert not preset_config(preset, **dataset_overrides(load_manifest("lip"))).partition or \
        PRESET_FIELDS[preset].get("partition")


def test_paper_pair_presets_have_the_branch_and_differ_only_in_interaction() -> None:
    mula, baseline = preset_config("hg-5s-pascal"), preset_config("hg-5x1u-pascal")
    assert mula.partition and baseline.partition and mula.stages == baseline.stages == 5
    assert mula.variant == "mula" and baseline.variant == "independent"


def test_offsets_come_out_of_every_stage_and_feed_the_next() -> None:
    torch.manual_seed(0)
    model = build_model("hg-tiny", width=16, **dataset_overrides(PASCAL))  # training mode: batch statistics
    image = torch.randint(0, 256, (2, 3, 128, 128), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(image)
    assert len(out.offsets) == 2 and out.offsets[0].shape == (2, 28, 32, 32)
    assert model.stages[0].pose_mapping.predictions[1].in_channels == 28  # fed forward with the heatmaps
    # the branch's weights start near zero: every pixel first votes for itself
    assert out.offsets[0].abs().mean() < 0.01
    # the second stage sees the first stage's offsets: perturb the first offset head only
    with torch.no_grad():
        model.stages[0].offset_head.bias += 1.0
        again = model(image)
    assert torch.equal(again.pose[0], out.pose[0]) and not torch.equal(again.offsets[1], out.offsets[1])


def test_lip_models_keep_the_authors_layout() -> None:
    model = build_model("hg-tiny", width=16)
    assert not any("offset" in key for key in model.state_dict())
    assert model(torch.zeros(1, 3, 128, 128)).offsets == []


def test_loss_adds_a_masked_offset_term_per_stage() -> None:
    torch.manual_seed(0)
    model = build_model("hg-tiny", width=16, **dataset_overrides(PASCAL))
    out = model(torch.randint(0, 256, (2, 3, 128, 128)))
    heat = torch.zeros(2, 15, 32, 32)
    labels = torch.zeros(2, 128, 128, dtype=torch.long)
    target = torch.full((2, 28, 32, 32), 0.5)
    mask = torch.zeros(2, 14, 32, 32)
    _, none = mula_loss(out, heat, labels, offsets=target, offset_mask=mask)
    assert float(none["s1/offsets"].detach()) == 0.0  # no cell has a target
    mask[0, 3, 10, 10] = 1.0
    total, parts = mula_loss(out, heat, labels, offsets=target, offset_mask=mask, offset_weight=2.0)
    predicted = out.offsets[0][0, 6:8, 10, 10]
    expected = (0.5 * (predicted - 0.5) ** 2).mean()  # smooth L1 below 1, averaged over the pair
    assert torch.allclose(parts["s1/offsets"], expected, atol=1e-6)
    without, _ = mula_loss(out, heat, labels, offsets=target, offset_mask=mask, offset_weight=0.0)
    assert torch.allclose(total - without, 2.0 * (parts["s1/offsets"] + parts["s2/offsets"]))
    with pytest.raises(ValueError, match="offsets"):
        mula_loss(out, heat, labels)


@pytest.fixture(scope="module")
def pascal_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mula_cli.commands.prepare import prepare_synthetic_dataset

    root = tmp_path_factory.mktemp("ppp")
    return prepare_synthetic_dataset(root / "tree", train=6, val=3, seed=3, multi_person=True,
                                     out_path=root / "ppp.h5", quiet=True).path


def test_training_samples_carry_offset_targets_that_follow_the_mirror(pascal_cache: Path) -> None:
    plain = MulaDataset(pascal_cache, "train", SampleConfig(input_size=128, augment=AugmentConfig(
        crop_person=False, flip_prob=0.0)))
    mirrored = MulaDataset(pascal_cache, "train", SampleConfig(input_size=128, augment=AugmentConfig(
        crop_person=False, flip_prob=1.0)))
    a, b = plain[0], mirrored[0]
    assert a["offsets"].shape == (28, 32, 32) and a["offset_mask"].shape == (14, 32, 32)
    assert a["offset_mask"].sum() > 0
    # the mirrored sample's targets are the plain ones mirrored: x negated, left and right swapped
    flip = PASCAL.joint_flip_index()
    swapped = b["offsets"].reshape(14, 2, 32, 32)[flip].flip(-1)
    swapped[:, 0] *= -1
    both = (a["offset_mask"] * b["offset_mask"][flip].flip(-1)).bool()
    both2 = both[:, None].expand(14, 2, 32, 32)
    # the letterbox is symmetric up to one pixel: compare where both have a target, loosely
    assert torch.allclose(swapped[both2], a["offsets"].reshape(14, 2, 32, 32)[both2], atol=0.05)
    assert "offsets" not in MulaDataset(pascal_cache, "val", SampleConfig(input_size=128, train=False))[0]


@pytest.fixture(scope="module")
def trained(pascal_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    project = tmp_path_factory.mktemp("runs")
    result = run_cli("train", "--data", pascal_cache, "--model", "hg-tiny", "--width", "16", "--epochs", "1",
                     "--batch-size", "2", "--workers", "0", "--val-every", "1", "--project", project, "--name",
                     "mp", "--lr", "1e-3", "-q")
    assert result.exit_code == 0, result.output
    return project / "mp"


def test_train_logs_offset_losses_and_pose_map(trained: Path) -> None:
    header = (trained / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"offset_loss", "s1_offsets", "s2_offsets", "val_map", "s1_offsets_grad_pose"} <= set(header)
    assert "val_pckh" not in header
    assert (trained / "vis" / "epoch_001.jpg").is_file()  # validation pictures draw every person found
    row = (trained / "metrics.csv").read_text().splitlines()[1].split(",")
    assert np.isfinite(float(row[header.index("val_map")]))


def test_evaluate_prints_parsing_and_pose_map_with_groups(trained: Path, pascal_cache: Path, tmp_path: Path) -> None:
    result = run_cli("evaluate", trained / "weights" / "last.pt", "--data", pascal_cache, "--workers", "0",
                     "--save-dir", tmp_path / "ev")
    assert result.exit_code == 0, result.output
    for text in ("mIoU", "Upper-arms", "mAP", "Shoulder", "Ankle", "AP per joint", "head-top to neck"):
        assert text in result.output
    doc = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert len(doc["parsing"]["class_iou"]) == 7 and 0.0 <= doc["parsing"]["miou"] <= 100.0
    pose = doc["pose"]
    assert set(pose) >= {"map", "joint_ap", "groups", "reference", "threshold"}
    assert len(pose["joint_ap"]) == 14 and pose["threshold"] == 0.5 and 0.0 <= pose["map"] <= 100.0
    people = json.loads((tmp_path / "ev" / "pred_people_synthetic_multi_person.json").read_text())
    assert isinstance(people, list) and len(people) == pose["pred_people"]
    assert all(len(p["keypoints"]) == 3 * 14 and "image_id" in p and "score" in p for p in people)


def test_predict_writes_one_entry_per_person_in_coco_layout(trained: Path, pascal_cache: Path, tmp_path: Path) -> None:
    from mula_cli.data.cache import CacheFile
    from mula_cli.inference.predictor import Predictor

    with CacheFile(pascal_cache) as cache:
        cache.split("val").image(0).save(tmp_path / "crowd.jpg")
    weights = trained / "weights" / "last.pt"
    result = run_cli("predict", tmp_path / "crowd.jpg", "--weights", weights, "--pose", tmp_path / "p.json",
                     "--vis", tmp_path / "v.jpg", "--out", tmp_path / "l.png")
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "p.json").read_text())
    assert doc["categories"][0]["keypoints"] == list(PASCAL.joints)
    for person in doc["people"]:
        assert len(person["keypoints"]) == 3 * 14 and person["category_id"] == 1
        assert len(person["bbox"]) == 4 and "score" in person
    prediction = Predictor(weights, device="cpu")("crowd.jpg" if False else tmp_path / "crowd.jpg")
    assert prediction.people is not None and len(prediction.people) == len(doc["people"])
    for person in prediction.people:
        assert person.joints.shape == (14, 3)


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_exported_multi_person_models_carry_the_offset_maps(trained: Path, tmp_path: Path, fmt: str) -> None:
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    out = tmp_path / f"m.{fmt}"
    result = run_cli("export", trained / "weights" / "last.pt", "--format", fmt, "--out", out)
    assert result.exit_code == 0, result.output
    from mula_cli.inference.runtime import load_exported

    exported = load_exported(out)
    outputs = exported.raw(torch.randint(0, 256, (2, 3, 128, 128)).float())  # ONNX: the exported batch of 2
    assert len(outputs) == 3 and outputs[2].shape == (2, 28, 32, 32)
    assert exported(torch.zeros(2, 3, 128, 128)).offsets[0].shape == (2, 28, 32, 32)


def test_grouping_and_reference_options_reach_the_decoder_and_the_metric(trained: Path, pascal_cache: Path,
                                                                         tmp_path: Path) -> None:
    weights = trained / "weights" / "last.pt"
    result = run_cli("evaluate", weights, "--data", pascal_cache, "--workers", "0", "--json", "--pose-reference", "box",
                     "--min-score", "0.0", "--min-joints", "1", "--save-dir", tmp_path / "ev")
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert doc["pose"]["reference"].startswith("box: 0.13 x the diagonal") and "head-top" not in doc["pose"]["reference"]
    assert doc["pose"]["reference_name"] == "box"
    # with every local maximum a candidate and single joints kept, even a barely trained model finds people
    assert doc["pose"]["pred_people"] > 0
    for bad in (["--pose-reference", "torso"], ["--min-joints", "0"], ["--group-distance", "5"]):
        refused = run_cli("evaluate", weights, "--data", pascal_cache, "--workers", "0", *bad)
        assert refused.exit_code == 2 and "Traceback" not in refused.output, (bad, refused.output)


def _decode_ground_truth(cache: Path, input_size: int, min_people: int) -> tuple[float, int]:
    """mAP of decoding the perfect targets of the val pictures with at least ``min_people`` people."""
    from mula_cli.codecs.heatmaps import encode_people_heatmaps
    from mula_cli.codecs.partition import GroupingConfig, encode_offsets, group_people
    from mula_cli.evaluation.multi_person_metrics import MultiPersonPoseAP

    data = MulaDataset(cache, "val", SampleConfig(input_size=input_size, train=False))
    metric, used, cells = MultiPersonPoseAP(PASCAL), 0, input_size // 4
    for i in range(len(data)):
        sample = data[i]
        people = sample["orig_joints"]
        if len(people) < min_people:
            continue
        affine = sample["affine"].numpy()
        at_input = (people @ affine[:, :2].T + affine[:, 2]).astype(np.float32)
        heat = encode_people_heatmaps(at_input, (cells, cells), 4, 7.0, 14)[:-1]
        offsets, _ = encode_offsets(torch.from_numpy(at_input), (cells, cells), 4, 7.0, input_size)
        found = group_people(heat.numpy(), offsets.numpy(), 4, input_size, GroupingConfig())
        back = np.linalg.inv(np.vstack([affine, [0, 0, 1]]))[:2]
        pred = [p.transformed(back) for p in found]
        metric.update(np.stack([p.joints for p in pred]) if pred else np.zeros((0, 14, 3)), people,
                      gt_boxes=sample["orig_boxes"], person_scores=np.array([p.score for p in pred]))
        used += 1
    return float(metric.compute()["map"]), used


def test_perfect_maps_of_synthetic_crowds_decode_to_every_person(tmp_path: Path) -> None:
    """The generator's own pictures (people cut by the border, overlapping, of varied sizes), at the
    paper's input size: perfect heatmaps and offsets give back every person, crowds of 4 included."""
    from mula_cli.commands.prepare import prepare_synthetic_dataset

    cache = prepare_synthetic_dataset(tmp_path / "tree", train=1, val=60, seed=11, multi_person=True,
                                      out_path=tmp_path / "crowds.h5", quiet=True).path
    everyone, pictures = _decode_ground_truth(cache, 256, 1)
    crowds, crowded = _decode_ground_truth(cache, 256, 4)
    assert pictures >= 50 and crowded >= 5, (pictures, crowded)  # a picture may hold nobody labelled
    assert everyone >= 99.0 and crowds >= 99.0, (everyone, crowds, crowded)


def test_training_on_an_unprepared_pascal_names_the_prepare_command() -> None:
    result = run_cli("train", "--data", "pascal-person-part", "--epochs", "1")
    assert result.exit_code == 2 and "mula prepare pascal-person-part" in result.output
    result = run_cli("train", "--data", "synthetic_multi_person", "--epochs", "1")
    assert result.exit_code == 2 and "mula prepare synthetic --multi-person" in result.output


def test_multi_scale_testing_fuses_the_offsets_too(trained: Path, pascal_cache: Path) -> None:
    """`evaluate --scales --flip` runs on a multi-person model and says so (the fusion's math: the unit
    test below)."""
    result = run_cli("evaluate", trained / "weights" / "last.pt", "--data", pascal_cache, "--workers", "0",
                     "--scales", "0.75,1", "--flip", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output[result.output.index("{"):])
    assert doc["protocol"]["scales"] == [0.75, 1.0] and doc["protocol"]["parsing_flip"] is True
    assert 0.0 <= doc["pose"]["map"] <= 100.0 and doc["pose"]["pred_people"] >= 0


class _PerfectViews(torch.nn.Module):
    """Stands in for a model: returns, call by call, the perfect heatmaps and offsets of each window."""

    def __init__(self, outputs: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        super().__init__()
        from types import SimpleNamespace

        self.outputs = list(outputs)
        self.config = SimpleNamespace(num_joints=14, stride=4, input_size=128)

    def forward(self, image: torch.Tensor):
        from mula_cli.model.mula import MultiPersonOutput

        heat, offsets = self.outputs.pop(0)
        parsing = torch.zeros(1, 7, 32, 32)
        return MultiPersonOutput([heat[None]], [parsing], [offsets[None]])


def test_scaled_views_offsets_are_brought_back_in_base_window_units() -> None:
    """Each window's offsets are in that window's pixels (over half the input side): fused into the base
    window they must be divided by the window's scale, so perfect offsets of every view fuse into the
    base window's perfect offsets."""
    from PIL import Image

    from mula_cli.codecs.heatmaps import encode_people_heatmaps
    from mula_cli.codecs.partition import encode_offsets
    from mula_cli.inference.batch import InferenceOptions, ScaleViews, predict_batch
    from mula_cli.transforms.affine import apply_affine, letterbox, scale_views

    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (180, 240, 3), dtype=np.uint8))
    person = np.stack([rng.uniform(80, 160, 14), rng.uniform(40, 150, 14)], axis=1)[None]  # original pixels
    scales = (0.6, 1.0)  # not symmetric about 1: a missing rescale could not cancel out
    base, base_affine = letterbox(img, 128)
    views, affines = scale_views(img, 128, scales)

    def perfect(affine: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        at = torch.from_numpy(apply_affine(person, affine).astype(np.float32))
        offsets, _ = encode_offsets(at, (32, 32), 4, 7.0, 128)
        return encode_people_heatmaps(at, (32, 32), 4, 7.0, 14), offsets

    model = _PerfectViews([perfect(a) for a in affines])
    pred = predict_batch(model, torch.from_numpy(base.transpose(2, 0, 1).copy())[None], PASCAL,
                         InferenceOptions(pose_flip=False, scales=scales),
                         views=ScaleViews(torch.from_numpy(views.transpose(0, 3, 1, 2).copy())[None], affines[None],
                                          base_affine[None]))
    want_heat, want = perfect(base_affine)
    core = (want_heat[:14] > 0.6).repeat_interleave(2, dim=0)  # well inside every view's support
    assert core.sum() > 50
    assert torch.allclose(pred.offsets[0][core], want[core], atol=0.02), \
        float((pred.offsets[0][core] - want[core]).abs().max())


def test_video_records_list_every_person_of_a_multi_person_model(trained: Path, tmp_path: Path) -> None:
    pytest.importorskip("av")
    from videos import read_video, write_video

    clip = write_video(tmp_path / "crowd.mp4", frames=6, fps=25, size=(96, 64))
    result = run_cli("predict", clip, "--weights", trained / "weights" / "last.pt", "--vis", tmp_path / "v.mp4",
                     "--pose", tmp_path / "p.jsonl", "--min-score", "0", "--min-joints", "1", "-q")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    frames, _, _ = read_video(tmp_path / "v.mp4")
    assert len(records) == len(frames) == 6
    assert any(len(r["people"]) > 1 for r in records)  # every local maximum counts: several people
    for record in records:
        for person in record["people"]:
            assert {j["name"] for j in person["joints"]} <= set(PASCAL.joints) and "score" in person


def test_runs_saved_without_the_partition_branch_resume_as_they_were(pascal_cache: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A PASCAL run checkpointed before the branch existed continues without it (no state-dict traceback),
    and its weights used as --weights for a new multi-person run get a one-line reason."""
    from mula_cli.model import presets
    from mula_cli.train import engine

    def without_branch(manifest):
        return {**presets.dataset_overrides(manifest), "partition": False}

    args = ["--data", pascal_cache, "--model", "hg-tiny", "--width", "16", "--batch-size", "2", "--workers", "0",
            "--val-every", "5", "--project", tmp_path, "-q"]
    with monkeypatch.context() as patch:
        patch.setattr(engine, "dataset_overrides", without_branch)
        assert run_cli("train", *args, "--epochs", "1", "--name", "old").exit_code == 0
    last = tmp_path / "old" / "weights" / "last.pt"
    resumed = run_cli("train", "--resume", last, "--epochs", "2", "-q")
    assert resumed.exit_code == 0, resumed.output
    started = run_cli("train", *args, "--epochs", "1", "--name", "new", "--weights", last)
    assert started.exit_code == 2 and "partition branch" in started.output, started.output
