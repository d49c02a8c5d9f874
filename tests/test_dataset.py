"""The training dataset: targets are right after augmentation, flips swap left/right, eval maps back."""

from __future__ import annotations

import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mula_cli.codecs.heatmaps import decode_argmax
from mula_cli.data.cache import CacheFile
from mula_cli.data.dataset import MulaDataset, SampleConfig
from mula_cli.transforms.affine import NO_AUGMENT, AugmentConfig, apply_affine, invert_affine
from mula_cli.utils.manifests import load_manifest

from trees import build_lip_cache


@pytest.fixture(scope="module")
def lip_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_lip_cache(tmp_path_factory.mktemp("lip"), counts={"train": 8, "val": 4}, seed=3)


def test_sample_shapes_and_types(lip_cache: Path) -> None:
    s = MulaDataset(lip_cache, "train")[0]
    assert s["image"].shape == (3, 256, 256) and s["image"].dtype == torch.uint8
    assert s["parsing"].shape == (256, 256) and s["parsing"].dtype == torch.uint8
    assert s["heatmaps"].shape == (17, 64, 64) and s["heatmaps"].dtype == torch.float32
    assert s["joints"].shape == (16, 2) and s["joint_mask"].dtype == torch.bool
    assert s["affine"].shape == (2, 3)


def test_heatmap_peaks_lie_within_one_stride_cell_of_the_joints(lip_cache: Path) -> None:
    ds = MulaDataset(lip_cache, "train", SampleConfig(seed=1))
    checked = 0
    for epoch in range(6):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            s = ds[i]
            coords, peak = decode_argmax(s["heatmaps"][None, :-1], 4)
            inside = s["joint_mask"] & (s["joints"] >= 0).all(1) & (s["joints"] <= 255).all(1)
            err = (coords[0] - s["joints"]).abs().amax(dim=1)
            assert (err[inside] <= 4.0).all(), (epoch, i, err[inside])
            assert (peak[0][inside] > 0.7).all()
            checked += int(inside.sum())
    assert checked > 300


def test_transformed_joints_follow_the_image_matrix(lip_cache: Path) -> None:
    ds = MulaDataset(lip_cache, "train", SampleConfig(seed=5, augment=AugmentConfig(flip_prob=0.0)))
    with CacheFile(lip_cache) as c:
        t = c.split("train")
        for i in range(len(ds)):
            s = ds[i]
            original = t.single_person_joints(i)
            mask = s["joint_mask"].numpy()
            assert (mask == np.isfinite(original).all(1)).all()
            mapped = apply_affine(original.astype(np.float64), s["affine"].numpy())
            np.testing.assert_allclose(s["joints"].numpy()[mask], mapped[mask], atol=1e-3)


def test_unlabelled_joints_give_all_zero_maps(lip_cache: Path) -> None:
    ds = MulaDataset(lip_cache, "train", SampleConfig(augment=NO_AUGMENT))
    seen = 0
    for i in range(len(ds)):
        s = ds[i]
        for j in torch.nonzero(~s["joint_mask"]).flatten():
            assert float(s["heatmaps"][j].abs().max()) == 0.0
            seen += 1
    assert seen > 0
    # the background map is 1 - max over joints
    s = ds[0]
    np.testing.assert_allclose(s["heatmaps"][-1], 1 - s["heatmaps"][:-1].amax(0), atol=1e-6)


def test_flip_swaps_left_and_right_labels_and_joints(lip_cache: Path) -> None:
    manifest = load_manifest("lip")
    base = AugmentConfig(rotate=20, scale_min=1.0, scale_max=1.2, translate=10, flip_prob=0.0)
    plain = MulaDataset(lip_cache, "train", SampleConfig(augment=base, seed=7))
    mirrored = MulaDataset(lip_cache, "train", SampleConfig(augment=replace(base, flip_prob=1.0), seed=7))
    lut = manifest.class_flip_lut()
    flip_index = manifest.joint_flip_index()
    swapped_pixels = 0
    for i in range(len(plain)):
        a, b = plain[i], mirrored[i]
        # same random draw except the mirror: the image is the exact mirror of the unflipped one
        torch.testing.assert_close(b["image"], a["image"].flip(-1))
        expected = torch.from_numpy(lut[a["parsing"].flip(-1).numpy()])
        # nearest-neighbour ties round the same way in both images, so a handful of pixels on
        # exact half-pixel sample positions may pick the neighbour: allow 0.05 %
        assert float((b["parsing"] != expected).float().mean()) < 5e-4
        swapped_pixels += int(((a["parsing"] == 14) | (a["parsing"] == 15)).sum())
        ja, jb = a["joints"], b["joints"]
        for j, k in enumerate(flip_index):
            assert bool(b["joint_mask"][j]) == bool(a["joint_mask"][k])
            if a["joint_mask"][k]:
                assert abs(float(jb[j, 0]) - (255 - float(ja[k, 0]))) < 1e-3
                assert abs(float(jb[j, 1]) - float(ja[k, 1])) < 1e-3
        torch.testing.assert_close(b["heatmaps"][:-1], a["heatmaps"][flip_index].flip(-1), atol=0.02, rtol=0)
    assert swapped_pixels > 0  # the trees have left/right arm pixels to swap


def test_eval_mode_is_the_official_letterbox_and_maps_back(lip_cache: Path) -> None:
    ds = MulaDataset(lip_cache, "val", SampleConfig(train=False))
    s = ds[0]
    h, w = s["orig_size"].tolist()  # 40 x 30: long edge 40 -> 256, width 192 centred
    m = s["affine"].numpy()
    assert m[0, 0] == pytest.approx(256 / 40) and m[1, 1] == pytest.approx(256 / 40)
    image = s["image"].numpy()
    assert (image[:, :, :30] == 128).all() and (image[:, :, -30:] == 128).all()  # grey side bars
    corners = np.array([[0.0, 0.0], [w - 1, h - 1]])
    back = apply_affine(apply_affine(corners, m), invert_affine(m))
    np.testing.assert_allclose(back, corners, atol=1e-9)
    again = ds[0]
    assert torch.equal(again["image"], s["image"])  # no randomness at evaluation


def test_same_seed_same_samples_and_epochs_differ(lip_cache: Path) -> None:
    a = MulaDataset(lip_cache, "train", SampleConfig(seed=11))
    b = MulaDataset(lip_cache, "train", SampleConfig(seed=11))
    assert torch.equal(a[3]["image"], b[3]["image"])
    assert torch.equal(a[(3, 1)]["image"], b[(3, 1)]["image"])
    assert not torch.equal(a[(3, 0)]["image"], a[(3, 1)]["image"])


def test_dataset_opens_hdf5_lazily_in_each_worker(lip_cache: Path) -> None:
    ds = MulaDataset(lip_cache, "train")
    ds[0]  # opens a handle in this process
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._opened is None
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2)
    batches = list(loader)
    assert len(batches) == 2 and batches[0]["image"].shape == (4, 3, 256, 256)
    single = torch.stack([ds[i]["heatmaps"] for i in range(4)])
    torch.testing.assert_close(batches[0]["heatmaps"], single)


def test_limit_and_bad_split(lip_cache: Path) -> None:
    from mula_cli.utils.errors import MulaError

    assert len(MulaDataset(lip_cache, "train", limit=3)) == 3
    with pytest.raises(MulaError, match="no 'test' split"):
        MulaDataset(lip_cache, "test")


def test_deferred_device_warp_matches_the_cpu_warp(lip_cache: Path) -> None:
    from mula_cli.data.dataset import collate
    from mula_cli.data.device_warp import warp_images

    config = SampleConfig(seed=9, augment=AugmentConfig(flip_prob=0.5))
    cpu = MulaDataset(lip_cache, "train", config)
    deferred = MulaDataset(lip_cache, "train", replace(config, defer_warp=True))
    batch = collate([deferred[i] for i in range(len(deferred))])
    reference = collate([cpu[i] for i in range(len(cpu))])
    images = warp_images(batch["crop"], batch["input_to_crop"], 256)
    # same geometry, same targets; PIL and PyTorch bilinear differ only slightly
    assert float((images - reference["image"].float()).abs().mean()) < 2.0
    for key in ("parsing", "heatmaps", "joints"):
        torch.testing.assert_close(batch[key], reference[key])


def _photo(width: int, height: int, seed: int) -> Image.Image:
    """A picture with detail at every place (a blur shows): noise on a 4-pixel grid, upsampled."""
    rng = np.random.default_rng(seed)
    grid = rng.integers(0, 256, (height // 4 + 1, width // 4 + 1, 3), dtype=np.uint8)
    return Image.fromarray(grid).resize((width, height), Image.Resampling.BICUBIC)


@pytest.mark.parametrize("person", [(900.0, 500.0, 0.6), (750.0, 500.0, 4.0)])  # small; large (reduced first)
def test_device_warp_of_a_large_photo_agrees_as_on_small_pictures(person: tuple[float, float, float]) -> None:
    from mula_cli.data.device_warp import crop_footprint, warp_images
    from mula_cli.transforms.affine import train_affine, warp_image

    x, y, scale = person
    errors = {}
    for name, (width, height, shrink) in {"small": (300, 200, 5.0), "large": (1500, 1000, 1.0)}.items():
        photo, rng = _photo(width, height, seed=1), np.random.default_rng(2)  # the same draws for both
        matrices = [train_affine(np.array([x, y]) / shrink, scale / shrink, 256, rng, AugmentConfig())[0]
                    for _ in range(6)]
        crops = [crop_footprint(photo, m, 256) for m in matrices]
        got = warp_images([torch.from_numpy(c) for c, _ in crops], torch.from_numpy(np.stack([t for _, t in crops])),
                          256)
        want = torch.from_numpy(np.stack([warp_image(photo, m, 256) for m in matrices])).permute(0, 3, 1, 2)
        errors[name] = float((got - want.float()).abs().mean())
        assert max(c.shape[1] * c.shape[2] for c, _ in crops) < 5 * 256 * 256  # the footprint, not the photo
    assert errors["large"] < 2.0 and errors["large"] < 1.5 * errors["small"], errors


def test_samples_without_labels_use_the_manifests_ignore_label(lip_cache: Path) -> None:
    ds = MulaDataset(lip_cache, "train", SampleConfig(augment=NO_AUGMENT))
    ds.manifest = replace(ds.manifest, ignore_label=250)  # as a user override in $MULA_HOME/manifests
    assert (ds._label_at_input(None, np.eye(2, 3), False) == 250).all()


@pytest.mark.parametrize("ignore_label", [5, 256])
def test_an_ignore_label_a_uint8_label_map_cannot_hold_apart_is_refused(ignore_label: int) -> None:
    import json

    from mula_cli.utils.errors import MulaError
    from mula_cli.utils.manifests import manifest_from_dict

    raw = json.loads(load_manifest("lip").to_json())
    raw["ignore_label"] = ignore_label
    with pytest.raises(MulaError, match="ignore label"):
        manifest_from_dict(raw)
