"""The Python API: load a model once, predict parsing and pose on your own pictures.

>>> from mula_cli import Predictor
>>> predictor = Predictor("runs/train/exp/weights/best.pt")
>>> result = predictor("photo.jpg")          # a path, a PIL image or an (H, W[, C]) array
>>> result.labels.shape, result.joints.shape  # (H, W) class ids, (J, 2) x, y in the photo's pixels
>>> result.people  # multi-person models: every person found (joints (J, 3) x, y, score; a score)

Pictures are read as people's photos are: EXIF orientation applied; grayscale, RGBA, palette,
CMYK and 16-bit images turned into 8-bit RGB; very large JPEGs decoded at a reduced scale (the
model sees the long edge at its input size anyway), and every output is at the original size.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image, ImageOps

from mula_cli.codecs.partition import GroupingConfig, Person
from mula_cli.inference.batch import InferenceOptions, ScaleViews, predict_batch, to_originals
from mula_cli.transforms.affine import letterbox, scale_views
from mula_cli.utils.errors import MulaError
from mula_cli.utils.manifests import DatasetManifest, load_manifest, manifest_from_json

ImageInput = Union[str, Path, Image.Image, np.ndarray]
_TRANSPOSED = (5, 6, 7, 8)  # EXIF orientations that swap width and height
HEIF_SUFFIXES = (".heic", ".heif")  # phones' photos; Pillow reads them only with a plugin


@dataclass
class Prediction:
    """One picture's result, at its original resolution."""

    labels: np.ndarray  # (H, W) uint8 class ids
    joints: np.ndarray  # (J, 2) float x, y in pixels
    scores: np.ndarray  # (J,) heatmap maxima (confidence)
    size: tuple[int, int]  # (height, width)
    people: list[Person] | None = None  # multi-person models: every person found, in the picture's pixels


def read_image(source: ImageInput, max_side: int | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """An 8-bit RGB picture upright as a person would view it, and its full (height, width).

    Args:
        source: a path, a PIL image or an array (H, W), (H, W, 3) or (H, W, 4); uint8, uint16 or float in [0, 1].
        max_side: when given, JPEGs larger than twice this are decoded at a reduced scale (DCT scaling).

    Raises:
        MulaError: the file cannot be read as an image.
    """
    if isinstance(source, np.ndarray):
        img = _from_array(source)
        return img, (img.height, img.width)
    if isinstance(source, Image.Image):
        img = source
    else:
        img = _open(source)
    try:
        # PNG keeps its EXIF (eXIf) wherever it likes, after the pixels too: getexif() may decode the
        # whole picture, so a damaged file can fail here as well as below.
        width, height = img.size
        with _quiet_exif():
            orientation = img.getexif().get(0x0112, 1) if hasattr(img, "getexif") else 1
        if orientation in _TRANSPOSED:
            width, height = height, width
        if max_side is not None and img.format == "JPEG" and max(width, height) > 2 * max_side:
            img.draft("RGB", (2 * max_side, 2 * max_side))  # keeps at least this size; loads less
        with _quiet_exif():
            img = ImageOps.exif_transpose(img)
        img = _to_rgb(img)
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        reason = " ".join(str(exc).split())[:120] or type(exc).__name__
        raise MulaError(f"cannot decode {source} ({reason}); the file is damaged or not an image") from None
    return img, (height, width)


@contextmanager
def _quiet_exif() -> Iterator[None]:
    """Damaged EXIF is read as none (the picture taken as upright): Pillow's UserWarning about it would
    only print a library's source line on the user's terminal."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


def _open(source: str | Path) -> Image.Image:
    """``Image.open`` with its failures as one-line MulaErrors that say what to do."""
    path = Path(source)
    try:
        with _quiet_exif():  # JPEG reads its EXIF (for the DPI) on opening
            img = Image.open(source)
        img.size  # noqa: B018 - touch the header
        return img
    except Image.DecompressionBombError as exc:
        first = str(exc).split(",")[0]
        raise MulaError(f"refusing {source}: {first}, Pillow's guard against decompression bombs; if the picture "
                        "is genuine, shrink it first (its header may also be damaged)") from None
    except FileNotFoundError:
        if path.is_symlink():
            raise MulaError(f"cannot read {source}: it is a symbolic link to {os.readlink(path)}, which does not "
                            "exist; fix or remove the link") from None
        raise MulaError(f"cannot read {source}: it does not exist; check the path") from None
    except (OSError, ValueError) as exc:
        if path.suffix.lower() in HEIF_SUFFIXES:
            raise MulaError(f"cannot read {source}: Pillow here has no HEIC/HEIF decoder; convert it to JPEG or "
                            "PNG (e.g. with your phone's export, or `heif-convert`)") from None
        raise MulaError(f"cannot read {source} as an image ({exc.__class__.__name__}); the file is damaged or not "
                        "a picture") from None


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img).astype(np.float64)
        top = 65535.0 if arr.max(initial=0) > 255 else 255.0
        return Image.fromarray(np.clip(arr / top * 255.0, 0, 255).astype(np.uint8)).convert("RGB")
    if img.mode == "F":
        arr = np.asarray(img)
        scale = 255.0 if arr.max(initial=0) <= 1.0 else 1.0
        return Image.fromarray(np.clip(arr * scale, 0, 255).astype(np.uint8)).convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (128, 128, 128, 255))  # transparent = the padding grey
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return img.convert("RGB") if img.mode != "RGB" else img


def _from_array(arr: np.ndarray) -> Image.Image:
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise MulaError(f"an image array must be (H, W), (H, W, 3) or (H, W, 4), not {a.shape}")
    if a.dtype == np.uint16:
        a = (a / 257.0).round().astype(np.uint8)
    elif np.issubdtype(a.dtype, np.floating):
        a = np.clip(a * 255.0 if a.max(initial=0) <= 1.0 else a, 0, 255).round().astype(np.uint8)
    elif a.dtype != np.uint8:
        a = np.clip(a, 0, 255).astype(np.uint8)
    return _to_rgb(Image.fromarray(a))


class Predictor:
    """Loads weights once and predicts on pictures.

    Args:
        weights: a mula weights file (``.pt``), a known name (``authors-lip``, see ``mula weights``) or an
            exported model (``.torchscript`` / ``.onnx`` / OpenVINO ``.xml``).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (see :mod:`mula_cli.utils.devices`).
        flip: flip testing for parsing too (pose is flip-averaged by default, the official protocol).
        pose_flip: average pose with the mirrored picture.
        scales: multi-scale testing factors.
        fast: run the fast path (:mod:`mula_cli.inference.fastpath`: BatchNorm folded, channels_last, fused
            convolutions; same results up to float rounding); False runs the plain eager model.
        precision: the network's arithmetic: ``fp32``, ``bf16``, or ``auto`` (bfloat16 on GPUs and on CPUs
            that compute it natively, AVX512-BF16 or AMX; float32 elsewhere). The README gives what
            bfloat16 changes on trained weights. Decoding is float32 either way. OpenVINO IRs run in this
            precision too; TorchScript and ONNX files in their own.
        grouping: multi-person models: the thresholds that group joint candidates into people
            (default: :class:`~mula_cli.codecs.partition.GroupingConfig`'s: Pose Partition Networks' thresholds).

    ``path`` says in one line which of these runs (``mula predict`` prints it).
    """

    def __init__(self, weights: str | Path, device: str = "auto", *, flip: bool = False, pose_flip: bool = True,
                 scales: Sequence[float] = (1.0,), fast: bool = True, precision: str = "auto",
                 grouping: GroupingConfig | None = None) -> None:
        from mula_cli.model.hub import resolve_weights
        from mula_cli.utils.devices import pick_device, prediction_precision

        self.weights = resolve_weights(weights)  # a path, or a known name's cached file (authors-lip)
        self.device = pick_device(device)
        self.precision = prediction_precision(precision, self.device, name="precision")
        suffix = self.weights.suffix.lower()
        if suffix in (".torchscript", ".ts", ".onnx", ".xml"):
            from mula_cli.inference.runtime import load_exported

            # OpenVINO computes in the precision asked for (on the CPU); the others run as exported
            self.model = load_exported(self.weights, self.device, precision=precision)
            self.config, extra = self.model.config, self.model.extra
            self.path = self.model.description  # e.g. "exported OpenVINO IR (bf16, CPU)"
            self.precision = self.model.precision if suffix == ".xml" else "as exported"
        else:
            from mula_cli.inference.fastpath import prediction_model
            from mula_cli.model.weights import load_weights

            model, self.config, extra = load_weights(self.weights, map_location=self.device)
            self.model, self.path = prediction_model(model, fast=fast, bf16=self.precision == "bf16")
        self.manifest: DatasetManifest = _manifest(extra, self.config)
        self.options = InferenceOptions(pose_flip=pose_flip, parsing_flip=flip, scales=tuple(scales),
                                        grouping=grouping or GroupingConfig())

    @property
    def input_size(self) -> int:
        return self.config.input_size

    def __call__(self, image: ImageInput) -> Prediction:
        return self.predict([image])[0]

    def predict(self, images: Sequence[ImageInput]) -> list[Prediction]:
        """Predict a batch of pictures (one forward pass)."""
        return self.predict_decoded([read_image(image, max_side=self.input_size) for image in images])

    def predict_decoded(self, pictures: Sequence[tuple[Image.Image, tuple[int, int]]]) -> list[Prediction]:
        """Predict pictures already read with :func:`read_image` (RGB image, original (height, width))."""
        size = self.input_size
        inputs, affines, sizes, views = [], [], [], []
        for img, orig_hw in pictures:
            pixels, m = letterbox(img, size, orig_hw=orig_hw)
            inputs.append(torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1))))
            affines.append(m)
            sizes.append(orig_hw)
            if tuple(self.options.scales) != (1.0,):  # multi-scale: the picture resized to each scale
                views.append(scale_views(img, size, tuple(self.options.scales), orig_hw=orig_hw))
        batch = to_device(torch.stack(inputs), self.device)
        scaled = None
        if views:
            images = torch.from_numpy(np.stack([v[0] for v in views]).transpose(0, 1, 4, 2, 3).copy())
            scaled = ScaleViews(to_device(images, self.device), np.stack([v[1] for v in views]), np.stack(affines))
        pred = predict_batch(self.model, batch, self.manifest, self.options, views=scaled)
        return [Prediction(found.labels.to(torch.uint8).cpu().numpy(), found.joints, found.scores, hw, found.people)
                for found, hw in zip(to_originals(pred, np.stack(affines), sizes, clip=True), sizes)]


def to_device(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``batch`` on ``device``; to a GPU through pinned memory, so the copy does not wait on pageable pages."""
    if device.type != "cuda":
        return batch.to(device)
    return batch.pin_memory().to(device, non_blocking=True)


def _manifest(extra: dict, config) -> DatasetManifest:
    """The dataset facts stored with the weights; LIP's when the file carries none (imported weights)."""
    if "manifest" in extra:
        return manifest_from_json(extra["manifest"])
    manifest = load_manifest("lip")
    if (manifest.num_classes, manifest.num_joints) != (config.num_classes, config.num_joints):
        raise MulaError("these weights carry no dataset manifest and do not match LIP's classes and joints")
    return manifest
