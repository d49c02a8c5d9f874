"""`mula predict --pose-format`: OpenPose and COCO keypoints for the tools downstream, mapped by the manifests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mula_cli.io.pose_records import BODY_25, COCO_17, COCO_18
from mula_cli.utils.errors import MulaError
from mula_cli.utils.manifests import load_manifest, manifest_from_dict

from conftest import run_cli

LIP = load_manifest("lip")
PASCAL = load_manifest("pascal_person_part")
# what the manifests leave out: the face and the feet, which MPII/LIP and PASCAL have no joints for
BODY_25_MISSING = {"Nose", "REye", "LEye", "REar", "LEar", "LBigToe", "LSmallToe", "LHeel", "RBigToe", "RSmallToe",
                   "RHeel"}
COCO_17_MISSING = {"nose", "left_eye", "right_eye", "left_ear", "right_ear"}


def _picture(folder: Path, name: str = "000000000042.jpg", size: tuple[int, int] = (40, 56)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(folder / name)
    return folder / name


def _predict(picture: Path, weights: Path, out: Path, *flags: str) -> object:
    result = run_cli("predict", picture, "--weights", weights, "--pose", out, "-q", *flags)
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text())


def _triples(flat: list[float]) -> list[tuple[float, float, float]]:
    return [tuple(flat[i:i + 3]) for i in range(0, len(flat), 3)]


@pytest.fixture(scope="module")
def single(tiny_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict[str, dict]]:
    """A picture, the LIP model's own pose JSON for it, and its joints by name."""
    folder = tmp_path_factory.mktemp("single")
    picture = _picture(folder)
    own = _predict(picture, tiny_weights, folder / "own.json")
    return picture, own, {j["name"]: j for j in own["joints"]}


def test_openpose_body_25_is_the_models_joints_in_openposes_places(single, tiny_weights: Path, tmp_path: Path) -> None:
    picture, _, joints = single
    doc = _predict(picture, tiny_weights, tmp_path / "op.json", "--pose-format", "openpose")
    assert doc["version"] == 1.3 and (doc["canvas_width"], doc["canvas_height"]) == (40, 56)
    assert len(doc["people"]) == 1  # a single-person model: one person
    person = doc["people"][0]
    assert person["person_id"] == [-1]
    for empty in ("face_keypoints_2d", "hand_left_keypoints_2d", "hand_right_keypoints_2d", "pose_keypoints_3d"):
        assert person[empty] == []
    flat = person["pose_keypoints_2d"]
    assert len(flat) == 25 * 3 and all(isinstance(v, float) for v in flat)  # what OpenPose readers reshape
    keypoints = dict(zip(BODY_25, _triples(flat)))
    mapping = LIP.pose_formats["body_25"]
    assert set(BODY_25) - set(mapping) == BODY_25_MISSING
    for name in BODY_25_MISSING:
        assert keypoints[name] == (0.0, 0.0, 0.0), name
    for name, (source,) in mapping.items():
        j = joints[source]
        assert keypoints[name] == (j["x"], j["y"], min(max(j["score"], 0.0), 1.0)), name
    # the table itself, spelled out for the joints whose names differ
    assert keypoints["RWrist"][:2] == (joints["R-wrist"]["x"], joints["R-wrist"]["y"])
    assert keypoints["LAnkle"][:2] == (joints["L-ankle"]["x"], joints["L-ankle"]["y"])
    assert keypoints["Neck"][:2] == (joints["thorax"]["x"], joints["thorax"]["y"])
    assert keypoints["MidHip"][:2] == (joints["pelvis"]["x"], joints["pelvis"]["y"])


def test_openpose_coco18_and_coco_17(single, tiny_weights: Path, tmp_path: Path) -> None:
    picture, own, joints = single
    doc = _predict(picture, tiny_weights, tmp_path / "op18.json", "--pose-format", "openpose-coco18")
    keypoints = dict(zip(COCO_18, _triples(doc["people"][0]["pose_keypoints_2d"])))
    assert len(doc["people"][0]["pose_keypoints_2d"]) == 18 * 3
    assert keypoints["Neck"][:2] == (joints["thorax"]["x"], joints["thorax"]["y"])
    assert keypoints["RHip"][:2] == (joints["R-hip"]["x"], joints["R-hip"]["y"])  # index 8, where BODY_25 has MidHip
    assert keypoints["Nose"] == keypoints["LEar"] == (0.0, 0.0, 0.0)

    results = _predict(picture, tiny_weights, tmp_path / "coco.json", "--pose-format", "coco")
    assert isinstance(results, list) and len(results) == 1
    record = results[0]
    assert set(record) >= {"image_id", "category_id", "keypoints", "score"}
    assert record["image_id"] == 42 and record["category_id"] == 1  # 000000000042.jpg: COCO's image id
    assert len(record["keypoints"]) == 51
    assert record["score"] == pytest.approx(np.mean([j["score"] for j in own["joints"]]), abs=1e-4)
    coco = dict(zip(COCO_17, _triples(record["keypoints"])))
    mapping = LIP.pose_formats["coco_17"]
    assert set(COCO_17) - set(mapping) == COCO_17_MISSING
    for name in COCO_17_MISSING:
        assert coco[name] == (0, 0, 0), name
    for name, (source,) in mapping.items():
        assert coco[name] == (joints[source]["x"], joints[source]["y"], 2), name
    assert coco["right_wrist"][:2] == (joints["R-wrist"]["x"], joints["R-wrist"]["y"])
    assert coco["left_hip"][:2] == (joints["L-hip"]["x"], joints["L-hip"]["y"])


@pytest.fixture(scope="module")
def multi_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained multi-person hg-tiny (PASCAL-Person-Part's 7 classes and 14 joints)."""
    import torch

    from mula_cli.model.presets import build_model
    from mula_cli.model.weights import save_weights

    torch.manual_seed(0)
    model = build_model("hg-tiny", num_classes=PASCAL.num_classes, num_joints=PASCAL.num_joints, width=16,
                        partition=True, class_names=PASCAL.classes, joint_names=PASCAL.joints)
    return save_weights(tmp_path_factory.mktemp("mp") / "mp.pt", model, extra={"manifest": PASCAL.to_json()})


def test_multi_person_models_give_one_entry_per_person(multi_weights: Path, tmp_path: Path) -> None:
    picture = _picture(tmp_path, "crowd.png", (64, 48))
    loose = ("--min-score", "0", "--min-joints", "1")  # an untrained model: every local maximum is someone
    own = _predict(picture, multi_weights, tmp_path / "own.json", *loose)["people"]
    assert len(own) > 1
    doc = _predict(picture, multi_weights, tmp_path / "op.json", "--pose-format", "openpose", *loose)
    coco = _predict(picture, multi_weights, tmp_path / "coco.json", "--pose-format", "coco", *loose)
    assert len(doc["people"]) == len(coco) == len(own)
    mapping = PASCAL.pose_formats["body_25"]
    assert mapping["MidHip"] == ("R-hip", "L-hip") and mapping["Neck"] == ("neck",)
    compared = 0
    for mine, theirs, result in zip(own, doc["people"], coco):
        joints = {j["name"]: j for j in mine["joints"]}
        keypoints = dict(zip(BODY_25, _triples(theirs["pose_keypoints_2d"])))
        for name in BODY_25:
            sources = mapping.get(name, ())
            if not sources or any(s not in joints for s in sources):  # not mapped, or not found
                assert keypoints[name] == (0.0, 0.0, 0.0), name
            elif len(sources) == 1:
                assert keypoints[name][:2] == (joints[sources[0]]["x"], joints[sources[0]]["y"]), name
                compared += 1
            else:  # MidHip: between the hips, as OpenPose's
                want = np.mean([[joints[s]["x"], joints[s]["y"]] for s in sources], axis=0)
                assert keypoints[name][:2] == pytest.approx(tuple(want), abs=0.011), name
        assert result["score"] == mine["score"] and result["image_id"] == "crowd"
        triples = dict(zip(COCO_17, _triples(result["keypoints"])))
        right = joints.get("R-wrist")
        assert triples["right_wrist"] == ((right["x"], right["y"], 2) if right else (0, 0, 0))
    assert compared >= len(own)  # every person has joints in OpenPose's places


def test_video_writes_one_openpose_document_per_frame(tiny_weights: Path, tmp_path: Path) -> None:
    pytest.importorskip("av")
    from videos import write_video

    clip = write_video(tmp_path / "clip.mp4", frames=4, fps=25, size=(48, 40))
    assert run_cli("predict", clip, "--weights", tiny_weights, "--pose", tmp_path / "own.jsonl", "-q").exit_code == 0
    for fmt in ("openpose", "coco"):
        result = run_cli("predict", clip, "--weights", tiny_weights, "--pose", tmp_path / f"{fmt}.jsonl",
                         "--pose-format", fmt, "-q")
        assert result.exit_code == 0, result.output
    own = [json.loads(line) for line in (tmp_path / "own.jsonl").read_text().splitlines()]
    lines = [json.loads(line) for line in (tmp_path / "openpose.jsonl").read_text().splitlines()]
    coco = [json.loads(line) for line in (tmp_path / "coco.jsonl").read_text().splitlines()]
    assert len(lines) == len(coco) == len(own) == 4
    for mine, doc, results in zip(own, lines, coco):
        assert doc["version"] == 1.3 and doc["frame"] == mine["frame"] and doc["time"] == mine["time"]
        assert (doc["canvas_width"], doc["canvas_height"]) == (48, 40) and len(doc["people"]) == 1
        flat = doc["people"][0]["pose_keypoints_2d"]
        assert len(flat) == 75
        keypoints = dict(zip(BODY_25, _triples(flat)))
        joints = {j["name"]: j for j in mine["people"][0]["joints"]}
        assert keypoints["RWrist"][:2] == (joints["R-wrist"]["x"], joints["R-wrist"]["y"])
        assert keypoints["Neck"][:2] == (joints["thorax"]["x"], joints["thorax"]["y"])
        assert keypoints["Nose"] == (0.0, 0.0, 0.0)
        assert [r["image_id"] for r in results] == [mine["frame"]] and len(results[0]["keypoints"]) == 51


def _weights_with(manifest: dict, tiny_weights: Path, path: Path) -> Path:
    from mula_cli.model.weights import load_weights, save_weights

    model, _, extra = load_weights(tiny_weights)
    return save_weights(path, model, extra={**extra, "manifest": json.dumps(manifest)})


def test_a_manifest_without_a_mapping_is_one_line_and_exit_2(single, tiny_weights: Path, tmp_path: Path) -> None:
    picture = single[0]
    raw = {k: v for k, v in json.loads(LIP.to_json()).items() if k != "pose_formats"}
    custom = _weights_with({**raw, "name": "my_people"}, tiny_weights, tmp_path / "custom.pt")
    result = run_cli("predict", picture, "--weights", custom, "--pose", tmp_path / "p.json", "--pose-format",
                     "openpose")
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if "error" in line]
    assert len(lines) == 1 and "'my_people'" in lines[0] and "pose_formats" in lines[0] and "body_25" in lines[0]
    assert not (tmp_path / "p.json").exists()
    # weights saved before the manifests had the mapping carry LIP's joints under LIP's name: today's LIP maps them
    old = _weights_with(raw, tiny_weights, tmp_path / "old.pt")
    doc = _predict(picture, old, tmp_path / "old.json", "--pose-format", "openpose")
    assert doc["people"][0]["pose_keypoints_2d"] == _predict(picture, tiny_weights, tmp_path / "new.json",
                                                             "--pose-format", "openpose")["people"][0]["pose_keypoints_2d"]


def test_manifest_mappings_are_checked_against_the_joints_and_the_format() -> None:
    from mula_cli.io.pose_records import keypoint_layout

    raw = json.loads(LIP.to_json())
    wrong_joint = {**raw, "pose_formats": {"body_25": {"Neck": "throax"}}}
    with pytest.raises(MulaError, match="'Neck' to 'throax', which is not one of its joints"):
        manifest_from_dict(wrong_joint)
    wrong_name = manifest_from_dict({**raw, "pose_formats": {"body_25": {"Nek": "thorax"}}})
    with pytest.raises(MulaError, match="'Nek', which is not a body_25 keypoint"):
        keypoint_layout(wrong_name, "openpose")
    for pose_format in ("openpose", "openpose-coco18", "coco"):
        for name in ("lip", "pascal_person_part", "synthetic", "synthetic_multi_person"):
            layout = keypoint_layout(load_manifest(name), pose_format)
            assert sum(bool(s) for s in layout.sources) >= 12, (name, pose_format)


def test_confidences_are_clipped_and_joints_not_found_are_zero() -> None:
    from mula_cli.io.pose_records import coco_results, keypoint_layout, openpose_document

    joints = np.array([[10.0 + j, 20.0 + j, 0.5] for j in range(PASCAL.num_joints)])
    index = {name: j for j, name in enumerate(PASCAL.joints)}
    joints[index["R-wrist"], 2], joints[index["L-wrist"], 2] = -0.25, 1.75  # heatmap peaks overshoot both ways
    whole = joints.copy()
    whole[index["R-hip"], 2] = 0.25
    joints[index["L-hip"]] = np.nan  # not found: LHip, and MidHip (the mean of both hips), are missing
    doc = openpose_document([(joints, 0.9), (whole, 0.8)], keypoint_layout(PASCAL, "openpose"), 64, 48)
    assert len(doc["people"]) == 2
    keypoints = dict(zip(BODY_25, _triples(doc["people"][1]["pose_keypoints_2d"])))
    assert keypoints["MidHip"] == (18.0, 28.0, 0.25)  # between R-hip (21, 31) and L-hip (15, 25); the lower score
    keypoints = dict(zip(BODY_25, _triples(doc["people"][0]["pose_keypoints_2d"])))
    assert keypoints["RWrist"] == (20.0, 30.0, 0.0) and keypoints["LWrist"] == (14.0, 24.0, 1.0)
    assert keypoints["LHip"] == keypoints["MidHip"] == (0.0, 0.0, 0.0)
    assert keypoints["RHip"] == (21.0, 31.0, 0.5) and keypoints["Neck"] == (11.0, 21.0, 0.5)
    (record,) = coco_results(5, [(joints, 0.9)], keypoint_layout(PASCAL, "coco"))
    coco = dict(zip(COCO_17, _triples(record["keypoints"])))
    assert coco["left_hip"] == (0, 0, 0) and coco["right_hip"] == (21.0, 31.0, 2) and record["score"] == 0.9
    assert dict(zip(COCO_17, record["keypoint_scores"]))["right_wrist"] == -0.25  # the model's own score, as is
