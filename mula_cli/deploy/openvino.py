"""OpenVINO IRs for ``mula export --format openvino``, float32 or int8 (post-training quantization).

The IR is made from the dynamic-batch ONNX export (:mod:`mula_cli.deploy.export` writes it), by
``openvino.convert_model``: batch dynamic, outputs named ``parsing``, ``heatmaps`` (``offsets``), the
metadata in the IR's runtime info. Its weights are kept in float32 (OpenVINO's default float16
compression alone breaks the float32 check); OpenVINO picks the arithmetic when it compiles the file
(:mod:`mula_cli.inference.runtime`, ``--precision``).

``--int8`` quantizes that IR with NNCF on the user's own pictures, letterboxed as the Predictor does.
The per-sample depthwise convolution's taps (a sum of shifted copies in the exported graph) are left
in floating point: quantizing them made calibration slower and the result both slower and less
accurate. The int8 file is checked against the float32 eager model on its calibration pictures with the
tolerances below; what int8 does to the scores of a trained model is for ``mula evaluate`` to say.

An IR is two files (``.xml`` and ``.bin``), and ``openvino.save_model`` writes them in place: both are
written and checked in a hidden folder beside the target, then moved into place (the ``.bin`` first, the
``.xml`` last, each in one rename), so a failed check or an interrupted run leaves no new file behind.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from mula_cli.inference.runtime import OPENVINO_EXTRA, OPENVINO_META
from mula_cli.transforms.affine import letterbox
from mula_cli.utils.errors import MulaError
from mula_cli.utils.files import atomic_write

# Not quantized: the shifted copies of the dynamic depthwise convolution (mula_cli.ops.dynconv_export) and
# the residual around it, in the interaction blocks' scope of the ONNX graph.
IGNORED = r".*_interaction/(Mul|Add)(_\d+)?$"
# The int8 check, against the float32 eager model on the calibration pictures (at most CHECK_PICTURES).
# int8 has 256 levels per tensor: through a network of ~100 quantized layers its outputs typically move
# by 5-15 % of their scale (measured: 6-14 % on hg-tiny and hg-5s with trained-like weights), so that
# is no test of the labels; these bounds leave 2-4x headroom over what was measured and still fail a
# broken quantization (an untrained model, whose activations reach 4e4, agrees on ~1 % of the labels).
INT8_LABELS = 0.95  # parsing labels agree on at least this share of pixels (measured: 0.9999 and more)
INT8_MAPS = 0.3  # heatmaps (and offsets) differ by at most this share of their largest value (measured 0.06-0.11)
# every joint's int8 peak lies where the float32 heatmap is within this share of the heatmap scale of
# that joint's own peak: int8 may move a joint between near-ties, not to a place float32 thought clearly
# worse (measured: 0.03 at most)
INT8_JOINTS = 0.1
CHECK_PICTURES = 8


def require(int8: bool) -> None:
    """Raise the one-line install hint where the ``openvino`` extra (or NNCF, for int8) is missing."""
    try:
        import onnx  # noqa: F401 - the IR is converted from the ONNX export
        import openvino  # noqa: F401
    except ImportError:
        raise MulaError(f"--format openvino needs the openvino extra: {OPENVINO_EXTRA}") from None
    if int8:
        try:
            with _quiet():
                import nncf  # noqa: F401
        except ImportError:
            raise MulaError(f"--int8 needs NNCF, part of the openvino extra: {OPENVINO_EXTRA}") from None


@contextlib.contextmanager
def staging(out: Path) -> Iterator[Path]:
    """A hidden folder beside ``out`` (same file system: the renames into place are atomic), removed after."""
    out.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def convert(onnx_path: Path, xml: Path, meta: str) -> None:
    """The float32 IR of an ONNX export, with ``meta`` in its runtime info."""
    import openvino as ov

    try:
        model = ov.convert_model(str(onnx_path))
    except Exception as exc:  # noqa: BLE001 - the converter raises many types; the user needs one line
        first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise MulaError(f"OpenVINO could not convert the ONNX export ({first[:200]}); report it with `mula info`") from None
    model.set_rt_info(meta, OPENVINO_META)
    ov.save_model(model, str(xml), compress_to_fp16=False)


def letterboxed(images: Sequence[Image.Image], size: int) -> np.ndarray:
    """(N, 3, S, S) float32 pixels in 0..255: the pictures as the Predictor feeds them to the network."""
    if not images:
        raise MulaError("--int8 found no calibration pictures")
    rows = [letterbox(img.convert("RGB"), size, orig_hw=(img.height, img.width))[0] for img in images]
    return np.stack(rows).transpose(0, 3, 1, 2).astype(np.float32)


def quantize(xml: Path, out: Path, pictures: np.ndarray) -> None:
    """Quantize the IR ``xml`` to int8 (NNCF, every picture of ``pictures`` a calibration sample) into ``out``."""
    import openvino as ov

    with _quiet():
        import nncf

        model = ov.Core().read_model(str(xml))
        ignored = nncf.IgnoredScope(patterns=[IGNORED], validate=False)
        try:
            quantized = nncf.quantize(model, nncf.Dataset(list(pictures), lambda x: x[None]),
                                      subset_size=len(pictures), target_device=nncf.TargetDevice.CPU,
                                      ignored_scope=ignored)
        except Exception as exc:  # noqa: BLE001 - NNCF raises many types; the user needs one line
            first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
            raise MulaError(f"int8 quantization failed ({first[:200]}); export without --int8, or report it "
                            "with `mula info`") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(quantized, str(out), compress_to_fp16=False)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """NNCF's INFO lines (one per node it leaves out) and progress bars are not for mula's users."""
    previous = logging.getLogger("nncf").level
    with contextlib.redirect_stdout(io.StringIO()):
        with contextlib.suppress(ImportError):  # no NNCF: the caller's own import reports it, one line
            import nncf

            nncf.set_log_level(logging.ERROR)
        try:
            yield
        finally:
            logging.getLogger("nncf").setLevel(previous)


def move_into_place(xml: Path, out: Path) -> None:
    """The checked IR to ``out`` (and its ``.bin`` beside it): the ``.bin`` first, the ``.xml`` last."""
    atomic_write(out.with_suffix(".bin"), lambda temp: os.replace(xml.with_suffix(".bin"), temp))
    atomic_write(out, lambda temp: os.replace(xml, temp))


@dataclass
class Int8Check:
    """The int8 file's distance from float32 (worst over the pictures checked)."""

    maps: float = 0.0  # largest heatmap (and offset) difference, relative to float32's largest value
    labels: float = 1.0  # share of parsing labels that agree
    joints: float = 0.0  # largest float32 heatmap deficit at an int8 joint peak, relative to the heatmap scale

    def add(self, want: Sequence[Tensor], got: Sequence[Tensor], labels_only: bool) -> None:
        (want_parsing, want_heat, *want_rest), (got_parsing, got_heat, *got_rest) = want, got
        for w, g in zip([want_heat, *want_rest], [got_heat, *got_rest]):
            w, g = w.float(), g.float()
            finite = bool(torch.isfinite(g).all())
            self.maps = max(self.maps, float((g - w).abs().max()) / (float(w.abs().max()) or 1.0) if finite else np.inf)
        if not labels_only:
            want_parsing, got_parsing = want_parsing.argmax(1), got_parsing.argmax(1)
        self.labels = min(self.labels, float((got_parsing == want_parsing).float().mean()))
        w, g = want_heat.float()[:, :-1].flatten(2), got_heat.float()[:, :-1].flatten(2)  # joints, not background
        at_int8_peak = w.gather(2, g.argmax(2, keepdim=True)).squeeze(2)
        scale = float(want_heat.abs().max()) or 1.0
        self.joints = max(self.joints, float((w.amax(2) - at_int8_peak).max()) / scale)

    def passed(self) -> bool:
        return self.maps <= INT8_MAPS and self.labels >= INT8_LABELS and self.joints <= INT8_JOINTS

    def summary(self) -> str:
        return (f"heatmaps differ by {self.maps:.2f} of their scale (allowed {INT8_MAPS}), parsing labels agree on "
                f"{100 * self.labels:.2f}% of pixels (at least {100 * INT8_LABELS:.0f}%), joint peaks within "
                f"{self.joints:.3f} of the heatmap scale of float32's (allowed {INT8_JOINTS})")
