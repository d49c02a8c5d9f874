"""The training / evaluation dataset over a prepared HDF5 cache.

The HDF5 file is opened lazily in each process that reads from it (DataLoader workers must not
share an h5py handle opened before they forked). Augmentation randomness is derived from
``(seed, epoch, index)`` only, so a run gives the same samples whatever the number of workers and
a resumed run continues exactly where it stopped.

A sample is a dict of tensors:

- ``image``: (3, S, S) uint8 RGB; the model normalises inside (the exported model and the
  Predictor then need nothing but the weights file, and host-to-device copies are 4x smaller);
- ``parsing``: (S, S) uint8 class ids at input resolution, the manifest's ``ignore_label`` (255 for
  LIP) = ignore (the whole map when the sample has no usable label);
- ``heatmaps``: (J + 1, S/s, S/s) float32 targets at the model stride (see mula_cli.codecs.heatmaps);
- multi-person datasets, training only: ``offsets`` (2J, S/s, S/s) and ``offset_mask`` (J, S/s, S/s),
  the partition branch's targets (see mula_cli.codecs.partition);
- ``joints``: (J, 2) float32 joint positions in input pixels (0 where unlabelled), ``joint_mask``:
  (J,) bool labelled joints;
- ``affine``: (2, 3) float64 original-to-input matrix, ``orig_size``: (2,) original height, width,
  ``index``: position in the split, ``id``: the sample id;
- ``defer_warp`` training only: ``crop`` (3, h, w) uint8 and ``input_to_crop`` (2, 3) instead of
  ``image``, for :func:`mula_cli.data.device_warp.warp_images` (crops differ in size: a list in a batch);
- evaluation mode with test scales other than (1,): ``views`` (n, 3, S, S) uint8, the picture at
  each scale, and ``view_affines`` (n, 2, 3); with the authors' protocol ``views`` and ``windows``
  (their placements, see mula_cli.transforms.authors_views);
- evaluation mode only: ``orig_parsing`` (H, W) uint8 ground truth at original size (None when the
  sample has none), ``orig_joints`` (P, J, 2) and ``orig_boxes`` (P, 4) in original pixels, for scoring.

Use :func:`collate` as the DataLoader's ``collate_fn``: it stacks what has one shape and keeps the
rest (ids, original-size ground truth) as lists.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from mula_cli.codecs.heatmaps import encode_people_heatmaps, swap_joints, swap_labels
from mula_cli.codecs.partition import encode_offsets
from mula_cli.data.cache import CacheFile, CacheSplit
from mula_cli.data.device_warp import crop_footprint
from mula_cli.transforms.affine import (
    AugmentConfig,
    apply_affine,
    letterbox,
    mirror_affine,
    scale_views,
    train_affine,
    warp_image,
    warp_label,
)
from mula_cli.utils.errors import MulaError


class DamagedCache(MulaError):
    """A cached sample that cannot be decoded (the file changed after ``mula prepare`` checked it).

    Raised in a DataLoader worker, it reaches the main process re-created from the worker's whole
    traceback text (``torch._utils.ExceptionWrapper``); only this error's own line is kept, so the
    user still reads one line.
    """

    def __init__(self, message: str) -> None:
        if "Traceback (most recent call last)" in message:
            message = message.rstrip().splitlines()[-1].partition(f"{DamagedCache.__name__}: ")[2] or message
        super().__init__(message)


@dataclass(frozen=True)
class SampleConfig:
    """How samples are made. ``train=False`` gives the official test transform and no randomness."""

    input_size: int = 256
    stride: int = 4
    sigma: float = 7.0
    train: bool = True
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    seed: int = 0
    defer_warp: bool = False  # training: leave the resampling to mula_cli.data.device_warp (GPU batches)
    # evaluation: test scales (the picture at each, see mula_cli.inference.batch) and the test protocol
    test_scales: tuple[float, ...] = (1.0,)
    test_protocol: str = "default"


class MulaDataset(Dataset):
    """One split of a prepared cache as training or evaluation samples.

    Args:
        cache_path: the ``.h5`` cache written by ``mula prepare``.
        split: ``train``, ``val`` or ``test``.
        config: input size, stride, augmentation, seed.
        limit: use only the first ``limit`` samples (e.g. quick validation).
    """

    def __init__(self, cache_path: Path, split: str, config: SampleConfig = SampleConfig(),
                 limit: int | None = None) -> None:
        self.cache_path = Path(cache_path)
        self.split = split
        self.config = config
        self.epoch = 0
        with CacheFile(self.cache_path) as cache:
            table = cache.split(split)
            self.manifest = cache.manifest
            self._length = len(table) if limit is None else min(limit, len(table))
        if config.input_size % config.stride:
            raise ValueError(f"input size {config.input_size} is not a multiple of the stride {config.stride}")
        self._flip_index = self.manifest.joint_flip_index()
        self._flip_lut = self.manifest.class_flip_lut()
        self._opened: tuple[int, h5py.File, CacheSplit] | None = None

    def __len__(self) -> int:
        return self._length

    def set_epoch(self, epoch: int) -> None:
        """Choose the augmentation draw of this epoch (call before creating the DataLoader iterator)."""
        self.epoch = epoch

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_opened"] = None  # each process opens its own handle
        return state

    def table(self) -> CacheSplit:
        """This process's open handle on the split (opened on first use, reopened after a fork)."""
        pid = os.getpid()
        if self._opened is None or self._opened[0] != pid:
            cache = CacheFile(self.cache_path)
            self._opened = (pid, cache.file, cache.split(self.split))
        return self._opened[2]

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, object]:
        index, epoch = key if isinstance(key, tuple) else (key, self.epoch)
        if not 0 <= index < self._length:
            raise IndexError(index)
        t = self.table()
        cfg = self.config
        size, stride = cfg.input_size, cfg.stride
        try:
            raw = t.image_bytes(index)
            img = Image.open(io.BytesIO(raw))
            img.load()
            img = img.convert("RGB") if img.mode != "RGB" else img  # convert() would copy even RGB
            label = t.label(index)
        except (OSError, ValueError, SyntaxError, EOFError) as exc:  # bytes changed since `mula prepare` checked them
            what = "not an image" if isinstance(exc, UnidentifiedImageError) else " ".join(str(exc).split())[:120]
            raise DamagedCache(f"sample {t.ids[index]} of the cache {t.where} cannot be decoded ({what}); the "
                               "cache is damaged: re-create it with `mula prepare ... --force`") from None
        joints = t.people(index)[0]  # (P, J, 2), NaN = unlabelled

        pixels: dict[str, object]
        if cfg.train and cfg.augment.crop_person:
            rng = np.random.default_rng([cfg.seed, epoch, index])
            m, flipped = train_affine(t.centers[index], float(t.scales[index]), size, rng, cfg.augment)
            pixels = self._deferred(img, label, m, flipped) if cfg.defer_warp else self._warped(img, label, m, flipped)
        elif cfg.train:  # the test-time input, mirrored with probability flip_prob
            rng = np.random.default_rng([cfg.seed, epoch, index])
            flipped = bool(cfg.augment.flip_prob > 0 and rng.random() < cfg.augment.flip_prob)
            image, m = letterbox(img, size)
            if flipped:
                image, m = image[:, ::-1], mirror_affine(m, size)
            pixels = {"image": image.transpose(2, 0, 1), "parsing": self._label_at_input(label, m, flipped)}
        else:
            flipped = False
            image, m = letterbox(img, size)
            pixels = {"image": image.transpose(2, 0, 1), "parsing": self._label_at_input(label, m, False),
                      **self._test_views(img, raw)}

        people = apply_affine(joints.astype(np.float64), m) if len(joints) else joints.astype(np.float64)
        if flipped and len(people):  # positions are mirrored by the matrix; identities swap here
            people = swap_joints(people, self._flip_index)
        heatmaps = encode_people_heatmaps(people, (size // stride, size // stride), stride, cfg.sigma,
                                          self.manifest.num_joints)
        partition: dict[str, object] = {}
        if cfg.train and self.manifest.multi_person:
            offsets, offset_mask = encode_offsets(torch.from_numpy(people.astype(np.float32)),
                                                  (size // stride, size // stride), stride, cfg.sigma, size)
            partition = {"offsets": offsets, "offset_mask": offset_mask}
        first = people[0] if len(people) else np.full((self.manifest.num_joints, 2), np.nan)
        mask = np.isfinite(first).all(axis=1)
        return {
            **{k: torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v for k, v in pixels.items()},
            "heatmaps": heatmaps,
            **partition,
            "joints": torch.from_numpy(np.where(mask[:, None], first, 0.0).astype(np.float32)),
            "joint_mask": torch.from_numpy(mask),
            "affine": torch.from_numpy(m),
            "orig_size": torch.tensor([img.height, img.width]),
            "index": index,
            "id": t.ids[index],
            **({} if cfg.train else {"orig_parsing": label, "orig_joints": joints,
                                     "orig_boxes": t.boxes(index)}),
        }

    def _test_views(self, img: Image.Image, raw: bytes) -> dict[str, np.ndarray]:
        """The picture at every test scale (multi-scale testing, or the authors' protocol, which decodes
        the file's bytes as their code does), else nothing."""
        cfg = self.config
        if cfg.test_protocol == "authors":
            from mula_cli.transforms.authors_views import authors_views

            return authors_views(img, cfg.input_size, cfg.test_scales, raw=raw)
        if tuple(cfg.test_scales) == (1.0,):
            return {}
        views, affines = scale_views(img, cfg.input_size, cfg.test_scales)
        return {"views": views.transpose(0, 3, 1, 2), "view_affines": affines}

    def _label_at_input(self, label: np.ndarray | None, m: np.ndarray, flipped: bool) -> np.ndarray:
        size = self.config.input_size
        if label is None:
            return np.full((size, size), self.manifest.ignore_label, np.uint8)
        parsing = warp_label(label, m, size, self.config.augment.label_pad)
        # the matrix mirrored the pixels; left/right classes swap names too
        return swap_labels(parsing, self._flip_lut) if flipped else parsing

    def _warped(self, img: Image.Image, label: np.ndarray | None, m: np.ndarray, flipped: bool) -> dict[str, object]:
        aug = self.config.augment
        image = warp_image(img, m, self.config.input_size, aug.image_pad, aug.bicubic)
        return {"image": image.transpose(2, 0, 1), "parsing": self._label_at_input(label, m, flipped)}

    def _deferred(self, img: Image.Image, label: np.ndarray | None, m: np.ndarray, flipped: bool) -> dict[str, object]:
        """The warp's source footprint for :func:`mula_cli.data.device_warp.warp_images`; the label map is
        warped here, as on the CPU path (nearest neighbour is cheap)."""
        crop, input_to_crop = crop_footprint(img, m, self.config.input_size)
        return {"crop": crop, "input_to_crop": torch.from_numpy(input_to_crop),
                "parsing": self._label_at_input(label, m, flipped)}


def collate(samples: list[dict[str, object]]) -> dict[str, object]:
    """Stack tensors of equal shape into a batch; keep everything else as a list."""
    batch: dict[str, object] = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        if all(isinstance(v, torch.Tensor) for v in values) and len({tuple(v.shape) for v in values}) == 1:
            batch[key] = torch.stack(values)
        elif all(isinstance(v, int) for v in values):
            batch[key] = torch.tensor(values)
        else:
            batch[key] = values
    return batch
