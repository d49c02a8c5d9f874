"""Deployable models: TorchScript, ONNX and OpenVINO files that need nothing but themselves.

The exported graph takes an image batch (B, 3, S, S) of RGB values in 0..255 at the model's
input size S (letterbox your pictures as ``mula_cli.transforms.affine.letterbox`` does), applies the
model's normalisation inside, and returns the final stage's

- ``parsing``: logits upsampled to S x S (B, K, S, S), or with ``labels`` the class ids (B, S, S);
- ``heatmaps``: pose heatmaps at the model stride (B, J + 1, S/s, S/s), background map last;
- ``offsets`` (multi-person models only): the partition branch's centroid offsets (B, 2J, S/s, S/s),
  x and y of joint j in channels 2j and 2j+1, in units of half the input size (mula_cli.codecs.partition).

TorchScript accepts uint8 or float input; ONNX and OpenVINO take float32 (ONNX float16 with ``half``).
The model configuration and dataset manifest travel inside the file (TorchScript extra file / ONNX
metadata / OpenVINO runtime info), so ``mula predict --weights model.onnx`` knows classes, joints and
palette. The per-sample depthwise convolution is exported in a batch-independent form, so a dynamic
batch works. An OpenVINO IR (``model.xml`` and ``model.bin``) is converted from the dynamic-batch ONNX
export, optionally quantized to int8 on calibration pictures (:mod:`mula_cli.deploy.openvino`).

This module writes and checks exports; running them is :mod:`mula_cli.inference.runtime`.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from mula_cli.inference.runtime import FORMATS, META_KEY, load_exported
from mula_cli.model.loss import upsample_logits
from mula_cli.ops.dynconv import export_form
from mula_cli.utils.errors import MulaError
from mula_cli.utils.files import atomic_write


class ExportWrapper(nn.Module):
    """Final-stage outputs of a MuLA model in the exported interface (see the module docstring)."""

    def __init__(self, model: nn.Module, labels: bool = False) -> None:
        super().__init__()
        self.model = model
        self.labels = labels

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        out = self.model(image)
        size = (image.shape[-2], image.shape[-1])
        parsing = upsample_logits(out.parsing[-1], size)
        if self.labels:
            parsing = parsing.argmax(dim=1)
        return (parsing, out.pose[-1], out.offsets[-1]) if out.offsets else (parsing, out.pose[-1])


@dataclass
class ExportReport:
    path: Path
    max_abs_diff: float
    label_agreement: float
    batches: tuple[int, ...]
    int8: str | None = None  # the int8 check's summary (OpenVINO --int8)


def export_model(weights: Path, fmt: str, out: Path | None = None, *, dynamic_batch: bool = False, opset: int = 17,
                 half: bool = False, labels: bool = False, device: str = "cpu", int8: bool = False,
                 calibration: Sequence[Image.Image] | None = None, calibration_source: str | None = None) -> ExportReport:
    """Export ``weights`` and check the written file against the eager model.

    Args:
        int8: OpenVINO only: quantize to int8 (NNCF) on ``calibration``, the user's pictures (any size;
            letterboxed here), whose origin ``calibration_source`` is recorded in the file.

    Raises:
        MulaError: unknown format, missing onnx / openvino package, or an exported file that disagrees with eager.
    """
    from mula_cli.model.weights import load_weights
    from mula_cli.utils.devices import pick_device

    if fmt not in FORMATS:
        raise MulaError(f"--format {fmt!r} is unknown; use torchscript or onnx, or openvino (the openvino extra)")
    if fmt == "openvino":
        from mula_cli.deploy.openvino import require

        if half:
            raise MulaError("--half is for torchscript and onnx: an OpenVINO IR keeps float32 weights, and "
                            "`mula predict --precision` picks its arithmetic when it runs")
        if int8 and not calibration:
            raise MulaError("--int8 needs --calibration: a folder of your pictures, or a cache file and "
                            "--calibration-split")
        require(int8)
        dynamic_batch = True
    elif int8:
        raise MulaError("--int8 is for --format openvino")
    dev = pick_device(device)
    model, config, extra = load_weights(weights, map_location=dev)
    dtype = torch.float16 if half else torch.float32
    reference = ExportWrapper(copy.deepcopy(model), labels).eval() if half else None  # float32, to measure fp16's error
    wrapper = ExportWrapper(model.to(dtype), labels).eval()
    out = Path(out) if out is not None else Path(weights).with_suffix(FORMATS[fmt])
    if fmt == "openvino" and out.suffix.lower() != ".xml":
        raise MulaError(f"--out {out}: an OpenVINO IR is a .xml file (its weights go beside it, in a .bin)")
    meta = json.dumps({"config": config.to_dict(), "extra": extra, "labels": labels, "half": half,
                       "batch": None if (dynamic_batch or fmt == "torchscript") else 2}
                      | ({"int8": True, "calibration": {"source": calibration_source, "pictures": len(calibration)}}
                         if int8 and calibration else {}))
    size = config.input_size
    example = torch.randint(0, 256, (2, 3, size, size), generator=torch.Generator().manual_seed(0)).to(dev, dtype)
    batches = (1, 3) if (dynamic_batch or fmt == "torchscript") else (2,)
    if fmt == "openvino":
        return _export_openvino(wrapper, example, out, opset, meta, weights, dev, size, labels,
                                calibration if int8 else None)
    report: list[ExportReport] = []

    def write_and_check(temp: Path) -> None:  # the file is checked before it replaces `out`
        _write(wrapper, example, temp, fmt, opset, dynamic_batch, meta, weights)
        report.append(_verify(wrapper, reference, temp, fmt, dev, dtype, size, batches, labels))

    atomic_write(out, write_and_check)
    return ExportReport(out, report[0].max_abs_diff, report[0].label_agreement, batches)


def _write(wrapper: ExportWrapper, example: Tensor, path: Path, fmt: str, opset: int, dynamic_batch: bool,
           meta: str, weights: Path) -> None:
    try:
        with torch.no_grad():
            if fmt == "torchscript":
                traced = torch.jit.trace(wrapper, (example,), check_trace=False)
                torch.jit.save(traced, str(path), _extra_files={f"{META_KEY}.json": meta})
            else:
                _export_onnx(wrapper, example, path, opset, dynamic_batch, meta)
    except MulaError:
        raise
    except Exception as exc:  # noqa: BLE001 - exporters raise many types; the user needs one line
        first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise MulaError(f"exporting {weights} to {fmt} failed: {first[:200]} (try another --opset, or report it "
                        "with `mula info`)") from None


def _export_openvino(wrapper: ExportWrapper, example: Tensor, out: Path, opset: int, meta: str, weights: Path,
                     device: torch.device, size: int, labels: bool,
                     calibration: Sequence[Image.Image] | None) -> ExportReport:
    """Dynamic-batch ONNX, then the float32 IR, checked as the other formats are; with ``calibration`` the
    int8 IR made from it, checked against the eager model on those pictures. Staged beside ``out``."""
    from mula_cli.deploy import openvino as ov_export

    batches = (1, 3)
    with ov_export.staging(out) as folder:
        float32, quantized = folder / "float32" / out.name, folder / "int8" / out.name
        float32.parent.mkdir()
        _write(wrapper, example, folder / "model.onnx", "onnx", opset, True, meta, weights)
        ov_export.convert(folder / "model.onnx", float32, meta)
        checked = _verify(wrapper, None, float32, "openvino", device, torch.float32, size, batches, labels)
        summary = None
        if calibration is not None:
            pictures = ov_export.letterboxed(calibration, size)
            ov_export.quantize(float32, quantized, pictures)
            summary = _verify_int8(wrapper, quantized, pictures[:ov_export.CHECK_PICTURES], device, labels)
        ov_export.move_into_place(quantized if calibration is not None else float32, out)
    return ExportReport(out, checked.max_abs_diff, checked.label_agreement, batches, summary)


def _verify_int8(wrapper: ExportWrapper, path: Path, pictures: np.ndarray, device: torch.device, labels: bool) -> str:
    """The int8 IR against the float32 eager model on calibration pictures, four at a time, within the
    tolerances of :mod:`mula_cli.deploy.openvino` (int8's, far looser than float32's 1e-4)."""
    from mula_cli.deploy.openvino import Int8Check

    exported = load_exported(path, device, fmt="openvino", precision="fp32")
    check = Int8Check()
    for start in range(0, len(pictures), 4):
        x = torch.from_numpy(pictures[start:start + 4]).to(device)
        with torch.no_grad(), export_form():
            want = wrapper(x)
        with torch.no_grad():
            check.add(want, exported.raw(x), labels)
    if not check.passed():
        raise MulaError(f"the int8 OpenVINO export is too far from the float32 model on the calibration pictures "
                        f"({check.summary()}), so nothing was written; calibrate on more or more typical pictures "
                        "(--calibration-count), or export float32 (without --int8)")
    return check.summary()


def _export_onnx(wrapper: ExportWrapper, example: Tensor, path: Path, opset: int, dynamic: bool, meta: str) -> None:
    try:
        import onnx
    except ImportError:
        raise MulaError("ONNX export needs the onnx package: pip install onnx onnxruntime") from None
    names = ["parsing", "heatmaps"] + (["offsets"] if wrapper.model.config.partition else [])
    axes = {name: {0: "batch"} for name in ["image", *names]} if dynamic else None
    torch.onnx.export(wrapper, (example,), str(path), opset_version=opset, input_names=["image"],
                      output_names=names, dynamic_axes=axes, dynamo=False)
    graph = onnx.load(str(path))
    entry = graph.metadata_props.add()
    entry.key, entry.value = META_KEY, meta
    onnx.save(graph, str(path))


def _relative(got: Tensor, want: Tensor) -> float:
    """Largest absolute difference relative to the largest value of ``want``; infinite where either holds a
    non-finite value (float16 overflows beyond 65504, and a NaN compares as no difference at all)."""
    got, want = got.float(), want.float()
    if not (torch.isfinite(got).all() and torch.isfinite(want).all()):
        return math.inf
    return float((got - want).abs().max()) / (float(want.abs().max()) or 1.0)


def _verify(wrapper: ExportWrapper, reference: ExportWrapper | None, path: Path, fmt: str, device: torch.device,
            dtype: torch.dtype, size: int, batches: tuple[int, ...], labels: bool) -> ExportReport:
    """Reload the file, run it and the eager model on random images of every batch size; fail loudly if
    they differ.

    Like is compared with like: the eager model runs the dynamic convolution in the exported graph's own
    form (:func:`mula_cli.ops.dynconv.export_form`) and in the export's precision. A float16 export may
    then still differ by what its runtime rounds differently, so its tolerance is twice float16's own
    error on these images (the float16 model against ``reference``, the float32 one), at least 2e-2.
    """
    exported = load_exported(path, device, fmt=fmt, precision="fp32")
    worst, agreement, tolerance = 0.0, 1.0, 1e-4
    for b in batches:
        x = torch.randint(0, 256, (b, 3, size, size), generator=torch.Generator().manual_seed(b)).to(device, dtype)
        with torch.no_grad(), export_form():
            want_parsing, *want_maps = wrapper(x)
        with torch.no_grad():
            got_parsing, *got_maps = exported.raw(x)
            if reference is not None:
                full_parsing, *full_maps = reference(x.float())
                own_error = max(_relative(w, f) for w, f in zip([want_parsing, *want_maps], [full_parsing, *full_maps])
                                if not (labels and w is want_parsing))
                tolerance = max(tolerance, 2e-2, 2.0 * own_error)
        if len(got_maps) != len(want_maps):
            raise MulaError(f"the {fmt} export lost the offset maps, so nothing was written; please report this")
        for want, got in zip(want_maps, got_maps):  # heatmaps (and offsets)
            worst = max(worst, _relative(got, want))
        if labels:
            agreement = min(agreement, float((got_parsing == want_parsing).float().mean()))
        else:
            worst = max(worst, _relative(got_parsing, want_parsing))
            agreement = min(agreement, float((got_parsing.argmax(1) == want_parsing.argmax(1)).float().mean()))
    if math.isinf(worst):
        raise MulaError(f"the {fmt} export{' (float16)' if reference is not None else ''} produces infinite or NaN "
                        "values on test images, so nothing was written" + ("; float16 overflows on this model: "
                        "export float32 (without --half)" if reference is not None else "; please report this"))
    if worst > tolerance or agreement < 0.99:
        raise MulaError(f"the {fmt} export disagrees with the eager model (largest relative difference {worst:.2e}, "
                        f"allowed {tolerance:.1e}; parsing agreement {agreement:.4f}), so nothing was written; please "
                        "report this with `mula info`")
    return ExportReport(path, worst, agreement, batches)
