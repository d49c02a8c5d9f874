"""`mula prepare`: every layout variant, every bad-input case, no lost work."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mula_cli.data.cache import CacheFile

from conftest import run_cli
from trees import build_lip_tree, build_pascal_tree, csv_row, jpeg_bytes, lip_paths, png_bytes


def _report(cache: Path) -> dict:
    return json.loads(cache.with_name(cache.name + ".report.json").read_text())


def _reasons(report: dict, split: str, kind: str) -> dict[str, str]:
    return {item["id"]: item["reason"] for item in report["splits"][split][kind]}


@pytest.mark.parametrize("variant", ["official", "nested", "flattened"])
def test_lip_layout_variants_round_trip(tmp_path: Path, variant: str) -> None:
    truth = build_lip_tree(tmp_path / "LIP", variant)
    cache = tmp_path / "lip.h5"
    result = run_cli("prepare", "lip", tmp_path / "LIP", "--out", cache, "-q")
    assert result.exit_code == 0, result.output
    with CacheFile(cache) as c:
        assert c.dataset == "lip" and c.splits == ["train", "val", "test"]
        for split, samples in truth.items():
            t = c.split(split)
            assert sorted(t.ids) == sorted(samples)
            for i, sid in enumerate(t.ids):
                image, label, joints = samples[sid]
                assert t.image_bytes(i) == jpeg_bytes(image)  # original bytes, untouched
                assert tuple(t.sizes[i]) == image.shape[:2]
                if label is None:
                    assert t.label(i) is None
                    continue
                np.testing.assert_array_equal(t.label(i), label)
                np.testing.assert_array_equal(t.single_person_joints(i), joints.astype(np.float32))
                assert t.scales[i] > 0 and np.isfinite(t.centers[i]).all()
        assert len(c.fingerprint) == 64


def test_default_cache_location_and_info(tmp_path: Path, isolated_mula_home: Path) -> None:
    build_lip_tree(tmp_path / "LIP")
    assert run_cli("prepare", "lip", tmp_path / "LIP", "-q").exit_code == 0
    cache = isolated_mula_home / "data" / "lip.h5"
    assert cache.is_file()
    info = run_cli("info")
    assert info.exit_code == 0
    assert "lip.h5" in info.output and "train 6" in info.output
    doc = json.loads(run_cli("info", "--json").output)
    assert doc["caches"][0]["counts"] == {"train": 6, "val": 4, "test": 2}


def test_pascal_person_part_both_mat_versions(tmp_path: Path) -> None:
    truth = build_pascal_tree(tmp_path / "PPP")
    cache = tmp_path / "ppp.h5"
    result = run_cli("prepare", "pascal-person-part", tmp_path / "PPP", "--out", cache, "-q")
    assert result.exit_code == 0, result.output
    with CacheFile(cache) as c:
        assert c.manifest.num_joints == 14 and c.manifest.num_classes == 7
        for split, samples in truth.items():
            t = c.split(split)
            for i, sid in enumerate(t.ids):
                joints, occluded = t.people(i)
                expected = samples[sid][2]
                assert joints.shape == (len(expected), 14, 2)
                np.testing.assert_allclose(joints, expected[..., :2].astype(np.float32))
                assert (occluded[np.isnan(joints[..., 0])] == -1).all()


def _preview_cells(output: str, joint_names: list[str]) -> dict[str, list[str]]:
    """The joint preview table printed by prepare: joint name -> its cells, one per person column."""
    rows = {}
    for line in output.splitlines():
        cells = [c.strip() for c in line.split("\u2502")[1:-1]]
        if cells and cells[0] in joint_names:
            rows[cells[0]] = cells[1:]
    return rows


def _expected_preview(root: Path, ids: list[str]) -> tuple[list[str], dict[int, list[str]]]:
    """Column headers and, per joint, the cells the preview must show, read from the v5 .mat files directly."""
    from scipy.io import loadmat

    headers, columns = [], []
    for sid in ids:
        cells = loadmat(str(root / "PersonJoints" / f"{sid}.mat"))["joints"]
        for p in range(min(cells.shape[1], 2, 3 - len(columns))):  # up to 2 people an image, 3 in all
            headers.append(f"{sid} #{p}")
            columns.append([("-" if np.isnan(x) else f"({np.float32(x):.1f}, {np.float32(y):.1f})" + ("*" if v == 0 else ""))
                            for x, y, v in cells[0, p]])
        if len(columns) >= 3 or len(dict.fromkeys(h.split(" #")[0] for h in headers)) >= 2:
            break
    return headers, {j: [col[j] for col in columns] for j in range(len(columns[0]))}


def test_pascal_prepare_prints_joint_names_with_their_coordinates(tmp_path: Path) -> None:
    from mula_cli.utils.manifests import load_manifest

    build_pascal_tree(tmp_path / "PPP", counts={"train": 3, "val": 2})  # train: v5, v7.3, v5 files
    ids = (tmp_path / "PPP/train_id.txt").read_text().split()
    result = run_cli("prepare", "pascal-person-part", tmp_path / "PPP", "--out", tmp_path / "ppp.h5")
    assert result.exit_code == 0, result.output
    names = list(load_manifest("pascal_person_part").joints)
    rows = _preview_cells(result.output, names)
    assert list(rows) == names  # every joint, by name, in the manifest's order
    first = [sid for sid in ids if f"{sid} #0" in result.output]
    assert first[0] == ids[0]  # the first image's people come first
    from scipy.io import loadmat

    people = loadmat(str(tmp_path / "PPP/PersonJoints" / f"{ids[0]}.mat"))["joints"]
    for p in range(min(people.shape[1], 2)):
        for j, name in enumerate(names):
            x, y, v = people[0, p][j]
            want = "-" if np.isnan(x) else f"({np.float32(x):.1f}, {np.float32(y):.1f})" + ("*" if v == 0 else "")
            assert rows[name][p] == want, (name, p)
    assert "-" in rows[names[3]][0]  # trees.py leaves joint 3 of the first person unlabelled
    assert "pascal_person_part.json" in result.output and "manifests" in result.output
    quiet = run_cli("prepare", "pascal-person-part", tmp_path / "PPP", "--out", tmp_path / "ppp.h5", "--force", "-q")
    assert quiet.exit_code == 0 and not _preview_cells(quiet.output, names)


def test_synthetic_multi_person_prepare_prints_the_mat_files_joints(tmp_path: Path) -> None:
    from mula_cli.utils.manifests import load_manifest

    tree = tmp_path / "multi"
    result = run_cli("prepare", "synthetic", tree, "--multi-person", "--train", "4", "--val", "2", "--seed", "3",
                     "--out", tmp_path / "multi.h5")
    assert result.exit_code == 0, result.output
    names = list(load_manifest("synthetic_multi_person").joints)
    headers, expected = _expected_preview(tree, (tree / "train_id.txt").read_text().split())
    assert all(h in result.output for h in headers)
    rows = _preview_cells(result.output, names)
    assert list(rows) == names
    for j, name in enumerate(names):
        assert rows[name] == expected[j], name
    assert "synthetic_multi_person.json" in result.output


def test_mat_reader_keeps_reading_the_other_layouts(tmp_path: Path) -> None:
    """Real layout (v5 and a v7.3 re-save), the struct re-packaging, a bare P x J x 3 array, and boxes saved
    before joints: all give the same people."""
    from scipy.io import savemat

    from mula_cli.data.matfile import read_person_joints_mat, write_person_joints_mat

    rng = np.random.default_rng(5)
    joints = np.concatenate([rng.uniform(1, 60, (3, 14, 2)), np.ones((3, 14, 1))], axis=2)
    joints[1, 4] = (np.nan, np.nan, 0)
    joints[2, 7, 2] = 0  # labelled, not visible
    boxes = np.concatenate([joints[:, :, :2].min(1), joints[:, :, :2].max(1)], axis=1)
    boxes[1] = (3, 4, 50, 55)
    files = {}
    for layout in ("cells", "struct"):
        for v73 in (False, True):
            files[(layout, v73)] = tmp_path / f"{layout}_{v73}.mat"
            write_person_joints_mat(files[(layout, v73)], joints, boxes, v73=v73, layout=layout)
    reordered = np.empty((1, 3), object), np.empty((1, 3), object)
    for p in range(3):
        reordered[0][0, p], reordered[1][0, p] = boxes[p].reshape(1, 4), joints[p]
    savemat(tmp_path / "boxes_first.mat", {"boxes": reordered[0], "joints": reordered[1]})
    savemat(tmp_path / "bare.mat", {"pose": joints})
    for path in [*files.values(), tmp_path / "boxes_first.mat", tmp_path / "bare.mat"]:
        got, got_boxes = read_person_joints_mat(path, 14)
        np.testing.assert_array_equal(got[..., :2], joints[..., :2].astype(np.float32), err_msg=path.name)
        np.testing.assert_array_equal(got[..., 2], np.nan_to_num(joints[..., 2]).astype(np.float32), err_msg=path.name)
        if path.name != "bare.mat":
            np.testing.assert_array_equal(got_boxes, boxes.astype(np.float32), err_msg=path.name)
        else:
            assert np.isnan(got_boxes).all()
    one_based, _ = read_person_joints_mat(files[("cells", False)], 14, one_based=True)
    np.testing.assert_allclose(one_based[0, :, :2], joints[0, :, :2].astype(np.float32) - 1, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="layout"):
        write_person_joints_mat(tmp_path / "x.mat", joints, boxes, layout="json")


def _plant_bad_lip_inputs(root: Path) -> None:
    """Damage a tiny official tree in every way the issue lists (train split)."""
    p = lip_paths(root, "official", "train")
    ids = p["ids"].read_text().split()
    img = p["images"] / f"{ids[0]}.jpg"
    img.write_bytes(img.read_bytes()[: len(img.read_bytes()) // 2])  # truncated JPEG
    (p["labels"] / f"{ids[1]}.png").write_bytes(png_bytes(np.zeros((7, 9), np.uint8)))  # wrong size
    label = np.asarray(Image.open(p["labels"] / f"{ids[2]}.png")).copy()
    label[0, :3] = (42, 200, 255)  # two values outside 0..19 and one ignore pixel
    (p["labels"] / f"{ids[2]}.png").write_bytes(png_bytes(label))
    rows = p["csv"].read_text().splitlines()
    rows[3] = ",".join(rows[3].split(",")[:20])  # wrong number of fields
    fields = rows[4].split(",")
    fields[4] = "abc"  # joint 1 x non-numeric
    rows[4] = ",".join(fields)
    rows = [r for r in rows if not r.startswith(f"{ids[5]}.jpg")]  # image without a CSV row
    rows.append(csv_row("99999_1", np.ones((16, 2))))  # row naming a missing image
    p["csv"].write_text("\n".join(rows) + "\n")
    p["ids"].write_text("\n".join(ids + ["77777_7"]) + "\n")  # id-list entry without a file
    # valid but unusual images: grayscale, CMYK, PNG bytes under a .jpg name
    val = lip_paths(root, "official", "val")
    vids = val["ids"].read_text().split()
    rgb = np.asarray(Image.open(val["images"] / f"{vids[0]}.jpg"))
    (val["images"] / f"{vids[0]}.jpg").write_bytes(jpeg_bytes(rgb, "L"))
    (val["images"] / f"{vids[1]}.jpg").write_bytes(jpeg_bytes(rgb, "CMYK"))
    (val["images"] / f"{vids[2]}.jpg").write_bytes(png_bytes(rgb))


def test_every_bad_input_is_skipped_or_repaired_and_reported(tmp_path: Path) -> None:
    build_lip_tree(tmp_path / "LIP", counts={"train": 6, "val": 4})
    _plant_bad_lip_inputs(tmp_path / "LIP")
    ids = (tmp_path / "LIP/TrainVal_images/train_id.txt").read_text().split()
    cache = tmp_path / "lip.h5"
    result = run_cli("prepare", "lip", tmp_path / "LIP", "--out", cache)
    assert result.exit_code == 0, result.output
    report = _report(cache)
    skipped = _reasons(report, "train", "skipped")
    repaired = _reasons(report, "train", "repaired")
    assert "unreadable image" in skipped[ids[0]]
    assert "99999_1" in skipped and "does not exist" in skipped["99999_1"]
    assert "77777_7" in skipped and "missing" in skipped["77777_7"]
    assert "9x7" in repaired[ids[1]]
    assert "outside 0..19" in repaired[ids[2]]
    assert "fields" in repaired[ids[3]]
    assert "non-numeric" in repaired[ids[4]]
    assert "no row" in repaired[ids[5]]
    assert report["splits"]["train"]["cached"] == 5 and report["splits"]["val"]["cached"] == 4
    assert report["splits"]["val"]["skipped"] == [] and report["splits"]["val"]["repaired"] == []
    with CacheFile(cache) as c:
        t = c.split("train")
        row = {sid: i for i, sid in enumerate(t.ids)}
        assert ids[0] not in row
        assert t.label(row[ids[1]]) is None  # size mismatch: parsing unusable
        fixed = t.label(row[ids[2]])
        assert tuple(fixed[0, :3]) == (255, 255, 255) and fixed.max() == 255
        assert np.isnan(t.single_person_joints(row[ids[3]])).all()
        j4 = t.single_person_joints(row[ids[4]])
        assert np.isnan(j4[1]).all() and np.isfinite(j4).any()
        assert np.isnan(t.single_person_joints(row[ids[5]])).all()
        v = c.split("val")
        for i in range(3):  # grayscale, CMYK and PNG-as-.jpg decode to RGB
            assert v.image(i).mode == "RGB" and v.image(i).size == (30, 40)


def test_unreadable_mat_file_keeps_image_without_joints(tmp_path: Path) -> None:
    build_pascal_tree(tmp_path / "PPP", counts={"train": 3, "val": 2})
    sid = (tmp_path / "PPP/train_id.txt").read_text().split()[0]
    (tmp_path / "PPP/PersonJoints" / f"{sid}.mat").write_bytes(b"this is not a MATLAB file")
    cache = tmp_path / "ppp.h5"
    assert run_cli("prepare", "pascal-person-part", tmp_path / "PPP", "--out", cache, "-q").exit_code == 0
    assert "unreadable joint file" in _reasons(_report(cache), "train", "repaired")[sid]
    with CacheFile(cache) as c:
        t = c.split("train")
        assert len(t.people(t.ids.index(sid))[0]) == 0


def test_not_a_layout_is_one_line_exit_2(tmp_path: Path) -> None:
    (tmp_path / "random").mkdir()
    (tmp_path / "random/file.txt").write_text("hi")
    result = run_cli("prepare", "lip", tmp_path / "random")
    assert result.exit_code == 2
    assert "does not look like LIP" in result.output and "TrainVal_images/train_images" in result.output
    assert "Traceback" not in result.output
    missing = run_cli("prepare", "lip", tmp_path / "nope")
    assert missing.exit_code == 2 and "is not a folder" in missing.output


def test_existing_cache_needs_force(tmp_path: Path) -> None:
    build_lip_tree(tmp_path / "LIP")
    cache = tmp_path / "lip.h5"
    assert run_cli("prepare", "lip", tmp_path / "LIP", "--out", cache, "-q").exit_code == 0
    again = run_cli("prepare", "lip", tmp_path / "LIP", "--out", cache, "-q")
    assert again.exit_code == 2 and "--force" in again.output
    assert run_cli("prepare", "lip", tmp_path / "LIP", "--out", cache, "-q", "--force").exit_code == 0
    bad_split = run_cli("prepare", "lip", tmp_path / "LIP", "--out", tmp_path / "x.h5", "--splits", "train,holdout")
    assert bad_split.exit_code == 2 and "holdout" in bad_split.output


def test_interrupted_prepare_keeps_old_cache_and_rerun_completes(tmp_path: Path, monkeypatch) -> None:
    import mula_cli.data.prepare as prepare_module

    build_lip_tree(tmp_path / "LIP", counts={"train": 8, "val": 4})
    cache = tmp_path / "lip.h5"
    assert run_cli("prepare", "lip", tmp_path / "LIP", "--out", cache, "-q").exit_code == 0
    before = hashlib.sha256(cache.read_bytes()).hexdigest()

    real = prepare_module.record_sample
    calls = {"n": 0}

    def interrupted(sample, rules):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt  # as Ctrl-C in the middle of the train split
        return real(sample, rules)

    monkeypatch.setattr(prepare_module, "record_sample", interrupted)
    result = run_cli("prepare", "lip", tmp_path / "LIP", "--out", cache, "--force", "--workers", "1")
    assert result.exit_code != 0
    assert hashlib.sha256(cache.read_bytes()).hexdigest() == before  # old cache untouched
    assert not list(tmp_path.glob(".lip.h5*")) and not list(tmp_path.glob("*.partial"))  # no half-written file
    monkeypatch.setattr(prepare_module, "record_sample", real)
    assert run_cli("prepare", "lip", tmp_path / "LIP", "--out", cache, "--force", "-q").exit_code == 0
    with CacheFile(cache) as c:
        assert c.count("train") == 8


def test_parallel_and_serial_decoding_give_the_same_cache_content(tmp_path: Path) -> None:
    import mula_cli.data.prepare as prepare_module
    from mula_cli.data.prepare import prepare_dataset
    from mula_cli.utils.manifests import load_manifest

    build_lip_tree(tmp_path / "LIP", counts={"train": 12, "val": 3})
    fingerprints = []
    for workers, name in ((1, "a.h5"), (2, "b.h5")):
        prepare_module._IN_PROCESS_BELOW, saved = 0, prepare_module._IN_PROCESS_BELOW
        try:
            prepare_dataset(load_manifest("lip"), tmp_path / "LIP", tmp_path / name, workers=workers)
        finally:
            prepare_module._IN_PROCESS_BELOW = saved
        with CacheFile(tmp_path / name) as c:
            fingerprints.append((c.fingerprint, c.split("train").ids))
    assert fingerprints[0] == fingerprints[1]


def test_corrupt_cache_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    from mula_cli.utils.errors import MulaError

    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not hdf5 at all")
    with pytest.raises(MulaError, match="not a readable HDF5 cache"):
        CacheFile(bad)
    import h5py

    with h5py.File(tmp_path / "foreign.h5", "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(MulaError, match="not a mula data cache"):
        CacheFile(tmp_path / "foreign.h5")


def test_label_png_in_palette_mode_is_accepted(tmp_path: Path) -> None:
    build_lip_tree(tmp_path / "LIP", counts={"train": 2, "val": 1})
    p = lip_paths(tmp_path / "LIP", "official", "train")
    sid = p["ids"].read_text().split()[0]
    label = np.asarray(Image.open(p["labels"] / f"{sid}.png"))
    img = Image.frombytes("P", (label.shape[1], label.shape[0]), label.tobytes())
    img.putpalette([v for i in range(256) for v in (i, 0, 0)])
    img.save(p["labels"] / f"{sid}.png")
    cache = tmp_path / "lip.h5"
    assert run_cli("prepare", "lip", tmp_path / "LIP", "--out", cache, "-q").exit_code == 0
    with CacheFile(cache) as c:
        t = c.split("train")
        np.testing.assert_array_equal(t.label(t.ids.index(sid)), label)


def test_prepare_synthetic_then_info(tmp_path: Path, isolated_mula_home: Path) -> None:
    result = run_cli("prepare", "synthetic", tmp_path / "syn", "--train", "6", "--val", "3", "--test", "1", "-q")
    assert result.exit_code == 0, result.output
    assert "images/s" in result.output
    assert (tmp_path / "syn" / "TrainVal_images" / "train_id.txt").is_file()
    info = run_cli("info")
    assert "synthetic.h5" in info.output and "train 6" in info.output
    again = run_cli("prepare", "synthetic", tmp_path / "syn", "--train", "6", "--val", "3", "-q")
    assert again.exit_code == 2 and "--force" in again.output
    assert run_cli("prepare", "synthetic", tmp_path / "syn", "--train", "5", "--val", "3", "--force", "-q").exit_code == 0
    with CacheFile(isolated_mula_home / "data" / "synthetic.h5") as c:
        assert c.count("train") == 5
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    refused = run_cli("prepare", "synthetic", tmp_path / "mine", "--out", tmp_path / "x.h5", "--force")
    assert refused.exit_code == 2 and "not generated by mula" in refused.output
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"
    multi = run_cli("prepare", "synthetic", tmp_path / "multi", "--multi-person", "--train", "4", "--val", "2", "-q")
    assert multi.exit_code == 0, multi.output
    with CacheFile(isolated_mula_home / "data" / "synthetic_multi_person.h5") as c:
        assert c.manifest.num_joints == 14 and c.count("train") == 4


def test_a_generation_stopped_half_way_can_be_regenerated_with_force(tmp_path: Path, monkeypatch) -> None:
    import mula_cli.data.synthetic.writer as writer

    assert run_cli("prepare", "synthetic", tmp_path / "syn", "--train", "4", "--val", "2", "--test", "0",
                   "--out", tmp_path / "a.h5", "-q").exit_code == 0
    real = writer.generate_lip_tree

    def stopped(folder, *args, **kwargs):  # a job's time limit while the images are written
        (Path(folder) / "TrainVal_images").mkdir(parents=True)
        (Path(folder) / "TrainVal_images" / "half.jpg").write_bytes(b"\xff\xd8")
        raise KeyboardInterrupt

    monkeypatch.setattr(writer, "generate_lip_tree", stopped)
    result = run_cli("prepare", "synthetic", tmp_path / "syn", "--train", "4", "--val", "2", "--test", "0",
                     "--out", tmp_path / "a.h5", "--force", "-q")
    assert result.exit_code == 130
    monkeypatch.setattr(writer, "generate_lip_tree", real)
    again = run_cli("prepare", "synthetic", tmp_path / "syn", "--train", "4", "--val", "2", "--test", "0",
                    "--out", tmp_path / "a.h5", "--force", "-q")
    assert again.exit_code == 0, again.output  # the half-made tree is still known as mula's
    assert not (tmp_path / "syn" / "TrainVal_images" / "half.jpg").exists()
