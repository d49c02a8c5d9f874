"""The procedural synthetic data: exact layouts, determinism, and labels a model can learn from."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mula_cli.data.matfile import read_person_joints_mat
from mula_cli.data.synthetic.render import (
    DISTRACTOR_SEGMENT,
    FINE_CLASSES,
    MAX_PEOPLE,
    OCCLUDER_SEGMENT,
    PART_SLOTS,
)
from mula_cli.data.synthetic.writer import (
    GenerationStats,
    generate_lip_tree,
    generate_pascal_tree,
    lip_scene,
    pascal_scene,
)
from mula_cli.utils.errors import MulaError
from mula_cli.utils.manifests import load_manifest, manifest_from_dict

from conftest import run_cli

LIP = load_manifest("synthetic")
PASCAL = load_manifest("synthetic_multi_person")
SEED = 11
SCENES = 220  # single-person scenes inspected in memory (about 3 s)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def lip_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lip") / "LIP"
    generate_lip_tree(root, {"train": 24, "val": 8, "test": 4}, SEED, LIP)
    return root


@pytest.fixture(scope="module")
def pascal_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pascal") / "PASCAL"
    generate_pascal_tree(root, {"train": 10, "val": 5}, SEED, PASCAL)
    return root


@pytest.fixture(scope="module")
def scenes() -> list:
    """(yaw, joints {name: (x, y, inside, occluded)}, label, segment, grayscale) of many LIP scenes."""
    out = []
    for i in range(SCENES):
        _, scene = lip_scene(SEED, "train", i)
        person = scene.people[0]
        joints = {name: person.joint(name, scene.segment) for name in LIP.joints}
        out.append((person.figure.yaw, joints, scene.label, scene.segment, scene.grayscale))
    return out


def _cls(name: str) -> int:
    return FINE_CLASSES.index(name)


def _window(label: np.ndarray, x: float, y: float, r: int = 2) -> np.ndarray:
    xi, yi = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))
    return label[max(yi - r, 0): yi + r + 1, max(xi - r, 0): xi + r + 1]


# ----------------------------------------------------------------------------------------------------------------
# Determinism


def test_same_seed_same_bytes_whatever_the_worker_count(tmp_path: Path) -> None:
    counts = {"train": 5, "val": 3, "test": 2}
    generate_lip_tree(tmp_path / "a", counts, 3, LIP, workers=1)
    generate_lip_tree(tmp_path / "b", counts, 3, LIP, workers=2)
    generate_lip_tree(tmp_path / "c", counts, 4, LIP, workers=1)
    a, b, c = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert len(a) == (5 + 3 + 2) + (5 + 3) + 3 + 2  # images, label maps, id lists, pose CSVs
    assert a == b
    images_a = sorted(v for k, v in a.items() if k.endswith(".jpg"))
    images_c = sorted(v for k, v in c.items() if k.endswith(".jpg"))
    assert not set(images_a) & set(images_c), "another seed must give other images"

    generate_pascal_tree(tmp_path / "p1", {"train": 4, "val": 2}, 3, PASCAL, workers=1)
    generate_pascal_tree(tmp_path / "p2", {"train": 4, "val": 2}, 3, PASCAL, workers=2)
    p1, p2 = _files(tmp_path / "p1"), _files(tmp_path / "p2")
    assert len(p1) == 6 * 3 + 2 and p1 == p2


def test_progress_and_speed_are_reported(tmp_path: Path) -> None:
    seen: list[int] = []
    stats = generate_lip_tree(tmp_path / "lip", {"train": 30, "val": 0, "test": 0}, 1, LIP, progress=seen.append)
    assert isinstance(stats, GenerationStats) and stats.images == 30 and sum(seen) == 30
    assert stats.seconds > 0 and stats.images_per_s == pytest.approx(30 / stats.seconds)
    print(f"synthetic LIP generation: {stats.images_per_s:.0f} images/s on one core")


# ----------------------------------------------------------------------------------------------------------------
# Layouts and file formats


def test_lip_tree_has_the_official_layout(lip_tree: Path) -> None:
    ids = {}
    for split, folder, id_file in (("train", "TrainVal_images/train_images", "TrainVal_images/train_id.txt"),
                                   ("val", "TrainVal_images/val_images", "TrainVal_images/val_id.txt"),
                                   ("test", "Testing_images/testing_images", "Testing_images/test_id.txt")):
        lines = (lip_tree / id_file).read_text().splitlines()
        assert all(re.fullmatch(r"\d{5,6}_\d{6}", i) for i in lines)
        assert sorted(p.stem for p in (lip_tree / folder).glob("*.jpg")) == sorted(lines)
        ids[split] = lines
    assert len(ids["train"]) == 24 and len(ids["val"]) == 8 and len(ids["test"]) == 4
    all_ids = ids["train"] + ids["val"] + ids["test"]
    assert len(set(all_ids)) == len(all_ids)
    assert {p.name for p in lip_tree.iterdir()} == {"TrainVal_images", "TrainVal_parsing_annotations",
                                                    "TrainVal_pose_annotations", "Testing_images"}
    assert not list((lip_tree / "Testing_images").glob("*.png"))

    unlabelled = occluded = 0
    for split in ("train", "val"):
        rows = list(csv.reader((lip_tree / f"TrainVal_pose_annotations/lip_{split}_set.csv").open()))
        assert [r[0] for r in rows] == [f"{i}.jpg" for i in ids[split]]  # one row per image, id-file order
        for row in rows:
            image = Image.open(lip_tree / f"TrainVal_images/{split}_images/{row[0]}")
            label_img = Image.open(lip_tree / f"TrainVal_parsing_annotations/{split}_segmentations/"
                                   f"{row[0][:-4]}.png")
            assert image.format == "JPEG" and image.mode in ("RGB", "L")
            assert 110 <= max(image.size) <= 320
            assert label_img.format == "PNG" and label_img.mode == "L" and label_img.size == image.size
            assert np.asarray(label_img).max() < LIP.num_classes
            assert len(row) == 1 + 3 * LIP.num_joints
            for j in range(LIP.num_joints):
                x, y, v = row[1 + 3 * j: 4 + 3 * j]
                if x == "nan":
                    assert y == "nan" and v == "nan"
                    unlabelled += 1
                    continue
                assert 0 <= int(x) < image.size[0] and 0 <= int(y) < image.size[1] and v in ("0", "1")
                occluded += v == "1"
    assert unlabelled > 0 and occluded > 0  # partial crops and occlusions both occur


def test_lip_tree_passes_through_prepare_cleanly(lip_tree: Path, tmp_path: Path) -> None:
    import json

    result = run_cli("prepare", "lip", lip_tree, "--out", tmp_path / "lip.h5")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "lip.h5.report.json").read_text())
    text = json.dumps(report)
    assert '"reason"' not in text, text  # nothing skipped or repaired


def test_pascal_tree_has_the_official_layout(pascal_tree: Path) -> None:
    ids = [i for split in ("train", "val") for i in (pascal_tree / f"{split}_id.txt").read_text().splitlines()]
    assert len(ids) == 15 and len(set(ids)) == 15 and all(re.fullmatch(r"20\d\d_\d{6}", i) for i in ids)
    assert sorted(p.stem for p in (pascal_tree / "JPEGImages").glob("*.jpg")) == sorted(ids)
    people, coarse_seen = [], set()
    for image_id in ids:
        image = Image.open(pascal_tree / "JPEGImages" / f"{image_id}.jpg")
        label = Image.open(pascal_tree / "SegmentationPart" / f"{image_id}.png")
        width, height = image.size
        assert 240 <= width <= 400 and height < width
        assert label.mode == "L" and label.size == image.size
        parts = np.asarray(label)
        assert parts.max() < PASCAL.num_classes
        coarse_seen |= set(np.unique(parts).tolist())
        mat = pascal_tree / "PersonJoints" / f"{image_id}.mat"
        joints, boxes = read_person_joints_mat(mat, PASCAL.num_joints)
        assert joints.shape[1:] == (PASCAL.num_joints, 3) and boxes.shape == (len(joints), 4)
        people.append(len(joints))
        for person, box in zip(joints, boxes):
            assert 0 <= box[0] <= box[2] < width and 0 <= box[1] <= box[3] < height
            missing = np.isnan(person[:, 0])
            assert np.all(person[missing, 2] == 0)
            assert np.all((person[~missing, 0] > -0.5) & (person[~missing, 0] < width - 0.5))
            _check_coarse_parts(parts, person)
    assert 1 <= min(people) and max(people) <= 4 and max(people) >= 2
    assert coarse_seen == set(range(PASCAL.num_classes))


def test_pascal_joint_files_have_the_real_layout(pascal_tree: Path) -> None:
    """As the real files are stored: MATLAB v5, variables `joints` and `boxes`, each a 1 x P cell array of
    14 x 3 doubles (x, y, visible flag; 0-based pixels) and of 1 x 4 doubles (x1, y1, x2, y2)."""
    from scipy.io import loadmat

    ids = [i for split in ("train", "val") for i in (pascal_tree / f"{split}_id.txt").read_text().splitlines()]
    flags = set()
    for image_id in ids:
        mat = pascal_tree / "PersonJoints" / f"{image_id}.mat"
        assert mat.read_bytes()[:19] == b"MATLAB 5.0 MAT-file" and mat.read_bytes()[126:128] == b"IM"  # v5, little-endian
        raw = loadmat(str(mat))  # scipy reads v5 only: the public loaders read the real files this way
        assert sorted(k for k in raw if not k.startswith("__")) == ["boxes", "joints"]
        cells, box_cells = raw["joints"], raw["boxes"]
        assert cells.dtype == object and box_cells.dtype == object
        assert cells.shape == box_cells.shape == (1, cells.shape[1]) and cells.shape[1] >= 1
        width, height = Image.open(pascal_tree / "JPEGImages" / f"{image_id}.jpg").size
        read_joints, read_boxes = read_person_joints_mat(mat, PASCAL.num_joints)
        for p in range(cells.shape[1]):
            joints, box = cells[0, p], box_cells[0, p]
            assert joints.dtype == np.float64 and joints.shape == (PASCAL.num_joints, 3)
            assert box.dtype == np.float64 and box.shape == (1, 4)
            labelled = np.isfinite(joints[:, :2]).all(axis=1)
            assert np.all(joints[~labelled, 2] == 0)  # unlabelled: NaN coordinates, flag 0
            flags |= set(joints[labelled, 2].tolist())
            x, y = joints[labelled, 0], joints[labelled, 1]
            assert np.all((x > -0.5) & (x < width - 0.5) & (y > -0.5) & (y < height - 0.5))  # 0-based pixels
            x1, y1, x2, y2 = box[0]
            assert 0 <= x1 <= x2 < width and 0 <= y1 <= y2 < height
            np.testing.assert_array_equal(read_joints[p, labelled, :2], joints[labelled, :2].astype(np.float32))
            np.testing.assert_array_equal(read_boxes[p], box[0].astype(np.float32))
    assert flags == {0.0, 1.0}  # 1 visible, 0 not visible (occluded)


def _check_coarse_parts(parts: np.ndarray, person: np.ndarray) -> None:
    """Visible joints of a PASCAL person lie on the coarse part they belong to."""
    expect = {"head-top": "Head", "L-wrist": "Lower-arms", "R-wrist": "Lower-arms", "L-ankle": "Lower-legs",
              "R-ankle": "Lower-legs", "L-knee": ("Upper-legs", "Lower-legs"), "L-elbow": ("Upper-arms", "Lower-arms")}
    for name, classes in expect.items():
        x, y, visible = person[PASCAL.joints.index(name)]
        if visible == 1:
            wanted = [PASCAL.classes.index(c) for c in ((classes,) if isinstance(classes, str) else classes)]
            assert np.isin(_window(parts, x, y), wanted).any(), name


def test_class_and_joint_ids_come_from_the_manifest_by_name(tmp_path: Path) -> None:
    raw = dict(LIP.raw)
    order = [0] + list(range(LIP.num_classes - 1, 0, -1))  # reverse every class but Background
    raw["classes"] = [LIP.classes[i] for i in order]
    raw["palette"] = [LIP.palette[i] for i in order]
    raw["class_mirror_pairs"] = [[order.index(a), order.index(b)] for a, b in LIP.class_mirror_pairs]
    joint_order = list(range(LIP.num_joints))[::-1]
    raw["joints"] = [LIP.joints[j] for j in joint_order]
    raw["joint_mirror_pairs"], raw["skeleton"] = [], []
    permuted = manifest_from_dict(raw)
    counts = {"train": 3, "val": 0, "test": 0}
    generate_lip_tree(tmp_path / "a", counts, 2, LIP)
    generate_lip_tree(tmp_path / "b", counts, 2, permuted)
    to_new = np.array([order.index(i) for i in range(LIP.num_classes)], np.uint8)
    for png in (tmp_path / "a/TrainVal_parsing_annotations/train_segmentations").glob("*.png"):
        other = tmp_path / "b/TrainVal_parsing_annotations/train_segmentations" / png.name
        assert np.array_equal(np.asarray(Image.open(other)), to_new[np.asarray(Image.open(png))])
    rows_a = list(csv.reader((tmp_path / "a/TrainVal_pose_annotations/lip_train_set.csv").open()))
    rows_b = list(csv.reader((tmp_path / "b/TrainVal_pose_annotations/lip_train_set.csv").open()))
    for ra, rb in zip(rows_a, rows_b):
        for new_j, old_j in enumerate(joint_order):
            assert rb[1 + 3 * new_j: 4 + 3 * new_j] == ra[1 + 3 * old_j: 4 + 3 * old_j]


def test_manifest_without_the_needed_names_is_refused(tmp_path: Path) -> None:
    with pytest.raises(MulaError, match="Left-arm"):
        generate_lip_tree(tmp_path, {"train": 1}, 0, PASCAL)
    with pytest.raises(MulaError, match="Upper-arms"):
        generate_pascal_tree(tmp_path, {"train": 1}, 0, LIP)
    with pytest.raises(MulaError, match="counts"):
        generate_lip_tree(tmp_path, {"training": 1}, 0, LIP)


# ----------------------------------------------------------------------------------------------------------------
# What the people look like


def test_joints_sit_on_their_own_body_parts(scenes: list) -> None:
    garments = [_cls(c) for c in ("Upper-clothes", "Coat", "Dress", "Jumpsuits")]
    lower = [_cls(c) for c in ("Pants", "Jumpsuits", "Skirt", "Dress", "Coat", "Socks")]
    checked = 0
    for _, joints, label, _, _ in scenes:
        for name, (x, y, inside, occluded) in joints.items():
            if not inside or occluded:
                continue
            window = _window(label, x, y)
            at = int(_window(label, x, y, 0)[0, 0])  # the joint's own pixel
            assert (window != 0).any(), name  # on (or right next to) the person
            word = {"R": "Right", "L": "Left"}.get(name[:1], "")
            if name.endswith("wrist"):  # on its own side's arm, glove or sleeve, never the other arm
                assert at in garments + [_cls(f"{word}-arm"), _cls("Glove")], (name, FINE_CLASSES[at])
                checked += 1
            elif name.endswith("ankle"):
                assert at in lower + [_cls(f"{word}-leg"), _cls(f"{word}-shoe")], (name, FINE_CLASSES[at])
                checked += 1
            elif name == "head-top":
                assert np.isin(window, [_cls("Hair"), _cls("Hat"), _cls("Face")]).any()
            elif name == "upper-neck":
                assert np.isin(window, [_cls("Face"), _cls("Hair"), _cls("Scarf")]).any()
    assert checked > SCENES  # most wrists and ankles are visible


def test_left_and_right_follow_the_persons_own_side(scenes: list) -> None:
    votes = {"front": [], "back": []}
    arm_votes = {"front": [], "back": []}
    for yaw, joints, label, _, _ in scenes:
        view = "front" if abs(yaw) < 40 else "back" if abs(yaw) > 140 else None
        if view is None:
            continue
        right, left = joints["R-shoulder"], joints["L-shoulder"]
        if right[2] and left[2]:
            votes[view].append(right[0] < left[0])
        xs_r = np.nonzero(label == _cls("Right-arm"))[1]
        xs_l = np.nonzero(label == _cls("Left-arm"))[1]
        if len(xs_r) > 20 and len(xs_l) > 20:
            arm_votes[view].append(xs_r.mean() < xs_l.mean())
    # In a front view the person's right is on the image left; from the back it is on the image right.
    assert len(votes["front"]) > 40 and np.mean(votes["front"]) > 0.95
    assert len(votes["back"]) > 10 and np.mean(votes["back"]) < 0.05
    assert np.mean(arm_votes["front"]) > 0.7 and np.mean(arm_votes["back"]) < 0.3


def test_every_class_occurs_and_some_images_are_grayscale(scenes: list) -> None:
    present = set()
    for _, _, label, _, _ in scenes:
        present |= set(np.unique(label).tolist())
    assert {FINE_CLASSES[i] for i in present} == set(LIP.classes)
    assert 0 < sum(s[4] for s in scenes) < SCENES * 0.15


def test_grayscale_scene_is_saved_as_single_channel_jpeg(tmp_path: Path) -> None:
    first_gray = next(i for i in range(200) if lip_scene(SEED, "val", i)[1].grayscale)
    generate_lip_tree(tmp_path, {"train": 0, "val": first_gray + 1, "test": 0}, SEED, LIP)
    image_id = (tmp_path / "TrainVal_images/val_id.txt").read_text().splitlines()[first_gray]
    assert image_id == lip_scene(SEED, "val", first_gray)[0]
    assert Image.open(tmp_path / f"TrainVal_images/val_images/{image_id}.jpg").mode == "L"


def test_occluders_and_distractors_are_background_and_hide_joints(scenes: list) -> None:
    behind = 0
    for _, joints, label, segment, _ in scenes:
        assert not label[(segment == OCCLUDER_SEGMENT) | (segment == DISTRACTOR_SEGMENT)].any()
        for x, y, inside, occluded in joints.values():
            if inside and segment[int(np.floor(y + 0.5)), int(np.floor(x + 0.5))] == OCCLUDER_SEGMENT:
                assert occluded
                behind += 1
    assert behind > 0


def test_partial_crops_leave_joints_outside_the_image_unlabelled(scenes: list) -> None:
    outside = 0
    for _, joints, label, _, _ in scenes:
        height, width = label.shape
        for x, y, inside, _ in joints.values():
            in_frame = -0.5 <= x < width - 0.5 and -0.5 <= y < height - 0.5
            assert inside == in_frame
            outside += not inside
    assert outside > 0


def test_multi_person_scenes_overlap_and_vary_in_size() -> None:
    sizes, hidden_by_others = [], 0
    for i in range(25):
        _, scene = pascal_scene(SEED, "train", i)
        for person in scene.people:
            sizes.append(person.figure.props.thigh)
            for name in PASCAL.joints:
                x, y, inside, occluded = person.joint(name, scene.segment)
                if not inside:
                    continue
                owner = (int(scene.segment[int(np.floor(y + 0.5)), int(np.floor(x + 0.5))]) - 1) // PART_SLOTS
                if owner != (person.segment_base - 1) // PART_SLOTS and owner < MAX_PEOPLE:
                    assert occluded
                    hidden_by_others += 1
    assert max(sizes) > 2.5 * min(sizes)
    assert hidden_by_others > 0
